//! What `list_streams` reports: one [`StreamState`] per registered worker, shared between the
//! stream task (which writes it) and NIF calls (which read it without touching the task), and
//! the [`Registry`] of registered workers by id.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ahash::AHashMap;
use tokio::sync::watch;

use crate::counters::StreamCounters;
use crate::settings::Settings;

/// Why a stream ended. The first three end the registration's task; any other is a loss (or a
/// failed attempt to open) after which the task tries again with backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// `unregister_worker/1` was called.
    Unregistered,
    /// The worker id was registered again; a new stream took over.
    Replaced,
    /// The worker ended the stream (it closed it or exited).
    WorkerClosed,
    /// The stream failed with a gRPC status or transport error.
    StreamError(String),
    /// The worker could not be reached.
    ConnectFailed(String),
    /// A bug in the stream task: caught, counted, reported; the VM and other streams go on.
    Panicked,
    /// The runtime is shutting down (the owning resource was dropped).
    Shutdown,
}

impl CloseReason {
    /// Whether the registration ends here (no retry follows).
    pub fn is_final(&self) -> bool {
        matches!(self, CloseReason::Unregistered | CloseReason::Replaced | CloseReason::Shutdown)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamStatus {
    /// Registered with `grpc_stream: false`: no stream is opened.
    NotStreaming,
    /// Not connected yet (the first attempt, or retries before any stream opened).
    Connecting,
    Connected,
    /// The stream was lost; the task is retrying.
    Reconnecting,
    Closed(CloseReason),
}

pub struct StreamState {
    pub worker_id: String,
    pub endpoint: String,
    pub generation: u64,
    /// Shared with the registration this one replaced, if any: counts survive re-registering.
    pub counters: Arc<StreamCounters>,
    /// The worker's desired settings; the stream task watches it.
    pub settings: watch::Sender<Arc<Settings>>,
    status: Mutex<StreamStatus>,
    capabilities: Mutex<String>,
    /// Unix milliseconds when the current stream opened, 0 while there is none.
    connected_since_ms: AtomicI64,
    /// Failed attempts since the last stream opened, and why the last attempt or stream ended.
    attempt: AtomicU32,
    last_error: Mutex<Option<CloseReason>>,
    /// When the last open stream was lost, while none is open again.
    lost_at: Mutex<Option<Instant>>,
    /// The last stream opened was `StreamTelemetryBatched` (else `StreamTelemetry`).
    batched: AtomicBool,
}

/// What a registration that replaces another takes over from it.
pub struct Inherited {
    pub counters: Arc<StreamCounters>,
    /// The old one had lost its stream and not reopened it: when, and the attempts since.
    pub lost: Option<(Instant, u32)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StreamState {
    pub fn new(worker_id: String, endpoint: String, generation: u64, settings: Settings) -> StreamState {
        StreamState::with_status(worker_id, endpoint, generation, settings, StreamStatus::Connecting)
    }

    pub fn with_status(
        worker_id: String,
        endpoint: String,
        generation: u64,
        settings: Settings,
        status: StreamStatus,
    ) -> StreamState {
        StreamState {
            worker_id,
            endpoint,
            generation,
            counters: Arc::default(),
            settings: watch::Sender::new(Arc::new(settings)),
            status: Mutex::new(status),
            capabilities: Mutex::new(String::new()),
            connected_since_ms: AtomicI64::new(0),
            attempt: AtomicU32::new(0),
            last_error: Mutex::new(None),
            lost_at: Mutex::new(None),
            batched: AtomicBool::new(false),
        }
    }

    pub fn status(&self) -> StreamStatus {
        lock(&self.status).clone()
    }

    /// Marks the stream open. Returns false if it was closed meanwhile.
    pub fn set_connected(&self, capabilities: &str, batched: bool) -> bool {
        let mut status = lock(&self.status);
        if matches!(*status, StreamStatus::Closed(_)) {
            return false;
        }
        *status = StreamStatus::Connected;
        self.attempt.store(0, Ordering::Release);
        *lock(&self.last_error) = None;
        *lock(&self.lost_at) = None;
        *lock(&self.capabilities) = capabilities.to_string();
        self.batched.store(batched, Ordering::Release);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        self.connected_since_ms.store(now, Ordering::Release);
        true
    }

    /// Records a lost stream or a failed attempt (`attempt` failures in a row; 0 for a loss):
    /// `Connecting` until a stream has opened once, `Reconnecting` after. Returns false if
    /// the registration has ended meanwhile.
    pub fn set_retrying(&self, attempt: u32, error: CloseReason) -> bool {
        let mut status = lock(&self.status);
        match *status {
            StreamStatus::Closed(_) => return false,
            StreamStatus::Connected => {
                *status = StreamStatus::Reconnecting;
                *lock(&self.lost_at) = Some(Instant::now());
            }
            StreamStatus::Reconnecting | StreamStatus::Connecting | StreamStatus::NotStreaming => {}
        }
        self.connected_since_ms.store(0, Ordering::Release);
        self.attempt.store(attempt, Ordering::Release);
        *lock(&self.last_error) = Some(error);
        true
    }

    /// Takes over the counters of the registration this one replaces and, if that one had
    /// lost its stream, the loss: the new stream's first open is then a reconnection.
    pub fn inherit(&mut self, from: &StreamState) -> Inherited {
        self.counters = from.counters.clone();
        let lost = lock(&from.lost_at).map(|at| (at, from.attempt()));
        if let Some((at, attempt)) = lost {
            *lock(&self.status) = StreamStatus::Reconnecting;
            *lock(&self.lost_at) = Some(at);
            self.attempt.store(attempt, Ordering::Release);
            *lock(&self.last_error) = from.last_error();
        }
        Inherited { counters: self.counters.clone(), lost }
    }

    /// Whether the last stream opened was the batched RPC.
    pub fn batched(&self) -> bool {
        self.batched.load(Ordering::Acquire)
    }

    /// Failed attempts since the last stream opened.
    pub fn attempt(&self) -> u32 {
        self.attempt.load(Ordering::Acquire)
    }

    /// Why the last attempt failed or the last stream ended, while not connected.
    pub fn last_error(&self) -> Option<CloseReason> {
        lock(&self.last_error).clone()
    }

    /// Records the end of the registration's task; the first reason wins.
    pub fn set_closed(&self, reason: CloseReason) {
        let mut status = lock(&self.status);
        if !matches!(*status, StreamStatus::Closed(_)) {
            *status = StreamStatus::Closed(reason);
        }
    }

    pub fn capabilities(&self) -> String {
        lock(&self.capabilities).clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// Replaces the settings; the stream task applies them and tells the worker. Never waits.
    pub fn set_settings(&self, settings: Settings) {
        self.settings.send_replace(Arc::new(settings));
    }

    pub fn connected_since_ms(&self) -> Option<i64> {
        match self.connected_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms),
        }
    }
}

/// The registered workers, by id. Generic over the entry so the NIF can keep its own types in
/// it; the lock is held only to insert, remove or copy entries.
pub struct Registry<T> {
    entries: Mutex<AHashMap<String, T>>,
}

impl<T> Default for Registry<T> {
    fn default() -> Registry<T> {
        Registry { entries: Mutex::new(AHashMap::new()) }
    }
}

impl<T: Clone> Registry<T> {
    /// Inserts a worker's entry, returning the one it replaces.
    pub fn insert(&self, worker_id: &str, entry: T) -> Option<T> {
        lock(&self.entries).insert(worker_id.to_string(), entry)
    }

    pub fn remove(&self, worker_id: &str) -> Option<T> {
        lock(&self.entries).remove(worker_id)
    }

    pub fn get(&self, worker_id: &str) -> Option<T> {
        lock(&self.entries).get(worker_id).cloned()
    }

    /// Runs `f` on the entries of all `ids` under one lock, or on none of them: returns the
    /// first id that is not registered instead.
    pub fn with_all<'i, R>(
        &self,
        ids: impl Iterator<Item = &'i str> + Clone,
        f: impl FnOnce(Vec<&T>) -> R,
    ) -> Result<R, &'i str> {
        let entries = lock(&self.entries);
        let mut found = Vec::new();
        for id in ids {
            found.push(entries.get(id).ok_or(id)?);
        }
        Ok(f(found))
    }

