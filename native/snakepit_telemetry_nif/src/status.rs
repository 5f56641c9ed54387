//! The status messages a stream task sends its receiver (the Dispatcher of its partition),
//! and the queue that keeps them while that receiver is gone (a Dispatcher restarting).

use std::collections::VecDeque;
use std::time::Duration;

use rustler::{Encoder, LocalPid, OwnedEnv};
use snakepit_telemetry_core::registry::CloseReason;
use tokio::sync::watch;

use crate::atoms;
use crate::encode::WorkerMeta;
use crate::terms::close_reason_term;

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
/// Dispatcher is down. (One already in the mailbox of a Dispatcher that is then killed goes
/// with it, as the batches there do; their events are counted `undeliverable`.) A stream
/// posts at most two messages per connection, so the bound is only reached if a receiver
/// stays away through dozens of reconnections (by then the application's supervisor has
/// given up restarting it); then the oldest message goes.
#[derive(Default)]
pub struct StatusQueue {
    waiting: VecDeque<StatusMessage>,
}

/// The most status messages one stream keeps for a receiver that is gone.
pub const MAX_WAITING_STATUSES: usize = 64;

impl StatusQueue {
    /// Queues `message` behind those still waiting.
    pub fn post(&mut self, message: StatusMessage) {
        if self.waiting.len() >= MAX_WAITING_STATUSES {
            self.waiting.pop_front();
        }
        self.waiting.push_back(message);
    }

    /// Sends the waiting messages in order. False if the receiver refused one: it stays first
    /// in line, to be sent again once there is a new receiver.
    pub fn send(&mut self, receiver: &watch::Receiver<LocalPid>, worker: &WorkerMeta) -> bool {
        while let Some(message) = self.waiting.front() {
            if !send_status(receiver, worker, message) {
                return false;
            }
            self.waiting.pop_front();
        }
        true
    }
}

/// `{:snakepit_telemetry_stream, worker_id, generation, status, sent}` to the receiver, where
/// status is `{:opened, :established | {:reconnected, downtime_ms, attempts}}`,
/// `{:lost, reason, uptime_ms}`, `{:closed, reason}` or `{:ended, reason}`. False if the
/// receiver is gone (the message was not sent).
fn send_status(receiver: &watch::Receiver<LocalPid>, worker: &WorkerMeta, message: &StatusMessage) -> bool {
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
        (atoms::snakepit_telemetry_stream(), worker.worker_id.as_str(), worker.generation, status, sent)
            .encode(env)
    });
    sent.is_ok()
}
