//! `StreamProducer`: the producer side of a `TelemetryStream` (what `emit` does on the
//! caller's thread), native. The Python package uses it when this extension is built and
//! keeps an equivalent pure-Python producer otherwise (`telemetry/producer.py`), with the
//! same methods and counters.
//!
//! `emit` applies the policy (toggle, cached per-name decisions, sampling), serializes the
//! event at once into `TelemetryEvent` bytes (`record::encode_event`), checks both bounds
//! and appends the bytes to the stream's `collections.deque`, then wakes the consumer if it
//! waits. It never raises an `Exception` (every failure is a counted drop) and never blocks.
//!
//! Thread safety: every method runs with the GIL held, and the state lives in GIL-protected
//! cells (`crate::gil`). The admission step (both bounds read, `len(deque)`,
//! `deque.append`, the byte count raised) calls no Python code, so no other thread runs in
//! between: it is atomic, as the Python producer's lock makes its own. Python code may run
//! earlier (a `__str__`, `measurement_value`, the policy's `resolve`), which is why no
//! borrow is held across it.

use std::cell::{Cell, RefCell};
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{PyTraverseError, PyVisit};

use crate::gil::GilCell;

mod emit;

/// Drop reasons, in `protocol.DROP_REASONS` order (Python checks the two agree).
pub const DROP_REASONS: [&str; 7] =
    ["disabled", "sampled_out", "filtered_out", "overflow", "oversize", "encode_error", "closed"];
const DISABLED: usize = 0;
const SAMPLED_OUT: usize = 1;
const FILTERED_OUT: usize = 2;
const OVERFLOW: usize = 3;
const OVERSIZE: usize = 4;
const ENCODE_ERROR: usize = 5;
const CLOSED: usize = 6;

/// The decision cache of the policy in force (`ControlPolicy.decisions`: name -> rate, or
/// -1.0 for filtered out) and its `resolve` (computes and caches a missing name).
struct Decisions {
    cache: Py<PyDict>,
    resolve: Py<PyAny>,
}

/// The producer side of one telemetry stream. See the module doc.
#[pyclass(frozen, module = "snakepit_bridge.telemetry._wire")]
pub struct StreamProducer {
    buffer: Py<PyAny>,
    append: Py<PyAny>,
    appendleft: Py<PyAny>,
    max_buffer: usize,
    max_buffer_bytes: u64,
    max_event_bytes: u64,
    measurement_value: Py<PyAny>,
    current_correlation_id: Py<PyAny>,
    clock_ns: Option<Py<PyAny>>,
    random: Option<Py<PyAny>>,
    state: GilCell<State>,
}

/// What changes: the policy, the consumer, the byte counters and the drop counts.
struct State {
    rng: Cell<u64>,
    enabled: Cell<bool>,
    closed: Cell<bool>,
    decisions: RefCell<Option<Decisions>>,
    consumer: RefCell<Option<Py<PyAny>>>,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    enqueued: Cell<u64>,
    drops: [Cell<u64>; DROP_REASONS.len()],
}

