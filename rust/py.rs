//! The Python classes, and the one place where native errors become Python exceptions.
//!
//! Nothing here may panic: inputs are checked before they reach the core, the core's
//! arithmetic is bounded by those checks, and pyo3 turns any panic that slipped through into a
//! `PanicException` rather than unwinding into the interpreter.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString};

use crate::algo::Outcome;
use crate::clock::Clock;
use crate::config::{py_float, ConfigError, Options, Params, MAX_KEY_BYTES};
use crate::deny::DenyCache;
use crate::engine::Engine;
use crate::registry;
use crate::sweeper::{self, Sweep};
use crate::table::{hash_key, Full, KeyHash};

pyo3::import_exception!(hotlimit._errors, InvalidRateError);
pyo3::import_exception!(hotlimit._errors, InvalidArgumentError);
pyo3::import_exception!(hotlimit._errors, ArgumentTypeError);
pyo3::import_exception!(hotlimit._errors, InvalidKeyError);
pyo3::import_exception!(hotlimit._errors, KeyTypeError);
pyo3::import_exception!(hotlimit._errors, InvalidCostError);
pyo3::import_exception!(hotlimit._errors, CostTypeError);

impl From<ConfigError> for PyErr {
    fn from(e: ConfigError) -> PyErr {
        match e {
            ConfigError::Rate(m) => InvalidRateError::new_err(m),
            ConfigError::Argument(m) => InvalidArgumentError::new_err(m),
        }
    }
}

const NS_PER_S: f64 = 1e9;

fn secs(ns: u64) -> f64 {
    ns as f64 / NS_PER_S
}

// -- arguments ------------------------------------------------------------------------------
//
// Every argument a Python caller can pass is taken as a Python object and checked here, so that
// a bad one raises hotlimit's error naming it, never pyo3's TypeError or OverflowError (a value
// that does not fit a u64, a str where a float is expected). The messages are those of
// `hotlimit/_check.py`, word for word: Redis mode checks the same calls there.

