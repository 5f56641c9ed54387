//! Every atom the NIF ever sends. Fixed atoms come from `rustler::atoms!`; catalog names are
//! made once in `load`, so nothing a worker sends can ever create one.

use std::sync::OnceLock;

use ahash::AHashMap;
use rustler::{Atom, Env};

use snakepit_telemetry_core::catalog::{Catalog, NameId};

rustler::atoms! {
    ok,
    error,
    nil,
    busy,
    // Messages to the owning process.
    snakepit_telemetry_batch,
    snakepit_telemetry_stream,
    connecting,
    connected,
    closed,
    // Close reasons.
    unregistered,
    replaced,
    worker_closed,
    stream_error,
    connect_failed,
    panicked,
    shutdown,
    receiver_gone,
    // Errors at the API.
    invalid_endpoint,
    invalid_metadata,
    invalid_option,
    invalid_app_event,
    runtime_failed,
    // Option and report keys.
    app_events,
    native_time_per_second,
    max_buffer_size,
    max_batch_size,
    max_in_flight_batches,
    runtime_threads,
    node,
    worker_id,
    endpoint,
    generation,
    status,
    connected_since,
    received,
    emitted,
    dropped,
    capabilities,
    buffered,
    // Drop reasons (see counters.rs).
    unknown_event,
    invalid_measurement,
    decode_error,
    overflow,
    undeliverable,
    disabled,
    filtered_out,
    sampled_out,
    // Settings.
    enabled,
    sampling_rate,
    rules,
    allow,
    deny,
    invalid_rate,
    invalid_pattern,
    invalid_settings,
    unknown_worker,
    // Catalog description.
    event,
    worker_name,
    measurements,
    metadata,
    events,
    measurement_keys,
    native_time_keys,
    metadata_keys,
}

static BUILTIN: OnceLock<Box<[Atom]>> = OnceLock::new();

/// Makes the atoms of every built-in catalog name; called from the NIF's `load`.
pub fn load(env: Env) -> bool {
    let catalog = Catalog::builtin();
    let made: Result<Box<[Atom]>, _> = catalog.names().iter().map(|n| Atom::from_str(env, n)).collect();
    match made {
        Ok(atoms) => {
            // A reload of the same library finds them already made.
            let _ = BUILTIN.set(atoms);
            true
        }
        Err(_) => false,
    }
}

/// One atom per [`NameId`] of a catalog: the built-in ones from load, the application's from
/// the atoms its config already holds.
pub struct AtomTable {
    atoms: Box<[Atom]>,
}

impl AtomTable {
    /// `app_atoms` maps each application-defined name to the atom the config passed in.
    /// Returns `None` when a name has no atom (which `start` turns into an error).
    pub fn for_catalog(catalog: &Catalog, app_atoms: &AHashMap<String, Atom>) -> Option<AtomTable> {
        let builtin = BUILTIN.get()?;
        let atoms = catalog
            .names()
            .iter()
            .enumerate()
            .map(|(id, name)| builtin.get(id).copied().or_else(|| app_atoms.get(name).copied()))
            .collect::<Option<Box<[Atom]>>>()?;
        Some(AtomTable { atoms })
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
    }
}
