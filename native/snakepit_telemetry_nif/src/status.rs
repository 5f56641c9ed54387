//! The status messages a stream task sends its receiver (the Dispatcher of its partition),
//! and the queue that keeps them while that receiver is gone (a Dispatcher restarting).
//!
//! Each message travels with a [`StatusTicket`] that the receiver acknowledges once it has
//! emitted the message's events (`Native.ack_status/1`). A ticket dropped unacknowledged (its
//! Dispatcher was killed with the message in its mailbox) hands its message back to the
//! stream's queue, which sends it again, in its place among the others, to the next
//! Dispatcher (at most [`MAX_RETURNS`] times).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustler::{Encoder, LocalPid, OwnedEnv, ResourceArc};
use snakepit_telemetry_core::registry::CloseReason;
use tokio::sync::watch;
use tokio::sync::Notify;

use crate::atoms;
use crate::encode::WorkerMeta;
use crate::terms::close_reason_term;

#[derive(Clone)]
pub enum StatusMessage {
    /// The registration's first stream opened.
    Established,
    /// A stream opened again: time since the loss, and the attempts it took.
    Reconnected(Duration, u32),
    /// A stream ended and a retry follows: why, how long it was open, events it sent.
    Lost(CloseReason, Duration, u64),
    /// The registration ended with a stream open: why, and the events that stream sent.
    Closed(CloseReason, u64),
    /// The registration ended with no stream open.
    Ended(CloseReason),
}

/// Status messages not yet taken by a receiver, oldest first. A message the receiver refuses
/// (it is gone: its Dispatcher is restarting) waits here, and so do the ones after it, until
/// the stream task sees a new receiver; so no `:lost` or `:reconnected` event is lost while a
/// Dispatcher is down; one already in the mailbox of a Dispatcher that is then killed comes
/// back through its ticket and goes in line again in its place. (An ended registration's task
/// waits up to 5 s for its last messages to be acknowledged; one that comes back later is not
/// sent again.) A stream posts at most two messages per connection, so the bound is only
/// reached if a receiver stays away through dozens of reconnections (by then the
/// application's supervisor has given up restarting it); then the oldest message goes.
#[derive(Default)]
pub struct StatusQueue {
    waiting: VecDeque<Waiting>,
    /// The number of the next message posted: messages that come back go in in this order.
    next: u64,
    returned: Arc<ReturnedStatuses>,
}

/// A message in line, with its number and how many times it came back.
#[derive(Clone)]
struct Waiting {
    number: u64,
    returns: u32,
    message: StatusMessage,
}

/// How many times a message is sent again after it came back unread: a receiver that takes
/// messages and never acknowledges them (not a Dispatcher) must not get them forever.
const MAX_RETURNS: u32 = 3;

/// Messages whose tickets died unacknowledged, waiting for the stream task to take them back,
/// and how many sent ones are still unacknowledged.
#[derive(Default)]
pub struct ReturnedStatuses {
    messages: Mutex<Vec<Waiting>>,
    outstanding: AtomicUsize,
    changed: Notify,
}

impl ReturnedStatuses {
    /// Waits until a message is acknowledged or comes back (one of those that happened before
    /// this is awaited counts).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether every message sent has been acknowledged (none is in a receiver's mailbox).
    pub fn all_acknowledged(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) == 0
    }

    /// A sent message was acknowledged, or came back: it is no longer outstanding.
    fn settled(&self) {
        let _ = self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.changed.notify_one();
    }
}

/// Travels with one status message; see the module doc.
pub struct StatusTicket {
    message: Mutex<Option<Waiting>>,
    returned: Arc<ReturnedStatuses>,
}

#[rustler::resource_impl]
impl rustler::Resource for StatusTicket {}

impl StatusTicket {
    /// The receiver emitted the message's events: nothing comes back. Later calls do nothing.
    pub fn acknowledge(&self) {
        if self.message.lock().unwrap_or_else(PoisonError::into_inner).take().is_some() {
            self.returned.settled();
        }
    }
}

impl Drop for StatusTicket {
    fn drop(&mut self) {
        let message = self.message.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut message) = message {
            message.returns += 1;
            if message.returns <= MAX_RETURNS {
                self.returned.messages.lock().unwrap_or_else(PoisonError::into_inner).push(message);
            }
            self.returned.settled();
        }
    }
}

