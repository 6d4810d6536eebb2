//! hotlimit's native core. Modules by concept; pyo3 appears only in `py`.

pub mod algo;
pub mod clock;
pub mod config;
pub mod deny;
pub mod engine;
mod py;
pub mod registry;
pub mod sweeper;
pub mod table;

use pyo3::prelude::*;

/// The native core of hotlimit. Private: use the `hotlimit` package.
#[pymodule(gil_used = false)]
mod _native {
    #[pymodule_export]
    use crate::py::{
        _after_fork_child, _after_fork_parent, _before_fork, _sweeper_passes, AlgorithmInfo, Decision,
        DenyFront, ManualClock, NativeLimiter, Noop,
    };

    #[pymodule_export]
    const MAX_KEY_BYTES: usize = crate::config::MAX_KEY_BYTES;
    #[pymodule_export]
    const MAX_PERIOD_NS: u64 = crate::config::MAX_PERIOD_NS;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::clock::warm_up();
        m.add("ALGORITHMS", crate::py::algorithms(m.py())?)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }

    use pyo3::prelude::*;
}

// Keep the `Bound`/`PyModule` names used by the module init in scope for the macro.
#[allow(unused_imports)]
use pyo3::types::PyModule as _;
