//! ManualClock: a clock tests move by hand.

use pyo3::prelude::*;

use super::args::*;
use super::{secs, InvalidArgumentError, NS_PER_S};
use crate::clock::Clock;
use crate::config::py_float;

/// A clock for tests: time moves only when told to, and only forward, up to 1.8e10 s. Share one
/// between limiters to move them together. Times are seconds on the Unix time scale.
#[pyclass(frozen, module = "hotlimit._native")]
#[derive(Debug)]
pub struct ManualClock {
    pub(super) clock: Clock,
}

/// A time or a step of a ManualClock, in seconds, as nanoseconds.
fn clock_ns(name: &str, seconds: &Bound<'_, PyAny>) -> PyResult<u64> {
    let what = if name == "start" { SECONDS } else { "a number" };
    let s = seconds_arg(name, (what, false), seconds, 0.0, MAX_SECONDS, "[0, 1.8e10]")?;
    Ok((s * NS_PER_S).round() as u64)
}

impl ManualClock {
    /// Moves the clock forward by `ns`, or says why not (`call` names the call and its value).
    fn forward(&self, ns: u64, call: impl FnOnce() -> String) -> PyResult<()> {
        self.clock.try_advance(ns, MAX_CLOCK_NS).map_err(|now| {
            InvalidArgumentError::new_err(format!(
                "{} would move the clock past its maximum, 1.8e10 s (it is at {} s)",
                call(),
                py_float(secs(now))
            ))
        })
    }
}

#[pymethods]
impl ManualClock {
    #[new]
    #[pyo3(signature = (start = Given::Default))]
    fn new(start: Given<'_, '_>) -> PyResult<Self> {
        let start_ns = match start.get() {
            Some(v) => clock_ns("start", v)?,
            None => 1_700_000_000 * 1_000_000_000,
        };
        Ok(ManualClock {
            clock: Clock::manual(start_ns),
        })
    }

    /// Current time, seconds.
    fn now(&self) -> f64 {
        secs(self.clock.now())
    }

    /// Current time, nanoseconds.
    fn now_ns(&self) -> u64 {
        self.clock.now()
    }

    /// Moves time forward by `seconds` (an int or a float from 0 to 1.8e10; the clock never
    /// passes 1.8e10 s).
    fn advance(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let ns = clock_ns("seconds", seconds)?;
        self.forward(ns, || format!("advance({})", shown(seconds)))
    }

    /// Moves time forward by `ns` nanoseconds (an int from 0; the clock never passes 1.8e10 s).
    fn advance_ns(&self, ns: &Bound<'_, PyAny>) -> PyResult<()> {
        let n = int_arg("ns", ns, 0, u64::MAX, false)?;
        self.forward(n, || format!("advance_ns({})", shown(ns)))
    }

    /// Sets the time, in seconds: now or later (a ManualClock never goes back).
    fn set(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let ns = clock_ns("seconds", seconds)?;
        self.clock.try_set_forward(ns).map_err(|now| {
            InvalidArgumentError::new_err(format!(
                "set({}) would move the clock back from {} s: a ManualClock only moves forward",
                shown(seconds),
                py_float(secs(now))
            ))
        })
    }
}
