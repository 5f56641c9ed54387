//! State that only the thread holding the GIL touches.
//!
//! Every access holds the GIL (a `Python` token proves it), which admits one thread at a time, so plain `Cell`s and
//! `RefCell`s do, without the atomic read-modify-writes that a `Mutex` or an atomic counter
//! costs on every `emit` (20-40 cycles each on this machine, several per call). This is
//! PyO3's `GILProtected`, which PyO3 deprecates only because free-threaded builds cannot
//! have it. Why there is always a GIL here: the extension is built for the stable ABI of
//! CPython 3.11 (`abi3-py311`, installed as `_wire.abi3.so`), which free-threaded
//! interpreters neither support nor look for; a module that does not declare itself safe
//! without the GIL (PyO3's default) turns the GIL back on when imported; and the Python
//! package does not use the native producer at all on an interpreter whose GIL is off
//! (`telemetry/producer.py`).
//!
//! Rule for every `RefCell` kept in one: borrow only to clone or swap a reference, never
//! while Python code can run (a `__del__`, the garbage collector, a callback), so that no
//! borrow is ever re-entered; old references are dropped after the borrow ends.

use pyo3::{PyVisit, Python};

/// A value reachable only with proof that the GIL is held (or that the garbage collector,
/// which runs under the GIL, is traversing).
pub struct GilCell<T> {
    value: T,
}

// SAFETY: `get` requires a `Python` token, which exists only on the thread holding the GIL,
// and `traverse` is called by the garbage collector under the GIL; the GIL admits one thread
// at a time, so the value is never accessed by two threads at once. `T: Send` lets it be
// used from whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell { value }
    }

    pub fn get<'py>(&'py self, _py: Python<'py>) -> &'py T {
        &self.value
    }

    pub fn traverse<'a>(&'a self, _visit: &PyVisit<'_>) -> &'a T {
        &self.value
    }
}
