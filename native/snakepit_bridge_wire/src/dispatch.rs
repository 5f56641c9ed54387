//! `EmitDispatch`: what the public `snakepit_bridge.telemetry.emit` is when this extension
//! is built (the bound method `dispatch.emit`). It forwards each event to the active
//! backend's emitter: straight into a native `StreamProducer` without a Python frame when
//! the emitter is a producer's bound `emit`, or by calling any other emitter (a custom
//! backend), counting what that raises as `backend_error`. With no backend it returns at
//! once.

use std::cell::{Cell, RefCell};

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;

use crate::gil::GilCell;
use crate::producer::StreamProducer;

enum Target {
    Nothing,
    Native(Py<StreamProducer>),
    Python(Py<PyAny>),
}

/// Forwards `emit` calls to the active backend's emitter. See the module doc.
#[pyclass(frozen, module = "snakepit_bridge.telemetry._wire")]
pub struct EmitDispatch {
    state: GilCell<State>,
}

struct State {
    target: RefCell<Target>,
    backend_errors: Cell<u64>,
}

#[pymethods]
impl EmitDispatch {
    #[new]
    fn new() -> Self {
        let state = State { target: RefCell::new(Target::Nothing), backend_errors: Cell::new(0) };
        EmitDispatch { state: GilCell::new(state) }
    }

    /// Forward to `emitter` from now on (None: drop every call without counting, as with no
    /// backend); the `backend_error` count starts again from zero.
    fn set_target(&self, py: Python<'_>, emitter: Option<&Bound<'_, PyAny>>) {
        let target = match emitter {
            None => Target::Nothing,
            Some(emitter) => match producer_of(emitter) {
                Some(producer) => Target::Native(producer),
                None => Target::Python(emitter.clone().unbind()),
            },
        };
        let state = self.state.get(py);
        // The old target is dropped after the borrow (dropping it may run Python code).
        let previous = state.target.replace(target);
        state.backend_errors.set(0);
        drop(previous);
    }

    /// Emit one telemetry event. Never raises and never blocks.
    ///
    /// `event`: dotted worker event name, e.g. "tool.execution.stop". `measurements`: int,
    /// float or str values. `metadata`: values converted with str(). `correlation_id`:
    /// defaults to the current context's id. An event that cannot be sent is dropped and
    /// counted (see `dropped_counts()`).
    #[pyo3(signature = (event, measurements, metadata=None, correlation_id=None))]
    fn emit(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        measurements: &Bound<'_, PyAny>,
        metadata: Option<&Bound<'_, PyAny>>,
        correlation_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let state = self.state.get(py);
        let target = match &*state.target.borrow() {
            Target::Nothing => return Ok(()),
            Target::Native(producer) => Target::Native(producer.clone_ref(py)),
            Target::Python(emitter) => Target::Python(emitter.clone_ref(py)),
        };
        match target {
            Target::Nothing => Ok(()),
            Target::Native(producer) => {
                producer.get().emit_event(py, event, measurements, metadata, correlation_id)
            }
            Target::Python(emitter) => {
                let none = py.None();
                let metadata = metadata.map_or(none.clone_ref(py), |m| m.clone().unbind());
                let correlation_id = correlation_id.map_or(none, |c| c.clone().unbind());
                match emitter.call1(py, (event, measurements, metadata, correlation_id)) {
                    Ok(_) => Ok(()),
                    Err(error) if error.is_instance_of::<PyException>(py) => {
                        state.backend_errors.set(state.backend_errors.get() + 1);
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// Exceptions the current emitter raised (each a dropped event).
    #[getter]
    fn backend_errors(&self, py: Python<'_>) -> u64 {
        self.state.get(py).backend_errors.get()
    }
}

/// The producer whose `emit` `emitter` is (`StreamProducer.emit` bound to it), if it is one.
fn producer_of(emitter: &Bound<'_, PyAny>) -> Option<Py<StreamProducer>> {
    let py = emitter.py();
    let name = emitter.getattr(intern!(py, "__name__")).ok()?;
    if name.extract::<&str>().ok()? != "emit" {
        return None;
    }
    let owner = emitter.getattr(intern!(py, "__self__")).ok()?;
    owner.cast_into::<StreamProducer>().ok().map(Bound::unbind)
}