    /// A copy of the entries sorted by id, so the lock is held only for the copy.
    pub fn all(&self) -> Vec<(String, T)> {
        let mut all: Vec<_> = lock(&self.entries).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.entries).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lifecycle() {
        let state = StreamState::new("w".into(), "127.0.0.1:1".into(), 1, Settings::default());
        assert_eq!(state.status(), StreamStatus::Connecting);
        assert!(state.connected_since_ms().is_none());
        assert!(state.set_connected("sampling-patterns", false));
        assert_eq!(state.status(), StreamStatus::Connected);
        assert!(state.connected_since_ms().is_some());
        assert_eq!(state.capabilities(), "sampling-patterns");
        assert!(state.set_retrying(0, CloseReason::WorkerClosed));
        assert_eq!(state.status(), StreamStatus::Reconnecting);
        assert!(state.connected_since_ms().is_none());
        assert!(state.set_retrying(2, CloseReason::ConnectFailed("refused".into())));
        assert_eq!(
            (state.attempt(), state.last_error()),
            (2, Some(CloseReason::ConnectFailed("refused".into())))
        );
        assert!(state.set_connected("", false));
        assert_eq!((state.status(), state.attempt(), state.last_error()), (StreamStatus::Connected, 0, None));
        state.set_closed(CloseReason::Unregistered);
        state.set_closed(CloseReason::Shutdown);
        assert_eq!(state.status(), StreamStatus::Closed(CloseReason::Unregistered));
        assert!(!state.set_connected("", false));
        assert!(!state.set_retrying(1, CloseReason::WorkerClosed));
    }