/// The most status messages one stream keeps for a receiver that is gone.
pub const MAX_WAITING_STATUSES: usize = 64;

impl StatusQueue {
    /// Queues `message` behind those still waiting.
    pub fn post(&mut self, message: StatusMessage) {
        if self.waiting.len() >= MAX_WAITING_STATUSES {
            self.waiting.pop_front();
        }
        self.waiting.push_back(Waiting { number: self.next, returns: 0, message });
        self.next += 1;
    }

    /// Where messages whose receiver died unread come back (see [`StatusTicket`]).
    pub fn returned(&self) -> Arc<ReturnedStatuses> {
        self.returned.clone()
    }

    /// Puts the messages that came back in line again, in the order they were posted (the
    /// messages in line are in that order; the returned ones may come back in any order).
    fn take_back_returned(&mut self) {
        let returned =
            std::mem::take(&mut *self.returned.messages.lock().unwrap_or_else(PoisonError::into_inner));
        if returned.is_empty() {
            return;
        }
        self.waiting.extend(returned);
        self.waiting.make_contiguous().sort_by_key(|waiting| waiting.number);
        while self.waiting.len() > MAX_WAITING_STATUSES {
            self.waiting.pop_front();
        }
    }

    /// Sends the waiting messages in order (see [`SendOutcome`]). A message that came back is
    /// not sent again while any other is out: those may be coming back too, and some of them
    /// were posted before it (a mailbox is not freed in order).
    pub fn send(&mut self, receiver: &watch::Receiver<LocalPid>, worker: &WorkerMeta) -> SendOutcome {
        self.take_back_returned();
        while let Some(message) = self.waiting.front() {
            if message.returns > 0 && !self.returned.all_acknowledged() {
                return SendOutcome::Deferred;
            }
            self.returned.outstanding.fetch_add(1, Ordering::AcqRel);
            let ticket = ResourceArc::new(StatusTicket {
                message: Mutex::new(Some(message.clone())),
                returned: self.returned.clone(),
            });
            if !send_status(receiver, worker, &message.message, &ticket) {
                // Not sent: the message stays here, its ticket must not hand it back too.
                ticket.acknowledge();
                return SendOutcome::Refused;
            }
            self.waiting.pop_front();
        }
        SendOutcome::Sent
    }
}

/// What [`StatusQueue::send`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Every waiting message was sent.
    Sent,
    /// The receiver is gone: the rest wait for the next one.
    Refused,
    /// The next message came back and waits until no other is out (see
    /// [`ReturnedStatuses::changed`]).
    Deferred,
}

/// `{:snakepit_telemetry_stream, worker_id, generation, status, sent, ticket}` to the receiver, where
/// status is `{:opened, :established | {:reconnected, downtime_ms, attempts}}`,
/// `{:lost, reason, uptime_ms}`, `{:closed, reason}` or `{:ended, reason}`. False if the
/// receiver is gone (the message was not sent).
fn send_status(
    receiver: &watch::Receiver<LocalPid>,
    worker: &WorkerMeta,
    message: &StatusMessage,
    ticket: &ResourceArc<StatusTicket>,
) -> bool {
    let pid = *receiver.borrow();
    let mut env = OwnedEnv::new();
    let sent = env.send_and_clear(&pid, |env| {
        let millis = |d: &Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let (status, sent) = match message {
            StatusMessage::Established => ((atoms::opened(), atoms::established()).encode(env), 0),
            StatusMessage::Reconnected(downtime, attempts) => {
                let how = (atoms::reconnected(), millis(downtime), *attempts).encode(env);
                ((atoms::opened(), how).encode(env), 0)
            }
            StatusMessage::Lost(reason, uptime, sent) => {
                ((atoms::lost(), close_reason_term(env, reason), millis(uptime)).encode(env), *sent)
            }
            StatusMessage::Closed(reason, sent) => {
                ((atoms::closed(), close_reason_term(env, reason)).encode(env), *sent)
            }
            StatusMessage::Ended(reason) => ((atoms::ended(), close_reason_term(env, reason)).encode(env), 0),
        };
        let stream = atoms::snakepit_telemetry_stream();
        (stream, worker.worker_id.as_str(), worker.generation, status, sent, ticket.clone()).encode(env)
    });
    sent.is_ok()
}
