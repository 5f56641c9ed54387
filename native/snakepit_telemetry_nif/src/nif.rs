//! The NIF functions (`Snakepit.Telemetry.Native`): decode the arguments (`decode.rs`), call
//! into the runtime, encode the result (`terms.rs`). Each returns in microseconds; none does
//! I/O or waits on the runtime.
//!
//! Results are `{:ok, value}`, `:ok` or `{:error, reason}`; a wrongly typed argument raises
//! `ArgumentError` (badarg) from rustler's decoding, which the Elixir layer rules out first.

use std::sync::Arc;
use std::time::Duration;

use rustler::{Atom, Binary, Env, LocalPid, ResourceArc, Term};
use snakepit_telemetry_core::backoff::BackoffPolicy;
use snakepit_telemetry_core::catalog::Catalog;
use snakepit_telemetry_core::client::WorkerAddress;
use snakepit_telemetry_core::counters::DropReason;
use snakepit_telemetry_core::pending::BufferLimits;
use snakepit_telemetry_core::registry::{StreamState, StreamStatus};
use snakepit_telemetry_core::translate::{EventLimits, NativeTime};

use crate::atoms::{self, AtomTable};
use crate::decode::{self, option, positive, required};
use crate::encode::{TermEncoder, WorkerMeta};
use crate::event_batch::EventBatch;
use crate::runtime::{RuntimeOptions, TelemetryRuntime};
use crate::status::StatusTicket;
use crate::stream_task::{ConnectOptions, StderrLine, StreamLimits, StreamTask};

/// The endpoint of a worker with no gRPC stream (stderr lines only).
const NO_ENDPOINT: &str = "none";
use crate::terms::{self, ApiError};
use crate::tool_call::{ToolRequest, ToolTarget};

type NifResult<T> = Result<T, ApiError>;

/// `start(receivers, options)`: a runtime whose batches and status messages go to
/// `receivers`, one pid per Dispatcher partition (a worker's partition is chosen by Elixir at
/// registration).
/// Every option is required (the defaults live in `Snakepit.Telemetry.Config`): `catalog`,
/// `native_time_per_second`, `max_buffer_size`, `max_buffer_bytes`, `max_batch_size`,
/// `max_batch_bytes`, `max_event_bytes`, `max_metadata_keys`, `max_in_flight_batches`,
/// `min_batch_interval_us`,
/// `runtime_threads`, `connect_timeout_ms`, `reconnect_initial_ms`, `reconnect_max_ms`,
/// `grpc_stream`, `excluded_events`, `node`.
#[rustler::nif]
fn start(env: Env, receivers: Vec<LocalPid>, options: Term) -> NifResult<ResourceArc<TelemetryRuntime>> {
    if receivers.is_empty() {
        return Err(ApiError::InvalidOption(atoms::receivers()));
    }
    let catalog_term =
        options.map_get(atoms::catalog()).map_err(|_| ApiError::InvalidOption(atoms::catalog()))?;
    let (spec, atom_of) = decode::catalog(env, catalog_term)?;
    let catalog = Catalog::new(&spec).map_err(|e| ApiError::InvalidCatalog(format!("{e:?}")))?;
    let atom_table = AtomTable::for_catalog(&catalog, &atom_of)
        .map_err(|name| ApiError::InvalidCatalog(format!("no atom for {name}")))?;

    let native_per_second = positive(options, atoms::native_time_per_second())? as u64;
    let node: Atom = option(options, atoms::node(), atoms::nil())?;
    let open_streams: bool = option(options, atoms::grpc_stream(), true)?;
    let excluded: Vec<String> = option(options, atoms::excluded_events(), Vec::new())?;
    let limits = StreamLimits {
        buffer: BufferLimits {
            max_buffer: positive(options, atoms::max_buffer_size())?,
            max_buffer_bytes: positive(options, atoms::max_buffer_bytes())?,
            max_batch: positive(options, atoms::max_batch_size())?,
            max_batch_bytes: positive(options, atoms::max_batch_bytes())?,
        },
        max_event_bytes: positive(options, atoms::max_event_bytes())?,
        max_in_flight: positive(options, atoms::max_in_flight_batches())?,
        min_batch_interval: Duration::from_micros(required::<u64>(options, atoms::min_batch_interval_us())?),
        event: EventLimits {
            native_time: NativeTime::new(native_per_second),
            max_metadata_keys: positive(options, atoms::max_metadata_keys())?,
        },
    };
    let millis = |key| positive(options, key).map(|ms| Duration::from_millis(ms as u64));
    let connect = ConnectOptions {
        timeout: millis(atoms::connect_timeout_ms())?,
        backoff: BackoffPolicy {
            initial: millis(atoms::reconnect_initial_ms())?,
            max: millis(atoms::reconnect_max_ms())?,
        },
    };
    let runtime_options = RuntimeOptions {
        threads: positive(options, atoms::runtime_threads())?,
        limits,
        connect,
        open_streams,
        excluded: Arc::from(excluded),
    };
    let encoder = TermEncoder::new(Arc::new(catalog), atom_table, node);
    let runtime = TelemetryRuntime::start(receivers, encoder, runtime_options)
        .map_err(|e| ApiError::RuntimeFailed(e.to_string()))?;
    Ok(ResourceArc::new(runtime))
}

