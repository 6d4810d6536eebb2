//! The algorithm registry as Python reads it.

use pyo3::prelude::*;

use crate::registry;

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
