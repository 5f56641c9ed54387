//! A stream's buffer: events checked and waiting for the receiver, bounded in count and
//! bytes as they were on the wire; a worker's drop reports get a small allowance of their
//! own past the bounds. A batched stream stops reading while the buffer is full (HTTP/2 flow
//! control then holds the worker back, which drops and reports at the source), and puts a
//! whole message in when it reads one, so it exceeds the bounds by at most one message.
//!
//! The events are kept as the batches they will leave in: each event joins the last batch
//! while that has room (`max_batch_size` events, `max_batch_bytes`), and a batch leaves
//! whole, as the vector it was filled in. Taking a batch copies no event (at about 230
//! bytes a record, moving them out one by one took 8 % of the stream task's time), and the
//! memory of a burst goes with the batches that carried it.

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

/// Drop reports buffered beyond the bounds at most (events, bytes).
const REPORT_ALLOWANCE: usize = 64;
const REPORT_ALLOWANCE_BYTES: usize = 64 * 1024;

/// Slots a new batch reserves for events that come one at a time (single messages, stderr
/// lines); it grows from there. One that starts inside a batched message reserves for the
/// rest of the message, up to `max_batch_size`.
const RESERVE_SINGLE: usize = 16;

/// Events checked and waiting for the receiver, bounded in count and bytes, in batches.
pub struct Pending {
    limits: BufferLimits,
    batches: VecDeque<Batch>,
    events: usize,
    bytes: usize,
}

/// Events that leave together, in order, and their size on the wire.
struct Batch {
    events: Vec<EventRecord>,
    bytes: usize,
}

impl Pending {
    pub fn new(limits: BufferLimits) -> Pending {
        Pending { limits, batches: VecDeque::new(), events: 0, bytes: 0 }
    }

    /// Buffers a drop report past the bounds, up to a small allowance of its own (an honest
    /// worker sends a few per second; a flood of them is still bounded, and counted).
    pub fn push_report(&mut self, record: EventRecord) -> Result<(), DropReason> {
        if self.events >= self.limits.max_buffer + REPORT_ALLOWANCE
            || self.bytes + record.wire_bytes > self.limits.max_buffer_bytes + REPORT_ALLOWANCE_BYTES
        {
            return Err(DropReason::Overflow);
        }
        self.append(record, RESERVE_SINGLE);
        Ok(())
    }

    /// Whether the buffer is at a bound: a batched stream stops reading until it is not.
    pub fn is_full(&self) -> bool {
        self.events >= self.limits.max_buffer || self.bytes >= self.limits.max_buffer_bytes
    }

    /// Buffers an event of a batched message read while the buffer was not full: the
    /// message's events all go in, so the bounds are exceeded by at most one message.
    /// `coming`: this event and those after it in the message (room is made for them).
    pub fn push_from_batch(&mut self, record: EventRecord, coming: usize) -> Result<(), DropReason> {
        self.append(record, coming);
        Ok(())
    }

    pub fn push(&mut self, record: EventRecord) -> Result<(), DropReason> {
        if self.events >= self.limits.max_buffer
            || self.bytes + record.wire_bytes > self.limits.max_buffer_bytes
        {
            return Err(DropReason::Overflow);
        }
        self.append(record, RESERVE_SINGLE);
        Ok(())
    }

    /// Adds `record` to the last batch, or to a new one when the last has no room (a batch
    /// holds at least one event, however large), with room for `coming` events.
    fn append(&mut self, record: EventRecord, coming: usize) {
        let limits = &self.limits;
        let bytes = record.wire_bytes;
        self.events += 1;
        self.bytes += bytes;
        if let Some(last) = self.batches.back_mut() {
            if last.events.len() < limits.max_batch && last.bytes + bytes <= limits.max_batch_bytes {
                last.events.push(record);
                last.bytes += bytes;
                return;
            }
        }
        let mut events = Vec::with_capacity(coming.clamp(1, limits.max_batch.max(1)));
        events.push(record);
        self.batches.push_back(Batch { events, bytes });
    }

    /// Takes the next batch out of the buffer, in order: up to `max_batch` events and
    /// `max_batch_bytes` (at least one event). Empty when nothing is buffered. A batch that
    /// cannot be delivered goes back with [`Pending::put_back`].
    pub fn take_batch(&mut self) -> Vec<EventRecord> {
        match self.batches.pop_front() {
            Some(batch) => {
                self.events -= batch.events.len();
                self.bytes -= batch.bytes;
                batch.events
            }
            None => Vec::new(),
        }
    }

