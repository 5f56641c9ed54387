//! One task per registered worker: connect, open the stream, then for every message check it
//! against the catalog, keep it in a bounded buffer, and send it on in batches as flow
//! control allows. Ends with exactly one terminal message to the owner.
//!
//! Batches form by themselves: after a wake-up the task takes every message that is already
//! there (up to a batch) before sending, and while the receiver holds `max_in_flight` batches
//! the buffer fills. Nothing waits on a timer, so an idle receiver gets each event at once.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use rustler::{Encoder, LocalPid, OwnedEnv, ResourceArc};
use snakepit_telemetry_core::client::{open_stream, WorkerAddress};
use snakepit_telemetry_core::control::control_stream;
use snakepit_telemetry_core::counters::DropReason;
use snakepit_telemetry_core::registry::{CloseReason, StreamState};
use snakepit_telemetry_core::settings::{samples_patterns, Decision, Policy, Removal, Sampler};
use snakepit_telemetry_core::translate::{translate, EventRecord, NativeTime};
use tokio::sync::oneshot;
use tonic::codec::Streaming;
use tonic::Status;

use crate::atoms;
use crate::encode::{TermEncoder, WorkerMeta};
use crate::flow::FlowCredit;

/// Buffer and batch sizes of one stream.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub max_buffer: usize,
    pub max_batch: usize,
    pub native_time: NativeTime,
}

/// Everything one stream task needs; built by the `register_worker` NIF.
pub struct StreamTask {
    pub state: Arc<StreamState>,
    pub address: WorkerAddress,
    pub worker: WorkerMeta,
    pub encoder: Arc<TermEncoder>,
    pub limits: StreamLimits,
    pub credit: ResourceArc<FlowCredit>,
    /// Receives the batches (the owner today; a dispatcher process later).
    pub dispatch: LocalPid,
    /// Receives status and terminal messages.
    pub owner: LocalPid,
}

enum Wake {
    Message(Result<Option<Bytes>, Status>),
    Credit,
    Settings,
    Stop(CloseReason),
}

/// What the worker's settings decide on arrival: the policy (one decision per catalog
/// event) and the random source for sampling.
struct Gate {
    policy: Policy,
    sampler: Sampler,
}

impl Gate {
    fn check(&mut self, event: snakepit_telemetry_core::catalog::EventIndex) -> Result<(), DropReason> {
        match self.policy.decision(event) {
            Decision::Remove(removal) => Err(removal_reason(removal)),
            Decision::Keep(rate) if self.sampler.keep(rate) => Ok(()),
            Decision::Keep(_) => Err(DropReason::SampledOut),
        }
    }
}

fn removal_reason(removal: Removal) -> DropReason {
    match removal {
        Removal::Disabled => DropReason::Disabled,
        Removal::FilteredOut => DropReason::FilteredOut,
    }
}

impl StreamTask {
    /// Runs the stream until it ends, then reports why. Panics inside are caught here.
    pub async fn run(self, stop: oneshot::Receiver<CloseReason>) {
        let state = self.state.clone();
        let owner = self.owner;
        let worker_id = self.worker.worker_id.clone();
        let generation = self.worker.generation;
        let outcome = std::panic::AssertUnwindSafe(self.stream(stop)).catch_unwind().await;
        let reason = outcome.unwrap_or(CloseReason::Panicked);
        state.set_closed(reason.clone());
        send_status(&state, owner, &worker_id, generation, StatusMessage::Closed(reason));
    }