/// A short, safe rendering of a bad value for an error message (`_check.shown`): its repr, cut
/// to 60 characters; an int too long for repr is shown by its size.
fn shown(value: &Bound<'_, PyAny>) -> String {
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

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// `_check.wrong_type`.
fn wrong_type(name: &str, what: &str, value: &Bound<'_, PyAny>) -> PyErr {
    ArgumentTypeError::new_err(format!(
        "{name} must be {what}, not {}: {}",
        type_name(value),
        shown(value)
    ))
}

/// An int (not a bool) from `lo` to `hi`: `_check.integer`. `rate` picks InvalidRateError.
fn int_arg(name: &str, value: &Bound<'_, PyAny>, lo: u64, hi: u64, rate: bool) -> PyResult<u64> {
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
fn seconds_arg(
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

const SECONDS: &str = "a number of seconds";

/// The most a ManualClock may read, and the longest `acquire` timeout: 1.8e10 s, about 570
/// years (so that the clock plus any period or timeout stays far below 2^64 ns).
const MAX_SECONDS: f64 = 1.8e10;
const MAX_CLOCK_NS: u64 = 18_000_000_000 * 1_000_000_000;

/// `acquire`'s timeout (`_check.timeout`), in ns; None waits as long as it takes.
fn timeout_ns(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    match timeout {
        Some(t) if !t.is_none() => {
            let s = seconds_arg("timeout", (SECONDS, true), t, 0.0, MAX_SECONDS, "[0, 1.8e10]")?;
            Ok(Some((s * NS_PER_S).round() as u64))
        }
        _ => Ok(None),
    }
}

/// An optional argument, None when omitted or given as None.
fn given<'a, 'py>(v: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    v.filter(|v| !v.is_none())
}

/// True or False (`default` when omitted or None).
fn flag_arg(name: &str, value: Option<&Bound<'_, PyAny>>, default: bool) -> PyResult<bool> {
    match given(value) {
        None => Ok(default),
        Some(v) => Ok(v
            .cast::<PyBool>()
            .map_err(|_| wrong_type(name, "True or False", v))?
            .is_true()),
    }
}

/// A ManualClock's clock, or the monotonic clock for None.
fn clock_arg(clock: Option<&Bound<'_, PyAny>>) -> PyResult<Clock> {
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
enum Given<'a, 'py> {
    Value(Borrowed<'a, 'py, PyAny>),
    Default,
}

impl<'a, 'py> Given<'a, 'py> {
    #[inline]
    fn get(&self) -> Option<&Bound<'py, PyAny>> {
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

/// The outcome of one rate-limit decision. Immutable; true when the request is allowed.
///
/// All durations are in seconds.
///
/// Python code sees it as immutable, and it is: the fields are atomics only so that a limiter
/// can refill a Decision that nothing but its own pool references any more (see `Pool`),
/// which saves allocating and freeing one object per `hit`.
#[pyclass(frozen, module = "hotlimit._native")]
#[derive(Debug, Default)]
pub struct Decision {
    allowed: AtomicBool,
    limit: AtomicU64,
    remaining: AtomicU64,
    /// f64 bits.
    reset_after: AtomicU64,
    /// f64 bits.
    retry_after: AtomicU64,
}

impl Decision {
    fn make(allowed: bool, limit: u64, remaining: u64, reset_after: f64, retry_after: f64) -> Self {
        let d = Decision::default();
        d.fill(allowed, limit, remaining, reset_after, retry_after);
        d
    }

    /// Relaxed stores: plain moves. Only a Decision no Python code can reach is refilled, and
    /// the thread doing it holds the GIL (see `Pool`).
    #[inline]
    fn fill(&self, allowed: bool, limit: u64, remaining: u64, reset_after: f64, retry_after: f64) {
        self.allowed.store(allowed, Ordering::Relaxed);
        self.limit.store(limit, Ordering::Relaxed);
        self.remaining.store(remaining, Ordering::Relaxed);
        self.reset_after.store(reset_after.to_bits(), Ordering::Relaxed);
        self.retry_after.store(retry_after.to_bits(), Ordering::Relaxed);
    }

    fn fields(&self) -> (bool, u64, u64, f64, f64) {
        (
            self.allowed.load(Ordering::Relaxed),
            self.limit.load(Ordering::Relaxed),
            self.remaining.load(Ordering::Relaxed),
            f64::from_bits(self.reset_after.load(Ordering::Relaxed)),
            f64::from_bits(self.retry_after.load(Ordering::Relaxed)),
        )
    }
}

#[pymethods]
impl Decision {
    #[new]
    #[pyo3(signature = (*, allowed, limit, remaining, reset_after, retry_after))]
    fn new(
        allowed: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
        remaining: &Bound<'_, PyAny>,
        reset_after: &Bound<'_, PyAny>,
        retry_after: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let Ok(allowed) = allowed.cast::<PyBool>() else {
            return Err(wrong_type("allowed", "True or False", allowed));
        };
        let seconds = |name, v| seconds_arg(name, (SECONDS, false), v, 0.0, MAX_SECONDS, "[0, 1.8e10]");
        Ok(Decision::make(
            allowed.is_true(),
            int_arg("limit", limit, 0, u64::MAX, false)?,
            int_arg("remaining", remaining, 0, u64::MAX, false)?,
            seconds("reset_after", reset_after)?,
            seconds("retry_after", retry_after)?,
        ))
    }

    /// True if the request was admitted (and, for `hit`, consumed).
    #[getter]
    fn allowed(&self) -> bool {
        self.allowed.load(Ordering::Relaxed)
    }

    /// The rate's limit: requests per period.
    #[getter]
    fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Units that can still be consumed now.
    #[getter]
    fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Seconds until the key is back to its full allowance.
    #[getter]
    fn reset_after(&self) -> f64 {
        f64::from_bits(self.reset_after.load(Ordering::Relaxed))
    }

    /// Seconds until the same request would be allowed; 0.0 when allowed.
    #[getter]
    fn retry_after(&self) -> f64 {
        f64::from_bits(self.retry_after.load(Ordering::Relaxed))
    }

    fn __bool__(&self) -> bool {
        self.allowed()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Decision>()
            .is_ok_and(|o| o.get().fields() == self.fields())
    }

    fn __repr__(&self) -> String {
        let (allowed, limit, remaining, reset_after, retry_after) = self.fields();
        format!(
            "Decision(allowed={}, limit={limit}, remaining={remaining}, reset_after={reset_after:?}, \
             retry_after={retry_after:?})",
            if allowed { "True" } else { "False" },
        )
    }
}

/// Decisions a limiter hands out again once no one else holds them.
///
/// A `hit` whose caller dropped the previous Decision (the common `if limiter.hit(k):`, or
/// `d = limiter.hit(k)` in a loop, which drops the one before) gets the same object back,
/// refilled, instead of a new one. A Decision is refilled only when its reference count is 1,
/// the pool's own reference: no Python code can reach it (no weak references either: the class
/// has none), so no one can see it change. The GIL makes that check and the refill one step;
/// on a free-threaded build the pool is not used.
#[derive(Debug, Default)]
struct Pool {
    slots: [AtomicPtr<pyo3::ffi::PyObject>; 2],
    next: AtomicUsize,
}

impl Pool {
    #[inline]
    fn emit<'py>(
        &self,
        py: Python<'py>,
        fill: impl Fn(&Decision),
        make: impl FnOnce() -> Decision,
    ) -> PyResult<Bound<'py, Decision>> {
        #[cfg(not(Py_GIL_DISABLED))]
        for slot in &self.slots {
            let p = slot.load(Ordering::Relaxed);
            // SAFETY: a non-null slot holds a strong reference to a Decision, so `p` is alive;
            // the GIL is held, so no other thread changes its count or the slot meanwhile.
            if !p.is_null() && unsafe { pyo3::ffi::Py_REFCNT(p) } == 1 {
                // SAFETY: as above; `from_borrowed_ptr` takes a new reference for the caller.
                let d = unsafe { Bound::from_borrowed_ptr(py, p).cast_into_unchecked::<Decision>() };
                fill(d.get());
                return Ok(d);
            }
        }
        let d = Bound::new(py, make())?;
        #[cfg(not(Py_GIL_DISABLED))]
        {
            let i = self.next.load(Ordering::Relaxed) % self.slots.len();
            self.next.store(i + 1, Ordering::Relaxed);
            let old = self.slots[i].swap(d.clone().into_ptr(), Ordering::Relaxed);
            if !old.is_null() {
                // SAFETY: the slot's strong reference, given up; the GIL is held.
                unsafe { pyo3::ffi::Py_DECREF(old) };
            }
        }
        Ok(d)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for slot in &self.slots {
            let p = slot.swap(std::ptr::null_mut(), Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: the slot's strong reference, given up with the GIL held (a limiter is
                // dropped by Python's deallocator, which holds it already).
                Python::attach(|py| drop(unsafe { Bound::from_owned_ptr(py, p) }));
            }
        }
    }
}

/// One row of the algorithm registry (`hotlimit._native.ALGORITHMS`), as Python reads it.
#[pyclass(frozen, module = "hotlimit._native")]
#[derive(Debug)]
pub struct AlgorithmInfo {
    /// As users name it: `Limiter(rate, algorithm=name)`.
    #[pyo3(get)]
    name: &'static str,
    /// The Redis script's dispatch code.
    #[pyo3(get)]
    code: &'static str,
    /// The largest limit it counts exactly.
    #[pyo3(get)]
    max_limit: u64,
    /// True if `burst` sets the most one request may cost (else the limit does).
    #[pyo3(get)]
    burst: bool,
    /// True if hybrid mode can give each replica a share of it.
    #[pyo3(get)]
    shareable: bool,
}

#[pymethods]
impl AlgorithmInfo {
    fn __repr__(&self) -> String {
        format!("AlgorithmInfo(name={:?}, code={:?})", self.name, self.code)
    }
}

/// The registry's rows, in order (the default first).
pub fn algorithms(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyTuple>> {
    let rows = registry::ALGORITHMS.iter().map(|s| AlgorithmInfo {
        name: s.name,
        code: s.code,
        max_limit: s.max_limit,
        burst: s.capacity == registry::Capacity::Burst,
        shareable: s.shareable,
    });
    pyo3::types::PyTuple::new(py, rows)
}

/// A clock for tests: time moves only when told to, and only forward, up to 1.8e10 s. Share one
/// between limiters to move them together. Times are seconds on the Unix time scale.
#[pyclass(frozen, module = "hotlimit._native")]
#[derive(Debug)]
pub struct ManualClock {
    clock: Clock,
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
}

/// Consumption not yet sent to the shared store, per key: hybrid mode's deltas, and what a
/// fallback limiter admitted during an outage. Keeps the key object itself (the table only
/// has its hash) so the store can be told which key.
struct Tracker {
    shards: Box<[parking_lot::Mutex<TrackMap>]>,
}

type TrackMap = std::collections::HashMap<KeyHash, (Py<PyAny>, u64), BuildFold>;

/// Keys are already secret-keyed 128-bit hashes: folding their words is a good enough hash.
#[derive(Clone, Copy, Default)]
struct BuildFold;

#[derive(Default)]
struct Fold(u64);

impl std::hash::BuildHasher for BuildFold {
    type Hasher = Fold;
    fn build_hasher(&self) -> Fold {
        Fold(0)
    }
}

impl std::hash::Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

impl Tracker {
    fn new() -> Self {
        Tracker {
            shards: (0..64)
                .map(|_| parking_lot::Mutex::new(TrackMap::with_hasher(BuildFold)))
                .collect(),
        }
    }

    #[inline]
    fn add(&self, hash: &KeyHash, key: &Bound<'_, PyAny>, cost: u64) {
        let mut shard = self.shards[(hash[1] as usize) & 63].lock();
        match shard.entry(*hash) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().1 += cost,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert((key.clone().unbind(), cost));
            }
        }
    }

    fn drain(&self) -> Vec<(Py<PyAny>, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.lock());
            out.extend(taken.into_values());
        }
        out
    }
}

