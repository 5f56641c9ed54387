//! Per-stream counters: plain atomics written by the stream task and read by a NIF call
//! without touching the task.

use crate::source_drops::{ReportTotals, SourceDrops};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an event did not reach `:telemetry.execute/3`. Every dropped event has exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The event name is not in the catalog.
    UnknownEvent,
    /// A measurement key is outside the allowlist, or a measurement has no value.
    InvalidMeasurement,
    /// The bytes are not a `TelemetryEvent`, or a string is not UTF-8.
    DecodeError,
    /// The stream's buffer was full: the receiver is slower than the worker.
    Overflow,
    /// The receiving process was gone when the batch was sent.
    Undeliverable,
    /// Telemetry is toggled off for the worker.
    Disabled,
    /// The allow/deny filter removed it.
    FilteredOut,
    /// Sampling removed it.
    SampledOut,
    /// The message is larger than `max_event_bytes`; its bytes were skipped, never buffered.
    Oversize,
    /// The event carries more metadata keys than `max_metadata_keys`.
    TooManyKeys,
    /// The worker handed it to a call that broke before the NIF read it (`transit.rs`).
    LostInTransit,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::UnknownEvent,
        DropReason::InvalidMeasurement,
        DropReason::DecodeError,
        DropReason::Overflow,
        DropReason::Undeliverable,
        DropReason::Disabled,
        DropReason::FilteredOut,
        DropReason::SampledOut,
        DropReason::Oversize,
        DropReason::TooManyKeys,
        DropReason::LostInTransit,
    ];
}

#[derive(Default, Debug)]
pub struct StreamCounters {
    received: AtomicU64,
    /// Of `received`, the worker's stderr telemetry lines (the rest came from its gRPC calls).
    received_lines: AtomicU64,
    /// Of `received`, drop reports read from its gRPC calls (not in the worker's sent count).
    received_reports: AtomicU64,
    emitted: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// What the worker reported it dropped before sending (`source_drops.rs`).
    pub source: SourceDrops,
    /// The running totals of those reports, which make up reports lost on a broken call.
    pub report_totals: ReportTotals,
}

/// A consistent-enough copy of the counters for reporting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub received: u64,
    pub emitted: u64,
    pub dropped: Vec<(DropReason, u64)>,
}

impl StreamCounters {
    /// A message arrived from the worker (counted before any check).
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// A stderr telemetry line arrived (counted by `add_received` too).
    pub fn add_received_line(&self) {
        self.received_lines.fetch_add(1, Ordering::Relaxed);
    }

    /// A drop report arrived on a gRPC call (counted by `add_received` too).
    pub fn add_received_report(&self) {
        self.received_reports.fetch_add(1, Ordering::Relaxed);
    }

    /// Events read from the worker's gRPC calls, drop reports left out, as the worker counts
    /// what it sent (`transit.rs`). Exact when read by the stream task, the only writer.
    pub fn received_from_calls(&self) -> u64 {
        let lines = self.received_lines.load(Ordering::Relaxed);
        let reports = self.received_reports.load(Ordering::Relaxed);
        self.received.load(Ordering::Relaxed).saturating_sub(lines + reports)
    }

    /// Events handed to the receiving process.
    pub fn add_emitted(&self, n: u64) {
        self.emitted.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            received: self.received.load(Ordering::Relaxed),
            emitted: self.emitted.load(Ordering::Relaxed),
            dropped: DropReason::ALL.iter().map(|r| (*r, self.dropped(*r))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason() {
        let counters = StreamCounters::default();
        counters.add_received(5);
        counters.add_emitted(2);
        counters.add_dropped(DropReason::Overflow, 2);
        counters.add_dropped(DropReason::DecodeError, 1);
        let snap = counters.snapshot();
        assert_eq!((snap.received, snap.emitted), (5, 2));
        assert_eq!(counters.dropped(DropReason::Overflow), 2);
        assert_eq!(counters.dropped(DropReason::UnknownEvent), 0);
        let total: u64 = snap.dropped.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn events_from_calls_are_what_arrived_that_was_not_a_line() {
        let counters = StreamCounters::default();
        counters.add_received(5);
        counters.add_received(1);
        counters.add_received_line();
        assert_eq!((counters.snapshot().received, counters.received_from_calls()), (6, 5));
        counters.add_received(1);
        counters.add_received_report();
        assert_eq!((counters.snapshot().received, counters.received_from_calls()), (7, 5));
    }
}
