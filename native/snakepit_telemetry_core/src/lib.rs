//! The parts of snakepit_telemetry's stream manager that need no BEAM, so `cargo test`
//! covers them directly:
//!
//! - `batch`: a batched message split into its events, undecoded
//! - `backoff`: when to retry a stream that failed to open or was lost
//! - `catalog`: the event catalog, as Elixir hands it to the NIF at start
//! - `event_view`: one `TelemetryEvent` read in place from its bytes, as prost would decode it
//! - `translate`: the bytes of one gRPC message to a checked event, or its drop reason
//! - `record`: a checked event as it waits to be turned into terms, its strings in one buffer
//! - `pending`: a stream's buffer of checked events, bounded in events and bytes
//! - `counters`, `registry`: per-stream counters and status that NIF calls read
//! - `source_drops`: what a worker reports it dropped itself (`telemetry.dropped`)
//! - `settings`: a worker's toggle, sampling and filters, and the per-event policy they give
//! - `client`, `control`, `proto`: the gRPC client of StreamTelemetry and its messages
//! - `wire`: gRPC message framing, read with a bound on every message
//! - `tool_client`: the unary ExecuteTool call
//! - `transit`: events a worker handed to a call that broke before the NIF read them
//! - `stderr_line`: one `TELEMETRY:{json}` stderr line to a checked event, as `translate` does
//!
//! The NIF crate (`snakepit_telemetry_nif`) adds the runtime, the stream tasks and the terms.

pub mod backoff;
pub mod batch;
pub mod catalog;
pub mod client;
pub mod control;
pub mod counters;
pub mod event_view;
pub mod pending;
pub mod proto;
pub mod record;
pub mod registry;
pub mod settings;
pub mod source_drops;
pub mod stderr_line;
pub mod tool_client;
pub mod transit;
pub mod translate;
pub mod wire;