impl std::fmt::Debug for NativeLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeLimiter")
            .field("params", &self.params)
            .finish()
    }
}

fn cost_below_one(cost: &Bound<'_, PyAny>) -> PyErr {
    InvalidCostError::new_err(format!("cost must be at least 1, got {}", shown(cost)))
}

#[inline]
fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<KeyHash> {
    let bytes: &[u8] = if let Ok(s) = key.cast::<PyString>() {
        match s.to_str() {
            Ok(s) => s.as_bytes(),
            Err(_) => {
                return Err(InvalidKeyError::new_err(format!(
                    "key {} cannot be encoded as UTF-8 (lone surrogate)",
                    shown(key)
                )))
            }
        }
    } else if let Ok(b) = key.cast::<PyBytes>() {
        b.as_bytes()
    } else {
        return Err(KeyTypeError::new_err(format!(
            "key must be str or bytes, not {}: {}",
            type_name(key),
            shown(key)
        )));
    };
    if bytes.len() > MAX_KEY_BYTES {
        return Err(InvalidKeyError::new_err(format!(
            "key is {} bytes long, above the maximum of {MAX_KEY_BYTES}: {}",
            bytes.len(),
            shown(key)
        )));
    }
    Ok(hash_key(bytes))
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
            Ok(n) if n >= 1 && n <= self.params.capacity => Ok(n),
            // Below 1, however far (-2**64 does not fit a u64 either, but is not "above").
            Ok(0) => Err(cost_below_one(cost)),
            Err(_) if cost.lt(0)? => Err(cost_below_one(cost)),
            _ => Err(InvalidCostError::new_err(format!(
                "cost {} is above this limiter's capacity of {}: it could never be allowed",
                shown(cost),
                self.params.capacity
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
                    OnFull::Allow => self.engine.decide(key, cost, false).unwrap_or(Outcome {
                        allowed: true,
                        remaining: 0,
                        reset_after: 0,
                        retry_after: 0,
                    }),
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
        clock = None, on_full = None, sweep_interval = None, track = None
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
        let engine = (params.algorithm.build)(&params, clock);
        let swept: Arc<dyn Sweep> = engine.clone();
        sweeper::register(&swept);
        Ok(NativeLimiter {
            engine,
            params,
            on_full,
            full_events: AtomicU64::new(0),
            tracker: track.then(Tracker::new),
            pool: Pool::default(),
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

    /// The units consumed per key since the last drain, as `[(key, units), ...]`; empty unless
    /// made with `track=True`.
    fn drain<'py>(&self, py: Python<'py>) -> Vec<(Py<PyAny>, u64)> {
        let _ = py;
        self.tracker.as_ref().map_or_else(Vec::new, Tracker::drain)
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
            if o.allowed {
                return Ok(self.decision(o));
            }
            let now = clock.now();
            let wait = o.retry_after.max(1);
            if deadline.is_some_and(|d| now.saturating_add(wait) > d) {
                return Ok(self.decision(o));
            }
            let slice = if clock.is_manual() {
                wait
            } else {
                wait.min(WAIT_SLICE.as_nanos() as u64)
            };
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
        Ok(d)
    }
}

/// The benchmark floor: a method of a native class that takes a key and does nothing.
#[pyclass(frozen, module = "hotlimit._native")]
#[derive(Debug)]
pub struct Noop;

#[pymethods]
impl Noop {
    #[new]
    fn new() -> Self {
        Noop
    }

    #[pyo3(signature = (key, cost = Given::Default))]
    fn noop(&self, key: &Bound<'_, PyAny>, cost: Given<'_, '_>) -> bool {
        let cost = cost.get();
        let _ = (key, cost);
        true
    }
}

#[pyfunction]
pub fn _before_fork() {
    sweeper::before_fork();
}

#[pyfunction]
pub fn _after_fork_parent() {
    sweeper::after_fork_parent();
}

#[pyfunction]
pub fn _after_fork_child() {
    sweeper::after_fork_child();
}

/// Completed passes of the background sweeper thread.
#[pyfunction]
pub fn _sweeper_passes() -> u64 {
    sweeper::sweeper_passes()
}

/// The front of a shared-store (Redis) limiter: answers requests that a cached denial covers
/// natively, and hands every other one to the Python store path (`miss_hit` / `miss_peek`,
/// called with `(key, cost)`), which reports its denials back through `record`.
///
/// Not frozen, so that the garbage collector can clear it: the store path usually refers back
/// to the limiter that holds this front, a cycle that `__traverse__` / `__clear__` let the
/// collector see and break.
#[pyclass(module = "hotlimit._native")]
#[derive(Debug)]
pub struct DenyFront {
    cache: Arc<DenyCache>,
    limit: u64,
    capacity: u64,
    enabled: bool,
    miss_hit: Option<Py<PyAny>>,
    miss_peek: Option<Py<PyAny>>,
}

impl DenyFront {
    /// The cached denial for this request, if caching is on, the request is well-formed and a
    /// denial covers it. Malformed requests go to the store path, which names the problem.
    #[inline]
    fn cached(&self, key: &Bound<'_, PyAny>, cost: Option<&Bound<'_, PyAny>>) -> Option<Decision> {
        if !self.enabled {
            return None;
        }
        let cost = match cost {
            None => 1,
            Some(c) if c.is_instance_of::<PyInt>() && !c.is_instance_of::<PyBool>() => {
                match c.extract::<u64>() {
                    Ok(n) if n >= 1 && n <= self.capacity => n,
                    _ => return None,
                }
            }
            Some(_) => return None,
        };
        let key = key_hash(key).ok()?;
        let o = self.cache.check(&key, cost)?;
        Some(Decision::make(
            false,
            self.limit,
            o.remaining,
            secs(o.reset_after),
            secs(o.retry_after),
        ))
    }

    /// The cached denial as a Decision, else what the store path `f` answers.
    fn answer<'py>(
        &self,
        f: &Option<Py<PyAny>>,
        key: &Bound<'py, PyAny>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.cached(key, cost) {
            Some(d) => Ok(Bound::new(key.py(), d)?.into_any()),
            None => self.miss(f, key, cost),
        }
    }

    fn miss<'py>(
        &self,
        f: &Option<Py<PyAny>>,
        key: &Bound<'py, PyAny>,
        cost: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        let Some(f) = f else {
            return Err(InvalidArgumentError::new_err(
                "this limiter has been closed and collected",
            ));
        };
        match cost {
            Some(c) => f.bind(py).call1((key, c)),
            None => f.bind(py).call1((key, 1)),
        }
    }
}

#[pymethods]
impl DenyFront {
    #[new]
    #[pyo3(signature = (*, limit, capacity, miss_hit, miss_peek, enabled = None, max_keys = None, clock = None))]
    fn new(
        limit: &Bound<'_, PyAny>,
        capacity: &Bound<'_, PyAny>,
        miss_hit: Py<PyAny>,
        miss_peek: Py<PyAny>,
        enabled: Option<&Bound<'_, PyAny>>,
        max_keys: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let limit = int_arg("limit", limit, 1, u64::MAX, true)?;
        let capacity = int_arg("capacity", capacity, 1, u64::MAX, true)?;
        let enabled = flag_arg("enabled", enabled, true)?;
        let max_keys = given(max_keys).map_or(Ok(65_536), |m| {
            int_arg("max_keys", m, 1, usize::MAX as u64, false)
        })? as usize;
        let clock = clock_arg(clock)?;
        let shards = (max_keys / 4096).clamp(16, 1024).next_power_of_two();
        let cache = Arc::new(DenyCache::new(shards, max_keys, clock, Duration::from_secs(1)));
        if enabled {
            let swept: Arc<dyn Sweep> = cache.clone();
            sweeper::register(&swept);
        }
        Ok(DenyFront {
            cache,
            limit,
            capacity,
            enabled,
            miss_hit: Some(miss_hit),
            miss_peek: Some(miss_peek),
        })
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(f) = &self.miss_hit {
            visit.call(f)?;
        }
        if let Some(f) = &self.miss_peek {
            visit.call(f)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.miss_hit = None;
        self.miss_peek = None;
    }

    /// `hit`: a cached denial if one covers the request, else the store's answer.
    #[pyo3(signature = (key, cost = Given::Default))]
    fn hit<'py>(&self, key: &Bound<'py, PyAny>, cost: Given<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
        let cost = cost.get();
        self.answer(&self.miss_hit, key, cost)
    }

    /// `peek`, the same way.
    #[pyo3(signature = (key, cost = Given::Default))]
    fn peek<'py>(&self, key: &Bound<'py, PyAny>, cost: Given<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
        let cost = cost.get();
        self.answer(&self.miss_peek, key, cost)
    }

    /// `hit(key, cost).allowed`.
    #[pyo3(signature = (key, cost = Given::Default))]
    fn allow(&self, key: &Bound<'_, PyAny>, cost: Given<'_, '_>) -> PyResult<bool> {
        let cost = cost.get();
        if self.cached(key, cost).is_some() {
            return Ok(false);
        }
        self.miss(&self.miss_hit, key, cost)?.is_truthy()
    }

    /// The cached denial covering this request, or None (for the async paths).
    #[pyo3(signature = (key, cost = Given::Default))]
    fn check(&self, key: &Bound<'_, PyAny>, cost: Given<'_, '_>) -> Option<Decision> {
        let cost = cost.get();
        self.cached(key, cost)
    }

    /// Remembers a denial from the store (times in ns). False if not kept (cache off or full).
    fn record(
        &self,
        key: &Bound<'_, PyAny>,
        cost: &Bound<'_, PyAny>,
        remaining: &Bound<'_, PyAny>,
        reset_after_ns: &Bound<'_, PyAny>,
        retry_after_ns: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let ns = |name, v| int_arg(name, v, 0, u64::MAX, false);
        let (cost, remaining) = (ns("cost", cost)?, ns("remaining", remaining)?);
        let (reset_after_ns, retry_after_ns) = (
            ns("reset_after_ns", reset_after_ns)?,
            ns("retry_after_ns", retry_after_ns)?,
        );
        if !self.enabled {
            return Ok(false);
        }
        let key = key_hash(key)?;
        Ok(self
            .cache
            .record(&key, cost, remaining, reset_after_ns, retry_after_ns))
    }

    /// Drops the key's cached denial; true if there was one.
    fn forget(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.cache.forget(&key_hash(key)?))
    }

    fn __len__(&self) -> usize {
        self.cache.len()
    }
}
