//! The event catalog as the stream tasks use it: which worker events exist, which measurement
//! keys they may carry, which metadata keys become atoms.
//!
//! The catalog file has one reader, `Snakepit.Telemetry.Catalog` (Elixir, at compile time);
//! the NIF's `start` hands what it read over as a [`CatalogSpec`], together with the atoms,
//! so this crate never parses the file and the NIF never makes an atom from a string. Names
//! are interned to [`NameId`]s, which `atoms.rs` maps 1:1 to those atoms; this module stays
//! free of NIF types so `cargo test` covers it.

use ahash::AHashMap;

/// Index of an interned name (an event name part or a key); maps 1:1 to an atom.
pub type NameId = u32;

/// Index of an [`EventSpec`] in its catalog.
pub type EventIndex = u32;

/// What Elixir hands over: the allowlists and the worker events (catalog and app events).
#[derive(Clone, Debug, Default)]
pub struct CatalogSpec {
    /// Measurement keys allowed on every worker event, each with whether the worker sends it
    /// in nanoseconds (delivered in `:native` time units).
    pub measurement_keys: Vec<(String, bool)>,
    /// Metadata keys that become atoms; any other key stays a binary.
    pub metadata_keys: Vec<String>,
    pub events: Vec<WorkerEventSpec>,
}

/// One event a worker may send.
#[derive(Clone, Debug)]
pub struct WorkerEventSpec {
    /// The dotted name the worker sends (`tool.execution.stop`).
    pub worker_name: String,
    /// The `:telemetry` event name, one string per atom.
    pub event: Vec<String>,
    /// Measurement keys this event may carry beyond the global allowlist.
    pub measurements: Vec<String>,
}

/// An allowed measurement key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeasurementKey {
    pub id: NameId,
    pub native_time: bool,
}

/// A worker event the catalog accepts.
#[derive(Debug)]
pub struct EventSpec {
    /// The `:telemetry` event name, one id per part.
    pub name: Box<[NameId]>,
    /// The dotted name a worker sends.
    pub worker_name: Box<str>,
    /// Measurement keys allowed for this event beyond the global allowlist.
    pub own_measurements: Box<[MeasurementKey]>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CatalogError {
    /// Two events share a worker name.
    DuplicateEvent(String),
    /// The worker name is not dotted lowercase `[a-z0-9_]` segments.
    InvalidWorkerName(String),
    /// The event name is empty.
    EmptyEventName(String),
}

/// Interned names: every string that becomes an atom, each with a stable id.
#[derive(Default, Debug)]
pub struct Names {
    names: Vec<Box<str>>,
    ids: AHashMap<Box<str>, NameId>,
}

impl Names {
    fn intern(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as NameId;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    pub fn get(&self, name: &str) -> Option<NameId> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: NameId) -> &str {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Every name, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }
}

#[derive(Debug)]
pub struct Catalog {
    names: Names,
    events: Vec<EventSpec>,
    events_by_worker_name: AHashMap<Box<str>, EventIndex>,
    measurement_keys: AHashMap<Box<str>, MeasurementKey>,
    metadata_keys: AHashMap<Box<str>, NameId>,
}

impl Catalog {
    /// Builds the catalog, checking that worker names are dotted lowercase and unique.
    pub fn new(spec: &CatalogSpec) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog {
            names: Names::default(),
            events: Vec::with_capacity(spec.events.len()),
            events_by_worker_name: AHashMap::new(),
            measurement_keys: AHashMap::new(),
            metadata_keys: AHashMap::new(),
        };
        for (name, native_time) in &spec.measurement_keys {
            let id = catalog.names.intern(name);
            catalog
                .measurement_keys
                .insert(name.as_str().into(), MeasurementKey { id, native_time: *native_time });
        }
        for key in &spec.metadata_keys {
            let id = catalog.names.intern(key);
            catalog.metadata_keys.insert(key.as_str().into(), id);
        }
        for event in &spec.events {
            catalog.add_event(event)?;
        }
        Ok(catalog)
    }

