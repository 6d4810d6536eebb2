//! Tells the compiler which Python the extension is built for (`cfg(Py_GIL_DISABLED)` on a
//! free-threaded CPython, `cfg(Py_LIMITED_API)` for the stable ABI), as pyo3 itself sees it.
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