#[pymethods]
impl StreamProducer {
    /// `StreamProducer(buffer, max_buffer, max_buffer_bytes, max_event_bytes,
    /// measurement_value, current_correlation_id, clock_ns=None, random=None)`.
    ///
    /// `buffer` is the stream's deque; `clock_ns` and `random` default to the system clock
    /// and a native generator (pass callables to inject them, as tests do).
    #[new]
    #[pyo3(signature = (buffer, max_buffer, max_buffer_bytes, max_event_bytes, measurement_value, current_correlation_id, clock_ns=None, random=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        buffer: &Bound<'_, PyAny>,
        max_buffer: usize,
        max_buffer_bytes: u64,
        max_event_bytes: u64,
        measurement_value: Py<PyAny>,
        current_correlation_id: Py<PyAny>,
        clock_ns: Option<Py<PyAny>>,
        random: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        if max_buffer == 0 || max_buffer_bytes == 0 || max_event_bytes == 0 {
            return Err(PyValueError::new_err("bounds must be >= 1"));
        }
        Ok(StreamProducer {
            append: buffer.getattr("append")?.unbind(),
            appendleft: buffer.getattr("appendleft")?.unbind(),
            buffer: buffer.clone().unbind(),
            max_buffer,
            max_buffer_bytes,
            max_event_bytes,
            measurement_value,
            current_correlation_id,
            clock_ns,
            random,
            state: GilCell::new(State {
                rng: Cell::new(seed()),
                enabled: Cell::new(true),
                closed: Cell::new(false),
                decisions: RefCell::new(None),
                consumer: RefCell::new(None),
                bytes_in: Cell::new(0),
                bytes_out: Cell::new(0),
                enqueued: Cell::new(0),
                drops: Default::default(),
            }),
        })
    }

    /// Enqueue one event, or drop and count it. Never raises an `Exception`, never blocks.
    /// A `correlation_id` of None means the current context's id.
    #[pyo3(signature = (event_name, measurements, metadata=None, correlation_id=None))]
    fn emit(
        &self,
        py: Python<'_>,
        event_name: &Bound<'_, PyAny>,
        measurements: &Bound<'_, PyAny>,
        metadata: Option<&Bound<'_, PyAny>>,
        correlation_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.emit_event(py, event_name, measurements, metadata, correlation_id)
    }

    /// Install the policy in force (a `ControlPolicy`: its `enabled`, its `decisions`
    /// cache and its `resolve`).
    fn set_policy(&self, policy: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = policy.py();
        let enabled = policy.getattr(intern!(py, "enabled"))?.is_truthy()?;
        let cache = policy.getattr(intern!(py, "decisions"))?.cast_into::<PyDict>()?.unbind();
        let resolve = policy.getattr(intern!(py, "resolve"))?.unbind();
        let state = self.state.get(py);
        // The old policy is dropped after the borrow (dropping it may run Python code).
        let previous = state.decisions.replace(Some(Decisions { cache, resolve }));
        state.enabled.set(enabled && !state.closed.get());
        drop(previous);
        Ok(())
    }

    /// Later emits are dropped as `closed`. Idempotent.
    fn close(&self, py: Python<'_>) {
        let state = self.state.get(py);
        state.closed.set(true);
        state.enabled.set(false);
    }

    /// True after `close`.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.state.get(py).closed.get()
    }

    /// The consumer to wake after an append (None: nobody reads).
    fn set_consumer(&self, py: Python<'_>, consumer: Option<Py<PyAny>>) {
        let previous = self.state.get(py).consumer.replace(consumer);
        drop(previous);
    }

    /// Garbage collection: the consumer refers back to its stream, which owns this producer.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let state = self.state.traverse(&visit);
        visit.call(&self.buffer)?;
        if let Ok(consumer) = state.consumer.try_borrow() {
            visit.call(consumer.as_ref())?;
        }
        if let Ok(decisions) = state.decisions.try_borrow() {
            if let Some(decisions) = decisions.as_ref() {
                visit.call(&decisions.cache)?;
                visit.call(&decisions.resolve)?;
            }
        }
        visit.call(self.clock_ns.as_ref())?;
        visit.call(self.random.as_ref())?;
        Ok(())
    }

    fn __clear__(&self, py: Python<'_>) {
        let state = self.state.get(py);
        let consumer = state.consumer.replace(None);
        let decisions = state.decisions.replace(None);
        drop((consumer, decisions));
    }

    /// Append serialized bytes if both bounds allow it: counted enqueued, the consumer woken.
    /// Returns whether they were appended (counts nothing otherwise).
    fn admit(&self, py: Python<'_>, message: &Bound<'_, PyBytes>) -> PyResult<bool> {
        if !self.admit_bytes(py, message)? {
            return Ok(false);
        }
        self.wake_consumer(py)?;
        Ok(true)
    }

    /// Put bytes back at the front (an event that did not fit the batch being packed),
    /// charged as their length: `bytes_in` goes up so that both byte counters stay monotonic.
    fn put_back(&self, py: Python<'_>, message: &Bound<'_, PyBytes>) -> PyResult<()> {
        let bytes_in = &self.state.get(py).bytes_in;
        bytes_in.set(bytes_in.get() + message.as_bytes().len() as u64);
        self.appendleft.call1(py, (message,))?;
        Ok(())
    }

    /// The consumer took entries charged `charge` bytes in all.
    fn release(&self, py: Python<'_>, charge: u64) {
        let bytes_out = &self.state.get(py).bytes_out;
        bytes_out.set(bytes_out.get() + charge);
    }

    /// Bytes buffered now.
    #[getter]
    fn buffered_bytes(&self, py: Python<'_>) -> u64 {
        let state = self.state.get(py);
        state.bytes_in.get().saturating_sub(state.bytes_out.get())
    }

    /// Events ever appended.
    #[getter]
    fn enqueued(&self, py: Python<'_>) -> u64 {
        self.state.get(py).enqueued.get()
    }

    /// Count one drop for `reason` (one of `DROP_REASONS`).
    fn count(&self, py: Python<'_>, reason: &str) -> PyResult<()> {
        let index = DROP_REASONS
            .iter()
            .position(|known| *known == reason)
            .ok_or_else(|| PyValueError::new_err(format!("unknown drop reason {reason:?}")))?;
        self.drop_event(py, index)
    }

    /// Drops so far, by reason (every reason present).
    fn dropped_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = PyDict::new(py);
        for (reason, count) in DROP_REASONS.iter().zip(&self.state.get(py).drops) {
            counts.set_item(*reason, count.get())?;
        }
        Ok(counts)
    }

    /// All drops so far.
    #[getter]
    fn dropped_total(&self, py: Python<'_>) -> u64 {
        self.state.get(py).drops.iter().map(Cell::get).sum()
    }
}

fn seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    now ^ (std::process::id() as u64).rotate_left(32) ^ (&now as *const u64 as u64)
}
