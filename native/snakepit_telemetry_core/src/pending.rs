//! A stream's buffer: events checked and waiting for the receiver, bounded in count and
//! bytes as they were on the wire; a worker's drop reports get a small allowance of their
//! own past the bounds. A batched stream stops reading while the buffer is full (HTTP/2 flow
//! control then holds the worker back, which drops and reports at the source), and puts a
//! whole message in when it reads one, so it exceeds the bounds by at most one message.

use std::collections::VecDeque;

use crate::counters::DropReason;
use crate::translate::EventRecord;

/// A stream's buffer bounds and the size of the batches taken from it (from the
/// application config: `max_buffer_size`, `max_buffer_bytes`, `max_batch_size`,
/// `max_batch_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct BufferLimits {
    pub max_buffer: usize,
    pub max_buffer_bytes: usize,
    pub max_batch: usize,
    pub max_batch_bytes: usize,
}

/// Slots an empty buffer keeps; beyond this its storage is given back once it drains. A
/// record is about 320 bytes (its few map entries are inline), and a batched stream may hold
/// `max_buffer` plus a whole worker message (8,192 events by default) for a moment: without
/// this, every stream that once had a burst would keep megabytes for as long as it lives.
const RETAINED_SLOTS: usize = 256;

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
    pub fn push_report(&mut self, record: EventRecord, limits: &BufferLimits) -> Result<(), DropReason> {
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
    pub fn is_full(&self, limits: &BufferLimits) -> bool {
        self.events.len() >= limits.max_buffer || self.bytes >= limits.max_buffer_bytes
    }

    /// Buffers an event of a batched message read while the buffer was not full: the
    /// message's events all go in, so the bounds are exceeded by at most one message.
    pub fn push_from_batch(&mut self, record: EventRecord) -> Result<(), DropReason> {
        self.bytes += record.wire_bytes;
        self.events.push_back(record);
        Ok(())
    }

    pub fn push(&mut self, record: EventRecord, limits: &BufferLimits) -> Result<(), DropReason> {
        if self.events.len() >= limits.max_buffer || self.bytes + record.wire_bytes > limits.max_buffer_bytes
        {
            return Err(DropReason::Overflow);
        }
        self.bytes += record.wire_bytes;
        self.events.push_back(record);
        Ok(())
    }

    /// The next batch: up to `max_batch` events and `max_batch_bytes` (at least one event).
    pub fn take_batch(&mut self, limits: &BufferLimits) -> Vec<EventRecord> {
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
        self.release_if_drained();
        batch
    }

    /// Gives back the storage a burst left behind, once nothing is buffered.
    fn release_if_drained(&mut self) {
        if self.events.is_empty() && self.events.capacity() > RETAINED_SLOTS {
            self.events.shrink_to(RETAINED_SLOTS);
        }
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
        self.release_if_drained();
        n
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EventRecord {
        EventRecord {
            event: 0,
            wire_bytes: 100,
            measurements: Default::default(),
            metadata: Default::default(),
            timestamp_ns: 0,
            correlation_id: String::new(),
        }
    }

    #[test]
    fn a_drained_buffer_gives_back_what_a_burst_took() {
        let limits = BufferLimits {
            max_buffer: 1024,
            max_buffer_bytes: 1 << 30,
            max_batch: 512,
            max_batch_bytes: 1 << 30,
        };
        let mut pending = Pending::default();
        for _ in 0..9_000 {
            pending.push_from_batch(record()).expect("a batched message goes in whole");
        }
        assert!(pending.events.capacity() >= 9_000);
        let mut taken = 0;
        while !pending.is_empty() {
            taken += pending.take_batch(&limits).len();
        }
        assert_eq!((taken, pending.bytes), (9_000, 0));
        assert!(pending.events.capacity() <= RETAINED_SLOTS);
        // A small steady flow keeps its storage: nothing is given back while it stays small.
        pending.push(record(), &limits).expect("room");
        let capacity = pending.events.capacity();
        pending.take_batch(&limits);
        assert_eq!(pending.events.capacity(), capacity);
    }
}
