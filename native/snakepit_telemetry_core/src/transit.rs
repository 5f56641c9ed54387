//! Events lost in transit: handed to a telemetry call by the worker, never read by the NIF
//! because the call broke (a connection reset, a worker's server closing the connection).
//!
//! Each response of this project's workers carries two headers: the stream's identity
//! (`x-snakepit-telemetry-stream-id`, random per worker `TelemetryStream`) and how many
//! events it has handed to calls so far (`x-snakepit-telemetry-sent`, drop reports not
//! included: a lost one is made up by the next, `source_drops.rs`), read after the new
//! call took over, so that no earlier call can add to it.
//! When the same stream is opened again, the events it handed over since the previous open,
//! minus those the NIF read from gRPC meanwhile, were lost in transit: counted as
//! `lost_in_transit`. A different identity (a restarted worker, another process on the
//! port) or a worker without the headers (Snakepit's) starts over: nothing is counted.

/// What a worker's response headers said when a call opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentReport {
    pub stream_id: String,
    pub sent: u64,
}

/// Longest stream identity accepted (the Python worker sends 16 hex digits).
pub const MAX_STREAM_ID_BYTES: usize = 64;

impl SentReport {
    /// Both headers' values, or None when either is missing or malformed.
    pub fn parse(stream_id: Option<&str>, sent: Option<&str>) -> Option<SentReport> {
        let stream_id = stream_id?;
        let valid_id = !stream_id.is_empty()
            && stream_id.len() <= MAX_STREAM_ID_BYTES
            && stream_id.bytes().all(|b| b.is_ascii_graphic());
        let sent = sent?;
        if !valid_id || sent.is_empty() || !sent.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SentReport { stream_id: stream_id.to_string(), sent: sent.parse().ok()? })
    }
}

/// The previous open of a worker's stream: its report and what the NIF had read by then.
#[derive(Debug, Default)]
pub struct TransitLedger {
    baseline: Option<(SentReport, u64)>,
}

impl TransitLedger {
    /// A call opened with `report`; `received` is every event the NIF has read from this
    /// worker's calls so far. Returns the events lost in transit since the previous open.
    pub fn opened(&mut self, report: Option<SentReport>, received: u64) -> u64 {
        let lost = match (&self.baseline, &report) {
            (Some((before, received_before)), Some(now))
                if before.stream_id == now.stream_id && now.sent >= before.sent =>
            {
                let handed_over = now.sent - before.sent;
                let read = received.saturating_sub(*received_before);
                handed_over.saturating_sub(read)
            }
            _ => 0,
        };
        self.baseline = report.map(|report| (report, received));
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, sent: u64) -> Option<SentReport> {
        Some(SentReport { stream_id: id.into(), sent })
    }

    #[test]
    fn counts_what_was_handed_over_and_not_read() {
        let mut ledger = TransitLedger::default();
        // First open: a previous client (another BEAM) may have read the earlier events.
        assert_eq!(ledger.opened(report("a", 500), 0), 0);
        // 1,000 handed to the first call, 700 read before it broke.
        assert_eq!(ledger.opened(report("a", 1_500), 700), 300);
        // Everything arrived on the second call.
        assert_eq!(ledger.opened(report("a", 2_000), 1_200), 0);
    }

    #[test]
    fn a_new_stream_identity_or_missing_headers_start_over() {
        let mut ledger = TransitLedger::default();
        assert_eq!(ledger.opened(report("a", 100), 0), 0);
        assert_eq!(ledger.opened(report("b", 900), 50), 0); // restarted worker
        assert_eq!(ledger.opened(None, 60), 0); // Snakepit's worker: no headers
        assert_eq!(ledger.opened(report("b", 1_000), 60), 0);
        assert_eq!(ledger.opened(report("b", 900), 70), 0); // went backwards: start over
        assert_eq!(ledger.opened(report("b", 950), 70), 50);
    }

    #[test]
    fn headers_are_checked() {
        assert_eq!(SentReport::parse(Some("ab12"), Some("42")), report("ab12", 42));
        for (id, sent) in [
            (None, Some("1")),
            (Some("a"), None),
            (Some(""), Some("1")),
            (Some("a b"), Some("1")),
            (Some("a"), Some("-1")),
            (Some("a"), Some("1e3")),
            (Some("a"), Some("")),
            (Some("a"), Some("99999999999999999999999")),
        ] {
            assert_eq!(SentReport::parse(id, sent), None, "{id:?} {sent:?}");
        }
        assert_eq!(SentReport::parse(Some(&"x".repeat(65)), Some("1")), None);
    }
}
