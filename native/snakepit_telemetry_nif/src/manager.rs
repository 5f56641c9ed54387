//! The stream manager: the registry of workers, and starting and stopping their stream tasks
//! on the runtime. Every operation takes a short lock and returns: spawning onto the runtime
//! never waits, so registration needs no command queue and is never refused as busy.

use std::sync::{Arc, Mutex, PoisonError};

use snakepit_telemetry_core::registry::{CloseReason, Registry, StreamState};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::encode::WorkerMeta;
use crate::stream_task::StreamTask;

/// One registered worker: its state, its registration metadata, and how to stop its task.
pub struct Registration {
    pub state: Arc<StreamState>,
    pub meta: Arc<WorkerMeta>,
    stop: Mutex<Option<oneshot::Sender<CloseReason>>>,
}

impl Registration {
    fn stop(&self, reason: CloseReason) {
        let sender = self.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(reason);
        }
    }
}

pub struct StreamManager {
    registry: Registry<Arc<Registration>>,
    runtime: Handle,
}

impl StreamManager {
    pub fn new(runtime: Handle) -> StreamManager {
        StreamManager { registry: Registry::default(), runtime }
    }

    /// Registers the task's worker and starts its stream, replacing (and stopping) a stream
    /// registered under the same id.
    pub fn start(&self, task: StreamTask) {
        let (stop, stopped) = oneshot::channel();
        let registration = Registration {
            state: task.state.clone(),
            meta: task.worker.clone(),
            stop: Mutex::new(Some(stop)),
        };
        let worker_id = task.worker.worker_id.clone();
        if let Some(old) = self.registry.insert(&worker_id, Arc::new(registration)) {
            old.stop(CloseReason::Replaced);
        }
        self.runtime.spawn(task.run(stopped));
    }

    /// Registers a worker without opening a stream (`grpc_stream: false`).
    pub fn register_idle(&self, state: Arc<StreamState>, meta: Arc<WorkerMeta>) {
        let registration = Registration { state, meta: meta.clone(), stop: Mutex::new(None) };
        if let Some(old) = self.registry.insert(&meta.worker_id, Arc::new(registration)) {
            old.stop(CloseReason::Replaced);
        }
    }

    /// Stops the worker's stream and forgets it. Returns its generation.
    pub fn stop(&self, worker_id: &str) -> Option<u64> {
        let registration = self.registry.remove(worker_id)?;
        registration.stop(CloseReason::Unregistered);
        Some(registration.state.generation)
    }

    pub fn get(&self, worker_id: &str) -> Option<Arc<Registration>> {
        self.registry.get(worker_id)
    }

    pub fn registry(&self) -> &Registry<Arc<Registration>> {
        &self.registry
    }

    /// Stops every stream with `:shutdown` and forgets every worker.
    pub fn shutdown(&self) {
        for (worker_id, _) in self.registry.all() {
            if let Some(registration) = self.registry.remove(&worker_id) {
                registration.stop(CloseReason::Shutdown);
            }
        }
    }
}
