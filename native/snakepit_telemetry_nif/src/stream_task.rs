//! One task per registered worker: connect, open the stream, then for every message check it
//! against the catalog, keep it in a buffer bounded in events and bytes, and send it on in
//! batches as flow control allows. A stream that fails to open or is lost for any reason but
//! the registration ending (unregistered, replaced, shutdown) is opened again after a capped,
//! jittered backoff; the buffer and the counters carry over, and so do the settings (the
//! worker is sent them on every new stream).
//!
//! The receiver is told `{:opened, :established | {:reconnected, downtime_ms, retries}}` when
//! a stream opens, `{:lost, reason, uptime_ms}` when it ends and a retry follows, and, last,
//! `{:closed, reason}` (a stream was open) or `{:ended, reason}` (none was).
//!
//! Batches form by themselves: after a wake-up the task takes every message that is already
//! there (up to a batch) before sending, and while the receiver holds `max_in_flight` batches
//! the buffer fills. A batch never waits to fill while the receiver holds one of this
//! stream's batches, nor when it is full or the buffer half full. Only when the receiver has
//! none (it is idle, and may be asleep) and the previous batch left less than half of
//! `min_batch_interval` ago does a batch wait, until the interval has passed: events that
//! come one per message (Snakepit's `StreamTelemetry`) faster than that then share the
//! receiver's wake-ups instead of one each. The first event after a quiet spell leaves at
//! once; a setting that removes events applies to the waiting ones too. When the
//! registration ends, waiting events go at once (as far as flow control allows).
//!
//! The receiving process (`Snakepit.Telemetry.Dispatcher`) may be restarted: its pid is
//! watched, and a batch it could not take stays buffered until the next one registers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rustler::{LocalPid, OwnedEnv, ResourceArc};
use snakepit_telemetry_core::backoff::BackoffPolicy;
use snakepit_telemetry_core::batch;
use snakepit_telemetry_core::catalog::EventIndex;
use snakepit_telemetry_core::client::{
    open_stream, EventStream, OpenError, Protocol, StreamEnd, WorkerAddress,
};
use snakepit_telemetry_core::control::control_stream;
use snakepit_telemetry_core::counters::{DropReason, StreamCounters};
use snakepit_telemetry_core::pending::{BufferLimits, Pending};
use snakepit_telemetry_core::registry::{CloseReason, StreamState};
use snakepit_telemetry_core::settings::{samples_patterns, Decision, Policy, Removal, Sampler};
use snakepit_telemetry_core::source_drops::{restates_drops, ReportShape};
use snakepit_telemetry_core::stderr_line::{parse_line, LineOutcome};
use snakepit_telemetry_core::transit::{SentReport, TransitLedger};
use snakepit_telemetry_core::translate::{translate, EventLimits, EventNames, EventRecord};
use snakepit_telemetry_core::wire::Incoming;
use tokio::sync::{mpsc, oneshot, watch};

use crate::encode::{TermEncoder, WorkerMeta};
use crate::event_batch::EventBatch;
use crate::flow::{BatchTicket, FlowCredit};
use crate::status::{SendOutcome, StatusMessage, StatusQueue};
use crate::tool_call::ToolTarget;

/// Buffer, batch and event bounds of one stream (from the application config).
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub buffer: BufferLimits,
    pub max_event_bytes: usize,
    pub max_in_flight: usize,
    /// Zero: a batch leaves as soon as the receiver may take it.
    pub min_batch_interval: Duration,
    pub event: EventLimits,
}

/// How streams are (re)opened (from the application config).
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// The most an attempt may take: connecting and the worker's response headers.
    pub timeout: Duration,
    pub backoff: BackoffPolicy,
}

/// Everything one stream task needs; built by the `register_worker` NIF.
pub struct StreamTask {
    pub state: Arc<StreamState>,
    /// The registration this one replaced had lost its stream (when, and the attempts
    /// since): the first open here is reported as a reconnection.
    pub resume: Option<(Instant, u32)>,
    /// None: no stream is opened (stderr lines only).
    pub address: Option<WorkerAddress>,
    /// Where the worker takes tool calls: its address even when no stream is opened
    /// (`grpc_stream: false`); none for an endpoint of `"none"`.
    pub tools: Option<Arc<ToolTarget>>,
    pub worker: Arc<WorkerMeta>,
    pub encoder: Arc<TermEncoder>,
    pub limits: StreamLimits,
    pub connect: ConnectOptions,
    /// Sent as `authorization: Bearer <token>` on every stream (never shown anywhere).
    pub token: Option<Arc<str>>,
    /// The config's `excluded_events`, denied for every worker.
    pub excluded: Arc<[String]>,
    /// The process that receives batches and status messages.
    pub receiver: watch::Receiver<LocalPid>,
}

