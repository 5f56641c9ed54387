//! Event batches to terms. The stream task sends the receiving process one small message per
//! batch ([`TermEncoder::envelope`]):
//!
//! ```text
//! {:snakepit_telemetry_batch, batch, worker_id, generation, node}
//! ```
//!
//! and the receiver has the events made into terms on its own heap (`event_batch.rs`,
//! [`TermEncoder::encode_events`]), a chunk per call:
//!
//! ```text
//! [{event_name :: [atom], measurements :: map, metadata :: map}, ...]
//! ```
//!
//! Every atom comes from the [`AtomTable`]; worker-sent strings stay binaries. The worker's
//! registration metadata (and `worker_id`, `node`, `timestamp_ns`, `correlation_id`) win over
//! keys of the same name the worker sends, so a worker cannot pose as another.
//!
//! An event whose metadata (or measurement keys) match the previous event's in the chunk,
//! as a tool emitting the same event over and over sends them, gets its maps as updates of
//! the previous event's maps (`enif_make_map_update`): only the values that differ
//! (the timestamp, say) are written, the keys tuple is shared and the key strings are not
//! made again, and the VM skips sorting and checking the keys.
//!
//! Maps of any size are made here, in the receiver's env: maps of more than 32 keys are hash
//! maps, which OTP 25 crashes building in a process-independent env (erlang/otp#8208), where
//! the terms were made before 3e64b61 (a larger map then came as a list of pairs), and which
//! `enif_make_map_from_arrays` builds wrongly when keys repeat (erlang/otp#10975; see
//! [`map_of`]). Wide events get the updates above as well.

use std::mem::MaybeUninit;
use std::sync::{Arc, PoisonError, RwLock};

use rustler::sys::{enif_make_map_from_arrays, ErlNifTerm};
use rustler::{Atom, Encoder, Env, ResourceArc, Term};

use crate::atoms::{self, AtomTable};
use crate::event_batch::EventBatch;
use snakepit_telemetry_core::catalog::{Catalog, NameId};
use snakepit_telemetry_core::translate::{EventRecord, MetaKey, Value};

/// The most keys of a flat map: larger maps are hash maps.
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

    /// The message that hands `batch` to the receiving process, which makes its events'
    /// terms itself ([`TermEncoder::encode_events`], `event_batch.rs`).
    pub fn envelope<'a>(
        &self,
        env: Env<'a>,
        batch: &ResourceArc<EventBatch>,
        worker: &WorkerMeta,
    ) -> Term<'a> {
        let tag = atoms::snakepit_telemetry_batch();
        (tag, batch.clone(), worker.worker_id.as_str(), worker.generation, self.node()).encode(env)
    }

    /// The list of `records`' events, in order, while `more` allows another after the one
    /// just made (the first is always made); returns it with the number of records made.
    pub fn encode_events<'a>(
        &self,
        env: Env<'a>,
        worker: &WorkerMeta,
        records: &[EventRecord],
        mut more: impl FnMut(&EventRecord) -> bool,
    ) -> (Term<'a>, usize) {
        let shared = SharedTerms::new(env, self, worker);
        let mut names: Vec<Option<Term<'a>>> = vec![None; self.catalog.events().len()];
        // Key and value lists reused by every map of the chunk.
        let mut scratch = Scratch::new(self.catalog.names().len());
        let mut list: Vec<Term<'a>> = Vec::with_capacity(records.len());
        let mut previous: Option<Previous<'a, '_>> = None;
        for record in records {
            let name = *names[record.event as usize].get_or_insert_with(|| self.event_name(env, record));
            let like = previous.as_ref();
            let measurements = like
                .and_then(|p| self.measurements_like(env, p, record))
                .unwrap_or_else(|| self.measurements(env, record, &mut scratch));
            let metadata = like
                .and_then(|p| shared.metadata_like(env, p, record))
                .unwrap_or_else(|| self.metadata(env, &shared, worker, record, &mut scratch));
            list.push((name, measurements, metadata).encode(env));
            previous = Some(Previous { record, measurements, metadata });
            if !more(record) {
                break;
            }
        }
        let made = list.len();
        (list.encode(env), made)
    }

    fn event_name<'a>(&self, env: Env<'a>, record: &EventRecord) -> Term<'a> {
        let spec = self.catalog.event(record.event);
        let parts: Vec<Atom> = spec.name.iter().map(|id| self.atoms.get(*id)).collect();
        parts.encode(env)
    }

    /// The measurements of `record` as an update of the previous event's map: when the keys
    /// are the same, in the same order, and at most one value differs.
    fn measurements_like<'a>(
        &self,
        env: Env<'a>,
        previous: &Previous<'a, '_>,
        record: &EventRecord,
    ) -> Option<Term<'a>> {
        let before = &previous.record.measurements;
        let now = &record.measurements;
        if before.len() != now.len() || !previous.measurements.is_map() {
            return None;
        }
        let mut changed = None;
        for ((key, value), (key_before, value_before)) in now.iter().zip(before) {
            if key != key_before {
                return None;
            }
            if !same_value(value, value_before) {
                if changed.is_some() {
                    return None;
                }
                changed = Some((key, value));
            }
        }
        match changed {
            None => Some(previous.measurements),
            Some((key, value)) => previous
                .measurements
                .map_update(self.atoms.get(*key).encode(env), value_term(env, value))
                .ok(),
        }
    }

    fn measurements<'a>(&self, env: Env<'a>, record: &EventRecord, scratch: &mut Scratch) -> Term<'a> {
        scratch.clear();
        for (key, value) in &record.measurements {
            scratch.push(self.atoms.get(*key).encode(env), value_term(env, value));
        }
        map_of(env, &scratch.keys, &scratch.values)
    }

    fn metadata<'a>(
        &self,
        env: Env<'a>,
        shared: &SharedTerms<'a>,
        worker: &WorkerMeta,
        record: &EventRecord,
        scratch: &mut Scratch,
    ) -> Term<'a> {
        scratch.clear();
        // The keys go in in term order (atoms by name, then binaries by bytes), which makes
        // the VM's sort of a new map (an insertion sort) one comparison per key: the shared
        // keys are sorted once per batch and merged with the worker's, which arrive sorted
        // by name. Any other order gives the same map, only slower. Of equal keys (which the
        // callers rule out) the later one in the old order, the worker's, still comes last.
        let shared_keys = &shared.keys;
        let mut next = 0;
        for binaries in [false, true] {
            for (key, value) in record.metadata() {
                let (before, key) = match key {
                    MetaKey::Known(id) if !binaries => {
                        let overridden = worker.reserved.contains(&id) || Some(id) == self.ids.correlation_id;
                        if overridden {
                            continue;
                        }
                        (
                            scratch.position(id, || shared.position(false, self.catalog.names().name(id))),
                            self.atoms.get(id).encode(env),
                        )
                    }
                    // A key the catalog does not know may still name a fixed key that is a
                    // binary here (a catalog without `timestamp_ns`): the fixed one wins.
                    MetaKey::Other(name) if binaries => match shared.position(true, name) {
                        0 => (0, name.encode(env)),
                        at if shared_keys[at - 1].binary && shared_keys[at - 1].name == name => continue,
                        at => (at, name.encode(env)),
                    },
                    _ => continue,
                };
                while next < before {
                    scratch.push(shared_keys[next].key, shared.value(env, &shared_keys[next], record));
                    next += 1;
                }
                scratch.push(key, value.encode(env));
            }
            while next < shared_keys.len() && shared_keys[next].binary == binaries {
                scratch.push(shared_keys[next].key, shared.value(env, &shared_keys[next], record));
                next += 1;
            }
        }
        map_of(env, &scratch.keys, &scratch.values)
    }
}

