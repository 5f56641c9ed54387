//! The NIF functions: decode arguments, call into the runtime, map errors to terms. Each
//! returns in microseconds; none does I/O or waits on the runtime.
//!
//! Results are `{:ok, value}` or `{:error, reason}`; a wrongly typed argument raises
//! `ArgumentError` (badarg) from rustler's decoding, which the Elixir layer rules out first.

use std::sync::Arc;

use ahash::AHashMap;
use rustler::{Atom, Encoder, Env, LocalPid, ResourceArc, Term};

use crate::atoms::{self, AtomTable};
use crate::encode::{StaticValue, TermEncoder, WorkerMeta};
use crate::flow::FlowCredit;
use crate::manager::{Command, SendError};
use crate::runtime::{RuntimeOptions, TelemetryRuntime};
use crate::stream_task::{close_reason_term, StreamLimits, StreamTask};
use snakepit_telemetry_core::catalog::{builtin, AppEvent, Catalog};
use snakepit_telemetry_core::client::WorkerAddress;
use snakepit_telemetry_core::registry::{StreamState, StreamStatus};
use snakepit_telemetry_core::settings::{SamplingRule, Settings, SettingsError};
use snakepit_telemetry_core::translate::NativeTime;

/// Errors at the NIF boundary, encoded as the `reason` of `{:error, reason}`.
pub enum ApiError {
    Busy,
    UnknownWorker,
    InvalidEndpoint(String),
    InvalidMetadata(Atom),
    InvalidOption(Atom),
    InvalidAppEvent(String),
    InvalidSettings,
    InvalidRate(f64),
    InvalidPattern(String),
    RuntimeFailed(String),
}

impl Encoder for ApiError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            ApiError::Busy => atoms::busy().encode(env),
            ApiError::UnknownWorker => atoms::unknown_worker().encode(env),
            ApiError::InvalidSettings => atoms::invalid_settings().encode(env),
            ApiError::InvalidRate(rate) => (atoms::invalid_rate(), *rate).encode(env),
            ApiError::InvalidPattern(p) => (atoms::invalid_pattern(), p.as_str()).encode(env),
            ApiError::InvalidEndpoint(m) => (atoms::invalid_endpoint(), m.as_str()).encode(env),
            ApiError::InvalidMetadata(key) => (atoms::invalid_metadata(), *key).encode(env),
            ApiError::InvalidOption(key) => (atoms::invalid_option(), *key).encode(env),
            ApiError::InvalidAppEvent(m) => (atoms::invalid_app_event(), m.as_str()).encode(env),
            ApiError::RuntimeFailed(m) => (atoms::runtime_failed(), m.as_str()).encode(env),
        }
    }
}

impl From<SendError> for ApiError {
    fn from(error: SendError) -> ApiError {
        match error {
            SendError::Busy => ApiError::Busy,
            SendError::Stopped => ApiError::RuntimeFailed("the stream manager has stopped".into()),
        }
    }
}

fn option<'a, T: rustler::Decoder<'a>>(options: Term<'a>, key: Atom, default: T) -> Result<T, ApiError> {
    match options.map_get(key) {
        Ok(value) => value.decode().map_err(|_| ApiError::InvalidOption(key)),
        Err(_) => Ok(default),
    }
}

/// Decodes `%{enabled:, sampling_rate:, rules: [{[pattern], rate}], allow:, deny:}`.
fn decode_settings(term: Term) -> Result<Settings, ApiError> {
    let field = |key: Atom| term.map_get(key).map_err(|_| ApiError::InvalidSettings);
    let enabled: bool = field(atoms::enabled())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let sampling_rate: f64 =
        field(atoms::sampling_rate())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let rules: Vec<(Vec<String>, f64)> =
        field(atoms::rules())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let allow: Vec<String> = field(atoms::allow())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let deny: Vec<String> = field(atoms::deny())?.decode().map_err(|_| ApiError::InvalidSettings)?;
    let settings = Settings {
        enabled,
        sampling_rate,
        rules: rules.into_iter().map(|(patterns, rate)| SamplingRule { patterns, rate }).collect(),
        allow,
        deny,
    };
    settings.validate().map_err(|e| match e {
        SettingsError::InvalidRate => {
            let bad = std::iter::once(settings.sampling_rate)
                .chain(settings.rules.iter().map(|r| r.rate))
                .find(|r| !(0.0..=1.0).contains(r))
                .unwrap_or(f64::NAN);
            ApiError::InvalidRate(bad)
        }
        SettingsError::InvalidPattern(p) => ApiError::InvalidPattern(p),
    })?;
    Ok(settings)
}

fn atom_name(env: Env, atom: Atom) -> Result<String, ApiError> {
    atom.encode(env).atom_to_string().map_err(|_| ApiError::InvalidAppEvent("not an atom".into()))
}

