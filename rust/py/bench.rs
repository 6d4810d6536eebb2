//! The benchmark floor, `hotlimit._native._Noop`: private (underscored), not part of the API.

use pyo3::prelude::*;

use super::args::Given;

/// The benchmark floor: a method of a native class that takes a key and does nothing.
#[pyclass(frozen, module = "hotlimit._native", name = "_Noop")]
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
