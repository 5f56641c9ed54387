//! The stream manager: the registry of workers, starting and stopping their stream tasks on
//! the runtime, and handing them stderr telemetry lines. Every operation takes a short lock and returns: spawning onto the runtime
//! never waits, so registration needs no command queue and is never refused as busy.

use std::sync::{Arc, Mutex, PoisonError};

use snakepit_telemetry_core::counters::DropReason;
use snakepit_telemetry_core::registry::{CloseReason, Registry, StreamState};
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

use crate::encode::WorkerMeta;
use crate::stream_task::{StderrLine, StreamTask};
use crate::tool_call::{self, ToolRequest, ToolTarget};

/// Stderr telemetry lines queued per worker before its task takes them; beyond, `:overflow`.
const LINE_QUEUE: usize = 1024;

/// One registered worker: its state, its registration metadata, how to stop its task and
/// how to hand it stderr lines.
pub struct Registration {
    pub state: Arc<StreamState>,
    pub meta: Arc<WorkerMeta>,
    stop: Mutex<Option<oneshot::Sender<CloseReason>>>,
    lines: mpsc::Sender<StderrLine>,
    /// Where tool calls go (none for a worker without an endpoint).
    pub tools: Option<Arc<ToolTarget>>,
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

    /// Registers the task's worker and starts its task, replacing (and stopping) the one
    /// registered under the same id.
    pub fn start(&self, task: StreamTask) {
        let (stop, stopped) = oneshot::channel();
        let (lines, queued) = mpsc::channel(LINE_QUEUE);
        let registration = Registration {
            state: task.state.clone(),
            meta: task.worker.clone(),
            stop: Mutex::new(Some(stop)),
            lines,
            tools: task.tools.clone(),
        };
        let worker_id = task.worker.worker_id.clone();
        if let Some(old) = self.registry.insert(&worker_id, Arc::new(registration)) {
            old.stop(CloseReason::Replaced);
        }
        self.runtime.spawn(task.run(stopped, queued));
    }

    /// Starts a tool call on the runtime; its result goes to the caller as a message. False
    /// if the worker is not registered or has no endpoint.
    pub fn execute_tool(
        &self,
        worker_id: &str,
        request: ToolRequest,
        connect_timeout: std::time::Duration,
    ) -> bool {
        let Some(target) = self.registry.get(worker_id).and_then(|r| r.tools.clone()) else { return false };
        self.runtime.spawn(tool_call::run(target, request, connect_timeout));
        true
    }

    /// Hands a stderr telemetry line to the worker's task without waiting: a full queue
    /// drops it as `:overflow`. Returns false if the worker is not registered.
    pub fn stderr_line(&self, worker_id: &str, line: StderrLine) -> bool {
        let Some(registration) = self.registry.get(worker_id) else { return false };
        if let Err(TrySendError::Full(_) | TrySendError::Closed(_)) = registration.lines.try_send(line) {
            registration.state.counters.add_received(1);
            registration.state.counters.add_dropped(DropReason::Overflow, 1);
        }
        true
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
