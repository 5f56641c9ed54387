//! [`EventRecord`]: an event that passed the catalog check, as it waits in a stream's buffer
//! until it is turned into terms.
//!
//! Its metadata values, its metadata keys outside the allowlist and its correlation id are
//! held in one string buffer per record, the entries pointing into it, rather than as a
//! `String` each: one allocation per event (none when it has no such strings) instead of
//! one per string, and a record small enough that buffering and batching it copy little.

use std::fmt;

use smallvec::SmallVec;

use crate::catalog::{EventIndex, NameId};

/// A measurement value, as the worker sent it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(String),
}

/// A metadata key: an allowlisted key becomes an atom, any other stays a binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetaKey<'r> {
    Known(NameId),
    Other(&'r str),
}

/// Where one of a record's strings lies in its text.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u32,
    end: u32,
}

#[derive(Clone, Copy, Debug)]
enum StoredKey {
    Known(NameId),
    Other(Span),
}

/// An event that passed the catalog check, ready to be turned into terms.
#[derive(Clone, Default)]
pub struct EventRecord {
    pub event: EventIndex,
    /// Size of the message on the wire, for the byte bounds of buffers and batches.
    pub wire_bytes: usize,
    /// Inline up to a few entries: no allocation for the list of a typical event.
    pub measurements: SmallVec<[(NameId, Value); 2]>,
    pub timestamp_ns: i64,
    metadata: SmallVec<[(StoredKey, Span); 4]>,
    correlation_id: Span,
    /// Every string the entries point into.
    text: String,
}

impl EventRecord {
    /// A record without metadata or correlation id; `text_bytes` is what the strings to be
    /// added take (room is made for them at once).
    pub fn new(event: EventIndex, wire_bytes: usize, text_bytes: usize) -> EventRecord {
        EventRecord { event, wire_bytes, text: String::with_capacity(text_bytes), ..EventRecord::default() }
    }

    /// Adds a metadata entry (the caller keeps keys distinct).
    pub fn push_metadata(&mut self, key: MetaKey<'_>, value: &str) {
        let key = match key {
            MetaKey::Known(id) => StoredKey::Known(id),
            MetaKey::Other(name) => StoredKey::Other(self.store(name)),
        };
        let value = self.store(value);
        self.metadata.push((key, value));
    }

    pub fn set_correlation_id(&mut self, id: &str) {
        self.correlation_id = self.store(id);
    }

    /// The metadata entries, in the order they were added.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (MetaKey<'_>, &str)> + '_ {
        self.metadata.iter().map(|&(key, value)| {
            let key = match key {
                StoredKey::Known(id) => MetaKey::Known(id),
                StoredKey::Other(span) => MetaKey::Other(self.text(span)),
            };
            (key, self.text(value))
        })
    }

    /// The value of the metadata key `key`, if the event has it.
    pub fn metadata_value(&self, key: MetaKey<'_>) -> Option<&str> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, value)| value)
    }

    /// The worker's correlation id; empty when it sent none.
    pub fn correlation_id(&self) -> &str {
        self.text(self.correlation_id)
    }

    /// Appends `s` to the text. A record's strings come from one message, so they fit in
    /// `u32` offsets; a string that would not is stored empty rather than wrapped.
    fn store(&mut self, s: &str) -> Span {
        let start = self.text.len();
        match (u32::try_from(start), u32::try_from(start + s.len())) {
            (Ok(start), Ok(end)) => {
                self.text.push_str(s);
                Span { start, end }
            }
            _ => Span::default(),
        }
    }

    /// Spans are only made by `store`, at boundaries of what it appended.
    fn text(&self, span: Span) -> &str {
        self.text.get(span.start as usize..span.end as usize).unwrap_or_default()
    }
}

/// Equal when they hold the same event, whatever the layout of their text.
impl PartialEq for EventRecord {
    fn eq(&self, other: &EventRecord) -> bool {
        self.event == other.event
            && self.wire_bytes == other.wire_bytes
            && self.measurements == other.measurements
            && self.timestamp_ns == other.timestamp_ns
            && self.correlation_id() == other.correlation_id()
            && self.metadata().eq(other.metadata())
    }
}

impl fmt::Debug for EventRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRecord")
            .field("event", &self.event)
            .field("wire_bytes", &self.wire_bytes)
            .field("measurements", &self.measurements)
            .field("metadata", &self.metadata().collect::<Vec<_>>())
            .field("timestamp_ns", &self.timestamp_ns)
            .field("correlation_id", &self.correlation_id())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_come_back_as_they_went_in() {
        let mut record = EventRecord::new(3, 120, 0);
        record.push_metadata(MetaKey::Known(7), "predict");
        record.push_metadata(MetaKey::Other("ключ"), "");
        record.push_metadata(MetaKey::Other(""), "значение");
        record.set_correlation_id("abc-123");
        let metadata: Vec<_> = record.metadata().collect();
        assert_eq!(
            metadata,
            [(MetaKey::Known(7), "predict"), (MetaKey::Other("ключ"), ""), (MetaKey::Other(""), "значение")]
        );
        assert_eq!(record.correlation_id(), "abc-123");
        assert_eq!(record.metadata_value(MetaKey::Other("ключ")), Some(""));
        assert_eq!(record.metadata_value(MetaKey::Known(8)), None);
        assert_eq!(EventRecord::new(0, 0, 0).correlation_id(), "");
    }

    #[test]
    fn room_made_up_front_is_the_only_allocation() {
        let mut record = EventRecord::new(0, 0, 12);
        let capacity = record.text.capacity();
        record.push_metadata(MetaKey::Known(1), "tool");
        record.push_metadata(MetaKey::Other("op"), "run");
        record.set_correlation_id("id");
        assert_eq!((record.text.len(), record.text.capacity()), (11, capacity));
    }

    #[test]
    fn equality_is_by_content_not_layout() {
        let mut a = EventRecord::new(1, 10, 0);
        a.set_correlation_id("c");
        a.push_metadata(MetaKey::Other("k"), "v");
        let mut b = EventRecord::new(1, 10, 0);
        b.push_metadata(MetaKey::Other("k"), "v");
        b.set_correlation_id("c");
        assert_eq!(a, b);
        b.push_metadata(MetaKey::Known(2), "x");
        assert_ne!(a, b);
    }

    #[test]
    fn a_record_is_small() {
        // What a buffered event takes besides its text (a typical event's entries are
        // inline): 216 bytes on x86-64, against about 320 and a heap string per metadata
        // value before the text was shared.
        assert!(std::mem::size_of::<EventRecord>() <= 256);
    }
}
