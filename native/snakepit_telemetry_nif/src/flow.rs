//! Flow control between a stream task and the process that runs the handlers, and the
//! accounting of every event handed over.
//!
//! At most `max` batches of a stream are in flight. Each batch travels with a
//! [`BatchTicket`] (inside its `EventBatch` resource); the receiver acknowledges it
//! (`Native.ack/1`) after its handlers ran, which counts the batch's events as emitted and
//! frees a slot. A ticket that dies unacknowledged (the receiving process was killed with the
//! batch in its mailbox, or while its handlers ran) counts as emitted the events its
//! receiver confirmed (`confirm`: those of the chunks it took before the last one, whose
//! handlers ran before it asked for more) and the rest as `undeliverable`, and frees the slot
//! all the same, so no crash can leak credit or lose an event uncounted.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use snakepit_telemetry_core::counters::DropReason;
use snakepit_telemetry_core::registry::StreamState;
use tokio::sync::Notify;

pub struct FlowCredit {
    in_flight: AtomicUsize,
    max: usize,
    freed: Notify,
}

impl FlowCredit {
    pub fn new(max_in_flight: usize) -> FlowCredit {
        FlowCredit { in_flight: AtomicUsize::new(0), max: max_in_flight.max(1), freed: Notify::new() }
    }

    /// Takes a slot for one batch, if one is free.
    pub fn try_acquire(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// Gives a slot back.
    fn release(&self) {
        let _ = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.freed.notify_one();
    }

    /// Batches sent and not yet acknowledged or cancelled.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until a slot may have been freed. A release that happens before this is awaited
    /// is not lost (`Notify` keeps one permit).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

/// One batch in flight: settled exactly once, by `acknowledge`, `cancel` or its destructor.
pub struct BatchTicket {
    credit: Arc<FlowCredit>,
    state: Arc<StreamState>,
    events: u64,
    /// Events whose handlers ran, as far as the receiver has told (`confirm`).
    confirmed: AtomicU64,
    settled: AtomicBool,
}

impl BatchTicket {
    /// A ticket for `events` events; the caller has acquired a slot of `credit`.
    pub fn new(credit: Arc<FlowCredit>, state: Arc<StreamState>, events: usize) -> BatchTicket {
        BatchTicket {
            credit,
            state,
            events: events as u64,
            confirmed: AtomicU64::new(0),
            settled: AtomicBool::new(false),
        }
    }

    fn settle(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }

    /// The receiver ran the handlers: the events are emitted. Later calls do nothing.
    pub fn acknowledge(&self) {
        if self.settle() {
            self.state.counters.add_emitted(self.events);
            self.credit.release();
        }
    }

    /// The handlers of the batch's first `events` events ran (the receiver asked for the
    /// events after them). Counts only if the batch then dies unacknowledged; never lowers
    /// an earlier confirmation.
    pub fn confirm(&self, events: usize) {
        self.confirmed.fetch_max((events as u64).min(self.events), Ordering::AcqRel);
    }

    /// The batch was never sent (the receiver was gone): its events stay buffered.
    pub fn cancel(&self) {
        if self.settle() {
            self.credit.release();
        }
    }
}

impl Drop for BatchTicket {
    fn drop(&mut self) {
        if self.settle() {
            let confirmed = self.confirmed.load(Ordering::Acquire);
            if confirmed > 0 {
                self.state.counters.add_emitted(confirmed);
            }
            if self.events > confirmed {
                self.state.counters.add_dropped(DropReason::Undeliverable, self.events - confirmed);
            }
            self.credit.release();
        }
    }
}
