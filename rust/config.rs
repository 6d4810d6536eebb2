//! Validated limiter parameters. Everything that can be wrong with a configuration is found
//! here, once, with a message that names the bad value.

use std::fmt;
use std::time::Duration;

pub use crate::registry::Algorithm;
use crate::registry::Capacity;

pub const MS: u64 = 1_000_000;
/// The longest period, and the longest a token bucket may run ahead (burst x interval): 100
/// days in nanoseconds stays below 2^53, so Lua (doubles) computes the same integers.
pub const MAX_PERIOD_NS: u64 = 100 * 86_400 * 1_000_000_000;
/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// What is wrong with a configuration: a rate (limit, period, burst) or another argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    Rate(String),
    Argument(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Rate(m) | ConfigError::Argument(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A checked configuration.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period_ns: u64,
    /// The most one request may cost: the bucket's capacity, or the window's limit.
    pub capacity: u64,
    pub max_keys: usize,
    pub shards: usize,
    pub sweep_interval: Duration,
}

#[derive(Debug)]
pub struct Options {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub period_ns: u64,
    pub burst: Option<u64>,
    pub max_keys: usize,
    pub shards: Option<usize>,
    pub sweep_interval_s: f64,
}

impl Params {
    pub fn check(o: &Options) -> Result<Params, ConfigError> {
        let rate = |m: String| Err(ConfigError::Rate(m));
        if o.limit == 0 {
            return rate("limit must be at least 1, got 0".into());
        }
        if o.period_ns < MS || o.period_ns % MS != 0 {
            return rate(format!(
                "period must be a whole number of milliseconds, at least 1 ms; got {} ns",
                o.period_ns
            ));
        }
        if o.period_ns > MAX_PERIOD_NS {
            return rate(format!(
                "period must be at most 100 days, got {} s",
                o.period_ns / 1_000_000_000
            ));
        }
        let max = o.algorithm.max_limit;
        if o.limit > max {
            return rate(format!(
                "limit {} is above the maximum for {} ({max})",
                o.limit, o.algorithm.name
            ));
        }
        let capacity = match (o.algorithm.capacity, o.burst) {
            (Capacity::Burst, burst) => {
                if o.limit > o.period_ns {
                    return rate(format!(
                        "limit {} per {} ms is more than one token per nanosecond, the most a token \
                         bucket can refill",
                        o.limit,
                        o.period_ns / MS
                    ));
                }
                let burst = burst.unwrap_or(o.limit);
                if burst == 0 {
                    return rate("burst must be at least 1, got 0".into());
                }
                let emission = o.period_ns.div_ceil(o.limit);
                if burst.checked_mul(emission).is_none_or(|c| c > MAX_PERIOD_NS) {
                    return rate(format!(
                        "burst {burst} is too large: a full bucket would take more than 100 days to refill"
                    ));
                }
                burst
            }
            (_, Some(burst)) if burst != o.limit => {
                return rate(format!(
                    "burst={burst} applies to token_bucket only; {} takes the limit ({})",
                    o.algorithm.name, o.limit
                ));
            }
            _ => o.limit,
        };
        if o.max_keys == 0 {
            return Err(ConfigError::Argument("max_keys must be at least 1, got 0".into()));
        }
        let shards = match o.shards {
            Some(s) if s == 0 || s > 65_536 || !s.is_power_of_two() => {
                return Err(ConfigError::Argument(format!(
                    "shards must be a power of two from 1 to 65536, got {s}"
                )));
            }
            Some(s) => s,
            None => default_shards(o.max_keys),
        };
        let si = o.sweep_interval_s;
        if !si.is_finite() || !(0.001..=86_400.0).contains(&si) {
            return Err(ConfigError::Argument(format!(
                "sweep_interval must be a number of seconds in [0.001, 86400], got {}",
                py_float(si)
            )));
        }
        Ok(Params {
            algorithm: o.algorithm,
            limit: o.limit,
            period_ns: o.period_ns,
            capacity,
            max_keys: o.max_keys,
            shards,
            sweep_interval: Duration::from_secs_f64(si),
        })
    }
}

/// A float as Python prints it (`nan`, `inf`, `0.5`), for messages read by Python users.
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{x:?}")
    }
}

/// Enough shards that a full shard holds a few thousand keys (short sweeps, short waits for
/// inserts), and not so many that a small limiter wastes memory on empty ones.
fn default_shards(max_keys: usize) -> usize {
    (max_keys / 4096).clamp(16, 1024).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    fn opts(algorithm: Algorithm, limit: u64, period_ns: u64, burst: Option<u64>) -> Options {
        Options {
            algorithm,
            limit,
            period_ns,
            burst,
            max_keys: 1000,
            shards: None,
            sweep_interval_s: 1.0,
        }
    }

    #[test]
    fn rejects_bad_values_by_name() {
        let s = 1_000_000_000;
        let err = |o| Params::check(&o).unwrap_err().to_string();
        assert!(err(opts(find("token_bucket").unwrap(), 0, s, None)).contains("got 0"));
        assert!(err(opts(find("token_bucket").unwrap(), 1, 1_500_000, None)).contains("1500000 ns"));
        assert!(err(opts(find("sliding_log").unwrap(), 10_001, s, None)).contains("10001"));
        assert!(err(opts(find("fixed_window").unwrap(), 5, s, Some(7))).contains("burst=7"));
        assert!(err(opts(find("token_bucket").unwrap(), 1, MAX_PERIOD_NS, Some(2))).contains("burst 2"));
        let p = Params::check(&opts(find("token_bucket").unwrap(), 100, 60 * s, Some(20))).unwrap();
        assert_eq!(p.capacity, 20);
    }
}
