//! What a worker reports it dropped itself: `telemetry.dropped` events (measurements `count`
//! and `total`, metadata `reason`), tallied per stream by reason so that `list_streams`
//! shows the worker's drops beside the NIF's. Such events are never removed by the worker's
//! settings or the buffer bounds (the stream task lets them through), and still reach
//! handlers.
//!
//! `total` is the reason's running total over the worker stream's life. A report can be
//! lost on a broken call like any event; the next one of its reason then carries a total
//! that is ahead of what arrived, and [`ReportTotals`] makes its count up by the difference,
//! so that the tally and the handlers' sums stay exact. (Reports are therefore left out of
//! the worker's `x-snakepit-telemetry-sent` count, `transit.rs`.) When a call replaces
//! another, the worker restates every reason's total in its first report (a `count` of 0
//! where nothing is new), so that reports lost with the old call are made up even when no
//! drop follows; and a reason first heard of on such a later call had its earlier reports
//! lost, so its whole total counts. The totals belong to the worker id's counters, so a
//! registration that replaces another (`register_worker` again) goes on from what the one
//! before heard. A worker says it restates with the capability
//! `restated-drops` (`x-snakepit-telemetry-capabilities`); from any other, such a report
//! counts its `count` only (it may have reported that reason to an earlier registration).
//!
//! The tally is bounded: at most [`MAX_REASONS`] reasons of at most [`MAX_REASON_BYTES`]
//! bytes each; further reasons are counted under `"other"`.

use std::sync::{Mutex, PoisonError};

use crate::catalog::{Catalog, EventIndex, NameId};
use crate::translate::{EventRecord, MetaKey, Value};

/// The worker name of the report event.
pub const REPORT_EVENT: &str = "telemetry.dropped";
pub const MAX_REASONS: usize = 16;
pub const MAX_REASON_BYTES: usize = 64;
/// The capability of a worker that restates its totals on a new call.
pub const RESTATED_DROPS: &str = "restated-drops";
const OTHER: &str = "other";

/// Where the report event and its two fields are in the catalog.
#[derive(Clone, Copy, Debug)]
pub struct ReportShape {
    pub event: EventIndex,
    count: NameId,
    total: Option<NameId>,
    reason: NameId,
}

impl ReportShape {
    /// None if the catalog has no `telemetry.dropped` event with `count` and `reason`.
    pub fn of(catalog: &Catalog) -> Option<ReportShape> {
        let event = catalog.event_index(REPORT_EVENT)?;
        let spec = catalog.event(event);
        let count = catalog.measurement_key(spec, "count")?.id;
        let total = catalog.measurement_key(spec, "total").map(|key| key.id);
        let reason = catalog.metadata_key("reason")?;
        Some(ReportShape { event, count, total, reason })
    }

    /// The reason, count and running total a report carries (a count that is not a
    /// non-negative integer counts as 0; a missing reason is `"unknown"`; a missing or
    /// malformed total is None, as from a worker that does not send one).
    pub fn read<'r>(&self, record: &'r EventRecord) -> (&'r str, u64, Option<u64>) {
        let int = |key: NameId| {
            record.measurements.iter().find(|(id, _)| *id == key).and_then(|(_, value)| match value {
                Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
        };
        let count = int(self.count).unwrap_or(0);
        let total = self.total.and_then(int);
        let reason = record.metadata_value(MetaKey::Known(self.reason)).unwrap_or("unknown");
        (reason, count, total)
    }

    /// Sets the report's `count` to `count` (what it stands for once lost reports are
    /// made up), so that handlers summing the counts see every drop.
    pub fn set_count(&self, record: &mut EventRecord, count: u64) {
        let value = Value::Int(i64::try_from(count).unwrap_or(i64::MAX));
        match record.measurements.iter_mut().find(|(id, _)| *id == self.count) {
            Some(entry) => entry.1 = value,
            None => record.measurements.push((self.count, value)),
        }
    }
}

/// The last running total seen per reason, for one worker stream identity (see the module
/// doc), shared by the registrations of a worker id with its counters. Bounded like
/// [`SourceDrops`]: reasons past the bound, or too long, are taken at their count.
#[derive(Debug, Default)]
pub struct ReportTotals {
    seen: Mutex<SeenTotals>,
}

#[derive(Debug, Default)]
struct SeenTotals {
    stream: Option<String>,
    last: Vec<(String, u64)>,
}

impl ReportTotals {
    /// A call opened on the worker stream `stream` (its identity, None when the worker does
    /// not say): the totals of another stream no longer apply. Returns whether a reason
    /// first heard of on this call counts its whole total (see [`ReportTotals::account`]):
    /// the call opened again an identity already heard from, by this registration or one it
    /// replaced, and the worker restates its totals on a new call.
    pub fn opened(&self, stream: Option<&str>, restates: bool) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let reopened = stream.is_some() && seen.stream.as_deref() == stream;
        if !reopened {
            seen.last.clear();
            seen.stream = stream.map(str::to_string);
        }
        reopened && restates
    }

    /// How many drops a report of `reason` stands for: its `count`, or, when its running
    /// `total` is further ahead of the last one that arrived, the difference (the counts
    /// of the reports lost in between). The first report of a reason stands for its count
    /// on a first call to the stream (the total may include drops reported to an earlier
    /// registration, which restated it on this call); with `whole_totals` (from
    /// [`ReportTotals::opened`]), for its whole total (every earlier report of it was lost).
    pub fn account(&self, reason: &str, count: u64, total: Option<u64>, whole_totals: bool) -> u64 {
        let Some(total) = total else { return count };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.stream.is_none() || reason.len() > MAX_REASON_BYTES {
            return count;
        }
        match seen.last.iter_mut().find(|(r, _)| r == reason) {
            Some((_, last)) => {
                let behind = total.saturating_sub(*last);
                *last = (*last).max(total);
                // A total that does not cover the count is not to be trusted: the count is.
                behind.max(count)
            }
            None => {
                if seen.last.len() >= MAX_REASONS {
                    return count;
                }
                seen.last.push((reason.to_string(), total));
                if whole_totals {
                    total.max(count)
                } else {
                    count
                }
            }
        }
    }
}

