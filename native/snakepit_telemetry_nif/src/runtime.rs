//! The resource behind `Snakepit.Telemetry.GrpcStream`: a tokio runtime on its own threads,
//! the stream manager whose tasks run on it, the term encoder, and the pid of the process
//! that receives batches. It outlives any one Elixir process (the application keeps it in a
//! persistent term), so a crash of GrpcStream or of the Dispatcher loses no stream.
//!
//! `stop` ends every stream and shuts the runtime down without blocking the scheduler that
//! calls it; dropping the last reference does the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustler::LocalPid;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::watch;

use crate::encode::TermEncoder;
use crate::manager::StreamManager;
use crate::stream_task::{ConnectOptions, StreamLimits};

/// Tuning of a runtime, from the application config.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    pub threads: usize,
    pub limits: StreamLimits,
    pub connect: ConnectOptions,
    /// Whether registering a worker opens its stream (`grpc_stream`).
    pub open_streams: bool,
    /// Patterns denied for every worker (`excluded_events`).
    pub excluded: Arc<[String]>,
}

pub struct TelemetryRuntime {
    runtime: Mutex<Option<Runtime>>,
    pub manager: StreamManager,
    pub encoder: Arc<TermEncoder>,
    pub options: RuntimeOptions,
    /// The processes that receive batches and status messages, one per Dispatcher
    /// partition; each stream watches its partition's.
    pub receivers: Vec<watch::Sender<LocalPid>>,
    next_generation: AtomicU64,
}

#[rustler::resource_impl]
impl rustler::Resource for TelemetryRuntime {}

impl TelemetryRuntime {
    /// `receivers`: one pid per partition (at least one).
    pub fn start(
        receivers: Vec<LocalPid>,
        encoder: TermEncoder,
        options: RuntimeOptions,
    ) -> std::io::Result<TelemetryRuntime> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(options.threads.max(1))
            .thread_name("snakepit-telemetry")
            .enable_all()
            .build()?;
        let manager = StreamManager::new(runtime.handle().clone());
        Ok(TelemetryRuntime {
            runtime: Mutex::new(Some(runtime)),
            manager,
            encoder: Arc::new(encoder),
            options,
            receivers: receivers.into_iter().map(watch::Sender::new).collect(),
            next_generation: AtomicU64::new(1),
        })
    }

    /// A new id for a stream, unique within this runtime.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends the batches and status messages of partition `partition` to `pid` from now on;
    /// its streams waiting for a receiver resume. False if there is no such partition.
    pub fn set_receiver(&self, partition: usize, pid: LocalPid) -> bool {
        match self.receivers.get(partition) {
            Some(receiver) => {
                receiver.send_replace(pid);
                true
            }
            None => false,
        }
    }

    /// The receiver of `partition` (the first if out of range).
    pub fn receiver(&self, partition: usize) -> watch::Receiver<LocalPid> {
        let index = if partition < self.receivers.len() { partition } else { 0 };
        self.receivers[index].subscribe()
    }

    /// Stops every stream and the runtime. Later registrations start nothing.
    pub fn stop(&self) {
        self.manager.shutdown();
        let runtime = self.runtime.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }

    pub fn is_running(&self) -> bool {
        self.runtime.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }
}

impl Drop for TelemetryRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}
