//! One task per registered worker: connect, open the stream, then for every message check it
//! against the catalog, keep it in a buffer bounded in events and bytes, and send it on in
//! batches as flow control allows. Ends with exactly one terminal message.
//!
//! Batches form by themselves: after a wake-up the task takes every message that is already
//! there (up to a batch) before sending, and while the receiver holds `max_in_flight` batches
//! the buffer fills. Nothing waits on a timer, so an idle receiver gets each event at once.
//!
//! The receiving process (`Snakepit.Telemetry.Dispatcher`) may be restarted: its pid is
//! watched, and a batch it could not take stays buffered until the next one registers.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::FutureExt;
use rustler::{Encoder, LocalPid, OwnedEnv, ResourceArc};
use snakepit_telemetry_core::catalog::EventIndex;
use snakepit_telemetry_core::client::{open_stream, EventStream, StreamEnd, WorkerAddress};
use snakepit_telemetry_core::control::control_stream;
use snakepit_telemetry_core::counters::DropReason;
use snakepit_telemetry_core::registry::{CloseReason, StreamState};
use snakepit_telemetry_core::settings::{samples_patterns, Decision, Policy, Removal, Sampler};
use snakepit_telemetry_core::translate::{translate, EventLimits, EventRecord};
use snakepit_telemetry_core::wire::Incoming;
use tokio::sync::{oneshot, watch};

use crate::atoms;
use crate::encode::{TermEncoder, WorkerMeta};
use crate::flow::{BatchTicket, FlowCredit};
use crate::terms::close_reason_term;

/// Buffer, batch and event bounds of one stream (from the application config).
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub max_buffer: usize,
    pub max_buffer_bytes: usize,
    pub max_batch: usize,
    pub max_batch_bytes: usize,
    pub max_event_bytes: usize,
    pub max_in_flight: usize,
    pub event: EventLimits,
}

/// Everything one stream task needs; built by the `register_worker` NIF.
pub struct StreamTask {
    pub state: Arc<StreamState>,
    pub address: WorkerAddress,
    pub worker: Arc<WorkerMeta>,
    pub encoder: Arc<TermEncoder>,
    pub limits: StreamLimits,
    /// The config's `excluded_events`, denied for every worker.
    pub excluded: Arc<[String]>,
    /// The process that receives batches and status messages.
    pub receiver: watch::Receiver<LocalPid>,
}

enum Wake {
    Message(Result<Incoming, StreamEnd>),
    Credit,
    Settings,
    Receiver,
    Stop(CloseReason),
}

/// What the worker's settings decide on arrival: the policy (one decision per catalog
/// event) and the random source for sampling.
struct Gate {
    policy: Policy,
    sampler: Sampler,
}

