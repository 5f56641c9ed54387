//! The stream manager: a task on the runtime that starts and stops stream tasks. NIF calls
//! reach it through a bounded channel; a full channel is a `:busy` error, never a wait.

use ahash::AHashMap;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::stream_task::StreamTask;
use snakepit_telemetry_core::registry::CloseReason;

/// How many commands may wait for the manager before callers get `:busy`.
pub const COMMAND_QUEUE: usize = 1024;

pub enum Command {
    /// Start a stream, replacing a running one with the same worker id.
    Start(Box<StreamTask>),
    /// Stop a worker's stream if it is still the given generation.
    Stop { worker_id: String, generation: u64 },
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    Busy,
    Stopped,
}

#[derive(Clone)]
pub struct StreamManager {
    commands: mpsc::Sender<Command>,
}

struct Running {
    generation: u64,
    stop: oneshot::Sender<CloseReason>,
}

impl StreamManager {
    /// Spawns the manager task on `runtime`.
    pub fn spawn(runtime: &Handle) -> StreamManager {
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        runtime.spawn(run(inbox, runtime.clone()));
        StreamManager { commands }
    }

    /// Queues a command without waiting.
    pub fn send(&self, command: Command) -> Result<(), SendError> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy,
            mpsc::error::TrySendError::Closed(_) => SendError::Stopped,
        })
    }
}

async fn run(mut inbox: mpsc::Receiver<Command>, runtime: Handle) {
    let mut running: AHashMap<String, Running> = AHashMap::new();
    while let Some(command) = inbox.recv().await {
        match command {
            Command::Start(task) => {
                let worker_id = task.worker.worker_id.clone();
                let generation = task.worker.generation;
                if let Some(old) = running.remove(&worker_id) {
                    let _ = old.stop.send(CloseReason::Replaced);
                }
                let (stop, stopped) = oneshot::channel();
                runtime.spawn(task.run(stopped));
                running.insert(worker_id, Running { generation, stop });
            }
            Command::Stop { worker_id, generation } => {
                if running.get(&worker_id).is_some_and(|r| r.generation == generation) {
                    if let Some(old) = running.remove(&worker_id) {
                        let _ = old.stop.send(CloseReason::Unregistered);
                    }
                }
            }
        }
    }
    // The resource is gone: dropping the senders ends every stream with `:shutdown`.
}
