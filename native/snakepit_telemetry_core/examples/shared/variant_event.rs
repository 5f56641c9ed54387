//! The event the Rust benchmarks send and check (`event_source`, `translate_cost`): a
//! `tool.execution.stop` with `duration` and metadata `tool` and `operation`, in variants
//! that differ as a tool's events do.

use prost::Message;
use snakepit_telemetry_core::proto::{telemetry_value, TelemetryEvent, TelemetryValue};

/// Variant `n`: `n` ns later than variant 0 (at `now_ns`), and a `duration` of its own.
pub fn variant_event(now_ns: i64, n: u64) -> Vec<u8> {
    TelemetryEvent {
        event_parts: vec!["tool".into(), "execution".into(), "stop".into()],
        measurements: [(
            "duration".to_string(),
            TelemetryValue { value: Some(telemetry_value::Value::IntValue(123_456 + 7 * n as i64)) },
        )]
        .into(),
        metadata: [("tool".to_string(), "resize".to_string()), ("operation".to_string(), "run".to_string())]
            .into(),
        timestamp_ns: now_ns + n as i64,
        correlation_id: String::new(),
    }
    .encode_to_vec()
}
