//! Event batches to terms, for the receiving process. A batch of [`EventRecord`]s becomes
//! one message:
//!
//! ```text
//! {:snakepit_telemetry_batch, ticket, worker_id, generation, node,
//!  [{event_name :: [atom], measurements :: map | [{key, value}], metadata :: map | [{key, value}]}, ...]}
//! ```
//!
//! Every atom comes from the [`AtomTable`]; worker-sent strings stay binaries. The worker's
//! registration metadata (and `worker_id`, `node`, `timestamp_ns`, `correlation_id`) win over
//! keys of the same name the worker sends, so a worker cannot pose as another.
//!
//! Maps of more than 32 keys are hash maps, and building those in a process-independent env
//! off the schedulers crashes OTP 25 (erlang/otp#8208). So a map is built here only up to 32
//! keys (a flat map); a larger one is sent as a list of pairs and the receiving process makes
//! the map on its scheduler (`:maps.from_list/1`).

use std::sync::{Arc, PoisonError, RwLock};

use rustler::{Atom, Encoder, Env, ResourceArc, Term};

use crate::atoms::{self, AtomTable};
use crate::flow::BatchTicket;
use snakepit_telemetry_core::catalog::{Catalog, NameId};
use snakepit_telemetry_core::translate::{EventRecord, MetaKey, Value};

/// The most keys of a map built off the schedulers: larger maps are hash maps.
pub const FLATMAP_MAX_KEYS: usize = 32;

/// A registration metadata value (from `register_worker/3` opts).
#[derive(Clone, Debug)]
pub enum StaticValue {
    Atom(Atom),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Encoder for StaticValue {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            StaticValue::Atom(a) => a.encode(env),
            StaticValue::Int(i) => i.encode(env),
            StaticValue::Float(f) => f.encode(env),
            StaticValue::Str(s) => s.encode(env),
        }
    }
}

fn value_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Int(i) => i.encode(env),
        // Finite: translate.rs drops non-finite floats.
        Value::Float(f) => f.encode(env),
        Value::Str(s) => s.encode(env),
    }
}

/// What every event of one worker carries, fixed at registration.
pub struct WorkerMeta {
    pub worker_id: String,
    pub generation: u64,
    pub static_metadata: Vec<(Atom, StaticValue)>,
    /// Catalog ids of keys set here, skipped when the worker sends them too.
    pub reserved: Vec<NameId>,
}

/// The catalog with its atoms: everything needed to turn records into terms.
pub struct TermEncoder {
    pub catalog: Arc<Catalog>,
    pub atoms: AtomTable,
    /// The node name put in every event; `set_node` changes it when the node is renamed.
    node: RwLock<Atom>,
    ids: FixedIds,
}

struct FixedIds {
    worker_id: Option<NameId>,
    node: Option<NameId>,
    timestamp_ns: Option<NameId>,
    correlation_id: Option<NameId>,
}

impl TermEncoder {
    pub fn new(catalog: Arc<Catalog>, atoms: AtomTable, node: Atom) -> TermEncoder {
        let ids = FixedIds {
            worker_id: catalog.metadata_key("worker_id"),
            node: catalog.metadata_key("node"),
            timestamp_ns: catalog.metadata_key("timestamp_ns"),
            correlation_id: catalog.metadata_key("correlation_id"),
        };
        TermEncoder { catalog, atoms, node: RwLock::new(node), ids }
    }

