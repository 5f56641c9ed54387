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
    /// The process that receives batches and status messages; streams watch it.
    pub receiver: watch::Sender<LocalPid>,
    next_generation: AtomicU64,
}

#[rustler::resource_impl]
impl rustler::Resource for TelemetryRuntime {}

impl TelemetryRuntime {
    pub fn start(
        receiver: LocalPid,
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
            receiver: watch::Sender::new(receiver),
            next_generation: AtomicU64::new(1),
        })
    }

    /// A new id for a stream, unique within this runtime.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends batches and status messages to `pid` from now on; streams waiting for a
    /// receiver resume.
    pub fn set_receiver(&self, pid: LocalPid) {
        self.receiver.send_replace(pid);
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