/// The event encoded before, in the same batch, and its maps.
struct Previous<'a, 'r> {
    record: &'r EventRecord,
    measurements: Term<'a>,
    metadata: Term<'a>,
}

/// Equal values that make the same term (`-0.0` and `0.0` are different floats).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        _ => a == b,
    }
}

/// The key and value lists of one map, kept across the events of a batch (one batch, one
/// env: the terms are all made in the env of the batch being encoded). Raw terms, so that
/// they are handed to `enif_make_map_from_arrays` as they are (rustler's
/// `Term::map_from_term_arrays` copies both lists into new vectors on every call).
struct Scratch {
    keys: Vec<ErlNifTerm>,
    values: Vec<ErlNifTerm>,
    /// By catalog id, where an allowlisted metadata key goes among the batch's shared keys
    /// ([`SharedTerms::position`]), once known.
    positions: Vec<Option<usize>>,
}

impl Scratch {
    fn new(names: usize) -> Scratch {
        Scratch { keys: Vec::with_capacity(16), values: Vec::with_capacity(16), positions: vec![None; names] }
    }

    fn position(&mut self, id: NameId, find: impl FnOnce() -> usize) -> usize {
        match self.positions.get_mut(id as usize) {
            Some(Some(position)) => *position,
            Some(slot) => *slot.insert(find()),
            None => find(),
        }
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
    }

    fn push(&mut self, key: Term, value: Term) {
        self.keys.push(key.as_c_arg());
        self.values.push(value.as_c_arg());
    }
}

/// Terms shared by every event of a batch, made once per batch.
struct SharedTerms<'a> {
    /// The metadata keys every event carries, in term order.
    keys: Vec<SharedKey<'a>>,
    /// The keys of the two shared values that differ from event to event.
    timestamp_key: Term<'a>,
    correlation_key: Term<'a>,
    nil: Term<'a>,
}

/// A metadata key every event of the batch carries, and its name for the order of keys.
struct SharedKey<'a> {
    /// A binary (sorts after every atom), not an atom.
    binary: bool,
    name: String,
    key: Term<'a>,
    value: SharedValue<'a>,
}

enum SharedValue<'a> {
    Fixed(Term<'a>),
    Timestamp,
    Correlation,
}

