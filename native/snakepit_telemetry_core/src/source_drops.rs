//! What a worker reports it dropped itself: `telemetry.dropped` events (measurement `count`,
//! metadata `reason`), tallied per stream by reason so that `list_streams` shows the
//! worker's drops beside the NIF's. Such events are never removed by the worker's settings
//! or the buffer bounds (the stream task lets them through), and still reach handlers.
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
const OTHER: &str = "other";

/// Where the report event and its two fields are in the catalog.
#[derive(Clone, Copy, Debug)]
pub struct ReportShape {
    pub event: EventIndex,
    count: NameId,
    reason: NameId,
}

impl ReportShape {
    /// None if the catalog has no `telemetry.dropped` event with `count` and `reason`.
    pub fn of(catalog: &Catalog) -> Option<ReportShape> {
        let event = catalog.event_index(REPORT_EVENT)?;
        let count = catalog.measurement_key(catalog.event(event), "count")?.id;
        let reason = catalog.metadata_key("reason")?;
        Some(ReportShape { event, count, reason })
    }

    /// The reason and count a report carries (a count that is not a non-negative integer
    /// counts as 0; a missing reason is `"unknown"`).
    pub fn read<'r>(&self, record: &'r EventRecord) -> (&'r str, u64) {
        let count = record
            .measurements
            .iter()
            .find(|(id, _)| *id == self.count)
            .and_then(|(_, value)| match value {
                Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
            .unwrap_or(0);
        let reason = record
            .metadata
            .iter()
            .find(|(key, _)| *key == MetaKey::Known(self.reason))
            .map_or("unknown", |(_, value)| value.as_str());
        (reason, count)
    }
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
