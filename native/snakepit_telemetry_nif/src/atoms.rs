//! Every atom the NIF ever sends. Fixed atoms come from `rustler::atoms!` (made at load);
//! catalog names are atoms Elixir already holds and hands over at `start`. Nothing here makes
//! an atom from a string at run time, so nothing a worker sends can ever create one.

use ahash::AHashMap;
use rustler::Atom;

use snakepit_telemetry_core::catalog::{Catalog, NameId};

rustler::atoms! {
    ok,
    error,
    nil,
    true_ = "true",
    false_ = "false",
    // Tool calls and their JSON.
    snakepit_tool_result,
    response,
    timeout,
    grpc,
    transport,
    response_too_large,
    invalid_json,
    invalid_param,
    invalid_params,
    // Messages to the receiving process.
    snakepit_telemetry_batch,
    snakepit_telemetry_stream,
    more,
    done,
    not_streaming,
    connecting,
    connected,
    reconnecting,
    closed,
    opened,
    established,
    reconnected,
    lost,
    ended,
    // Close reasons.
    unregistered,
    replaced,
    worker_closed,
    stream_error,
    connect_failed,
    panicked,
    shutdown,
    // Errors at the API.
    invalid_endpoint,
    invalid_metadata,
    invalid_option,
    invalid_catalog,
    runtime_failed,
    // Option and report keys.
    catalog,
    native_time_per_second,
    max_buffer_size,
    max_buffer_bytes,
    max_batch_size,
    max_batch_bytes,
    max_event_bytes,
    max_metadata_keys,
    max_in_flight_batches,
    min_batch_interval_us,
    runtime_threads,
    receivers,
    partition,
    connect_timeout_ms,
    reconnect_initial_ms,
    reconnect_max_ms,
    grpc_stream,
    excluded_events,
    node,
    worker_id,
    endpoint,
    generation,
    status,
    connected_since,
    attempt,
    last_error,
    received,
    emitted,
    dropped,
    source_dropped,
    capabilities,
    protocol,
    batched,
    single,
    // Drop reasons (see counters.rs).
    unknown_event,
    invalid_measurement,
    decode_error,
    overflow,
    undeliverable,
    disabled,
    filtered_out,
    sampled_out,
    oversize,
    too_many_keys,
    lost_in_transit,
    // Settings.
    enabled,
    sampling_rate,
    sampling_rules,
    patterns,
    rate,
    allow,
    deny,
    invalid_rate,
    invalid_pattern,
    invalid_settings,
    unknown_worker,
    settings,
    // Catalog keys.
    events,
    measurement_keys,
    metadata_keys,
    metadata,
}

/// One atom per [`NameId`] of the catalog, from the atoms Elixir handed over with it.
pub struct AtomTable {
    atoms: Box<[Atom]>,
}

impl AtomTable {
    /// `atoms` maps each catalog name to the atom Elixir passed for it. Returns the first name
    /// without an atom as the error (which `start` turns into `{:error, _}`).
    pub fn for_catalog(catalog: &Catalog, atoms: &AHashMap<String, Atom>) -> Result<AtomTable, String> {
        let atoms = catalog
            .names()
            .iter()
            .map(|name| atoms.get(name).copied().ok_or_else(|| name.to_string()))
            .collect::<Result<Box<[Atom]>, String>>()?;
        Ok(AtomTable { atoms })
    }

    pub fn get(&self, id: NameId) -> Atom {
        self.atoms[id as usize]
    }
}

/// The atom Elixir sees for a drop reason.
pub fn drop_reason(reason: snakepit_telemetry_core::counters::DropReason) -> Atom {
    use snakepit_telemetry_core::counters::DropReason::*;
    match reason {
        UnknownEvent => unknown_event(),
        InvalidMeasurement => invalid_measurement(),
        DecodeError => decode_error(),
        Overflow => overflow(),
        Undeliverable => undeliverable(),
        Disabled => disabled(),
        FilteredOut => filtered_out(),
        SampledOut => sampled_out(),
        Oversize => oversize(),
        TooManyKeys => too_many_keys(),
        LostInTransit => lost_in_transit(),
    }
}
