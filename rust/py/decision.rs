//! The Decision class, and the pool that hands the same objects out again.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyBool;

use super::args::{int_arg, seconds_arg, wrong_type, MAX_SECONDS, SECONDS};

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
    pub(super) fn make(
        allowed: bool,
        limit: u64,
        remaining: u64,
        reset_after: f64,
        retry_after: f64,
    ) -> Self {
        let d = Decision::default();
        d.fill(allowed, limit, remaining, reset_after, retry_after);
        d
    }

    /// Relaxed stores: plain moves. Only a Decision no Python code can reach is refilled, and
    /// the thread doing it holds the GIL (see `Pool`).
    #[inline]
    pub(super) fn fill(&self, allowed: bool, limit: u64, remaining: u64, reset_after: f64, retry_after: f64) {
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
pub(super) struct Pool {
    slots: [AtomicPtr<pyo3::ffi::PyObject>; 2],
    next: AtomicUsize,
}

impl Pool {
    #[inline]
    pub(super) fn emit<'py>(
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
