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
/// record is about 220 bytes (its few map entries are inline), and a batched stream may hold
/// `max_buffer` plus a whole worker message (8,192 events by default) for a moment: without
/// this, every stream that once had a burst would keep megabytes for as long as it lives.
const RETAINED_SLOTS: usize = 256;

/// The most slots [`Pending::make_room`] makes at once: a message of the Python worker's
/// default size (`max_batch_events`), about 1.9 MB of records.
const ROOM_MAX: usize = 8192;

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

    /// Makes room for the `events` of a batched message about to be read, in one allocation
    /// (rather than one per doubling) and, when nothing is buffered, without copying the old
    /// storage. At most [`ROOM_MAX`] slots at once: the count is the worker's to choose, and
    /// most of a hostile message's events may be refused.
    pub fn make_room(&mut self, events: usize) {
        let events = events.min(ROOM_MAX);
        let needed = self.events.len().saturating_add(events);
        if needed <= self.events.capacity() {
            return;
        }
        if self.events.is_empty() {
            self.events = VecDeque::with_capacity(needed);
        } else {
            self.events.reserve(events);
        }
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

    /// Takes the next batch out of the buffer, in order: up to `max_batch` events and
    /// `max_batch_bytes` (at least one event). Empty when nothing is buffered. A batch that
    /// cannot be delivered goes back with [`Pending::put_back`].
    pub fn take_batch(&mut self, limits: &BufferLimits) -> Vec<EventRecord> {
        let mut count = 0;
        let mut bytes = 0;
        for record in self.events.iter().take(limits.max_batch) {
            if count > 0 && bytes + record.wire_bytes > limits.max_batch_bytes {
                break;
            }
            count += 1;
            bytes += record.wire_bytes;
        }
        let batch: Vec<EventRecord> = self.events.drain(..count).collect();
        self.bytes -= bytes;
        self.release_if_drained();
        batch
    }

    /// Puts a batch taken by [`Pending::take_batch`] back in front, in its order (no bound
    /// applies: these events were buffered before).
    pub fn put_back(&mut self, batch: Vec<EventRecord>) {
        self.bytes += batch.iter().map(|record| record.wire_bytes).sum::<usize>();
        self.events.reserve(batch.len());
        for record in batch.into_iter().rev() {
            self.events.push_front(record);
        }
    }

    /// Gives back the storage a burst left behind, once nothing is buffered: new storage
    /// rather than `shrink_to`, which copies the old storage's first slots (all of them
    /// unused) across.
    fn release_if_drained(&mut self) {
        if self.events.is_empty() && self.events.capacity() > RETAINED_SLOTS {
            self.events = VecDeque::with_capacity(RETAINED_SLOTS);
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
        EventRecord::new(0, 100, 0)
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
        assert_eq!(pending.take_batch(&limits).len(), 1);
        assert_eq!(pending.events.capacity(), capacity);
    }

    fn numbered(n: i64, wire_bytes: usize) -> EventRecord {
        let mut record = EventRecord::new(0, wire_bytes, 0);
        record.timestamp_ns = n;
        record
    }

    fn sent(pending: &mut Pending, limits: &BufferLimits) -> Vec<i64> {
        pending.take_batch(limits).iter().map(|r| r.timestamp_ns).collect()
    }

    #[test]
    fn batches_are_bounded_in_events_and_bytes_and_keep_the_order_across_the_ring() {
        let limits =
            BufferLimits { max_buffer: 64, max_buffer_bytes: 1 << 20, max_batch: 4, max_batch_bytes: 250 };
        let mut pending = Pending { events: VecDeque::with_capacity(8), bytes: 0 };
        // Wrap the ring (8 slots): fill 6, take 4, fill 6 more.
        for n in 0..6 {
            pending.push(numbered(n, 50), &limits).expect("room");
        }
        assert_eq!(sent(&mut pending, &limits), [0, 1, 2, 3]);
        for n in 6..12 {
            pending.push(numbered(n, 50), &limits).expect("room");
        }
        let (front, back) = pending.events.as_slices();
        assert_eq!((front.len(), back.len()), (4, 4), "the ring wraps");
        // A batch of 5 spans both slices.
        let wide = BufferLimits { max_batch: 5, max_batch_bytes: 1 << 20, ..limits };
        assert_eq!(sent(&mut pending, &wide), [4, 5, 6, 7, 8]);
        assert_eq!(sent(&mut pending, &limits), [9, 10, 11]);
        // The byte bound: 150 + 50 fit in 250, the 400-byte event does not.
        pending.push(numbered(12, 150), &limits).expect("room");
        pending.push(numbered(13, 50), &limits).expect("room");
        pending.push(numbered(14, 400), &limits).expect("room");
        assert_eq!(sent(&mut pending, &limits), [12, 13]);
        // An event larger than a batch still goes, alone.
        assert_eq!(sent(&mut pending, &limits), [14]);
        assert_eq!((pending.bytes, pending.is_empty()), (0, true));
        assert_eq!(sent(&mut pending, &limits), Vec::<i64>::new());
    }

    #[test]
    fn a_batch_put_back_keeps_its_place() {
        let limits = BufferLimits {
            max_buffer: 64,
            max_buffer_bytes: 1 << 20,
            max_batch: 3,
            max_batch_bytes: 1 << 20,
        };
        let mut pending = Pending::default();
        for n in 0..5 {
            pending.push(numbered(n, 10), &limits).expect("room");
        }
        let batch = pending.take_batch(&limits);
        assert_eq!(pending.bytes, 20);
        pending.put_back(batch);
        assert_eq!(pending.bytes, 50);
        assert_eq!(sent(&mut pending, &limits), [0, 1, 2]);
        assert_eq!(sent(&mut pending, &limits), [3, 4]);
    }
}