    fn add_event(&mut self, event: &WorkerEventSpec) -> Result<(), CatalogError> {
        if !is_dotted_name(&event.worker_name) {
            return Err(CatalogError::InvalidWorkerName(event.worker_name.clone()));
        }
        if event.event.is_empty() {
            return Err(CatalogError::EmptyEventName(event.worker_name.clone()));
        }
        if self.events_by_worker_name.contains_key(event.worker_name.as_str()) {
            return Err(CatalogError::DuplicateEvent(event.worker_name.clone()));
        }
        let name: Box<[NameId]> = event.event.iter().map(|p| self.names.intern(p)).collect();
        let own_measurements = event
            .measurements
            .iter()
            .filter(|key| !self.measurement_keys.contains_key(key.as_str()))
            .map(|key| MeasurementKey { id: self.names.intern(key), native_time: false })
            .collect();
        let index = self.events.len() as EventIndex;
        self.events_by_worker_name.insert(event.worker_name.as_str().into(), index);
        self.events.push(EventSpec {
            name,
            worker_name: event.worker_name.as_str().into(),
            own_measurements,
        });
        Ok(())
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The event a worker means by this dotted name, if the catalog has it.
    pub fn event_index(&self, worker_name: &str) -> Option<EventIndex> {
        self.events_by_worker_name.get(worker_name).copied()
    }

    pub fn event(&self, index: EventIndex) -> &EventSpec {
        &self.events[index as usize]
    }

    pub fn events(&self) -> &[EventSpec] {
        &self.events
    }

    /// The measurement key `key` of `event`, if it is allowed.
    pub fn measurement_key(&self, event: &EventSpec, key: &str) -> Option<MeasurementKey> {
        if let Some(found) = self.measurement_keys.get(key) {
            return Some(*found);
        }
        let id = self.names.get(key)?;
        event.own_measurements.iter().find(|m| m.id == id).copied()
    }

    /// The atom id of an allowlisted metadata key; other keys stay binaries.
    pub fn metadata_key(&self, key: &str) -> Option<NameId> {
        self.metadata_keys.get(key).copied()
    }
}

/// Dotted lowercase name: `[a-z0-9_]+(\.[a-z0-9_]+)*`.
pub fn is_dotted_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// A small catalog for the tests of this crate (the real one comes from Elixir).
#[cfg(test)]
pub fn test_catalog() -> Catalog {
    let event = |worker_name: &str, event: &str, own: &[&str]| WorkerEventSpec {
        worker_name: worker_name.into(),
        event: event.split('.').map(String::from).collect(),
        measurements: own.iter().map(|s| s.to_string()).collect(),
    };
    let spec = CatalogSpec {
        measurement_keys: vec![
            ("duration".into(), true),
            ("count".into(), false),
            ("cpu_percent".into(), false),
            ("bytes".into(), false),
        ],
        metadata_keys: ["tool", "worker_id", "node", "timestamp_ns", "correlation_id", "pool_name"]
            .map(String::from)
            .to_vec(),
        events: vec![
            event("python.call.start", "snakepit.python.call.start", &[]),
            event("python.call.stop", "snakepit.python.call.stop", &[]),
            event("python.call.exception", "snakepit.python.call.exception", &[]),
            event("python.cpu.sampled", "snakepit.python.cpu.sampled", &[]),
            event("python.gc.completed", "snakepit.python.gc.completed", &[]),
            event("tool.execution.start", "snakepit.python.tool.execution.start", &[]),
            event("tool.execution.stop", "snakepit.python.tool.execution.stop", &[]),
            event("tool.result_size", "snakepit.python.tool.result_size", &[]),
            event("myapp.model.loaded", "myapp.model.loaded", &["weights", "duration"]),
        ],
    };
    Catalog::new(&spec).expect("the test catalog is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(catalog: &Catalog, index: EventIndex) -> Vec<&str> {
        catalog.event(index).name.iter().map(|id| catalog.names().name(*id)).collect()
    }

    #[test]
    fn worker_names_map_to_event_names() {
        let catalog = test_catalog();
        let tool = catalog.event_index("tool.execution.stop").expect("tool.execution.stop");
        assert_eq!(parts(&catalog, tool), ["snakepit", "python", "tool", "execution", "stop"]);
        assert_eq!(catalog.event_index("tool.execution"), None);
        assert_eq!(catalog.event_index("snakepit.python.tool.execution.stop"), None);
    }

    #[test]
    fn measurement_allowlist_and_native_time_units() {
        let catalog = test_catalog();
        let event = catalog.event(catalog.event_index("tool.execution.stop").expect("event"));
        let duration = catalog.measurement_key(event, "duration").expect("duration");
        assert!(duration.native_time);
        assert_eq!(catalog.names().name(duration.id), "duration");
        assert!(!catalog.measurement_key(event, "count").expect("count").native_time);
        assert_eq!(catalog.measurement_key(event, "not_a_key"), None);
    }

    #[test]
    fn own_measurements_belong_to_their_event_only() {
        let catalog = test_catalog();
        let own = catalog.event(catalog.event_index("myapp.model.loaded").expect("app event"));
        assert!(catalog.measurement_key(own, "weights").is_some());
        assert!(catalog.measurement_key(own, "duration").expect("global key").native_time);
        let other = catalog.event(catalog.event_index("tool.execution.stop").expect("event"));
        assert_eq!(catalog.measurement_key(other, "weights"), None);
    }

    #[test]
    fn metadata_allowlist() {
        let catalog = test_catalog();
        let tool = catalog.metadata_key("tool").expect("tool is allowlisted");
        assert_eq!(catalog.names().name(tool), "tool");
        assert_eq!(catalog.metadata_key("user_secret"), None);
    }

    #[test]
    fn names_are_interned_once() {
        let catalog = test_catalog();
        let all: Vec<&str> = catalog.names().iter().collect();
        let mut unique = all.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(all.len(), unique.len());
        assert_eq!(catalog.names().len(), all.len());
        for (id, name) in all.iter().enumerate() {
            assert_eq!(catalog.names().get(name), Some(id as NameId));
        }
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let event = |name: &str, parts: &[&str]| WorkerEventSpec {
            worker_name: name.into(),
            event: parts.iter().map(|s| s.to_string()).collect(),
            measurements: vec![],
        };
        let with = |events: Vec<WorkerEventSpec>| Catalog::new(&CatalogSpec { events, ..Default::default() });
        assert_eq!(
            with(vec![event("a.b", &["a"]), event("a.b", &["b"])]).err(),
            Some(CatalogError::DuplicateEvent("a.b".into()))
        );
        assert_eq!(
            with(vec![event("Bad Name", &["a"])]).err(),
            Some(CatalogError::InvalidWorkerName("Bad Name".into()))
        );
        assert_eq!(
            with(vec![event("a..b", &["a"])]).err(),
            Some(CatalogError::InvalidWorkerName("a..b".into()))
        );
        assert_eq!(with(vec![event("a.b", &[])]).err(), Some(CatalogError::EmptyEventName("a.b".into())));
    }
}
