//! A batch of checked events on its way to the receiving process, which turns it into terms
//! on its own heap (`Native.take_events/1`), a chunk per call, and then acknowledges it
//! (`Native.ack/1`).
//!
//! The stream task sends only a small message that carries the batch (a resource); the terms
//! are made by the process that runs the handlers. Made there, they go straight onto its
//! heap, where the runtime thread would have had to build them in heap fragments of a
//! process-independent env (about 60 `malloc`s per 512 events on OTP 25) that the process
//! then takes over; and the runtime thread, which checks every event of the stream, is left
//! with a third less to do per event (`bench/RESULTS.md`).
//!
//! A call makes terms for at most [`CHUNK_TIME`] (checked every [`CHECK_EVERY`] events or
//! [`CHECK_BYTES`] wire bytes), so that a batch of wide events does not hold a scheduler
//! for long; the receiver calls again while the answer is `{:more, events}`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustler::{Encoder, Env, Term};
use snakepit_telemetry_core::translate::EventRecord;

use crate::atoms;
use crate::encode::{TermEncoder, WorkerMeta};
use crate::flow::BatchTicket;

/// The longest one `take_events` call makes terms for (then it returns `{:more, events}`).
const CHUNK_TIME: Duration = Duration::from_micros(200);
/// How often the clock is read: every this many events, or sooner after this many bytes.
const CHECK_EVERY: usize = 64;
const CHECK_BYTES: usize = 16 * 1024;

pub struct EventBatch {
    pub ticket: BatchTicket,
    encoder: Arc<TermEncoder>,
    worker: Arc<WorkerMeta>,
    unread: Mutex<Unread>,
}

/// The records not yet turned into terms: `records[next..]`.
struct Unread {
    records: Vec<EventRecord>,
    next: usize,
}

#[rustler::resource_impl]
impl rustler::Resource for EventBatch {}

impl EventBatch {
    pub fn new(
        ticket: BatchTicket,
        encoder: Arc<TermEncoder>,
        worker: Arc<WorkerMeta>,
        records: Vec<EventRecord>,
    ) -> EventBatch {
        EventBatch { ticket, encoder, worker, unread: Mutex::new(Unread { records, next: 0 }) }
    }

    /// The records, taken back before any was read (the batch could not be sent).
    pub fn take_back(&self) -> Vec<EventRecord> {
        let mut unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut unread.records)
    }

    /// `{:more, events}` or `{:done, events}`: terms for the next records, in order, made in
    /// the caller's env for at most about [`CHUNK_TIME`]. After `:done`, `{:done, []}`.
    ///
    /// A call after `{:more, _}` confirms that the handlers of every event handed out before
    /// ran (the receiver runs a chunk's handlers before it asks for the next): should the
    /// batch then die unacknowledged, those count as emitted, not `undeliverable`.
    pub fn take_events<'a>(&self, env: Env<'a>) -> Term<'a> {
        let mut unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
        let Unread { records, next } = &mut *unread;
        if !records.is_empty() {
            self.ticket.confirm(*next);
        }
        let mut budget = Budget::new();
        let rest = records.get(*next..).unwrap_or_default();
        let (events, made) = self.encoder.encode_events(env, &self.worker, rest, |r| budget.allows(r));
        *next += made;
        crate::timeslice::charge_since(env, budget.started);
        if *next < records.len() {
            return (atoms::more(), events).encode(env);
        }
        // Done: the records' memory goes back now, not when the process lets go of the batch.
        *records = Vec::new();
        *next = 0;
        (atoms::done(), events).encode(env)
    }
}

/// The time one call may spend, read every so many events or bytes.
struct Budget {
    started: Instant,
    events: usize,
    bytes: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget { started: Instant::now(), events: 0, bytes: 0 }
    }

    /// Whether one more event may be made, `record` being the last one made.
    fn allows(&mut self, record: &EventRecord) -> bool {
        self.events += 1;
        self.bytes += record.wire_bytes;
        if self.events < CHECK_EVERY && self.bytes < CHECK_BYTES {
            return true;
        }
        (self.events, self.bytes) = (0, 0);
        self.started.elapsed() < CHUNK_TIME
    }
}
