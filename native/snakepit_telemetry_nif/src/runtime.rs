//! The resource the owning Elixir process holds: a tokio runtime on its own threads, the
//! stream manager running on it, and what NIF calls read directly (registry, catalog).
//! Dropping the resource (the owner is gone) shuts the runtime down without blocking the
//! scheduler that runs the destructor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustler::LocalPid;
use tokio::runtime::{Builder, Runtime};

use crate::encode::TermEncoder;
use crate::manager::StreamManager;
use crate::stream_task::StreamLimits;
use snakepit_telemetry_core::registry::Registry;

/// Tuning of a runtime, from the application config.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeOptions {
    pub threads: usize,
    pub limits: StreamLimits,
    pub max_in_flight: usize,
}

pub struct TelemetryRuntime {
    runtime: Option<Runtime>,
    pub manager: StreamManager,
    pub registry: Arc<Registry>,
    pub encoder: Arc<TermEncoder>,
    pub options: RuntimeOptions,
    pub owner: LocalPid,
    next_generation: AtomicU64,
}

#[rustler::resource_impl]
impl rustler::Resource for TelemetryRuntime {}

impl TelemetryRuntime {
    pub fn start(
        owner: LocalPid,
        encoder: TermEncoder,
        options: RuntimeOptions,
    ) -> std::io::Result<TelemetryRuntime> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(options.threads.max(1))
            .thread_name("snakepit-telemetry")
            .enable_all()
            .build()?;
        let manager = StreamManager::spawn(runtime.handle());
        Ok(TelemetryRuntime {
            runtime: Some(runtime),
            manager,
            registry: Arc::new(Registry::default()),
            encoder: Arc::new(encoder),
            options,
            owner,
            next_generation: AtomicU64::new(1),
        })
    }

    /// A new id for a stream, unique within this runtime.
    pub fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for TelemetryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
