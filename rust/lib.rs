//! hotlimit's native core. Modules by concept; pyo3 appears only in `py`.

pub mod algo;
pub mod clock;
pub mod config;
pub mod deny;
pub mod gcra;
pub mod log;
mod py;
pub mod table;
pub mod window;

use pyo3::prelude::*;

/// The native core of hotlimit. Private: use the `hotlimit` package.
#[pymodule(gil_used = false)]
mod _native {
    #[pymodule_export]
    use crate::py::{
        _after_fork_child, _after_fork_parent, _before_fork, _sweeper_passes, Decision, DenyFront,
        ManualClock, NativeLimiter, Noop,
    };

    #[pymodule_export]
    const MAX_KEY_BYTES: usize = crate::config::MAX_KEY_BYTES;
    #[pymodule_export]
    const SLIDING_LOG_MAX_LIMIT: u64 = crate::log::SlidingLog::MAX_LIMIT;
    #[pymodule_export]
    const SLIDING_WINDOW_MAX_LIMIT: u64 = crate::window::SlidingWindow::MAX_LIMIT;
    #[pymodule_export]
    const FIXED_WINDOW_MAX_LIMIT: u64 = crate::window::FixedWindow::MAX_LIMIT;
    #[pymodule_export]
    const MAX_PERIOD_NS: u64 = crate::config::MAX_PERIOD_NS;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::clock::warm_up();
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }

    use pyo3::prelude::*;
}

// Keep the `Bound`/`PyModule` names used by the module init in scope for the macro.
#[allow(unused_imports)]
use pyo3::types::PyModule as _;
