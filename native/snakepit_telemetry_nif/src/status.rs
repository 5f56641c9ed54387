//! The status messages a stream task sends its receiver (the Dispatcher of its partition).

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

/// `{:snakepit_telemetry_stream, worker_id, generation, status, sent}` to the receiver, where
/// status is `{:opened, :established | {:reconnected, downtime_ms, attempts}}`,
/// `{:lost, reason, uptime_ms}`, `{:closed, reason}` or `{:ended, reason}`. If the receiver
/// is gone at that moment the message is lost (the status itself stays readable through
/// `stream_info`).
pub fn send_status(receiver: &watch::Receiver<LocalPid>, worker: &WorkerMeta, message: StatusMessage) {
    let pid = *receiver.borrow();
    let mut env = OwnedEnv::new();
    let _ = env.send_and_clear(&pid, |env| {
        let millis = |d: &Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let (status, sent) = match &message {
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
}