impl Gate {
    fn check(&mut self, event: EventIndex) -> Result<(), DropReason> {
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

/// Events checked and waiting for the receiver, bounded in count and bytes.
#[derive(Default)]
struct Pending {
    events: VecDeque<EventRecord>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, record: EventRecord, limits: &StreamLimits) -> Result<(), DropReason> {
        if self.events.len() >= limits.max_buffer || self.bytes + record.wire_bytes > limits.max_buffer_bytes
        {
            return Err(DropReason::Overflow);
        }
        self.bytes += record.wire_bytes;
        self.events.push_back(record);
        Ok(())
    }

    /// The next batch: up to `max_batch` events and `max_batch_bytes` (at least one event).
    fn take_batch(&mut self, limits: &StreamLimits) -> Vec<EventRecord> {
        let mut batch = Vec::with_capacity(self.events.len().min(limits.max_batch));
        let mut bytes = 0;
        while batch.len() < limits.max_batch {
            match self.events.front() {
                Some(next) if batch.is_empty() || bytes + next.wire_bytes <= limits.max_batch_bytes => {}
                _ => break,
            }
            let Some(record) = self.events.pop_front() else { break };
            bytes += record.wire_bytes;
            batch.push(record);
        }
        self.bytes -= bytes;
        batch
    }

    /// Puts back a batch that could not be sent, in order.
    fn restore(&mut self, batch: Vec<EventRecord>) {
        for record in batch.into_iter().rev() {
            self.bytes += record.wire_bytes;
            self.events.push_front(record);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&EventRecord) -> bool) {
        let bytes = &mut self.bytes;
        self.events.retain(|record| {
            let kept = keep(record);
            if !kept {
                *bytes -= record.wire_bytes;
            }
            kept
        });
    }

    fn clear(&mut self) -> usize {
        let n = self.events.len();
        self.events.clear();
        self.bytes = 0;
        n
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// The state of one open stream between wake-ups.
struct Flow {
    credit: Arc<FlowCredit>,
    pending: Pending,
    env: OwnedEnv,
    /// The receiver refused a batch (it is gone); wait for a new one before sending again.
    blocked: bool,
    /// Events handed to a receiver on this stream.
    sent: u64,
}

impl StreamTask {
    /// Runs the stream until it ends, then reports why. Panics inside are caught here.
    pub async fn run(self, stop: oneshot::Receiver<CloseReason>) {
        let state = self.state.clone();
        let receiver = self.receiver.clone();
        let worker = self.worker.clone();
        let outcome = std::panic::AssertUnwindSafe(self.stream(stop)).catch_unwind().await;
        let (reason, sent) = outcome.unwrap_or((CloseReason::Panicked, 0));
        state.set_closed(reason.clone());
        send_status(&receiver, &worker, StatusMessage::Closed(reason, sent));
    }

    async fn stream(self, mut stop: oneshot::Receiver<CloseReason>) -> (CloseReason, u64) {
        let mut settings = self.state.settings.subscribe();
        let mut receiver = self.receiver.clone();
        let opened = tokio::select! {
            reason = &mut stop => return (reason.unwrap_or(CloseReason::Shutdown), 0),
            opened = self.open() => opened,
        };
        let (mut events, worker_samples_patterns) = match opened {
            Ok(opened) => opened,
            Err(reason) => return (reason, 0),
        };
        send_status(&receiver, &self.worker, StatusMessage::Connected);

        let catalog = &self.encoder.catalog;
        let policy = |settings: &watch::Receiver<_>| {
            let current: &Arc<snakepit_telemetry_core::settings::Settings> = &settings.borrow();
            Policy::new(&current.effective(&self.excluded), catalog, worker_samples_patterns)
        };
        settings.mark_unchanged();
        let mut gate =
            Gate { policy: policy(&settings), sampler: Sampler::new(sampler_seed(self.worker.generation)) };
        let mut flow = Flow {
            credit: Arc::new(FlowCredit::new(self.limits.max_in_flight)),
            pending: Pending::default(),
            env: OwnedEnv::new(),
            blocked: false,
            sent: 0,
        };
        let mut name = String::new();
        loop {
            let wake = tokio::select! {
                biased;
                reason = &mut stop => Wake::Stop(reason.unwrap_or(CloseReason::Shutdown)),
                changed = settings.changed() => match changed {
                    Ok(()) => Wake::Settings,
                    Err(_) => Wake::Stop(CloseReason::Shutdown),
                },
                changed = receiver.changed(), if flow.blocked => match changed {
                    Ok(()) => Wake::Receiver,
                    Err(_) => Wake::Stop(CloseReason::Shutdown),
                },
                _ = flow.credit.freed(), if !flow.pending.is_empty() && !flow.blocked => Wake::Credit,
                message = events.next() => Wake::Message(message),
            };
            let ended = match wake {
                Wake::Stop(reason) => return (self.abandon(&mut flow, reason), flow.sent),
                Wake::Credit => None,
                Wake::Receiver => {
                    flow.blocked = false;
                    None
                }
                Wake::Settings => {
                    settings.mark_unchanged();
                    gate.policy = policy(&settings);
                    self.refilter(&gate.policy, &mut flow.pending);
                    None
                }
                Wake::Message(message) => {
                    self.receive(message, &mut events, &mut gate, &mut flow.pending, &mut name)
                }
            };
            if let Some(reason) = ended {
                let reason = self.drain(&mut flow, &mut receiver, &mut stop, reason).await;
                return (reason, flow.sent);
            }
            self.flush(&mut flow, &receiver);
        }
    }

    /// Takes one message, then every message that has already arrived (up to a batch), so a
    /// busy stream sends full batches. Returns why the stream ended, if it did.
    fn receive(
        &self,
        first: Result<Incoming, StreamEnd>,
        events: &mut EventStream,
        gate: &mut Gate,
        pending: &mut Pending,
        name: &mut String,
    ) -> Option<CloseReason> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(message) = next {
            match message {
                Ok(incoming) => self.accept(incoming, gate, pending, name),
                Err(StreamEnd::Closed) => return Some(CloseReason::WorkerClosed),
                Err(StreamEnd::Failed(text)) => return Some(CloseReason::StreamError(text)),
            }
            taken += 1;
            next = if taken < self.limits.max_batch { events.next().now_or_never() } else { None };
        }
        None
    }

    /// Opens the stream; its request stream sends the worker its settings once the response
    /// headers say what the worker honours. Returns the events and that capability.
    async fn open(&self) -> Result<(EventStream, bool), CloseReason> {
        let channel = self.address.connect().await.map_err(CloseReason::ConnectFailed)?;
        let (capability_tx, capability_rx) = oneshot::channel();
        let controls = control_stream(capability_rx, self.state.settings.subscribe(), self.excluded.clone());
        let opened = open_stream(channel, controls, self.limits.max_event_bytes)
            .await
            .map_err(CloseReason::ConnectFailed)?;
        let worker_samples_patterns = samples_patterns(&opened.capabilities);
        let _ = capability_tx.send(worker_samples_patterns);
        if !self.state.set_connected(&opened.capabilities) {
            return Err(CloseReason::Unregistered);
        }
        Ok((opened.events, worker_samples_patterns))
    }

    /// New settings also apply to what is buffered but not yet sent (toggle and filters;
    /// buffered events were already sampled).
    fn refilter(&self, policy: &Policy, pending: &mut Pending) {
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
    fn accept(&self, incoming: Incoming, gate: &mut Gate, pending: &mut Pending, name: &mut String) {
        let counters = &self.state.counters;
        counters.add_received(1);
        let bytes = match incoming {
            Incoming::Message(bytes) => bytes,
            Incoming::Oversize => return counters.add_dropped(DropReason::Oversize, 1),
            Incoming::Compressed => return counters.add_dropped(DropReason::DecodeError, 1),
        };
        let checked =
            translate(&self.encoder.catalog, self.limits.event, &bytes, name, |event| gate.check(event))
                .and_then(|record| pending.push(record, &self.limits));
        if let Err(reason) = checked {
            counters.add_dropped(reason, 1);
        }
    }

    /// Sends batches while flow control allows and the receiver takes them.
    fn flush(&self, flow: &mut Flow, receiver: &watch::Receiver<LocalPid>) {
        while !flow.blocked && !flow.pending.is_empty() && flow.credit.try_acquire() {
            let batch = flow.pending.take_batch(&self.limits);
            let ticket =
                ResourceArc::new(BatchTicket::new(flow.credit.clone(), self.state.clone(), batch.len()));
            let pid = *receiver.borrow();
            let sent = flow
                .env
                .send_and_clear(&pid, |env| self.encoder.encode_batch(env, &ticket, &self.worker, &batch));
            if sent.is_ok() {
                flow.sent += batch.len() as u64;
            } else {
                ticket.cancel();
                flow.pending.restore(batch);
                flow.blocked = true;
            }
        }
    }

    /// After the worker ended the stream: deliver what is buffered, then report `reason`.
    async fn drain(
        &self,
        flow: &mut Flow,
        receiver: &mut watch::Receiver<LocalPid>,
        stop: &mut oneshot::Receiver<CloseReason>,
        reason: CloseReason,
    ) -> CloseReason {
        loop {
            self.flush(flow, receiver);
            if flow.pending.is_empty() {
                return reason;
            }
            tokio::select! {
                biased;
                stopped = &mut *stop => return self.abandon(flow, stopped.unwrap_or(CloseReason::Shutdown)),
                changed = receiver.changed(), if flow.blocked => match changed {
                    Ok(()) => flow.blocked = false,
                    Err(_) => return self.abandon(flow, CloseReason::Shutdown),
                },
                _ = flow.credit.freed(), if !flow.blocked => {}
            }
        }
    }

    /// The stream is stopped with events still buffered: they are counted as undeliverable.
    fn abandon(&self, flow: &mut Flow, reason: CloseReason) -> CloseReason {
        let left = flow.pending.clear();
        self.state.counters.add_dropped(DropReason::Undeliverable, left as u64);
        reason
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

enum StatusMessage {
    Connected,
    /// Why, and how many events were handed to a receiver on this stream.
    Closed(CloseReason, u64),
}

/// `{:snakepit_telemetry_stream, worker_id, generation, :connected | {:closed, reason}, sent}`
/// to the receiver. If it is gone at that moment the message is lost (the status itself
/// stays readable through `stream_info`).
fn send_status(receiver: &watch::Receiver<LocalPid>, worker: &WorkerMeta, message: StatusMessage) {
    let pid = *receiver.borrow();
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(&pid, |env| {
        let (status, sent) = match &message {
            StatusMessage::Connected => (atoms::connected().encode(env), 0),
            StatusMessage::Closed(reason, sent) => {
                ((atoms::closed(), close_reason_term(env, reason)).encode(env), *sent)
            }
        };
        (atoms::snakepit_telemetry_stream(), worker.worker_id.as_str(), worker.generation, status, sent)
            .encode(env)
    });
}
