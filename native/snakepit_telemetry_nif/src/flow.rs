//! Flow control between a stream task and the process that runs the handlers: at most
//! `max` batches are in flight; the receiver acknowledges each batch (`Native.ack/1`) after
//! its handlers ran, which frees a slot and wakes the task. The credit is a resource so the
//! acknowledgement needs no lookup and never touches the stream task.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

pub struct FlowCredit {
    in_flight: AtomicUsize,
    max: usize,
    freed: Notify,
}

#[rustler::resource_impl]
impl rustler::Resource for FlowCredit {}

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

    /// Gives a slot back (an acknowledgement). Extra acknowledgements are ignored.
    pub fn release(&self) {
        let _ = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.freed.notify_one();
    }

    /// Waits until a slot may have been freed. A release that happens before this is awaited
    /// is not lost (`Notify` keeps one permit).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}
