//! A stream's buffer: events checked and waiting for the receiver, bounded in count and
//! bytes as they were on the wire; a worker's drop reports get a small allowance of their
//! own past the bounds. A batched stream stops reading while the buffer is full (HTTP/2 flow
//! control then holds the worker back, which drops and reports at the source), and puts a
//! whole message in when it reads one, so it exceeds the bounds by at most one message.

use std::collections::VecDeque;

use snakepit_telemetry_core::counters::DropReason;
use snakepit_telemetry_core::translate::EventRecord;

use crate::stream_task::StreamLimits;

/// Drop reports buffered beyond the bounds at most (events, bytes).
const REPORT_ALLOWANCE: usize = 64;
const REPORT_ALLOWANCE_BYTES: usize = 64 * 1024;

/// Events checked and waiting for the receiver, bounded in count and bytes.
#[derive(Default)]
pub struct Pending {
    events: VecDeque<EventRecord>,
    bytes: usize,
}

impl Pending {
    /// Buffers a drop report past the bounds, up to a small allowance of its own (an honest
    /// worker sends a few per second; a flood of them is still bounded, and counted).
    pub fn push_report(&mut self, record: EventRecord, limits: &StreamLimits) -> Result<(), DropReason> {
        if self.events.len() >= limits.max_buffer + REPORT_ALLOWANCE
            || self.bytes + record.wire_bytes > limits.max_buffer_bytes + REPORT_ALLOWANCE_BYTES
        {
            return Err(DropReason::Overflow);
        }
        self.bytes += record.wire_bytes;
        self.events.push_back(record);
        Ok(())
    }

    /// Whether the buffer is at a bound: a batched stream stops reading until it is not.
    pub fn is_full(&self, limits: &StreamLimits) -> bool {
        self.events.len() >= limits.max_buffer || self.bytes >= limits.max_buffer_bytes
    }

    /// Buffers an event of a batched message read while the buffer was not full: the
    /// message's events all go in, so the bounds are exceeded by at most one message.
    pub fn push_from_batch(&mut self, record: EventRecord) -> Result<(), DropReason> {
        self.bytes += record.wire_bytes;
        self.events.push_back(record);
        Ok(())
    }

    pub fn push(&mut self, record: EventRecord, limits: &StreamLimits) -> Result<(), DropReason> {
        if self.events.len() >= limits.max_buffer || self.bytes + record.wire_bytes > limits.max_buffer_bytes
        {
            return Err(DropReason::Overflow);
        }
        self.bytes += record.wire_bytes;
        self.events.push_back(record);
        Ok(())
    }

    /// The next batch: up to `max_batch` events and `max_batch_bytes` (at least one event).
    pub fn take_batch(&mut self, limits: &StreamLimits) -> Vec<EventRecord> {
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
    pub fn restore(&mut self, batch: Vec<EventRecord>) {
        for record in batch.into_iter().rev() {
            self.bytes += record.wire_bytes;
            self.events.push_front(record);
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&EventRecord) -> bool) {
        let bytes = &mut self.bytes;
        self.events.retain(|record| {
            let kept = keep(record);
            if !kept {
                *bytes -= record.wire_bytes;
            }
            kept
        });
    }

    pub fn clear(&mut self) -> usize {
        let n = self.events.len();
        self.events.clear();
        self.bytes = 0;
        n
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}