    #[test]
    fn a_replacement_takes_over_counters_and_an_unrepaired_loss() {
        let old = StreamState::new("w".into(), "e".into(), 1, Settings::default());
        old.counters.add_received(7);
        assert!(old.set_connected("", false));
        assert!(old.set_retrying(0, CloseReason::WorkerClosed));
        assert!(old.set_retrying(3, CloseReason::ConnectFailed("refused".into())));
        let mut new = StreamState::new("w".into(), "e2".into(), 2, Settings::default());
        let inherited = new.inherit(&old);
        assert_eq!(new.counters.snapshot().received, 7);
        assert_eq!(inherited.lost.map(|(_, attempts)| attempts), Some(3));
        assert_eq!((new.status(), new.attempt()), (StreamStatus::Reconnecting, 3));
        new.counters.add_received(1);
        assert_eq!(old.counters.snapshot().received, 8, "one set of counters");

        let healthy = StreamState::new("w".into(), "e".into(), 3, Settings::default());
        assert!(healthy.set_connected("", false));
        let mut next = StreamState::new("w".into(), "e".into(), 4, Settings::default());
        assert!(next.inherit(&healthy).lost.is_none());
        assert_eq!(next.status(), StreamStatus::Connecting);
    }

    #[test]
    fn failed_first_attempts_stay_connecting() {
        let state = StreamState::new("w".into(), "e".into(), 1, Settings::default());
        assert!(state.set_retrying(1, CloseReason::ConnectFailed("refused".into())));
        assert_eq!(state.status(), StreamStatus::Connecting);
        assert_eq!(state.attempt(), 1);
        assert!(CloseReason::Replaced.is_final() && !CloseReason::WorkerClosed.is_final());
    }

    #[test]
    fn settings_changes_are_seen_by_watchers() {
        let state = StreamState::new("w".into(), "e".into(), 1, Settings::default());
        let mut watcher = state.settings.subscribe();
        assert!(watcher.borrow_and_update().enabled);
        state.set_settings(Settings { enabled: false, ..Settings::default() });
        assert!(watcher.has_changed().expect("sender alive"));
        assert!(!watcher.borrow_and_update().enabled);
    }

    #[test]
    fn registry_replaces_by_id() {
        let registry: Registry<u64> = Registry::default();
        assert_eq!(registry.insert("a", 1), None);
        assert_eq!(registry.insert("a", 2), Some(1));
        registry.insert("b", 3);
        let ids: Vec<_> = registry.all().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(registry.remove("a"), Some(2));
        assert_eq!(registry.get("a"), None);
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn registry_with_all_is_all_or_nothing() {
        let registry: Registry<u64> = Registry::default();
        registry.insert("a", 1);
        registry.insert("b", 2);
        let ids = ["a", "b"];
        assert_eq!(registry.with_all(ids.iter().copied(), |v| v.into_iter().sum::<u64>()), Ok(3));
        let mut called = false;
        let missing = ["a", "zz", "b"];
        assert_eq!(registry.with_all(missing.iter().copied(), |_| called = true), Err("zz"));
        assert!(!called, "nothing runs when one id is missing");
    }
}
