//! snakepit_telemetry's NIF: a tokio runtime, off the BEAM schedulers, holding one gRPC
//! telemetry stream per Python worker.
//!
//! - `nif`: the functions Elixir calls (`Snakepit.Telemetry.Native`), and nothing else
//! - `decode`, `terms`: terms in (options, settings, metadata) and out (errors, reports)
//! - `runtime`, `manager`: the resource with its runtime, and the registry of streams
//! - `stream_task`, `flow`, `status`: one worker's stream (reconnected with backoff), flow
//!   control towards Elixir, and its status messages (its bounded buffer is the core's
//!   `pending`)
//! - `event_batch`, `encode`, `atoms`: a batch in flight, made into terms by the process that
//!   receives it, with atoms handed over at start
//! - `tool_call`, `json`: tool calls on the runtime, and their JSON (dirty NIFs)
//! - `timeslice`: what a NIF on a normal scheduler charges to the calling process
//! - `allocator`: the NIF's Rust allocator (mimalloc, chosen by measurement)
//!
//! The catalog, event translation, gRPC client and counters live in `snakepit_telemetry_core`.

mod allocator;
mod atoms;
mod decode;
mod encode;
mod event_batch;
mod flow;
mod json;
mod manager;
mod nif;
mod runtime;
mod status;
mod stream_task;
mod terms;
mod timeslice;
mod tool_call;

rustler::init!("Elixir.Snakepit.Telemetry.Native");