impl<'a> SharedTerms<'a> {
    fn new(env: Env<'a>, encoder: &TermEncoder, worker: &WorkerMeta) -> SharedTerms<'a> {
        let worker_id = worker.worker_id.encode(env);
        let node = encoder.node().encode(env);
        let atom = |name: &str, atom: Atom, value| SharedKey {
            binary: false,
            name: name.to_string(),
            key: atom.encode(env),
            value,
        };
        let mut keys = vec![
            atom("worker_id", atoms::worker_id(), SharedValue::Fixed(worker_id)),
            atom("node", atoms::node(), SharedValue::Fixed(node)),
        ];
        for (key, value) in &worker.static_metadata {
            // A name that cannot be read only costs the VM a longer sort.
            let name = key.to_term(env).atom_to_string().unwrap_or_default();
            keys.push(atom(&name, *key, SharedValue::Fixed(value.encode(env))));
        }
        let catalog_key = |id: Option<NameId>, name: &str, value| match id {
            Some(id) => atom(name, encoder.atoms.get(id), value),
            None => SharedKey { binary: true, name: name.to_string(), key: name.encode(env), value },
        };
        let timestamp = catalog_key(encoder.ids.timestamp_ns, "timestamp_ns", SharedValue::Timestamp);
        let correlation = catalog_key(encoder.ids.correlation_id, "correlation_id", SharedValue::Correlation);
        let (timestamp_key, correlation_key) = (timestamp.key, correlation.key);
        keys.push(timestamp);
        keys.push(correlation);
        // Stable: of equal keys, the later one still comes later.
        keys.sort_by(|a, b| (a.binary, &a.name).cmp(&(b.binary, &b.name)));
        let nil = rustler::types::atom::nil().encode(env);
        SharedTerms { keys, timestamp_key, correlation_key, nil }
    }

    /// The metadata of `record` as an update of the previous event's map: when the worker
    /// sent the same metadata (keys and values), only the timestamp and the correlation id
    /// can differ.
    fn metadata_like(
        &self,
        env: Env<'a>,
        previous: &Previous<'a, '_>,
        record: &EventRecord,
    ) -> Option<Term<'a>> {
        let before = previous.record;
        if !previous.metadata.is_map() || !before.metadata().eq(record.metadata()) {
            return None;
        }
        let mut map = previous.metadata;
        if record.timestamp_ns != before.timestamp_ns {
            map = map.map_update(self.timestamp_key, record.timestamp_ns.encode(env)).ok()?;
        }
        if record.correlation_id() != before.correlation_id() {
            map = map.map_update(self.correlation_key, self.correlation(env, record)).ok()?;
        }
        Some(map)
    }

    /// How many shared keys go before a key of this kind and name (after those equal to it).
    fn position(&self, binary: bool, name: &str) -> usize {
        self.keys.partition_point(|k| (k.binary, k.name.as_str()) <= (binary, name))
    }

    fn value(&self, env: Env<'a>, key: &SharedKey<'a>, record: &EventRecord) -> Term<'a> {
        match key.value {
            SharedValue::Fixed(value) => value,
            SharedValue::Timestamp => record.timestamp_ns.encode(env),
            SharedValue::Correlation => self.correlation(env, record),
        }
    }

    /// Always present, nil when the worker sent none (as Snakepit's stream manager does); a
    /// `correlation_id` in the worker's own metadata never replaces it.
    fn correlation(&self, env: Env<'a>, record: &EventRecord) -> Term<'a> {
        match record.correlation_id() {
            "" => self.nil,
            id => id.encode(env),
        }
    }
}

/// A map from parallel key and value lists (terms of `env`, a process-bound env). If two keys
/// are equal (which the callers rule out), the later one wins instead of the event being lost.
///
/// A map of more than [`FLATMAP_MAX_KEYS`] keys is a hash map, which `enif_make_map_from_arrays`
/// builds wrongly when keys repeat (erlang/otp#10975: duplicates are skipped instead of
/// refused, and a result of 32 keys or fewer is not a valid map), so its size is checked.
fn map_of<'a>(env: Env<'a>, keys: &[ErlNifTerm], values: &[ErlNifTerm]) -> Term<'a> {
    let count = keys.len().min(values.len());
    let mut map = MaybeUninit::uninit();
    // SAFETY: both lists hold at least `count` terms, all made in `env`;
    // enif_make_map_from_arrays reads `count` of each and writes `map` when it returns
    // non-zero (zero: two keys are equal, `map` is not read).
    let made = unsafe {
        enif_make_map_from_arrays(env.as_c_arg(), keys.as_ptr(), values.as_ptr(), count, map.as_mut_ptr())
    };
    if made != 0 {
        // SAFETY: written by the call above, a term of `env`.
        let map = unsafe { Term::new(env, map.assume_init()) };
        if count <= FLATMAP_MAX_KEYS || map.map_size().ok() == Some(count) {
            return map;
        }
    }
    // SAFETY: every raw term in the lists was made in `env`.
    let term = |raw: &ErlNifTerm| unsafe { Term::new(env, *raw) };
    let pairs = keys.iter().map(term).zip(values.iter().map(term));
    pairs.fold(Term::map_new(env), |map, (k, v)| map.map_put(k, v).unwrap_or(map))
}
