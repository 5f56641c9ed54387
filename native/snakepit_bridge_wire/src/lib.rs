//! `snakepit_bridge.telemetry._wire`: the native half of the Python bridge's telemetry.
//!
//! * `record`: serializes events into `TelemetryEvent` bytes, several times faster than
//!   building the protobuf message in Python;
//! * `producer` (and `producer/emit.rs`): `StreamProducer`, what `emit` does on the caller's thread (policy,
//!   serializing, both bounds, the append, counted drops);
//! * `dispatch`: `EmitDispatch`, the public `emit`, forwarding to the active backend;
//! * `pack`: `pack_bytes`, the consumer's batch packing of buffered bytes.
//!
//! The Python package uses it when it is built and falls back to pure Python otherwise
//! (`snakepit_bridge.telemetry.encoding`, `.producer`).

mod dispatch;
mod gil;
mod pack;
mod producer;
mod protobuf;
mod record;

use pyo3::prelude::*;

#[pymodule]
fn _wire(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(record::encode_record, module)?)?;
    module.add_function(wrap_pyfunction!(pack::pack_bytes, module)?)?;
    module.add_class::<producer::StreamProducer>()?;
    module.add_class::<dispatch::EmitDispatch>()?;
    module.add("DROP_REASONS", producer::DROP_REASONS.to_vec())?;
    Ok(())
}