    pub fn node(&self) -> Atom {
        *self.node.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_node(&self, node: Atom) {
        *self.node.write().unwrap_or_else(PoisonError::into_inner) = node;
    }

    /// The ids a worker's own metadata may not override: the fixed keys plus its registration keys.
    pub fn reserved_ids(&self, static_keys: &[&str]) -> Vec<NameId> {
        let fixed = [self.ids.worker_id, self.ids.node, self.ids.timestamp_ns];
        let registered = static_keys.iter().map(|k| self.catalog.metadata_key(k));
        fixed.into_iter().chain(registered).flatten().collect()
    }

    pub fn encode_batch<'a>(
        &self,
        env: Env<'a>,
        ticket: &ResourceArc<BatchTicket>,
        worker: &WorkerMeta,
        events: &[EventRecord],
    ) -> Term<'a> {
        let shared = SharedTerms::new(env, self, worker);
        let mut names: Vec<Option<Term<'a>>> = vec![None; self.catalog.events().len()];
        let list: Vec<Term<'a>> = events
            .iter()
            .map(|record| {
                let name = *names[record.event as usize].get_or_insert_with(|| self.event_name(env, record));
                let measurements = self.measurements(env, record);
                let metadata = self.metadata(env, &shared, worker, record);
                (name, measurements, metadata).encode(env)
            })
            .collect();
        let batch = atoms::snakepit_telemetry_batch();
        (batch, ticket.clone(), shared.worker_id, worker.generation, shared.node, list).encode(env)
    }

    fn event_name<'a>(&self, env: Env<'a>, record: &EventRecord) -> Term<'a> {
        let spec = self.catalog.event(record.event);
        let parts: Vec<Atom> = spec.name.iter().map(|id| self.atoms.get(*id)).collect();
        parts.encode(env)
    }

    fn measurements<'a>(&self, env: Env<'a>, record: &EventRecord) -> Term<'a> {
        let keys: Vec<Term<'a>> =
            record.measurements.iter().map(|(k, _)| self.atoms.get(*k).encode(env)).collect();
        let values: Vec<Term<'a>> = record.measurements.iter().map(|(_, v)| value_term(env, v)).collect();
        map_of(env, &keys, &values)
    }

    fn metadata<'a>(
        &self,
        env: Env<'a>,
        shared: &SharedTerms<'a>,
        worker: &WorkerMeta,
        record: &EventRecord,
    ) -> Term<'a> {
        let capacity = shared.keys.len() + record.metadata.len() + 2;
        let mut keys = Vec::with_capacity(capacity);
        let mut values = Vec::with_capacity(capacity);
        keys.extend_from_slice(&shared.keys);
        values.extend_from_slice(&shared.values);
        keys.push(shared.timestamp_key);
        values.push(record.timestamp_ns.encode(env));
        // Always present, nil when the worker sent none (as Snakepit's stream manager does);
        // a `correlation_id` in the worker's own metadata never replaces it.
        keys.push(shared.correlation_key);
        if record.correlation_id.is_empty() {
            values.push(rustler::types::atom::nil().encode(env));
        } else {
            values.push(record.correlation_id.encode(env));
        }
        for (key, value) in &record.metadata {
            let key = match key {
                MetaKey::Known(id) => {
                    let overridden = worker.reserved.contains(id) || Some(*id) == self.ids.correlation_id;
                    if overridden {
                        continue;
                    }
                    self.atoms.get(*id).encode(env)
                }
                MetaKey::Other(name) => name.encode(env),
            };
            keys.push(key);
            values.push(value.encode(env));
        }
        map_of(env, &keys, &values)
    }
}

/// Terms shared by every event of a batch, made once per batch.
struct SharedTerms<'a> {
    worker_id: Term<'a>,
    node: Term<'a>,
    keys: Vec<Term<'a>>,
    values: Vec<Term<'a>>,
    timestamp_key: Term<'a>,
    correlation_key: Term<'a>,
}

impl<'a> SharedTerms<'a> {
    fn new(env: Env<'a>, encoder: &TermEncoder, worker: &WorkerMeta) -> SharedTerms<'a> {
        let worker_id = worker.worker_id.encode(env);
        let node = encoder.node().encode(env);
        let mut keys = vec![atoms::worker_id().encode(env), atoms::node().encode(env)];
        let mut values = vec![worker_id, node];
        for (key, value) in &worker.static_metadata {
            keys.push(key.encode(env));
            values.push(value.encode(env));
        }
        let atom_of = |id: Option<NameId>, fallback: &str| match id {
            Some(id) => encoder.atoms.get(id).encode(env),
            None => fallback.encode(env),
        };
        SharedTerms {
            worker_id,
            node,
            keys,
            values,
            timestamp_key: atom_of(encoder.ids.timestamp_ns, "timestamp_ns"),
            correlation_key: atom_of(encoder.ids.correlation_id, "correlation_id"),
        }
    }
}

/// A map from parallel key and value lists, or, past [`FLATMAP_MAX_KEYS`], the list of pairs
/// the receiver turns into a map. If two keys are equal (which the callers rule out), the
/// later one wins instead of the event being lost.
fn map_of<'a>(env: Env<'a>, keys: &[Term<'a>], values: &[Term<'a>]) -> Term<'a> {
    if keys.len() > FLATMAP_MAX_KEYS {
        let pairs: Vec<Term<'a>> = keys.iter().zip(values).map(|(k, v)| (*k, *v).encode(env)).collect();
        return pairs.encode(env);
    }
    if let Ok(map) = Term::map_from_term_arrays(env, keys, values) {
        return map;
    }
    keys.iter().zip(values).fold(Term::map_new(env), |map, (k, v)| map.map_put(*k, *v).unwrap_or(map))
}
