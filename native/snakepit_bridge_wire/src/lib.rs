//! `snakepit_bridge.telemetry._wire`: serializes the event records the Python bridge
//! buffers (`stream.EventRecord`) into `TelemetryEvent` bytes, several times faster than
//! building the protobuf message in Python. The Python package uses it when it is built
//! and falls back to protobuf otherwise (`snakepit_bridge.telemetry.encoding`).

mod protobuf;
mod record;

use pyo3::prelude::*;

#[pymodule]
fn _wire(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(record::encode_record, module)?)?;
    Ok(())
}