/// `stop(runtime)`: ends every stream (`:shutdown`) and shuts the runtime down.
#[rustler::nif]
fn stop(runtime: ResourceArc<TelemetryRuntime>) -> Atom {
    runtime.stop();
    atoms::ok()
}

/// `set_receiver(runtime, partition, pid)`: the process that receives the batches and status
/// messages of `partition` from now on (a restarted Dispatcher partition).
#[rustler::nif]
fn set_receiver(runtime: ResourceArc<TelemetryRuntime>, partition: usize, pid: LocalPid) -> NifResult<Atom> {
    if runtime.set_receiver(partition, pid) {
        Ok(atoms::ok())
    } else {
        Err(ApiError::InvalidOption(atoms::partition()))
    }
}

/// `set_node(runtime, node)`: the `:node` put in events from now on.
#[rustler::nif]
fn set_node(runtime: ResourceArc<TelemetryRuntime>, node: Atom) -> Atom {
    runtime.encoder.set_node(node);
    atoms::ok()
}

/// `register_worker(runtime, worker_id, endpoint, metadata, settings, token, partition)`:
/// registers the worker and starts its stream (unless the runtime was started with
/// `grpc_stream: false` or the endpoint is `"none"`), replacing a stream of the same id, with
/// these settings in force from its first event; its batches go to Dispatcher `partition`.
/// Returns `{:ok, generation}`; the stream's messages carry it.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn register_worker(
    env: Env,
    runtime: ResourceArc<TelemetryRuntime>,
    worker_id: String,
    endpoint: String,
    metadata: Vec<(Atom, Term)>,
    settings: Term,
    token: Option<String>,
    partition: usize,
) -> NifResult<u64> {
    if !runtime.is_running() {
        return Err(ApiError::RuntimeFailed("the runtime is stopped".into()));
    }
    let settings = decode::settings(settings)?;
    let address = match endpoint.as_str() {
        NO_ENDPOINT => None,
        _ => Some(
            WorkerAddress::parse(&endpoint)
                .map_err(|e| ApiError::InvalidEndpoint(format!("{endpoint}: {e}")))?,
        ),
    };
    let (static_metadata, keys) = decode::metadata(env, metadata)?;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let reserved = runtime.encoder.reserved_ids(&keys);

    let generation = runtime.next_generation();
    let worker = Arc::new(WorkerMeta { worker_id: worker_id.clone(), generation, static_metadata, reserved });
    let options = &runtime.options;
    // Registering an id again keeps its counters, and a loss its stream had not repaired.
    let replaced = runtime.manager.get(&worker_id);
    // No stream without an address (`:none`, a stderr-only worker) or with `grpc_stream: false`:
    // its task then takes stderr lines only.
    let token: Option<Arc<str>> = token.map(Arc::from);
    let tools = address.clone().map(|address| Arc::new(ToolTarget::new(address, token.clone())));
    let address = address.filter(|_| options.open_streams);
    let mut state = match address {
        Some(_) => StreamState::new(worker_id, endpoint, generation, settings),
        None => {
            StreamState::with_status(worker_id, endpoint, generation, settings, StreamStatus::NotStreaming)
        }
    };
    let resume = match (replaced, &address) {
        (Some(old), Some(_)) => state.inherit(&old.state).lost,
        (Some(old), None) => {
            state.counters = old.state.counters.clone();
            None
        }
        (None, _) => None,
    };
    runtime.manager.start(StreamTask {
        state: Arc::new(state),
        resume,
        address,
        worker,
        encoder: runtime.encoder.clone(),
        limits: options.limits,
        connect: options.connect,
        token,
        tools,
        excluded: options.excluded.clone(),
        receiver: runtime.receiver(partition),
    });
    Ok(generation)
}

