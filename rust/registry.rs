//! The algorithm registry: one row per algorithm, the only list of them in the native core.
//!
//! Everything that varies by algorithm and is not the algorithm's own arithmetic lives in its
//! row: the name users write, the one-letter code the Redis script dispatches on, the largest
//! limit, how a request's maximum cost is set, whether hybrid mode can split it between
//! replicas, and how to build its engine. The Python package reads the rows (`ALGORITHMS` in
//! `hotlimit._native`) for its codes and checks, the Redis script is assembled from one Lua
//! file per row, and the tests parametrise over them. A new algorithm is its Rust module, its
//! row here, its Lua file (`python/hotlimit/redis/lua/<name>.lua`) and its reference model
//! (`tests/reference.py`).

use std::fmt;
use std::sync::Arc;

use crate::algo::fixed_window::FixedWindow;
use crate::algo::sliding_log::SlidingLog;
use crate::algo::sliding_window::SlidingWindow;
use crate::algo::token_bucket::TokenBucket;
use crate::clock::Clock;
use crate::config::{ConfigError, Params, MAX_PERIOD_NS};
use crate::engine::{Engine, KeyedEngine};

/// What sets the most one request may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// `burst` (default: the limit): a bucket that holds `burst` units.
    Burst,
    /// The limit: a window never holds more than its limit; `burst` is refused.
    Limit,
}

/// One algorithm's row.
pub struct Spec {
    /// As users name it: `Limiter(rate, algorithm=name)`.
    pub name: &'static str,
    /// The Redis script's dispatch code (one letter, unique).
    pub code: &'static str,
    /// The largest limit it can count exactly.
    pub max_limit: u64,
    pub capacity: Capacity,
    /// Hybrid mode can give each replica a share of it (the sliding log is exact, not shared).
    pub shareable: bool,
    /// Its engine over a validated configuration.
    pub build: fn(&Params, Clock) -> Arc<dyn Engine>,
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Spec {}

/// An algorithm: a row of the registry.
pub type Algorithm = &'static Spec;

fn engine<A: crate::engine::KeyedAlgorithm>(algo: A, p: &Params, clock: Clock) -> Arc<dyn Engine> {
    Arc::new(KeyedEngine::new(
        algo,
        p.shards,
        p.max_keys,
        clock,
        p.sweep_interval,
    ))
}

/// Every algorithm, the default first.
pub static ALGORITHMS: [Spec; 4] = [
    Spec {
        name: "token_bucket",
        code: "t",
        // One token per nanosecond at most.
        max_limit: MAX_PERIOD_NS,
        capacity: Capacity::Burst,
        shareable: true,
        build: |p, c| engine(TokenBucket::new(p.limit, p.period_ns, p.capacity), p, c),
    },
    Spec {
        name: "sliding_window",
        code: "s",
        max_limit: SlidingWindow::MAX_LIMIT,
        capacity: Capacity::Limit,
        shareable: true,
        build: |p, c| engine(SlidingWindow::new(p.limit, p.period_ns), p, c),
    },
    Spec {
        name: "fixed_window",
        code: "f",
        max_limit: FixedWindow::MAX_LIMIT,
        capacity: Capacity::Limit,
        shareable: true,
        build: |p, c| engine(FixedWindow::new(p.limit, p.period_ns), p, c),
    },
    Spec {
        name: "sliding_log",
        code: "l",
        max_limit: SlidingLog::MAX_LIMIT,
        capacity: Capacity::Limit,
        shareable: false,
        build: |p, c| engine(SlidingLog::new(p.limit, p.period_ns), p, c),
    },
];

/// The default algorithm.
pub fn default() -> Algorithm {
    &ALGORITHMS[0]
}

/// The row named `name`, or an error that lists the names.
pub fn find(name: &str) -> Result<Algorithm, ConfigError> {
    ALGORITHMS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = ALGORITHMS.iter().map(|s| s.name).collect();
        ConfigError::Argument(format!(
            "unknown algorithm {name:?}; expected one of {}",
            names.join(", ")
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Options;
    use std::collections::HashSet;

    #[test]
    fn names_and_codes_are_unique_and_each_row_builds_an_engine() {
        let names: HashSet<_> = ALGORITHMS.iter().map(|s| s.name).collect();
        let codes: HashSet<_> = ALGORITHMS.iter().map(|s| s.code).collect();
        assert_eq!(names.len(), ALGORITHMS.len());
        assert_eq!(codes.len(), ALGORITHMS.len());
        for spec in &ALGORITHMS {
            assert_eq!(find(spec.name).unwrap(), spec);
            let p = Params::check(&Options {
                algorithm: spec,
                limit: 3,
                period_ns: 1_000_000_000,
                burst: None,
                max_keys: 10,
                shards: None,
                sweep_interval_s: 1.0,
            })
            .unwrap();
            let e = (spec.build)(&p, Clock::manual(5_000_000_000));
            let k = crate::table::hash_key(b"k");
            let allowed = (0..5).filter(|_| e.decide(&k, 1, true).unwrap().allowed).count();
            assert_eq!(allowed, 3, "{}", spec.name);
        }
        assert!(find("leaky").unwrap_err().to_string().contains("\"leaky\""));
    }
}
