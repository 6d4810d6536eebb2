//! DenyFront: the native front of a shared-store limiter, with its cache of denials.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyTuple};

use super::args::*;
use super::decision::Decision;
use super::{key_hash, secs, InvalidArgumentError};
use crate::deny::DenyCache;
use crate::sweeper::{self, Sweep};

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
        let args = match cost {
            Some(c) => PyTuple::new(py, [key, c])?,
            None => PyTuple::new(py, [key.clone(), 1u64.into_pyobject(py)?.into_any()])?,
        };
        call_python(f.bind(py), &args)
    }
}

/// Hangs the thread it is dropped on, unless a Rust panic is unwinding.
///
/// Before 3.14, a thread that wants the GIL back while the interpreter finalises (a daemon
/// thread whose Redis call was on the wire at exit) is ended with `pthread_exit`, a forced
/// unwind. Through the Python code a front calls it would reach this module's frames and
/// pyo3's `extern "C"` trampoline, and the process aborted (SIGABRT at exit, every run with
/// two daemon threads calling `hit()`). Dropped by that unwind, this guard parks the thread
/// for good instead, which is what Python 3.14 itself does with such threads.
struct HangIfExiting;

impl Drop for HangIfExiting {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // a Rust panic: pyo3 turns it into PanicException as usual
        }
        loop {
            std::thread::park();
        }
    }
}

extern "C-unwind" {
    // pyo3's declaration is "C": a call that cannot unwind, so the compiler drops the guard's
    // cleanup around it and the forced unwind still aborts. Declared here as what it is.
    fn PyObject_Call(
        callable: *mut pyo3::ffi::PyObject,
        args: *mut pyo3::ffi::PyObject,
        kwargs: *mut pyo3::ffi::PyObject,
    ) -> *mut pyo3::ffi::PyObject;
}

/// `f(*args)` for Python code that may release the GIL (the store path's network calls).
/// The arguments are built by the caller, so no Rust value with a destructor sits between
/// the guard and the interpreter: a forced unwind meets the guard first, and nothing is
/// released without the GIL.
fn call_python<'py>(f: &Bound<'py, PyAny>, args: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyAny>> {
    let guard = HangIfExiting;
    // SAFETY: both pointers are live Python objects held by the caller, with the GIL held;
    // PyObject_Call returns a new reference or NULL with an exception set.
    let out = unsafe { PyObject_Call(f.as_ptr(), args.as_ptr(), std::ptr::null_mut()) };
    std::mem::forget(guard);
    // SAFETY: as above; a NULL becomes the PyErr the call set.
    unsafe { Bound::from_owned_ptr_or_err(f.py(), out) }
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
        let py = capacity.py();
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
            py.detach(|| sweeper::register(&swept)); // without the GIL: see NativeLimiter
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