/// Whether a worker's capabilities (`x-snakepit-telemetry-capabilities`) say it restates its
/// drop totals on a new call.
pub fn restates_drops(capabilities: &str) -> bool {
    crate::client::has_capability(capabilities, RESTATED_DROPS)
}

/// Drops a worker reported, by reason.
#[derive(Debug, Default)]
pub struct SourceDrops {
    by_reason: Mutex<Vec<(String, u64)>>,
}

impl SourceDrops {
    pub fn add(&self, reason: &str, count: u64) {
        let mut by_reason = self.by_reason.lock().unwrap_or_else(PoisonError::into_inner);
        let reason = if reason.len() > MAX_REASON_BYTES { OTHER } else { reason };
        if let Some(entry) = by_reason.iter_mut().find(|(r, _)| r == reason) {
            entry.1 = entry.1.saturating_add(count);
            return;
        }
        let reason = if by_reason.len() >= MAX_REASONS - 1 && reason != OTHER { OTHER } else { reason };
        match by_reason.iter_mut().find(|(r, _)| r == reason) {
            Some(entry) => entry.1 = entry.1.saturating_add(count),
            None => by_reason.push((reason.to_string(), count)),
        }
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.by_reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One registration's calls: the worker id's totals and the current call's flag.
    struct Calls<'t> {
        totals: &'t ReportTotals,
        whole: bool,
    }

    impl<'t> Calls<'t> {
        fn on(totals: &'t ReportTotals) -> Calls<'t> {
            Calls { totals, whole: false }
        }
        fn opened(&mut self, stream: Option<&str>, restates: bool) {
            self.whole = self.totals.opened(stream, restates);
        }
        fn account(&mut self, reason: &str, count: u64, total: Option<u64>) -> u64 {
            self.totals.account(reason, count, total, self.whole)
        }
    }

    #[test]
    fn a_lost_report_is_made_up_by_the_next_one_of_its_reason() {
        let shared = ReportTotals::default();
        let mut totals = Calls::on(&shared);
        totals.opened(Some("stream-a"), true);
        assert_eq!(totals.account("overflow", 5, Some(5)), 5);
        // Reports of 7 and 4 were lost; this one says 3 more, 19 in all.
        assert_eq!(totals.account("overflow", 3, Some(19)), 14);
        assert_eq!(totals.account("overflow", 1, Some(20)), 1);
        // A reconnect to the same stream keeps the totals; a new identity starts over.
        totals.opened(Some("stream-a"), true);
        assert_eq!(totals.account("overflow", 2, Some(25)), 5);
        totals.opened(Some("stream-b"), true);
        assert_eq!(totals.account("overflow", 2, Some(2)), 2);
        // Without a total, or without an identity, the count is all there is.
        assert_eq!(totals.account("disabled", 3, None), 3);
        totals.opened(None, true);
        assert_eq!(totals.account("overflow", 4, Some(100)), 4);
        assert_eq!(totals.account("overflow", 4, Some(200)), 4);
    }

