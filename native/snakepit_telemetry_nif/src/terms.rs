//! Terms out, each mapping in one place: API errors, close reasons, stream status, drop
//! counters, settings and the per-worker report of `stream_info`. (Event batches are
//! `encode.rs`.) These run inside NIF calls, on a scheduler, so maps of any size are safe.

use rustler::{Atom, Encoder, Env, Term};
use snakepit_telemetry_core::counters::CounterSnapshot;
use snakepit_telemetry_core::registry::{CloseReason, StreamStatus};
use snakepit_telemetry_core::settings::Settings;

use crate::atoms;
use crate::manager::Registration;

/// Errors at the NIF boundary, encoded as the `reason` of `{:error, reason}`.
pub enum ApiError {
    UnknownWorker,
    InvalidEndpoint(String),
    InvalidMetadata(Atom),
    InvalidOption(Atom),
    InvalidCatalog(String),
    InvalidSettings,
    InvalidRate(f64),
    InvalidPattern(String),
    RuntimeFailed(String),
}

impl Encoder for ApiError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            ApiError::UnknownWorker => atoms::unknown_worker().encode(env),
            ApiError::InvalidSettings => atoms::invalid_settings().encode(env),
            ApiError::InvalidRate(rate) if rate.is_finite() => (atoms::invalid_rate(), *rate).encode(env),
            ApiError::InvalidRate(_) => (atoms::invalid_rate(), atoms::nil()).encode(env),
            ApiError::InvalidPattern(p) => (atoms::invalid_pattern(), p.as_str()).encode(env),
            ApiError::InvalidEndpoint(m) => (atoms::invalid_endpoint(), m.as_str()).encode(env),
            ApiError::InvalidMetadata(key) => (atoms::invalid_metadata(), *key).encode(env),
            ApiError::InvalidOption(key) => (atoms::invalid_option(), *key).encode(env),
            ApiError::InvalidCatalog(m) => (atoms::invalid_catalog(), m.as_str()).encode(env),
            ApiError::RuntimeFailed(m) => (atoms::runtime_failed(), m.as_str()).encode(env),
        }
    }
}

/// An atom, or `{atom, message}`.
pub fn close_reason_term<'a>(env: Env<'a>, reason: &CloseReason) -> Term<'a> {
    match reason {
        CloseReason::Unregistered => atoms::unregistered().encode(env),
        CloseReason::Replaced => atoms::replaced().encode(env),
        CloseReason::WorkerClosed => atoms::worker_closed().encode(env),
        CloseReason::StreamError(m) => (atoms::stream_error(), m.as_str()).encode(env),
        CloseReason::ConnectFailed(m) => (atoms::connect_failed(), m.as_str()).encode(env),
        CloseReason::Panicked => atoms::panicked().encode(env),
        CloseReason::Shutdown => atoms::shutdown().encode(env),
    }
}

pub fn status_term<'a>(env: Env<'a>, status: &StreamStatus) -> Term<'a> {
    match status {
        StreamStatus::NotStreaming => atoms::not_streaming().encode(env),
        StreamStatus::Connecting => atoms::connecting().encode(env),
        StreamStatus::Connected => atoms::connected().encode(env),
        StreamStatus::Reconnecting => atoms::reconnecting().encode(env),
        StreamStatus::Closed(reason) => (atoms::closed(), close_reason_term(env, reason)).encode(env),
    }
}

fn map<'a>(env: Env<'a>, keys: &[Term<'a>], values: &[Term<'a>]) -> Term<'a> {
    Term::map_from_term_arrays(env, keys, values).unwrap_or_else(|_| Term::map_new(env))
}

/// `%{reason => count}` with every reason.
pub fn dropped_term<'a>(env: Env<'a>, counters: &CounterSnapshot) -> Term<'a> {
    let keys: Vec<Term<'a>> =
        counters.dropped.iter().map(|(r, _)| atoms::drop_reason(*r).encode(env)).collect();
    let values: Vec<Term<'a>> = counters.dropped.iter().map(|(_, n)| n.encode(env)).collect();
    map(env, &keys, &values)
}

/// The shape `decode::settings` reads.
pub fn settings_term<'a>(env: Env<'a>, settings: &Settings) -> Term<'a> {
    let rules: Vec<(&Vec<String>, f64)> =
        settings.sampling_rules.iter().map(|r| (&r.patterns, r.rate)).collect();
    let keys =
        [atoms::enabled(), atoms::sampling_rate(), atoms::sampling_rules(), atoms::allow(), atoms::deny()]
            .map(|k| k.encode(env));
    let values = [
        settings.enabled.encode(env),
        settings.sampling_rate.encode(env),
        rules.encode(env),
        settings.allow.encode(env),
        settings.deny.encode(env),
    ];
    map(env, &keys, &values)
}

/// One worker's report: ids, endpoint, status, counters, settings, registration metadata.
pub fn stream_info_term<'a>(env: Env<'a>, registration: &Registration) -> Term<'a> {
    let state = &registration.state;
    let counters = state.counters.snapshot();
    let connected_since = match state.connected_since_ms() {
        Some(ms) => ms.encode(env),
        None => atoms::nil().encode(env),
    };
    let last_error = match state.last_error() {
        Some(reason) => close_reason_term(env, &reason),
        None => atoms::nil().encode(env),
    };
    let meta_keys: Vec<Term<'a>> =
        registration.meta.static_metadata.iter().map(|(k, _)| k.encode(env)).collect();
    let meta_values: Vec<Term<'a>> =
        registration.meta.static_metadata.iter().map(|(_, v)| v.encode(env)).collect();
    let keys = [
        atoms::worker_id(),
        atoms::endpoint(),
        atoms::generation(),
        atoms::status(),
        atoms::connected_since(),
        atoms::attempt(),
        atoms::last_error(),
        atoms::capabilities(),
        atoms::protocol(),
        atoms::received(),
        atoms::emitted(),
        atoms::dropped(),
        atoms::source_dropped(),
        atoms::settings(),
        atoms::metadata(),
    ]
    .map(|k| k.encode(env));
    let values = [
        state.worker_id.encode(env),
        state.endpoint.encode(env),
        state.generation.encode(env),
        status_term(env, &state.status()),
        connected_since,
        state.attempt().encode(env),
        last_error,
        state.capabilities().encode(env),
        match state.status() {
            StreamStatus::Connecting | StreamStatus::NotStreaming => atoms::nil(),
            _ if state.batched() => atoms::batched(),
            _ => atoms::single(),
        }
        .encode(env),
        counters.received.encode(env),
        counters.emitted.encode(env),
        dropped_term(env, &counters),
        state.counters.source.snapshot().encode(env),
        settings_term(env, &state.settings()),
        map(env, &meta_keys, &meta_values),
    ];
    map(env, &keys, &values)
}
