//! snakepit_telemetry's NIF: a tokio runtime, off the BEAM schedulers, holding one gRPC
//! telemetry stream per Python worker.
//!
//! - `nif`: the functions Elixir calls (`Snakepit.Telemetry.Native`)
//! - `runtime`, `manager`: the resource with its runtime, and the task that starts/stops streams
//! - `stream_task`, `flow`: one worker's stream, and flow control towards Elixir
//! - `encode`, `atoms`: checked events to terms, with atoms made once at load
//!
//! The catalog, event translation, gRPC client and counters live in `snakepit_telemetry_core`.

mod atoms;
mod encode;
mod flow;
mod manager;
mod nif;
mod runtime;
mod stream_task;

fn load(env: rustler::Env, _info: rustler::Term) -> bool {
    atoms::load(env)
}

rustler::init!("Elixir.Snakepit.Telemetry.Native", load = load);