    /// Puts a batch taken by [`Pending::take_batch`] back in front, as it was (no bound
    /// applies: these events were buffered before).
    pub fn put_back(&mut self, events: Vec<EventRecord>) {
        if events.is_empty() {
            return;
        }
        let bytes = events.iter().map(|record| record.wire_bytes).sum();
        self.events += events.len();
        self.bytes += bytes;
        self.batches.push_front(Batch { events, bytes });
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&EventRecord) -> bool) {
        for batch in &mut self.batches {
            let (events, bytes) = (&mut self.events, &mut self.bytes);
            let batch_bytes = &mut batch.bytes;
            batch.events.retain(|record| {
                let kept = keep(record);
                if !kept {
                    *events -= 1;
                    *bytes -= record.wire_bytes;
                    *batch_bytes -= record.wire_bytes;
                }
                kept
            });
        }
        self.batches.retain(|batch| !batch.events.is_empty());
    }

    pub fn clear(&mut self) -> usize {
        let n = self.events;
        self.batches = VecDeque::new();
        (self.events, self.bytes) = (0, 0);
        n
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// True when a batch should not wait to grow: the next one taken would be full
    /// (`max_batch_size` events or `max_batch_bytes`, or a later batch has begun behind it),
    /// or half the buffer's bounds are used (so that it never fills while a batch waits).
    pub fn is_batch_ready(&self) -> bool {
        let Some(front) = self.batches.front() else { return false };
        self.batches.len() > 1
            || front.events.len() >= self.limits.max_batch
            || front.bytes >= self.limits.max_batch_bytes
            || self.events >= (self.limits.max_buffer / 2).max(1)
            || self.bytes >= (self.limits.max_buffer_bytes / 2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: i64, wire_bytes: usize) -> EventRecord {
        let mut record = EventRecord::new(0, wire_bytes, 0);
        record.timestamp_ns = n;
        record
    }

    /// Bounds that only `max_batch` reaches.
    fn batches_of(max_batch: usize) -> BufferLimits {
        BufferLimits { max_buffer: 64, max_buffer_bytes: 1 << 20, max_batch, max_batch_bytes: 1 << 20 }
    }

    fn sent(pending: &mut Pending) -> Vec<i64> {
        pending.take_batch().iter().map(|r| r.timestamp_ns).collect()
    }

    #[test]
    fn a_batch_is_ready_when_full_or_when_half_the_buffer_is_used() {
        let mut pending = Pending::new(batches_of(3));
        assert!(!pending.is_batch_ready(), "nothing buffered");
        pending.push(numbered(0, 10)).expect("room");
        pending.push(numbered(1, 10)).expect("room");
        assert!(!pending.is_batch_ready(), "2 of 3");
        pending.push(numbered(2, 10)).expect("room");
        assert!(pending.is_batch_ready(), "3 of 3: full");
        pending.push(numbered(3, 10)).expect("room");
        assert_eq!(sent(&mut pending), [0, 1, 2]);
        assert!(!pending.is_batch_ready(), "1 of 3 left");
        // By bytes: a batch of 100 bytes at most.
        let limits =
            BufferLimits { max_buffer: 64, max_buffer_bytes: 1 << 20, max_batch: 64, max_batch_bytes: 100 };
        let mut pending = Pending::new(limits);
        pending.push(numbered(0, 60)).expect("room");
        assert!(!pending.is_batch_ready());
        pending.push(numbered(1, 60)).expect("room");
        assert!(pending.is_batch_ready(), "the second event began a batch behind the first");
        // Half the buffer's bounds, before any batch is full: 4 of 8 events, 500 of 1000 bytes.
        let limits = BufferLimits {
            max_buffer: 8,
            max_buffer_bytes: 1 << 20,
            max_batch: 64,
            max_batch_bytes: 1 << 20,
        };
        let mut pending = Pending::new(limits);
        for n in 0..3 {
            pending.push(numbered(n, 10)).expect("room");
        }
        assert!(!pending.is_batch_ready(), "3 of 8");
        pending.push(numbered(3, 10)).expect("room");
        assert!(pending.is_batch_ready(), "4 of 8");
        let limits =
            BufferLimits { max_buffer: 64, max_buffer_bytes: 1000, max_batch: 64, max_batch_bytes: 1 << 20 };
        let mut pending = Pending::new(limits);
        pending.push(numbered(0, 499)).expect("room");
        assert!(!pending.is_batch_ready(), "499 of 1000 bytes");
        pending.push(numbered(1, 1)).expect("room");
        assert!(pending.is_batch_ready(), "500 of 1000 bytes");
    }

    #[test]
    fn batches_are_bounded_in_events_and_bytes_and_keep_the_order() {
        let limits =
            BufferLimits { max_buffer: 64, max_buffer_bytes: 1 << 20, max_batch: 4, max_batch_bytes: 250 };
        let mut pending = Pending::new(limits);
        for n in 0..6 {
            pending.push(numbered(n, 50)).expect("room");
        }
        assert_eq!(sent(&mut pending), [0, 1, 2, 3]);
        // The last batch goes on filling after the one before it left.
        for n in 6..9 {
            pending.push(numbered(n, 50)).expect("room");
        }
        assert_eq!(sent(&mut pending), [4, 5, 6, 7]);
        assert_eq!(sent(&mut pending), [8]);
        // The byte bound: 150 + 50 fit in 250, the 400-byte event does not.
        pending.push(numbered(12, 150)).expect("room");
        pending.push(numbered(13, 50)).expect("room");
        pending.push(numbered(14, 400)).expect("room");
        pending.push(numbered(15, 10)).expect("room");
        assert_eq!(sent(&mut pending), [12, 13]);
        // An event larger than a batch still goes, alone.
        assert_eq!(sent(&mut pending), [14]);
        assert_eq!(sent(&mut pending), [15]);
        assert_eq!((pending.events, pending.bytes, pending.is_empty()), (0, 0, true));
        assert_eq!(sent(&mut pending), Vec::<i64>::new());
    }

    #[test]
    fn the_bounds_count_every_buffered_event_and_reports_get_an_allowance() {
        let limits =
            BufferLimits { max_buffer: 3, max_buffer_bytes: 1 << 20, max_batch: 2, max_batch_bytes: 1 << 20 };
        let mut pending = Pending::new(limits);
        for n in 0..3 {
            pending.push(numbered(n, 10)).expect("room");
        }
        assert!(pending.is_full());
        assert_eq!(pending.push(numbered(3, 10)), Err(DropReason::Overflow));
        assert_eq!(pending.push_report(numbered(4, 10)), Ok(()));
        // A batched message goes in whole, past the bound.
        assert_eq!(pending.push_from_batch(numbered(5, 10), 1), Ok(()));
        assert_eq!(pending.events, 5);
        let bytes_limits =
            BufferLimits { max_buffer: 64, max_buffer_bytes: 100, max_batch: 8, max_batch_bytes: 1 << 20 };
        let mut pending = Pending::new(bytes_limits);
        pending.push(numbered(0, 60)).expect("room");
        assert_eq!(pending.push(numbered(1, 60)), Err(DropReason::Overflow));
        assert!(!pending.is_full());
    }

    #[test]
    fn a_batch_put_back_keeps_its_place() {
        let mut pending = Pending::new(batches_of(3));
        for n in 0..5 {
            pending.push(numbered(n, 10)).expect("room");
        }
        let batch = pending.take_batch();
        assert_eq!(pending.bytes, 20);
        pending.put_back(batch);
        assert_eq!(pending.bytes, 50);
        assert_eq!(sent(&mut pending), [0, 1, 2]);
        assert_eq!(sent(&mut pending), [3, 4]);
    }

    #[test]
    fn retain_and_clear_keep_the_counts_right() {
        let mut pending = Pending::new(batches_of(2));
        for n in 0..7 {
            pending.push(numbered(n, 10 + n as usize)).expect("room");
        }
        // Drops 0, 1 (a whole batch), 3 and 6.
        pending.retain(|r| matches!(r.timestamp_ns, 2 | 4 | 5));
        assert_eq!((pending.events, pending.bytes), (3, 12 + 14 + 15));
        assert_eq!(sent(&mut pending), [2]);
        assert_eq!(sent(&mut pending), [4, 5]);
        assert!(pending.is_empty());
        for n in 0..5 {
            pending.push(numbered(n, 10)).expect("room");
        }
        assert_eq!(pending.clear(), 5);
        assert_eq!((pending.events, pending.bytes, pending.batches.len()), (0, 0, 0));
    }
}