/// `stderr_line(runtime, worker_id, line, complete)`: a line of the worker's output that
/// starts with `TELEMETRY:`. A complete line is queued for the worker's task, which checks it
/// like a gRPC message off the schedulers; an incomplete one (longer than the Worker's
/// maximum, cut) is counted as received and `:oversize` here.
#[rustler::nif]
fn stderr_line(
    runtime: ResourceArc<TelemetryRuntime>,
    worker_id: String,
    line: Binary,
    complete: bool,
) -> NifResult<Atom> {
    if !complete {
        let registration = runtime.manager.get(&worker_id).ok_or(ApiError::UnknownWorker)?;
        registration.state.counters.add_received(1);
        registration.state.counters.add_dropped(DropReason::Oversize, 1);
        return Ok(atoms::ok());
    }
    if runtime.manager.stderr_line(&worker_id, StderrLine(line.as_slice().to_vec())) {
        Ok(atoms::ok())
    } else {
        Err(ApiError::UnknownWorker)
    }
}

/// `execute_tool(runtime, worker_id, tool, params, session_id, metadata, correlation_id,
/// timeout_ms, caller)`: starts a tool call (`tool_call.rs`) and returns its id at once;
/// `params` are `{name, json}` pairs from `json_encode_params`. The result reaches `caller`
/// as `{:snakepit_tool_result, id, result}`.
#[rustler::nif]
#[allow(clippy::too_many_arguments)]
fn execute_tool(
    runtime: ResourceArc<TelemetryRuntime>,
    worker_id: String,
    tool: String,
    params: Vec<(String, Binary)>,
    session_id: String,
    metadata: Vec<(String, String)>,
    correlation_id: String,
    timeout_ms: u64,
    caller: LocalPid,
) -> NifResult<u64> {
    let call_id = runtime.next_generation();
    let request = ToolRequest {
        call_id,
        caller,
        tool,
        params: params.into_iter().map(|(name, json)| (name, json.as_slice().to_vec())).collect(),
        session_id,
        metadata,
        correlation_id,
        timeout: Duration::from_millis(timeout_ms),
    };
    if runtime.manager.execute_tool(&worker_id, request, runtime.options.connect.timeout) {
        Ok(call_id)
    } else {
        Err(ApiError::UnknownWorker)
    }
}

/// `unregister_worker(runtime, worker_id)`: stops the worker's stream and forgets it.
#[rustler::nif]
fn unregister_worker(runtime: ResourceArc<TelemetryRuntime>, worker_id: String) -> NifResult<u64> {
    runtime.manager.stop(&worker_id).ok_or(ApiError::UnknownWorker)
}