    #[test]
    fn a_restated_total_makes_up_reports_lost_with_the_old_call() {
        let shared = ReportTotals::default();
        let mut totals = Calls::on(&shared);
        totals.opened(Some("s"), true);
        // Restated at this task's first call: drops reported to an earlier registration.
        assert_eq!(totals.account("overflow", 0, Some(40)), 0);
        assert_eq!(totals.account("overflow", 2, Some(42)), 2);
        // Reports of 3 and 1 lost with the call; the next call restates 46.
        totals.opened(Some("s"), true);
        assert_eq!(totals.account("overflow", 0, Some(46)), 4);
        assert_eq!(totals.account("overflow", 0, Some(46)), 0);
        // A reason whose every report was lost with an earlier call: all of it.
        assert_eq!(totals.account("oversize", 0, Some(3)), 3);
        assert_eq!(totals.account("encode_error", 1, Some(1)), 1);
        // A new identity: its first call again.
        totals.opened(Some("t"), true);
        assert_eq!(totals.account("oversize", 0, Some(9)), 0);
    }

    #[test]
    fn a_registration_that_replaces_another_goes_on_from_its_totals() {
        let shared = ReportTotals::default();
        let mut first = Calls::on(&shared);
        first.opened(Some("s"), true);
        assert_eq!(first.account("overflow", 5, Some(5)), 5);
        // The replacing registration's first call breaks before the worker restates; on
        // its next call the restated 9 stands for the 4 lost, not for all 9.
        let mut second = Calls::on(&shared);
        second.opened(Some("s"), true);
        second.opened(Some("s"), true);
        assert_eq!(second.account("overflow", 0, Some(9)), 4);
        // A reason nobody heard of before: every report of it was lost.
        assert_eq!(second.account("oversize", 0, Some(2)), 2);
        // Its first call restating right away: nothing new, nothing counted twice.
        let mut third = Calls::on(&shared);
        third.opened(Some("s"), true);
        assert_eq!(third.account("overflow", 0, Some(9)), 0);
        assert_eq!(third.account("oversize", 1, Some(3)), 1);
    }

    #[test]
    fn a_worker_that_does_not_restate_gets_no_whole_total() {
        // Its first report of a reason on a reconnect may carry drops reported to an earlier
        // registration: only the count is sure.
        let shared = ReportTotals::default();
        let mut totals = Calls::on(&shared);
        totals.opened(Some("s"), false);
        totals.opened(Some("s"), false);
        assert_eq!(totals.account("oversize", 1, Some(30)), 1);
        assert_eq!(totals.account("oversize", 2, Some(35)), 5);
        assert!(restates_drops("sampling-patterns, restated-drops"));
        assert!(restates_drops("restated-drops"));
        assert!(!restates_drops("sampling-patterns,batched"));
        assert!(!restates_drops(""));
    }

    #[test]
    fn totals_that_do_not_add_up_fall_back_to_the_count() {
        let shared = ReportTotals::default();
        let mut totals = Calls::on(&shared);
        totals.opened(Some("s"), true);
        assert_eq!(totals.account("r", 10, Some(10)), 10);
        assert_eq!(totals.account("r", 4, Some(9)), 4); // behind: take the count
        assert_eq!(totals.account("r", 1, Some(u64::MAX)), u64::MAX - 10);
        for i in 0..(MAX_REASONS + 5) {
            let reason = format!("reason_{i}");
            assert_eq!(totals.account(&reason, 1, Some(1)), 1);
            assert_eq!(totals.account(&reason, 1, Some(3)), if i < MAX_REASONS - 1 { 2 } else { 1 });
        }
        assert!(shared.seen.lock().expect("not poisoned").last.len() <= MAX_REASONS);
    }

    #[test]
    fn tallies_by_reason_within_bounds() {
        let drops = SourceDrops::default();
        drops.add("overflow", 3);
        drops.add("overflow", 2);
        drops.add("disabled", 1);
        assert_eq!(drops.snapshot(), vec![("overflow".into(), 5), ("disabled".into(), 1)]);

        drops.add(&"x".repeat(MAX_REASON_BYTES + 1), 7);
        for i in 0..40 {
            drops.add(&format!("reason_{i}"), 1);
        }
        let snapshot = drops.snapshot();
        assert!(snapshot.len() <= MAX_REASONS);
        let total: u64 = snapshot.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 5 + 1 + 7 + 40, "nothing is lost to the bound");
        assert!(snapshot.iter().all(|(r, _)| r.len() <= MAX_REASON_BYTES));
    }
}