/// `start(owner, options)`: starts a runtime whose messages go to `owner`.
/// Options (a map, all optional): `app_events: [{name, [atom], [atom]}]`,
/// `native_time_per_second`, `max_buffer_size`, `max_batch_size`, `max_in_flight_batches`,
/// `runtime_threads`, `node`.
#[rustler::nif]
fn start(env: Env, owner: LocalPid, options: Term) -> Result<ResourceArc<TelemetryRuntime>, ApiError> {
    let raw_events: Vec<(String, Vec<Atom>, Vec<Atom>)> = option(options, atoms::app_events(), Vec::new())?;
    let mut app_events = Vec::with_capacity(raw_events.len());
    let mut app_atoms: AHashMap<String, Atom> = AHashMap::new();
    for (worker_name, event, measurements) in raw_events {
        let mut named = |atoms: &[Atom]| -> Result<Vec<String>, ApiError> {
            atoms
                .iter()
                .map(|atom| {
                    let name = atom_name(env, *atom)?;
                    app_atoms.insert(name.clone(), *atom);
                    Ok(name)
                })
                .collect()
        };
        let event = named(&event)?;
        let measurements = named(&measurements)?;
        app_events.push(AppEvent { worker_name, event, measurements });
    }
    let mut catalog = Catalog::builtin();
    catalog.add_app_events(&app_events).map_err(|e| ApiError::InvalidAppEvent(format!("{e:?}")))?;
    let atom_table = AtomTable::for_catalog(&catalog, &app_atoms)
        .ok_or_else(|| ApiError::RuntimeFailed("catalog atoms were not made at load".into()))?;

    let native_per_second: u64 = option(options, atoms::native_time_per_second(), 1_000_000_000)?;
    let node: Atom = option(options, atoms::node(), atoms::nil())?;
    let positive = |key: Atom, default: usize| -> Result<usize, ApiError> {
        let value: usize = option(options, key, default)?;
        if value == 0 {
            Err(ApiError::InvalidOption(key))
        } else {
            Ok(value)
        }
    };
    let runtime_options = RuntimeOptions {
        threads: positive(atoms::runtime_threads(), 2)?,
        max_in_flight: positive(atoms::max_in_flight_batches(), 4)?,
        limits: StreamLimits {
            max_buffer: positive(atoms::max_buffer_size(), 1024)?,
            max_batch: positive(atoms::max_batch_size(), 256)?,
            native_time: NativeTime::new(native_per_second),
        },
    };
    let encoder = TermEncoder::new(Arc::new(catalog), atom_table, node);
    let runtime = TelemetryRuntime::start(owner, encoder, runtime_options)
        .map_err(|e| ApiError::RuntimeFailed(e.to_string()))?;
    Ok(ResourceArc::new(runtime))
}

/// `register_worker(runtime, worker_id, endpoint, metadata, settings, dispatch)`: starts (or
/// replaces) the worker's stream with these settings in force from its first event.
/// Returns `{:ok, generation}`; the stream's messages carry it.
#[rustler::nif]
fn register_worker(
    env: Env,
    runtime: ResourceArc<TelemetryRuntime>,
    worker_id: String,
    endpoint: String,
    metadata: Vec<(Atom, Term)>,
    settings: Term,
    dispatch: LocalPid,
) -> Result<u64, ApiError> {
    let settings = decode_settings(settings)?;
    let address =
        WorkerAddress::parse(&endpoint).map_err(|e| ApiError::InvalidEndpoint(format!("{endpoint}: {e}")))?;
    let mut static_metadata = Vec::with_capacity(metadata.len());
    let mut static_keys = Vec::with_capacity(metadata.len());
    for (key, value) in metadata {
        let decoded = if let Ok(atom) = value.decode::<Atom>() {
            StaticValue::Atom(atom)
        } else if let Ok(int) = value.decode::<i64>() {
            StaticValue::Int(int)
        } else if let Ok(float) = value.decode::<f64>() {
            StaticValue::Float(float)
        } else if let Ok(text) = value.decode::<String>() {
            StaticValue::Str(text)
        } else {
            return Err(ApiError::InvalidMetadata(key));
        };
        static_keys.push(atom_name(env, key).map_err(|_| ApiError::InvalidMetadata(key))?);
        static_metadata.push((key, decoded));
    }
    let keys: Vec<&str> = static_keys.iter().map(String::as_str).collect();
    let reserved = runtime.encoder.reserved_ids(&keys);

    let generation = runtime.next_generation();
    let state = Arc::new(StreamState::new(worker_id.clone(), endpoint, generation, settings));
    let task = StreamTask {
        state: state.clone(),
        address,
        worker: WorkerMeta { worker_id, generation, static_metadata, reserved },
        encoder: runtime.encoder.clone(),
        limits: runtime.options.limits,
        credit: ResourceArc::new(FlowCredit::new(runtime.options.max_in_flight)),
        dispatch,
        owner: runtime.owner,
    };
    runtime.manager.send(Command::Start(Box::new(task)))?;
    runtime.registry.insert(state);
    Ok(generation)
}

