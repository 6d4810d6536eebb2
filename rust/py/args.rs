//! Arguments from Python, checked: every one a Python caller can pass is taken as a Python
//! object and checked here, so that a bad one raises hotlimit's error naming it, never pyo3's
//! TypeError or OverflowError.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use super::clock::ManualClock;
use super::{ArgumentTypeError, InvalidArgumentError, InvalidCostError, InvalidRateError, NS_PER_S};
use crate::clock::Clock;

// -- arguments ------------------------------------------------------------------------------
//
// Every argument a Python caller can pass is taken as a Python object and checked here, so that
// a bad one raises hotlimit's error naming it, never pyo3's TypeError or OverflowError (a value
// that does not fit a u64, a str where a float is expected). The messages are those of
// `hotlimit/_check.py`, word for word: Redis mode checks the same calls there.

/// A short, safe rendering of a bad value for an error message (`_check.shown`): its repr, cut
/// to 60 characters; an int too long for repr is shown by its size.
pub(crate) fn shown(value: &Bound<'_, PyAny>) -> String {
    let r = match value.repr() {
        Ok(r) => r.to_string(),
        Err(_) if value.is_instance_of::<PyInt>() => {
            let bits = value
                .call_method0("bit_length")
                .and_then(|b| b.extract::<u64>())
                .unwrap_or(0);
            let sign = if value.lt(0).unwrap_or(false) {
                "negative "
            } else {
                ""
            };
            return format!("<{sign}int of {bits} bits>");
        }
        Err(_) => return "<unprintable>".to_string(),
    };
    if r.chars().count() > 60 {
        let head: String = r.chars().take(57).collect();
        format!("{head}...")
    } else {
        r
    }
}

pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// `_check.wrong_type`.
pub(crate) fn wrong_type(name: &str, what: &str, value: &Bound<'_, PyAny>) -> PyErr {
    ArgumentTypeError::new_err(format!(
        "{name} must be {what}, not {}: {}",
        type_name(value),
        shown(value)
    ))
}

/// An int (not a bool) from `lo` to `hi`: `_check.integer`. `rate` picks InvalidRateError.
pub(crate) fn int_arg(name: &str, value: &Bound<'_, PyAny>, lo: u64, hi: u64, rate: bool) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(if rate {
            InvalidRateError::new_err(format!(
                "{name} must be an int, got {}: {}",
                type_name(value),
                shown(value)
            ))
        } else {
            wrong_type(name, "an int", value)
        });
    }
    match value.extract::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => {
            let m = format!("{name} must be an int from {lo} to {hi}, got {}", shown(value));
            Err(if rate {
                InvalidRateError::new_err(m)
            } else {
                InvalidArgumentError::new_err(m)
            })
        }
    }
}

/// A number of seconds (an int or a float, not a bool) in `[lo, hi]`, which `bounds` writes
/// out: `_check.seconds`. `what` is the expectation; with `none`, None is allowed too (the caller
/// has handled it). A huge int is out of range, not an OverflowError.
pub(crate) fn seconds_arg(
    name: &str,
    (what, none): (&str, bool),
    value: &Bound<'_, PyAny>,
    lo: f64,
    hi: f64,
    bounds: &str,
) -> PyResult<f64> {
    let x = if value.is_instance_of::<PyBool>() {
        None
    } else if value.is_instance_of::<PyInt>() {
        // Exact for the magnitudes compared here; an int beyond i64 is beyond any bound.
        Some(value.extract::<i64>().map_or(f64::INFINITY, |n| n as f64))
    } else if value.is_instance_of::<PyFloat>() {
        Some(value.extract::<f64>()?)
    } else {
        None
    };
    let Some(x) = x else {
        let what = if none {
            format!("{what} or None")
        } else {
            what.to_string()
        };
        return Err(wrong_type(name, &what, value));
    };
    if !(lo..=hi).contains(&x) {
        return Err(InvalidArgumentError::new_err(format!(
            "{name} must be {what} in {bounds}, got {}",
            shown(value)
        )));
    }
    Ok(x)
}

pub(crate) const SECONDS: &str = "a number of seconds";

/// The most a ManualClock may read, and the longest `acquire` timeout: 1.8e10 s, about 570
/// years (so that the clock plus any period or timeout stays far below 2^64 ns).
pub(crate) const MAX_SECONDS: f64 = 1.8e10;
pub(crate) const MAX_CLOCK_NS: u64 = 18_000_000_000 * 1_000_000_000;

/// `acquire`'s timeout (`_check.timeout`), in ns; None waits as long as it takes.
pub(crate) fn timeout_ns(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    match timeout {
        Some(t) if !t.is_none() => {
            let s = seconds_arg("timeout", (SECONDS, true), t, 0.0, MAX_SECONDS, "[0, 1.8e10]")?;
            Ok(Some((s * NS_PER_S).round() as u64))
        }
        _ => Ok(None),
    }
}

/// An optional argument, None when omitted or given as None.
pub(crate) fn given<'a, 'py>(v: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    v.filter(|v| !v.is_none())
}

/// True or False (`default` when omitted or None).
pub(crate) fn flag_arg(name: &str, value: Option<&Bound<'_, PyAny>>, default: bool) -> PyResult<bool> {
    match given(value) {
        None => Ok(default),
        Some(v) => Ok(v
            .cast::<PyBool>()
            .map_err(|_| wrong_type(name, "True or False", v))?
            .is_true()),
    }
}

/// A ManualClock's clock, or the monotonic clock for None.
pub(crate) fn clock_arg(clock: Option<&Bound<'_, PyAny>>) -> PyResult<Clock> {
    match given(clock) {
        None => Ok(Clock::Monotonic),
        Some(c) => Ok(c
            .cast::<ManualClock>()
            .map_err(|_| wrong_type("clock", "a hotlimit.ManualClock or None", c))?
            .get()
            .clock
            .clone()),
    }
}

/// An argument taken as given, checked in the function body; `Default` only when omitted, so
/// that an explicit None is checked like any other value (pyo3 reads None as an omitted
/// `Option`: `hit(key, None)` was cost 1 in memory mode and a CostTypeError in Redis mode).
pub(crate) enum Given<'a, 'py> {
    Value(Borrowed<'a, 'py, PyAny>),
    Default,
}

impl<'a, 'py> Given<'a, 'py> {
    #[inline]
    pub(crate) fn get(&self) -> Option<&Bound<'py, PyAny>> {
        match self {
            Given::Value(v) => Some(v),
            Given::Default => None,
        }
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Given<'a, 'py> {
    type Error = std::convert::Infallible;

    #[inline]
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        Ok(Given::Value(obj))
    }
}

pub(crate) fn cost_below_one(cost: &Bound<'_, PyAny>) -> PyErr {
    InvalidCostError::new_err(format!("cost must be at least 1, got {}", shown(cost)))
}
