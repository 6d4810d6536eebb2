//! NativeLimiter: memory mode, and the local limiter of the shared modes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};

use super::args::*;
use super::decision::{Decision, Pool};
use super::tracker::Tracker;
use super::{key_hash, secs, CostTypeError, InvalidArgumentError, InvalidCostError};
use crate::algo::Outcome;
use crate::config::{Options, Params};
use crate::engine::Engine;
use crate::registry;
use crate::sweeper::{self, Sweep};
use crate::table::{Full, KeyHash};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnFull {
    Deny,
    Allow,
}

/// The native limiter behind `hotlimit.Limiter` in memory mode.
#[pyclass(frozen, module = "hotlimit._native")]
pub struct NativeLimiter {
    engine: Arc<dyn Engine>,
    params: Params,
    on_full: OnFull,
    full_events: AtomicU64,
    /// With `track=True`: the units each key consumed since the last `drain`.
    tracker: Option<Tracker>,
    pool: Pool,
    /// The largest cost accepted: the capacity, or (for a replica's share of a shared limit,
    /// in hybrid mode and during an outage) the whole limit's, a cost above the share's own
    /// capacity being denied rather than refused with an error the other modes do not raise.
    max_cost: u64,
}

impl std::fmt::Debug for NativeLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeLimiter")
            .field("params", &self.params)
            .finish()
    }
}

impl NativeLimiter {
    /// A consuming decision, recorded for the shared store when tracking.
    #[inline]
    fn consume(&self, key: &Bound<'_, PyAny>, hash: &KeyHash, cost: u64) -> Outcome {
        let o = self.decide(hash, cost, true);
        if o.allowed {
            if let Some(t) = &self.tracker {
                t.add(hash, key, cost);
            }
        }
        o
    }

    #[inline]
    fn cost(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let Some(cost) = cost else { return Ok(1) };
        if cost.is_instance_of::<PyBool>() || !cost.is_instance_of::<PyInt>() {
            return Err(CostTypeError::new_err(format!(
                "cost must be an int, not {}: {}",
                type_name(cost),
                shown(cost)
            )));
        }
        match cost.extract::<u64>() {
            Ok(n) if n >= 1 && n <= self.max_cost => Ok(n),
            // Below 1, however far (-2**64 does not fit a u64 either, but is not "above").
            Ok(0) => Err(cost_below_one(cost)),
            // int's own comparison: an int subclass's __lt__ must not change the answer.
            Err(_)
                if cost
                    .py()
                    .get_type::<PyInt>()
                    .getattr("__lt__")?
                    .call1((cost, 0))?
                    .is_truthy()? =>
            {
                Err(cost_below_one(cost))
            }
            _ => Err(InvalidCostError::new_err(format!(
                "cost {} is above this limiter's capacity of {}: it could never be allowed",
                shown(cost),
                self.max_cost
            ))),
        }
    }

    #[inline]
    fn decision(&self, o: Outcome) -> Decision {
        Decision::make(
            o.allowed,
            self.params.limit,
            o.remaining,
            secs(o.reset_after),
            secs(o.retry_after),
        )
    }

    /// `decision(o)` as a Python object, from the pool when one is free.
    #[inline]
    fn emit<'py>(&self, py: Python<'py>, o: Outcome) -> PyResult<Bound<'py, Decision>> {
        let limit = self.params.limit;
        let (reset_after, retry_after) = (secs(o.reset_after), secs(o.retry_after));
        self.pool.emit(
            py,
            |d| d.fill(o.allowed, limit, o.remaining, reset_after, retry_after),
            || Decision::make(o.allowed, limit, o.remaining, reset_after, retry_after),
        )
    }

    #[inline]
    fn decide(&self, key: &KeyHash, cost: u64, commit: bool) -> Outcome {
        if cost > self.params.capacity {
            // More than this share can ever hold (see `max_cost`): denied, nothing consumed;
            // the rest of the answer is what a request for the whole share would get.
            let mut o = self.decide(key, self.params.capacity, false);
            o.allowed = false;
            o.retry_after = o.retry_after.max(o.reset_after).max(1);
            return o;
        }
        match self.engine.decide(key, cost, commit) {
            Ok(o) => o,
            Err(Full) => {
                self.full_events.fetch_add(1, Ordering::Relaxed);
                match self.on_full {
                    OnFull::Deny => Outcome {
                        allowed: false,
                        remaining: 0,
                        reset_after: 0,
                        retry_after: self.params.sweep_interval.as_nanos() as u64,
                    },
                    // Untracked: decided as a fresh key would be, nothing stored.
                    OnFull::Allow => self.engine.decide_untracked(cost),
                }
            }
        }
    }
}

/// How long `acquire` sleeps at most between checks for Ctrl-C.
const WAIT_SLICE: Duration = Duration::from_millis(50);