/// `unregister_worker(runtime, worker_id)`: stops the worker's stream and forgets it.
#[rustler::nif]
fn unregister_worker(runtime: ResourceArc<TelemetryRuntime>, worker_id: String) -> Result<u64, ApiError> {
    let state = runtime.registry.get(&worker_id).ok_or(ApiError::UnknownWorker)?;
    runtime.manager.send(Command::Stop { worker_id: worker_id.clone(), generation: state.generation })?;
    runtime.registry.remove(&worker_id);
    Ok(state.generation)
}

/// `update_settings(runtime, worker_id, settings)`: the worker's new settings. The stream
/// applies them to what arrives from now on and sends them to the worker; nothing waits.
#[rustler::nif]
fn update_settings(
    runtime: ResourceArc<TelemetryRuntime>,
    worker_id: String,
    settings: Term,
) -> Result<u64, ApiError> {
    let settings = decode_settings(settings)?;
    let state = runtime.registry.get(&worker_id).ok_or(ApiError::UnknownWorker)?;
    state.set_settings(settings);
    Ok(state.generation)
}

/// `ack(credit)`: the receiver ran the handlers of one batch.
#[rustler::nif]
fn ack(credit: ResourceArc<FlowCredit>) -> Atom {
    credit.release();
    atoms::ok()
}

/// `stream_info(runtime)`: one map per registered worker, read from atomics and the registry.
#[rustler::nif]
fn stream_info<'a>(env: Env<'a>, runtime: ResourceArc<TelemetryRuntime>) -> Term<'a> {
    let list: Vec<Term<'a>> = runtime
        .registry
        .all()
        .iter()
        .map(|state| {
            let counters = state.counters.snapshot();
            let dropped_keys: Vec<Atom> =
                counters.dropped.iter().map(|(r, _)| atoms::drop_reason(*r)).collect();
            let dropped_values: Vec<u64> = counters.dropped.iter().map(|(_, n)| *n).collect();
            let dropped = Term::map_from_arrays(env, &dropped_keys, &dropped_values)
                .unwrap_or_else(|_| Term::map_new(env));
            let status = match state.status() {
                StreamStatus::Connecting => atoms::connecting().encode(env),
                StreamStatus::Connected => atoms::connected().encode(env),
                StreamStatus::Closed(reason) => {
                    (atoms::closed(), close_reason_term(env, &reason)).encode(env)
                }
            };
            let connected_since = match state.connected_since_ms() {
                Some(ms) => ms.encode(env),
                None => atoms::nil().encode(env),
            };
            let keys = [
                atoms::worker_id(),
                atoms::endpoint(),
                atoms::generation(),
                atoms::status(),
                atoms::connected_since(),
                atoms::capabilities(),
                atoms::received(),
                atoms::emitted(),
                atoms::dropped(),
            ];
            let values = [
                state.worker_id.encode(env),
                state.endpoint.encode(env),
                state.generation.encode(env),
                status,
                connected_since,
                state.capabilities().encode(env),
                counters.received.encode(env),
                counters.emitted.encode(env),
                dropped,
            ];
            Term::map_from_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        })
        .collect();
    list.encode(env)
}

/// `catalog_info()`: the catalog this library was built with, as strings, so a test can
/// check that Rust, Elixir and Python read the same file the same way.
#[rustler::nif]
fn catalog_info<'a>(env: Env<'a>) -> Term<'a> {
    let events: Vec<Term<'a>> = builtin::EVENTS
        .iter()
        .map(|e| {
            let worker_name = match e.worker_name {
                Some(name) => name.encode(env),
                None => atoms::nil().encode(env),
            };
            let keys = [atoms::event(), atoms::worker_name(), atoms::measurements(), atoms::metadata()];
            let values = [
                e.event.join(".").encode(env),
                worker_name,
                e.measurements.encode(env),
                e.metadata.encode(env),
            ];
            Term::map_from_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
        })
        .collect();
    let measurement_keys: Vec<&str> = builtin::MEASUREMENT_KEYS.iter().map(|k| k.name).collect();
    let native_time_keys: Vec<&str> =
        builtin::MEASUREMENT_KEYS.iter().filter(|k| k.native_time).map(|k| k.name).collect();
    let keys =
        [atoms::measurement_keys(), atoms::native_time_keys(), atoms::metadata_keys(), atoms::events()];
    let values = [
        measurement_keys.encode(env),
        native_time_keys.encode(env),
        builtin::METADATA_KEYS.encode(env),
        events.encode(env),
    ];
    Term::map_from_arrays(env, &keys, &values).unwrap_or_else(|_| Term::map_new(env))
}