/// `worker_settings(runtime, worker_id)`: the settings in force for a registered worker.
#[rustler::nif]
fn worker_settings<'a>(
    env: Env<'a>,
    runtime: ResourceArc<TelemetryRuntime>,
    worker_id: String,
) -> NifResult<Term<'a>> {
    let registration = runtime.manager.get(&worker_id).ok_or(ApiError::UnknownWorker)?;
    Ok(terms::settings_term(env, &registration.state.settings()))
}

/// `update_settings(runtime, [{worker_id, settings}])`: new settings for each worker, applied
/// to all of them or, if any is invalid or unknown, to none. Each stream applies them to what
/// arrives from now on and sends them to its worker; nothing waits. Returns `{:ok, count}`.
/// On the calling scheduler, for a few changes: `GrpcStream` sends up to 256 in chunks of 32
/// (25 µs each, typically), and each call tells the scheduler what share of a time slice it
/// took. More go to `update_settings_dirty`.
#[rustler::nif]
fn update_settings(
    env: Env,
    runtime: ResourceArc<TelemetryRuntime>,
    changes: Vec<(String, Term)>,
) -> NifResult<usize> {
    let started = std::time::Instant::now();
    let applied = apply_settings(&runtime, changes);
    crate::timeslice::charge_since(env, started);
    applied
}

/// `update_settings_dirty(runtime, changes)`: the same on a dirty scheduler, for `:all`
/// changes at hundreds or thousands of workers (milliseconds). Not for a few: on a loaded
/// machine, waking a dirty scheduler took 20-90 ms, ten times the rest of a toggle
/// (`bench/RESULTS.md`).
#[rustler::nif(schedule = "DirtyCpu")]
fn update_settings_dirty(
    runtime: ResourceArc<TelemetryRuntime>,
    changes: Vec<(String, Term)>,
) -> NifResult<usize> {
    apply_settings(&runtime, changes)
}

fn apply_settings(runtime: &TelemetryRuntime, changes: Vec<(String, Term)>) -> NifResult<usize> {
    let mut decoded = Vec::with_capacity(changes.len());
    for (worker_id, settings) in changes {
        decoded.push((worker_id, decode::settings(settings)?));
    }
    let ids = decoded.iter().map(|(id, _)| id.as_str());
    runtime
        .manager
        .registry()
        .with_all(ids, |registrations| {
            for (registration, (_, settings)) in registrations.iter().zip(decoded.iter()) {
                registration.state.set_settings(settings.clone());
            }
            registrations.len()
        })
        .map_err(|_| ApiError::UnknownWorker)
}

/// `take_events(batch)`: `{:more, events}` or `{:done, events}`, the next of the batch's
/// events as terms of the calling process (`event_batch.rs`).
#[rustler::nif]
fn take_events(env: Env, batch: ResourceArc<EventBatch>) -> Term {
    batch.take_events(env)
}

/// `ack(batch)`: the receiver ran the handlers of one batch.
#[rustler::nif]
fn ack(batch: ResourceArc<EventBatch>) -> Atom {
    batch.ticket.acknowledge();
    atoms::ok()
}

/// `ack_status(ticket)`: the receiver emitted the events of one status message.
#[rustler::nif]
fn ack_status(ticket: ResourceArc<StatusTicket>) -> Atom {
    ticket.acknowledge();
    atoms::ok()
}

/// `stream_info(runtime)`: one map per registered worker, read from atomics and the registry.
/// On a dirty scheduler: at thousands of streams it takes milliseconds (15 ms at 5,000).
#[rustler::nif(schedule = "DirtyCpu")]
fn stream_info<'a>(env: Env<'a>, runtime: ResourceArc<TelemetryRuntime>) -> Vec<Term<'a>> {
    runtime
        .manager
        .registry()
        .all()
        .iter()
        .map(|(_, registration)| terms::stream_info_term(env, registration))
        .collect()
}
