//! The emit path of `StreamProducer`: policy, serializing, both bounds, the append, the
//! wake-up and the drop counts (see the parent module for the thread-safety argument).

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyString};

use super::{StreamProducer, CLOSED, DISABLED, ENCODE_ERROR, FILTERED_OUT, OVERFLOW, OVERSIZE, SAMPLED_OUT};
use crate::record::{self, Event};

impl StreamProducer {
    /// The whole of `emit`. An `Exception` from anything it calls is a counted
    /// `encode_error`; only a `BaseException` that is not one (KeyboardInterrupt,
    /// SystemExit) propagates, as it would from the Python producer.
    pub fn emit_event(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        measurements: &Bound<'_, PyAny>,
        metadata: Option<&Bound<'_, PyAny>>,
        correlation_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        match self.try_emit(py, name, measurements, metadata, correlation_id) {
            Ok(()) => Ok(()),
            Err(error) if error.is_instance_of::<PyException>(py) => self.drop_event(py, ENCODE_ERROR),
            Err(error) => Err(error),
        }
    }

    fn try_emit(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        measurements: &Bound<'_, PyAny>,
        metadata: Option<&Bound<'_, PyAny>>,
        correlation_id: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let state = self.state.get(py);
        if !state.enabled.get() {
            return self.drop_event(py, if state.closed.get() { CLOSED } else { DISABLED });
        }
        let rate = self.decide(py, name)?;
        let Some(rate) = rate else {
            return self.drop_event(py, OVERSIZE);
        };
        if rate < 1.0 {
            if rate < 0.0 {
                return self.drop_event(py, FILTERED_OUT);
            }
            if self.sample(py)? >= rate {
                return self.drop_event(py, SAMPLED_OUT);
            }
        }
        if self.is_full(py) {
            return self.drop_event(py, OVERFLOW);
        }
        let current;
        let correlation_id = match correlation_id {
            Some(id) if !id.is_none() => id,
            _ => {
                current = self.current_correlation_id.call0(py)?.into_bound(py);
                &current
            }
        };
        let none = py.None().into_bound(py);
        // As the Python producer's `if metadata:`: a falsy mapping (or other value) is none.
        let metadata = match metadata {
            Some(m) if !m.is_none() && (m.is_instance_of::<PyDict>() || m.is_truthy()?) => m,
            _ => &none,
        };
        let event = Event { name, measurements, metadata };
        let mut buf = Vec::with_capacity(128);
        record::encode_event(
            &mut buf,
            self.measurement_value.bind(py),
            &event,
            correlation_id,
            self.now_ns(py)?,
        )?;
        if buf.len() as u64 > self.max_event_bytes {
            return self.drop_event(py, OVERSIZE);
        }
        let message = PyBytes::new(py, &buf);
        if !self.admit_bytes(py, &message)? {
            return self.drop_event(py, OVERFLOW);
        }
        // The event is in: a failed wake-up is no drop (the consumer rechecks when idle).
        self.wake_consumer(py).or_else(|error| {
            if error.is_instance_of::<PyException>(py) {
                Ok(())
            } else {
                Err(error)
            }
        })
    }

    /// The event's rate under the policy in force (-1.0: filtered out), or None when its
    /// name alone is longer than `max_event_bytes` (dropped before patterns run over it).
    fn decide(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let decisions = &self.state.get(py).decisions;
        let Some(cache) = decisions.borrow().as_ref().map(|d| d.cache.clone_ref(py)) else {
            return Ok(Some(1.0));
        };
        let cache = cache.bind(py);
        let name = name.cast::<PyString>()?;
        if let Some(rate) = cache.get_item(name)? {
            if let Ok(rate) = rate.cast::<PyFloat>() {
                return Ok(Some(rate.value()));
            }
            return Ok(Some(rate.extract()?));
        }
        if name.len()? as u64 > self.max_event_bytes {
            return Ok(None);
        }
        let Some(resolve) = decisions.borrow().as_ref().map(|d| d.resolve.clone_ref(py)) else {
            return Ok(Some(1.0));
        };
        Ok(Some(resolve.call1(py, (name,))?.extract(py)?))
    }

    /// A float in [0, 1): the injected `random`, or splitmix64.
    fn sample(&self, py: Python<'_>) -> PyResult<f64> {
        if let Some(random) = &self.random {
            return random.call0(py)?.extract(py);
        }
        let rng = &self.state.get(py).rng;
        let mut z = rng.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        rng.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Ok((z >> 11) as f64 * (1.0 / (1u64 << 53) as f64))
    }

    fn now_ns(&self, py: Python<'_>) -> PyResult<i64> {
        if let Some(clock) = &self.clock_ns {
            return clock.call0(py)?.extract(py);
        }
        Ok(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0))
    }

    /// The cheap check before serializing: a buffer already full drops the event at once.
    fn is_full(&self, py: Python<'_>) -> bool {
        let len = self.buffer.bind(py).len().unwrap_or(usize::MAX);
        len >= self.max_buffer || self.buffered_bytes(py) >= self.max_buffer_bytes
    }

    /// Both bounds checked, then the append: no Python code runs in between (see the
    /// module doc), so this step is atomic under the GIL.
    pub(super) fn admit_bytes(&self, py: Python<'_>, message: &Bound<'_, PyBytes>) -> PyResult<bool> {
        let size = message.as_bytes().len() as u64;
        let len = self.buffer.bind(py).len()?;
        let state = self.state.get(py);
        let bytes_in = state.bytes_in.get() + size;
        if len >= self.max_buffer || bytes_in.saturating_sub(state.bytes_out.get()) > self.max_buffer_bytes {
            return Ok(false);
        }
        self.append.call1(py, (message,))?;
        state.bytes_in.set(bytes_in);
        state.enqueued.set(state.enqueued.get() + 1);
        Ok(true)
    }

    /// Wake the consumer if it sleeps, or if it lingers and a full batch is buffered.
    pub(super) fn wake_consumer(&self, py: Python<'_>) -> PyResult<()> {
        let Some(consumer) = self.state.get(py).consumer.borrow().as_ref().map(|c| c.clone_ref(py)) else {
            return Ok(());
        };
        let consumer = consumer.bind(py);
        let wake = consumer.getattr(intern!(py, "waiting"))?.is_truthy()?
            || (consumer.getattr(intern!(py, "lingering"))?.is_truthy()?
                && (self.buffer.bind(py).len()? as u64
                    >= consumer.getattr(intern!(py, "full_batch"))?.extract::<u64>()?
                    || self.buffered_bytes(py)
                        >= consumer.getattr(intern!(py, "full_batch_bytes"))?.extract::<u64>()?));
        if wake {
            consumer.call_method0(intern!(py, "wake"))?;
        }
        Ok(())
    }

    /// Count a dropped event (the event is done with: `emit` returns).
    pub(super) fn drop_event(&self, py: Python<'_>, reason: usize) -> PyResult<()> {
        let count = &self.state.get(py).drops[reason];
        count.set(count.get() + 1);
        Ok(())
    }
}
