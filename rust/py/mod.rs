//! The Python classes, and the one place where native errors become Python exceptions. The
//! only pyo3 code of the crate.
//!
//! Nothing here may panic: inputs are checked before they reach the core, the core's
//! arithmetic is bounded by those checks, and pyo3 turns any panic that slipped through into a
//! `PanicException` rather than unwinding into the interpreter.

mod algorithms;
mod args;
mod bench;
mod clock;
mod decision;
mod front;
mod limiter;
mod tracker;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::config::{ConfigError, MAX_KEY_BYTES};
use crate::sweeper;
use crate::table::{hash_key, KeyHash};

pub use algorithms::{algorithms, AlgorithmInfo};
pub use bench::Noop;
pub use clock::ManualClock;
pub use decision::Decision;
pub use front::DenyFront;
pub use limiter::NativeLimiter;

use args::{shown, type_name};

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

pub(crate) const NS_PER_S: f64 = 1e9;

pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / NS_PER_S
}

#[inline]
pub(crate) fn key_hash(key: &Bound<'_, PyAny>) -> PyResult<KeyHash> {
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