enum Wake {
    Message(Result<Incoming, StreamEnd>),
    Line(StderrLine),
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
    /// The worker's drop reports: never removed by settings or buffer bounds.
    reports: Option<ReportShape>,
    /// A report of a reason first heard of on this call counts its whole total
    /// (`ReportTotals::opened`).
    whole_totals: bool,
}

impl Gate {
    fn is_report(&self, event: EventIndex) -> bool {
        self.reports.is_some_and(|shape| shape.event == event)
    }

    fn check(&mut self, event: EventIndex) -> Result<(), DropReason> {
        if self.is_report(event) {
            return Ok(());
        }
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

/// The state of one open stream between wake-ups.
struct Flow {
    credit: Arc<FlowCredit>,
    pending: Pending,
    env: OwnedEnv,
    /// Status messages the receiver has not taken yet (sent before any batch).
    statuses: StatusQueue,
    /// The receiver refused a batch or a status message (it is gone); wait for a new one
    /// before sending again.
    blocked: bool,
    /// Events handed to a receiver on this stream.
    sent: u64,
    /// When the last batch was sent.
    last_batch_at: Option<Instant>,
    /// A batch waits (`min_batch_interval`) until then; `flush` runs again at that time.
    hold_until: Option<Instant>,
}

impl Flow {
    /// Queues a status message and sends what is waiting, unless the receiver is known gone.
    fn post_status(
        &mut self,
        message: StatusMessage,
        receiver: &watch::Receiver<LocalPid>,
        worker: &WorkerMeta,
    ) {
        self.statuses.post(message);
        self.send_statuses(receiver, worker);
    }

    /// Sends the waiting status messages; false (and blocked) if the receiver is gone, false
    /// too while one that came back waits for the others out (nothing else goes before it).
    fn send_statuses(&mut self, receiver: &watch::Receiver<LocalPid>, worker: &WorkerMeta) -> bool {
        if self.blocked {
            return false;
        }
        match self.statuses.send(receiver, worker) {
            SendOutcome::Sent => true,
            SendOutcome::Refused => {
                self.blocked = true;
                false
            }
            // Batches wait behind it too.
            SendOutcome::Deferred => false,
        }
    }
}

/// A stream just opened, and what its response headers said.
struct Opened {
    events: EventStream,
    /// The worker applies pattern-scoped sampling rules itself.
    samples_patterns: bool,
    /// The worker restates its drop totals on a new call (`source_drops.rs`).
    restates_drops: bool,
    protocol: Protocol,
    sent: Option<SentReport>,
}

/// Where the task stands between wake-ups.
enum Link {
    /// No stream: the next attempt is due at `retry_at`; `failed` attempts since the stream
    /// was lost at `lost_at` (or since the task started, if it never had one).
    Down {
        retry_at: Instant,
        lost_at: Option<Instant>,
        failed: u32,
    },
    Up {
        events: EventStream,
        since: Instant,
        samples_patterns: bool,
        protocol: Protocol,
    },
    /// No stream is ever opened (no endpoint, or `grpc_stream: false`): stderr lines only.
    Idle,
}

impl Link {
    fn is_batched(&self) -> bool {
        matches!(self, Link::Up { protocol: Protocol::Batched, .. })
    }

    /// What the link has next: a message while up, the time to retry while down, never
    /// while idle.
    async fn next(&mut self) -> Wake {
        match self {
            Link::Up { events, .. } => Wake::Message(events.next().await),
            Link::Down { retry_at, .. } => {
                tokio::time::sleep_until((*retry_at).into()).await;
                Wake::Credit
            }
            Link::Idle => std::future::pending().await,
        }
    }
}

/// A line of the worker's output that starts with `TELEMETRY:`, handed over by the Worker
/// process (`stderr_line` NIF); lines longer than its maximum are counted there instead.
pub struct StderrLine(pub Vec<u8>);

/// How the task ended: why, and whether a stream was open then (with the events it sent).
struct TaskEnd {
    reason: CloseReason,
    open: Option<u64>,
}

/// The backoff state of one task: failed attempts and short-lived streams in a row.
struct Backoff {
    random: Sampler,
    streak: u32,
}

impl Backoff {
    /// The delay before the next attempt; each call counts one more in the streak.
    fn next(&mut self, policy: &BackoffPolicy) -> Duration {
        self.streak = self.streak.saturating_add(1);
        policy.delay(self.streak, &mut self.random)
    }
}

/// Streams live longer than this before a loss resets the backoff; shorter ones (a worker
/// that keeps closing the stream, or two clients taking it from each other) keep backing off.
const STABLE_STREAM: Duration = Duration::from_secs(5);

/// How long an ended registration's last status messages wait for a receiver that is gone.
const LAST_STATUS_WAIT: Duration = Duration::from_secs(5);

impl StreamTask {
    /// Runs the stream until the registration ends, then reports why. A panic inside is
    /// caught, reported as a loss, and the stream is opened again like after any other loss.
    pub async fn run(self, mut stop: oneshot::Receiver<CloseReason>, mut lines: mpsc::Receiver<StderrLine>) {
        let mut flow = Flow {
            credit: Arc::new(FlowCredit::new(self.limits.max_in_flight)),
            pending: Pending::new(self.limits.buffer),
            env: OwnedEnv::new(),
            statuses: StatusQueue::default(),
            blocked: false,
            sent: 0,
            last_batch_at: None,
            hold_until: None,
        };
        let mut backoff = Backoff { random: Sampler::new(sampler_seed(self.worker.generation)), streak: 0 };
        let mut transit = TransitLedger::default();
        let end = loop {
            let attempt = std::panic::AssertUnwindSafe(self.stream(
                &mut stop,
                &mut lines,
                &mut flow,
                &mut backoff,
                &mut transit,
            ))
            .catch_unwind()
            .await;
            match attempt {
                Ok(end) => break end,
                Err(_) => {
                    let left = flow.pending.clear();
                    self.state.counters.add_dropped(DropReason::Undeliverable, left as u64);
                    flow.blocked = false;
                    if !self.state.set_retrying(0, CloseReason::Panicked) {
                        break TaskEnd { reason: CloseReason::Unregistered, open: None };
                    }
                    let delay = backoff.next(&self.connect.backoff);
                    tokio::select! {
                        reason = &mut stop => break TaskEnd { reason: reason.unwrap_or(CloseReason::Shutdown), open: None },
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        self.state.set_closed(end.reason.clone());
        let message = match end.open {
            Some(sent) => StatusMessage::Closed(end.reason, sent),
            None => StatusMessage::Ended(end.reason),
        };
        // The last message of the registration, after any still waiting: a receiver that is
        // gone (its Dispatcher restarting) gets a moment to come back for them, and the task
        // stays until they are acknowledged, to send again any that come back (their
        // Dispatcher was killed with them unread).
        flow.statuses.post(message);
        let mut receiver = self.receiver.clone();
        let returned = flow.statuses.returned();
        let deadline = tokio::time::Instant::now() + LAST_STATUS_WAIT;
        loop {
            let outcome = flow.statuses.send(&receiver, &self.worker);
            if outcome == SendOutcome::Sent && returned.all_acknowledged() {
                break;
            }
            let sent = outcome != SendOutcome::Refused;
            let changed = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    changed = receiver.changed() => changed.is_ok(),
                    _ = returned.changed(), if sent => true,
                }
            });
            if !matches!(changed.await, Ok(true)) {
                break;
            }
        }
    }

    async fn stream(
        &self,
        stop: &mut oneshot::Receiver<CloseReason>,
        lines: &mut mpsc::Receiver<StderrLine>,
        flow: &mut Flow,
        backoff: &mut Backoff,
        transit: &mut TransitLedger,
    ) -> TaskEnd {
        let mut settings = self.state.settings.subscribe();
        let mut receiver = self.receiver.clone();
        let returned = flow.statuses.returned();
        let catalog = &self.encoder.catalog;
        let policy = |settings: &mut watch::Receiver<_>, samples_patterns: bool| {
            let current: &Arc<snakepit_telemetry_core::settings::Settings> = &settings.borrow_and_update();
            Policy::new(&current.effective(&self.excluded), catalog, samples_patterns)
        };
        let seed = sampler_seed(self.worker.generation).rotate_left(17);
        let reports = ReportShape::of(catalog);
        let mut gate = Gate {
            policy: policy(&mut settings, false),
            sampler: Sampler::new(seed),
            reports,
            whole_totals: false,
        };
        let (lost_at, failed) = match self.resume {
            Some((at, failed)) => (Some(at), failed),
            None => (None, 0),
        };
        let mut link = match self.address {
            Some(_) => Link::Down { retry_at: Instant::now(), lost_at, failed },
            None => Link::Idle,
        };
        let mut names = EventNames::default();
        // The worker answered StreamTelemetryBatched UNIMPLEMENTED: it speaks StreamTelemetry only.
        let mut single = false;
        loop {
            if let Link::Down { retry_at, lost_at, failed } = link {
                if Instant::now() >= retry_at {
                    let opened = tokio::select! {
                        biased;
                        reason = &mut *stop => return self.stop(flow, reason, false),
                        opened = tokio::time::timeout(self.connect.timeout, self.open(&mut single)) => opened,
                    };
                    let opened = opened.unwrap_or_else(|_| {
                        Err(CloseReason::ConnectFailed(format!(
                            "no response within {} ms",
                            self.connect.timeout.as_millis()
                        )))
                    });
                    link = match opened {
                        Ok(Opened { events, samples_patterns, restates_drops, protocol, sent }) => {
                            let counters = &self.state.counters;
                            let stream_id = sent.as_ref().map(|sent| sent.stream_id.as_str());
                            gate.whole_totals = counters.report_totals.opened(stream_id, restates_drops);
                            let lost = transit.opened(sent, counters.received_from_calls());
                            counters.add_dropped(DropReason::LostInTransit, lost);
                            gate.policy = policy(&mut settings, samples_patterns);
                            flow.sent = 0;
                            let opened = match lost_at {
                                None => StatusMessage::Established,
                                Some(at) => StatusMessage::Reconnected(at.elapsed(), failed + 1),
                            };
                            flow.post_status(opened, &receiver, &self.worker);
                            Link::Up { events, since: Instant::now(), samples_patterns, protocol }
                        }
                        Err(reason) if reason.is_final() => return TaskEnd { reason, open: None },
                        Err(reason) => {
                            let failed = failed.saturating_add(1);
                            self.state.set_retrying(failed, reason);
                            let retry_at = Instant::now() + backoff.next(&self.connect.backoff);
                            Link::Down { retry_at, lost_at, failed }
                        }
                    };
                    continue;
                }
            }
            let wake = tokio::select! {
                biased;
                reason = &mut *stop => Wake::Stop(reason.unwrap_or(CloseReason::Shutdown)),
                changed = settings.changed() => match changed {
                    Ok(()) => Wake::Settings,
                    Err(_) => Wake::Stop(CloseReason::Shutdown),
                },
                changed = receiver.changed(), if flow.blocked => match changed {
                    Ok(()) => Wake::Receiver,
                    Err(_) => Wake::Stop(CloseReason::Shutdown),
                },
                _ = flow.credit.freed(), if !flow.pending.is_empty() && !flow.blocked => Wake::Credit,
                _ = sleep_until_some(flow.hold_until), if flow.hold_until.is_some() => Wake::Credit,
                // A status message was acknowledged, or came back from a Dispatcher that died
                // with it unread (then it is sent again).
                _ = returned.changed() => Wake::Credit,
                line = lines.recv(), if !lines.is_closed() || !lines.is_empty() => match line {
                    Some(line) => Wake::Line(line),
                    None => Wake::Credit,
                },
                // A batched stream is not read while the buffer is full: back-pressure.
                wake = link.next(), if !(link.is_batched() && flow.pending.is_full()) => wake,
            };
            let lost = match wake {
                Wake::Stop(reason) => {
                    return self.stop(flow, Ok(reason), matches!(link, Link::Up { .. }));
                }
                Wake::Credit => None,
                Wake::Receiver => {
                    flow.blocked = false;
                    None
                }
                Wake::Settings => {
                    let samples_patterns = matches!(link, Link::Up { samples_patterns: true, .. });
                    gate.policy = policy(&mut settings, samples_patterns);
                    self.refilter(&gate, &mut flow.pending);
                    None
                }
                Wake::Message(message) => match &mut link {
                    Link::Up { events, protocol, .. } => {
                        self.receive(message, *protocol, events, &mut gate, &mut flow.pending, &mut names)
                    }
                    Link::Down { .. } | Link::Idle => None,
                },
                Wake::Line(line) => {
                    self.accept_line(line, &mut gate, &mut flow.pending, &mut names);
                    None
                }
            };
            self.flush(flow, &receiver);
            if let (Some(reason), Link::Up { since, protocol, .. }) = (lost, &link) {
                // UNIMPLEMENTED after the response headers rather than in them: same meaning.
                if *protocol == Protocol::Batched
                    && matches!(&reason, CloseReason::StreamError(text) if text.starts_with("Unimplemented"))
                {
                    single = true;
                }
                let uptime = since.elapsed();
                if uptime >= STABLE_STREAM {
                    backoff.streak = 0;
                }
                let lost = StatusMessage::Lost(reason.clone(), uptime, flow.sent);
                flow.post_status(lost, &receiver, &self.worker);
                self.state.set_retrying(0, reason);
                let retry_at = Instant::now() + backoff.next(&self.connect.backoff);
                link = Link::Down { retry_at, lost_at: Some(Instant::now()), failed: 0 };
            }
        }
    }

    /// The registration ended (`reason` from the stop channel; `stream_open`: a stream was
    /// open then). What is buffered goes to the receiver now, without waiting for
    /// `min_batch_interval`, as far as flow control allows (events already checked are not
    /// lost to the interval); what is left cannot be delivered any more and is counted.
    fn stop(
        &self,
        flow: &mut Flow,
        reason: Result<CloseReason, oneshot::error::RecvError>,
        stream_open: bool,
    ) -> TaskEnd {
        if flow.send_statuses(&self.receiver, &self.worker) {
            self.send_batches(flow, &self.receiver);
        }
        let left = flow.pending.clear();
        self.state.counters.add_dropped(DropReason::Undeliverable, left as u64);
        TaskEnd { reason: reason.unwrap_or(CloseReason::Shutdown), open: stream_open.then_some(flow.sent) }
    }

    /// Takes one message, then every message that has already arrived (up to a batch), so a
    /// busy stream sends full batches. Returns why the stream ended, if it did.
    fn receive(
        &self,
        first: Result<Incoming, StreamEnd>,
        protocol: Protocol,
        events: &mut EventStream,
        gate: &mut Gate,
        pending: &mut Pending,
        names: &mut EventNames,
    ) -> Option<CloseReason> {
        let mut next = Some(first);
        let mut taken = 0;
        // One atomic add for the single messages of this wake-up (see `accept_batch`).
        let mut received = ReceivedTally { counters: &self.state.counters, messages: 0 };
        while let Some(message) = next {
            match message {
                Ok(incoming) => match protocol {
                    Protocol::Single => {
                        received.messages += 1;
                        self.check(incoming, gate, pending, names)
                    }
                    Protocol::Batched => self.accept_batch(incoming, gate, pending, names),
                },
                Err(StreamEnd::Closed) => return Some(CloseReason::WorkerClosed),
                Err(StreamEnd::Failed(text)) => return Some(CloseReason::StreamError(text)),
            }
            taken += 1;
            let room = protocol == Protocol::Single || !pending.is_full();
            next = if taken < self.limits.buffer.max_batch && room {
                events.next().now_or_never()
            } else {
                None
            };
        }
        None
    }

    /// Opens the stream; its request stream sends the worker its settings once the response
    /// headers say what the worker honours. Returns the events and that capability.
    /// `StreamTelemetryBatched` is tried first unless `single` says the worker answered it
    /// UNIMPLEMENTED before (a Snakepit worker); then `StreamTelemetry`, and `single` is set.
    async fn open(&self, single: &mut bool) -> Result<Opened, CloseReason> {
        let address = self.address.as_ref().ok_or(CloseReason::Unregistered)?;
        let channel = address.connect(self.connect.timeout).await.map_err(CloseReason::ConnectFailed)?;
        let mut protocol = if *single { Protocol::Single } else { Protocol::Batched };
        let opened = loop {
            let (capability_tx, capability_rx) = oneshot::channel();
            let controls =
                control_stream(capability_rx, self.state.settings.subscribe(), self.excluded.clone());
            let max_message = match protocol {
                // A lone event of max_event_bytes travels framed: a few bytes more.
                Protocol::Batched => {
                    (self.limits.max_event_bytes + 16).max(self.limits.buffer.max_batch_bytes)
                }
                Protocol::Single => self.limits.max_event_bytes,
            };
            match open_stream(channel.clone(), protocol, controls, max_message, self.token.as_deref()).await {
                Ok(opened) => break (opened, capability_tx),
                Err(OpenError::Unimplemented) if protocol == Protocol::Batched => {
                    *single = true;
                    protocol = Protocol::Single;
                }
                Err(OpenError::Unimplemented) => {
                    return Err(CloseReason::ConnectFailed("the worker serves no telemetry stream".into()))
                }
                Err(OpenError::Failed(text)) => return Err(CloseReason::ConnectFailed(text)),
            }
        };
        let (opened, capability_tx) = opened;
        let worker_samples_patterns = samples_patterns(&opened.capabilities);
        let _ = capability_tx.send(worker_samples_patterns);
        if !self.state.set_connected(&opened.capabilities, protocol == Protocol::Batched) {
            return Err(CloseReason::Unregistered);
        }
        Ok(Opened {
            events: opened.events,
            samples_patterns: worker_samples_patterns,
            restates_drops: restates_drops(&opened.capabilities),
            protocol,
            sent: opened.sent,
        })
    }

    /// New settings also apply to what is buffered but not yet sent (toggle and filters;
    /// buffered events were already sampled).
    fn refilter(&self, gate: &Gate, pending: &mut Pending) {
        let counters = &self.state.counters;
        let policy = &gate.policy;
        pending.retain(|record| {
            gate.is_report(record.event)
                || match policy.decision(record.event) {
                    Decision::Remove(removal) => {
                        counters.add_dropped(removal_reason(removal), 1);
                        false
                    }
                    Decision::Keep(_) => true,
                }
        });
    }

    /// Counts one message received, checks it and buffers it, or counts why not.
    fn accept(&self, incoming: Incoming, gate: &mut Gate, pending: &mut Pending, names: &mut EventNames) {
        self.state.counters.add_received(1);
        self.check(incoming, gate, pending, names);
    }

    /// Checks one message (already counted as received) and buffers it, or counts why not.
    fn check(&self, incoming: Incoming, gate: &mut Gate, pending: &mut Pending, names: &mut EventNames) {
        let counters = &self.state.counters;
        let bytes = match incoming {
            Incoming::Message(bytes) => bytes,
            Incoming::Oversize => return counters.add_dropped(DropReason::Oversize, 1),
            Incoming::Compressed => return counters.add_dropped(DropReason::DecodeError, 1),
        };
        let checked =
            translate(&self.encoder.catalog, self.limits.event, &bytes, names, |event| gate.check(event))
                .and_then(|record| self.admit(record, gate, pending, true));
        if let Err(reason) = checked {
            counters.add_dropped(reason, 1);
        }
    }

    /// Checks each event of a batched message like a single message (each counts as one
    /// received); a batch that is not well-formed, or larger than the limit, counts once.
    fn accept_batch(
        &self,
        incoming: Incoming,
        gate: &mut Gate,
        pending: &mut Pending,
        names: &mut EventNames,
    ) {
        let counters = &self.state.counters;
        let bytes = match incoming {
            Incoming::Message(bytes) => bytes,
            other => return self.accept(other, gate, pending, names),
        };
        let Ok(events) = batch::event_slices(&bytes) else {
            counters.add_received(1);
            return counters.add_dropped(DropReason::DecodeError, 1);
        };
        // Counted once per message: an atomic add per event costs more than checking it
        // (its cache line is shared with the counters that acknowledgements update).
        counters.add_received(events.len() as u64);
        let count = events.len();
        for (i, event) in events.into_iter().enumerate() {
            if event.len() > self.limits.max_event_bytes {
                counters.add_dropped(DropReason::Oversize, 1);
                continue;
            }
            let checked =
                translate(&self.encoder.catalog, self.limits.event, event, names, |event| gate.check(event))
                    .and_then(|record| match gate.reports {
                        Some(shape) if shape.event == record.event => self.admit(record, gate, pending, true),
                        _ => pending.push_from_batch(record, count - i),
                    });
            if let Err(reason) = checked {
                counters.add_dropped(reason, 1);
            }
        }
    }

    /// Buffers a checked event; a drop report is tallied (its count made up for reports
    /// lost before it, `source_drops.rs`) and always buffered. `from_call`: read from a gRPC
    /// call, not a stderr line.
    fn admit(
        &self,
        mut record: EventRecord,
        gate: &mut Gate,
        pending: &mut Pending,
        from_call: bool,
    ) -> Result<(), DropReason> {
        match gate.reports {
            Some(shape) if shape.event == record.event => {
                let counters = &self.state.counters;
                if from_call {
                    counters.add_received_report();
                }
                let (reason, count, total) = shape.read(&record);
                let stands_for = counters.report_totals.account(reason, count, total, gate.whole_totals);
                counters.source.add(reason, stands_for);
                if stands_for != count {
                    shape.set_count(&mut record, stands_for);
                }
                pending.push_report(record)
            }
            _ => pending.push(record),
        }
    }

    /// Checks one stderr telemetry line like a gRPC message and buffers it, or counts why not.
    fn accept_line(&self, line: StderrLine, gate: &mut Gate, pending: &mut Pending, names: &mut EventNames) {
        let counters = &self.state.counters;
        counters.add_received(1);
        counters.add_received_line();
        let outcome =
            parse_line(&self.encoder.catalog, self.limits.event, &line.0, names, |event| gate.check(event));
        let checked = match outcome {
            LineOutcome::Telemetry(result) => {
                result.and_then(|record| self.admit(record, gate, pending, false))
            }
            // The Worker sends only lines with the prefix.
            LineOutcome::NotTelemetry => Err(DropReason::DecodeError),
        };
        if let Err(reason) = checked {
            counters.add_dropped(reason, 1);
        }
    }

    /// Sends batches while flow control allows and the receiver takes them, unless the batch
    /// interval holds them (`hold_until`).
    fn flush(&self, flow: &mut Flow, receiver: &watch::Receiver<LocalPid>) {
        if !flow.send_statuses(receiver, &self.worker) {
            return;
        }
        flow.hold_until = self.hold_until(flow);
        if flow.hold_until.is_none() {
            self.send_batches(flow, receiver);
        }
    }

    /// Sends what is buffered, batch by batch, while flow control allows and the receiver
    /// takes them.
    fn send_batches(&self, flow: &mut Flow, receiver: &watch::Receiver<LocalPid>) {
        while !flow.blocked && !flow.pending.is_empty() && flow.credit.try_acquire() {
            let pid = *receiver.borrow();
            let records = flow.pending.take_batch();
            let events = records.len();
            let ticket = BatchTicket::new(flow.credit.clone(), self.state.clone(), events);
            let batch =
                ResourceArc::new(EventBatch::new(ticket, self.encoder.clone(), self.worker.clone(), records));
            match flow.env.send_and_clear(&pid, |env| self.encoder.envelope(env, &batch, &self.worker)) {
                Ok(()) => {
                    flow.sent += events as u64;
                    flow.last_batch_at = Some(Instant::now());
                }
                Err(_) => {
                    // The receiver is gone: the events go back, in their place, for the next.
                    batch.ticket.cancel();
                    flow.pending.put_back(batch.take_back());
                    flow.blocked = true;
                }
            }
        }
    }

    /// When the next batch may leave, if it has to wait: only while the receiver holds none
    /// of this stream's batches, the batch is not ready (`Pending::is_batch_ready`: not full,
    /// the buffer less than half full), and the previous one left less than half of
    /// `min_batch_interval` ago; then it leaves `min_batch_interval` after the previous one.
    fn hold_until(&self, flow: &Flow) -> Option<Instant> {
        let interval = self.limits.min_batch_interval;
        if interval.is_zero()
            || flow.blocked
            || flow.pending.is_empty()
            || flow.pending.is_batch_ready()
            || flow.credit.in_flight() > 0
        {
            return None;
        }
        // Only events that come within half the interval of the previous batch wait: at a
        // steady pace, two or more then share the receiver's wake-up. One that comes later
        // goes at once, so a stream with an event about every interval gets no timer wake-up
        // per event for nothing (`bench/RESULTS.md`).
        let last = flow.last_batch_at?;
        (last.elapsed() < interval / 2).then(|| last.checked_add(interval)).flatten()
    }
}

/// Sleeps until `at` (never, for `None`: the branch using it is disabled then).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Messages received during one wake-up, added to the stream's counters once, when it ends
/// (also when a panic unwinds through it, so that none goes uncounted).
struct ReceivedTally<'c> {
    counters: &'c StreamCounters,
    messages: u64,
}

impl Drop for ReceivedTally<'_> {
    fn drop(&mut self) {
        self.counters.add_received(self.messages);
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