    async fn stream(self, mut stop: oneshot::Receiver<CloseReason>) -> CloseReason {
        let mut settings = self.state.settings.subscribe();
        let opened = tokio::select! {
            reason = &mut stop => return reason.unwrap_or(CloseReason::Shutdown),
            opened = self.open() => opened,
        };
        let (mut events, worker_samples_patterns) = match opened {
            Ok(opened) => opened,
            Err(reason) => return reason,
        };
        send_status(
            &self.state,
            self.owner,
            &self.worker.worker_id,
            self.worker.generation,
            StatusMessage::Connected,
        );

        let catalog = &self.encoder.catalog;
        let mut gate = Gate {
            policy: Policy::new(&settings.borrow_and_update(), catalog, worker_samples_patterns),
            sampler: Sampler::new(sampler_seed(self.worker.generation)),
        };
        let mut pending: VecDeque<EventRecord> = VecDeque::with_capacity(self.limits.max_buffer.min(4096));
        let mut name = String::new();
        let mut env = OwnedEnv::new();
        loop {
            let wake = tokio::select! {
                biased;
                reason = &mut stop => Wake::Stop(reason.unwrap_or(CloseReason::Shutdown)),
                changed = settings.changed() => match changed {
                    Ok(()) => Wake::Settings,
                    Err(_) => Wake::Stop(CloseReason::Shutdown),
                },
                _ = self.credit.freed(), if !pending.is_empty() => Wake::Credit,
                message = events.message() => Wake::Message(message),
            };
            let ended = match wake {
                Wake::Stop(reason) => return reason,
                Wake::Credit => None,
                Wake::Settings => {
                    gate.policy =
                        Policy::new(&settings.borrow_and_update(), catalog, worker_samples_patterns);
                    self.refilter(&gate.policy, &mut pending);
                    None
                }
                Wake::Message(message) => {
                    self.receive(message, &mut events, &mut gate, &mut pending, &mut name)
                }
            };
            if let Some(reason) = ended {
                return self.drain(&mut pending, &mut env, &mut stop, reason).await;
            }
            if let Err(reason) = self.flush(&mut pending, &mut env) {
                return reason;
            }
        }
    }

    /// Takes one message, then every message that has already arrived (up to a batch), so a
    /// busy stream sends full batches. Returns why the stream ended, if it did.
    fn receive(
        &self,
        first: Result<Option<Bytes>, Status>,
        events: &mut Streaming<Bytes>,
        gate: &mut Gate,
        pending: &mut VecDeque<EventRecord>,
        name: &mut String,
    ) -> Option<CloseReason> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next {
            match message {
                Ok(Some(bytes)) => self.accept(&bytes, gate, pending, name),
                Ok(None) => return Some(CloseReason::WorkerClosed),
                Err(status) => return Some(CloseReason::StreamError(status_text(&status))),
            }
            taken += 1;
            next = if taken < self.limits.max_batch { events.message().now_or_never() } else { None };
        }
        None
    }

    /// Opens the stream; its request stream sends the worker its settings once the response
    /// headers say what the worker honours. Returns the events and that capability.
    async fn open(&self) -> Result<(Streaming<Bytes>, bool), CloseReason> {
        let channel = self.address.connect().await.map_err(CloseReason::ConnectFailed)?;
        let (capability_tx, capability_rx) = oneshot::channel();
        let controls = control_stream(capability_rx, self.state.settings.subscribe());
        let opened =
            open_stream(channel, controls).await.map_err(|s| CloseReason::ConnectFailed(status_text(&s)))?;
        let worker_samples_patterns = samples_patterns(&opened.capabilities);
        let _ = capability_tx.send(worker_samples_patterns);
        if !self.state.set_connected(&opened.capabilities) {
            return Err(CloseReason::Unregistered);
        }
        Ok((opened.events, worker_samples_patterns))
    }

    /// New settings also apply to what is buffered but not yet sent (toggle and filters;
    /// buffered events were already sampled).
    fn refilter(&self, policy: &Policy, pending: &mut VecDeque<EventRecord>) {
        let counters = &self.state.counters;
        pending.retain(|record| match policy.decision(record.event) {
            Decision::Remove(removal) => {
                counters.add_dropped(removal_reason(removal), 1);
                false
            }
            Decision::Keep(_) => true,
        });
    }

    /// Checks one message and buffers it, or counts why not.
    fn accept(&self, bytes: &[u8], gate: &mut Gate, pending: &mut VecDeque<EventRecord>, name: &mut String) {
        let counters = &self.state.counters;
        counters.add_received(1);
        match translate(&self.encoder.catalog, self.limits.native_time, bytes, name, |event| {
            gate.check(event)
        }) {
            Ok(_) if pending.len() >= self.limits.max_buffer => counters.add_dropped(DropReason::Overflow, 1),
            Ok(record) => pending.push_back(record),
            Err(reason) => counters.add_dropped(reason, 1),
        }
    }

    /// Sends batches while flow control allows.
    fn flush(&self, pending: &mut VecDeque<EventRecord>, env: &mut OwnedEnv) -> Result<(), CloseReason> {
        while !pending.is_empty() && self.credit.try_acquire() {
            let take = pending.len().min(self.limits.max_batch);
            let batch: Vec<EventRecord> = pending.drain(..take).collect();
            let sent = env.send_and_clear(&self.dispatch, |env| {
                self.encoder.encode_batch(env, &self.credit, &self.worker, &batch)
            });
            let counters = &self.state.counters;
            if sent.is_err() {
                self.credit.release();
                counters.add_dropped(DropReason::Undeliverable, (batch.len() + pending.len()) as u64);
                pending.clear();
                return Err(CloseReason::ReceiverGone);
            }
            counters.add_emitted(batch.len() as u64);
        }
        Ok(())
    }

    /// After the worker ended the stream: deliver what is buffered, then report `reason`.
    async fn drain(
        &self,
        pending: &mut VecDeque<EventRecord>,
        env: &mut OwnedEnv,
        stop: &mut oneshot::Receiver<CloseReason>,
        reason: CloseReason,
    ) -> CloseReason {
        loop {
            if let Err(gone) = self.flush(pending, env) {
                return gone;
            }
            if pending.is_empty() {
                return reason;
            }
            tokio::select! {
                biased;
                stopped = &mut *stop => return stopped.unwrap_or(CloseReason::Shutdown),
                _ = self.credit.freed() => {}
            }
        }
    }
}