#[pymethods]
impl NativeLimiter {
    #[new]
    #[pyo3(signature = (
        *, algorithm, limit, period_ns, burst = None, max_keys = None, shards = None,
        clock = None, on_full = None, sweep_interval = None, track = None, max_cost = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        algorithm: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
        period_ns: &Bound<'_, PyAny>,
        burst: Option<&Bound<'_, PyAny>>,
        max_keys: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        on_full: Option<&Bound<'_, PyAny>>,
        sweep_interval: Option<&Bound<'_, PyAny>>,
        track: Option<&Bound<'_, PyAny>>,
        max_cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        // hotlimit.Limiter has checked all of these already, with the same messages; the checks
        // here keep this class from raising anything else (OverflowError, ...) when used alone.
        let name = |what, v: &Bound<'_, PyAny>| -> PyResult<String> {
            v.cast::<PyString>()
                .map_err(|_| wrong_type(what, "a str", v))?
                .to_str()
                .map(str::to_string)
                .map_err(|_| {
                    InvalidArgumentError::new_err(format!("{what} is not valid Unicode: {}", shown(v)))
                })
        };
        let usize_max = usize::MAX as u64;
        let params = Params::check(&Options {
            algorithm: registry::find(&name("algorithm", algorithm)?)?,
            limit: int_arg("limit", limit, 0, u64::MAX, true)?,
            period_ns: int_arg("period_ns", period_ns, 0, u64::MAX, true)?,
            burst: given(burst)
                .map(|b| int_arg("burst", b, 0, u64::MAX, true))
                .transpose()?,
            max_keys: given(max_keys)
                .map_or(Ok(1_000_000), |m| int_arg("max_keys", m, 0, usize_max, false))?
                as usize,
            shards: given(shards)
                .map(|s| int_arg("shards", s, 0, usize_max, false).map(|s| s as usize))
                .transpose()?,
            sweep_interval_s: given(sweep_interval).map_or(Ok(1.0), |si| {
                seconds_arg(
                    "sweep_interval",
                    (SECONDS, false),
                    si,
                    0.001,
                    86_400.0,
                    "[0.001, 86400]",
                )
            })?,
        })?;
        let on_full = match given(on_full) {
            None => OnFull::Deny,
            Some(v) => match name("on_full", v)?.as_str() {
                "deny" => OnFull::Deny,
                "allow" => OnFull::Allow,
                _ => {
                    return Err(InvalidArgumentError::new_err(format!(
                        "on_full must be 'deny' or 'allow', got {}",
                        shown(v)
                    )))
                }
            },
        };
        let clock = clock_arg(clock)?;
        let track = flag_arg("track", track, false)?;
        let max_cost = given(max_cost)
            .map(|m| int_arg("max_cost", m, params.capacity, u64::MAX, false))
            .transpose()?
            .unwrap_or(params.capacity);
        let engine = (params.algorithm.build)(&params, clock);
        let swept: Arc<dyn Sweep> = engine.clone();
        // Without the GIL: a fork in progress holds the sweeper's registry from its first
        // at-fork handler to its last, and Python handlers in between need the GIL back.
        algorithm.py().detach(|| sweeper::register(&swept));
        Ok(NativeLimiter {
            engine,
            params,
            on_full,
            full_events: AtomicU64::new(0),
            tracker: track.then(|| Tracker::new(params.max_keys)),
            pool: Pool::default(),
            max_cost,
        })
    }

    /// Consumes `cost` units for `key` if they are available. Never raises for a denial.
    #[pyo3(signature = (key, cost = Given::Default))]
    fn hit<'py>(&self, key: &Bound<'py, PyAny>, cost: Given<'_, 'py>) -> PyResult<Bound<'py, Decision>> {
        let cost = cost.get();
        let cost = self.cost(cost)?;
        let hash = key_hash(key)?;
        self.emit(key.py(), self.consume(key, &hash, cost))
    }

    /// What `hit` would answer, consuming nothing.
    #[pyo3(signature = (key, cost = Given::Default))]
    fn peek<'py>(&self, key: &Bound<'py, PyAny>, cost: Given<'_, 'py>) -> PyResult<Bound<'py, Decision>> {
        let cost = cost.get();
        let cost = self.cost(cost)?;
        let hash = key_hash(key)?;
        self.emit(key.py(), self.decide(&hash, cost, false))
    }

    /// `hit(key, cost).allowed`, without building a Decision.
    #[pyo3(signature = (key, cost = Given::Default))]
    fn allow(&self, key: &Bound<'_, PyAny>, cost: Given<'_, '_>) -> PyResult<bool> {
        let cost = cost.get();
        let cost = self.cost(cost)?;
        let hash = key_hash(key)?;
        Ok(self.consume(key, &hash, cost).allowed)
    }

    /// Forgets `key`: its next request is treated as a new client's. True if it was tracked.
    fn reset(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.engine.reset(&key_hash(key)?))
    }

    /// Gives back `cost` units just consumed by `hit` (used by an all-or-nothing `hit_many`
    /// whose later part was denied).
    #[pyo3(signature = (key, cost = Given::Default))]
    fn refund(&self, key: &Bound<'_, PyAny>, cost: Given<'_, '_>) -> PyResult<()> {
        let cost = cost.get();
        let cost = self.cost(cost)?;
        self.engine.refund(&key_hash(key)?, cost);
        Ok(())
    }

    /// The units consumed per key since the last drain, as `[(key, units), ...]`: every key's,
    /// or at most `limit` keys' (the rest stay for the next drain); empty unless made with
    /// `track=True`.
    #[pyo3(signature = (limit = None))]
    fn drain(&self, limit: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(Py<PyAny>, u64)>> {
        let limit = given(limit)
            .map(|l| int_arg("limit", l, 1, usize::MAX as u64, false).map(|l| l as usize))
            .transpose()?;
        Ok(self.tracker.as_ref().map_or_else(Vec::new, |t| t.drain(limit)))
    }

    /// Leaves exactly `available` units for `key` now (hybrid mode's fold of the shared
    /// state). False for the sliding log, or when the table is full.
    fn set_available(&self, key: &Bound<'_, PyAny>, available: &Bound<'_, PyAny>) -> PyResult<bool> {
        let available = int_arg("available", available, 0, u64::MAX, false)?;
        Ok(self.engine.set_available(&key_hash(key)?, available))
    }

    /// The clock's time in nanoseconds (Unix time scale).
    fn now_ns(&self) -> u64 {
        self.engine.clock().now()
    }

    /// Waits until `cost` units can be consumed, then consumes them. With a timeout, gives up
    /// (returning the denial) as soon as it knows the wait would exceed it; never waits past
    /// it. The GIL is released while waiting.
    #[pyo3(signature = (key, cost = Given::Default, timeout = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        cost: Given<'_, '_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Decision> {
        let cost = cost.get();
        let cost = self.cost(cost)?;
        let hash = key_hash(key)?;
        let clock = self.engine.clock();
        let deadline = timeout_ns(timeout)?.map(|t| clock.now().saturating_add(t));
        loop {
            let o = self.consume(key, &hash, cost);
            if o.allowed || cost > self.params.capacity {
                // (More than this share can hold: waiting would never end.)
                return Ok(self.decision(o));
            }
            let now = clock.now();
            let wait = o.retry_after.max(1);
            if deadline.is_some_and(|d| now.saturating_add(wait) > d) {
                return Ok(self.decision(o));
            }
            if clock.is_manual() {
                // A manual clock moves by the wait, never past the most it may read (it used
                // to saturate there, wrap the algorithms' arithmetic and readmit).
                if clock.try_advance(wait, MAX_CLOCK_NS).is_err() {
                    return Ok(self.decision(o));
                }
                continue;
            }
            let slice = wait.min(WAIT_SLICE.as_nanos() as u64);
            py.detach(|| clock.sleep(slice));
            py.check_signals()?;
        }
    }

    /// Keys currently tracked.
    fn __len__(&self) -> usize {
        self.engine.len()
    }

    /// Removes every key whose state is back to a fresh key's, now; returns how many. The
    /// background sweeper does this on its own every `sweep_interval`.
    fn sweep(&self, py: Python<'_>) -> usize {
        py.detach(|| self.engine.sweep())
    }

    /// The limiter's clock, in seconds on the Unix time scale.
    fn now(&self) -> f64 {
        secs(self.engine.clock().now())
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.params.algorithm.name
    }

    #[getter]
    fn limit(&self) -> u64 {
        self.params.limit
    }

    #[getter]
    fn period(&self) -> f64 {
        secs(self.params.period_ns)
    }

    /// The most one request may cost (the bucket's burst, or the window's limit).
    #[getter]
    fn capacity(&self) -> u64 {
        self.params.capacity
    }

    #[getter]
    fn max_keys(&self) -> usize {
        self.params.max_keys
    }

    /// Counters: keys tracked, and requests that met a full table.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("keys", self.engine.len())?;
        d.set_item("max_keys", self.params.max_keys)?;
        d.set_item("full_events", self.full_events.load(Ordering::Relaxed))?;
        if let Some(t) = &self.tracker {
            let (lost_units, lost_keys) = t.lost();
            d.set_item("unsent_keys", t.len())?;
            d.set_item("lost_units", lost_units)?;
            d.set_item("lost_keys", lost_keys)?;
        }
        Ok(d)
    }
}