/// A different seed per stream and per run.
fn sampler_seed(generation: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ generation.rotate_left(32)
}

fn status_text(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

enum StatusMessage {
    Connected,
    Closed(CloseReason),
}

/// `{:snakepit_telemetry_stream, worker_id, generation, :connected | {:closed, reason}, emitted}`
/// where `emitted` counts the events delivered on this stream so far.
fn send_status(
    state: &StreamState,
    owner: LocalPid,
    worker_id: &str,
    generation: u64,
    message: StatusMessage,
) {
    let emitted = state.counters.snapshot().emitted;
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(&owner, |env| {
        let status = match &message {
            StatusMessage::Connected => atoms::connected().encode(env),
            StatusMessage::Closed(reason) => (atoms::closed(), close_reason_term(env, reason)).encode(env),
        };
        (atoms::snakepit_telemetry_stream(), worker_id, generation, status, emitted).encode(env)
    });
}

/// The term for a close reason: an atom, or `{atom, message}`.
pub fn close_reason_term<'a>(env: rustler::Env<'a>, reason: &CloseReason) -> rustler::Term<'a> {
    match reason {
        CloseReason::Unregistered => atoms::unregistered().encode(env),
        CloseReason::Replaced => atoms::replaced().encode(env),
        CloseReason::WorkerClosed => atoms::worker_closed().encode(env),
        CloseReason::StreamError(m) => (atoms::stream_error(), m.as_str()).encode(env),
        CloseReason::ConnectFailed(m) => (atoms::connect_failed(), m.as_str()).encode(env),
        CloseReason::Panicked => atoms::panicked().encode(env),
        CloseReason::Shutdown => atoms::shutdown().encode(env),
        CloseReason::ReceiverGone => atoms::receiver_gone().encode(env),
    }
}
