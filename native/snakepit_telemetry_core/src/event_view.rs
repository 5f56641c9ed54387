//! One `TelemetryEvent` read in place from its bytes: strings borrowed from the message, no
//! per-field allocation and no hashing, with exactly what prost's decoder accepts and
//! rejects (the differential test in `translate.rs` compares the two):
//!
//! - malformed wire data (truncated varint or field, a varint over 10 bytes or over
//!   `u64::MAX`, a key over `u32::MAX`, field number 0, wire type 6 or 7, an end-group
//!   without its start), invalid UTF-8 in a string, or a known field with another wire type
//!   is an error;
//! - unknown fields are skipped, groups included (nested at most [`RECURSION_LIMIT`] deep,
//!   prost's limit, counted from the message as prost counts it);
//! - a repeated scalar or string field keeps its last value; a map entry without key or
//!   value has the default; a map key sent twice keeps its last entry; a map value message
//!   sent twice in one entry is merged (its last oneof field wins).

use smallvec::{Array, SmallVec};

/// The message is not a `TelemetryEvent` prost would decode.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// A measurement value: the `TelemetryValue` oneof, `None` when absent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueView<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
    None,
}

/// A decoded `TelemetryEvent`. The maps hold distinct keys, sorted. Held inline up to a few
/// entries (no allocation for a typical event).
#[derive(Debug, PartialEq)]
pub struct EventView<'a> {
    parts: SmallVec<[&'a str; 6]>,
    pub measurements: SmallVec<[(&'a str, ValueView<'a>); 4]>,
    pub metadata: SmallVec<[(&'a str, &'a str); 8]>,
    pub timestamp_ns: i64,
    pub correlation_id: &'a str,
}

/// prost's `RECURSION_LIMIT`: how deep a skipped field may nest in the top-level message.
/// A map entry is one level down, a `TelemetryValue` in it two.
pub const RECURSION_LIMIT: u32 = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

impl<'a> EventView<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<EventView<'a>, Malformed> {
        let mut view = EventView::empty();
        view.read(bytes)?;
        Ok(view)
    }

    /// A view of no event, for [`EventView::read`].
    pub(crate) fn empty() -> EventView<'a> {
        EventView {
            parts: SmallVec::new(),
            measurements: SmallVec::new(),
            metadata: SmallVec::new(),
            timestamp_ns: 0,
            correlation_id: "",
        }
    }

    /// Reads `bytes` into an [`EventView::empty`] view, as [`EventView::parse`] does. The
    /// caller's view is filled where it lies: returning one this size (560 bytes)
    /// costs a copy of it per event, 7 % of `translate`.
    pub(crate) fn read(&mut self, bytes: &'a [u8]) -> Result<(), Malformed> {
        let view = self;
        debug_assert!(view.parts.is_empty() && view.measurements.is_empty() && view.metadata.is_empty());
        let mut r = Reader(bytes);
        while !r.0.is_empty() {
            let (tag, wire) = r.key()?;
            match tag {
                1 => view.parts.push(r.string(wire)?),
                2 => view.measurements.push(measurement(r.len_delimited(wire)?)?),
                3 => view.metadata.push(metadata(r.len_delimited(wire)?)?),
                4 => view.timestamp_ns = r.int64(wire)?,
                5 => view.correlation_id = r.string(wire)?,
                _ => r.skip(tag, wire, RECURSION_LIMIT)?,
            }
        }
        keep_last(&mut view.measurements);
        keep_last(&mut view.metadata);
        Ok(())
    }

    /// The event name parts, in order.
    pub fn parts(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.parts.iter().copied()
    }
}

/// A `measurements` map entry.
fn measurement(entry: &[u8]) -> Result<(&str, ValueView<'_>), Malformed> {
    let (mut key, mut value) = ("", ValueView::None);
    let mut r = Reader(entry);
    while !r.0.is_empty() {
        match r.key()? {
            (1, wire) => key = r.string(wire)?,
            // prost merges a repeated message field into the value so far.
            (2, wire) => {
                let mut v = Reader(r.len_delimited(wire)?);
                while !v.0.is_empty() {
                    match v.key()? {
                        (1, wire) => value = ValueView::Int(v.int64(wire)?),
                        (2, wire) => value = ValueView::Float(v.double(wire)?),
                        (3, wire) => value = ValueView::Str(v.string(wire)?),
                        (tag, wire) => v.skip(tag, wire, RECURSION_LIMIT - 2)?,
                    }
                }
            }
            (tag, wire) => r.skip(tag, wire, RECURSION_LIMIT - 1)?,
        }
    }
    Ok((key, value))
}

/// A `metadata` map entry.
fn metadata(entry: &[u8]) -> Result<(&str, &str), Malformed> {
    let (mut key, mut value) = ("", "");
    let mut r = Reader(entry);
    while !r.0.is_empty() {
        match r.key()? {
            (1, wire) => key = r.string(wire)?,
            (2, wire) => value = r.string(wire)?,
            (tag, wire) => r.skip(tag, wire, RECURSION_LIMIT - 1)?,
        }
    }
    Ok((key, value))
}

/// Keeps the last entry of each key, as inserting them into a map in order would. Sorting
/// (stable, on the reversed entries) rather than hashing: a message may hold many keys.
fn keep_last<'s, V, A: Array<Item = (&'s str, V)>>(entries: &mut SmallVec<A>) {
    if entries.len() > 1 {
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries.dedup_by(|later, kept| later.0 == kept.0);
    }
}

/// The unread rest of a message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], Malformed> {
        if len > self.0.len() {
            return Err(Malformed);
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    /// At most 10 bytes, the 10th 0 or 1 (prost's overflow check).
    #[inline]
    fn varint(&mut self) -> Result<u64, Malformed> {
        // Keys and short lengths: one byte.
        match self.0.split_first() {
            Some((&byte, rest)) if byte < 0x80 => {
                self.0 = rest;
                Ok(u64::from(byte))
            }
            _ => self.varint_long(),
        }
    }

    fn varint_long(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.0.split_first().ok_or(Malformed)?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return if i == 9 && byte > 1 { Err(Malformed) } else { Ok(value) };
            }
        }
        Err(Malformed)
    }

    /// A field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8), Malformed> {
        let key = u32::try_from(self.varint()?).map_err(|_| Malformed)?;
        let (tag, wire) = (key >> 3, (key & 7) as u8);
        if tag == 0 || wire > FIXED32 {
            return Err(Malformed);
        }
        Ok((tag, wire))
    }

    fn len_delimited(&mut self, wire: u8) -> Result<&'a [u8], Malformed> {
        expect(wire, LEN)?;
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
        self.take(len)
    }

    fn string(&mut self, wire: u8) -> Result<&'a str, Malformed> {
        utf8(self.len_delimited(wire)?)
    }

    fn int64(&mut self, wire: u8) -> Result<i64, Malformed> {
        expect(wire, VARINT)?;
        Ok(self.varint()? as i64)
    }

    fn double(&mut self, wire: u8) -> Result<f64, Malformed> {
        expect(wire, FIXED64)?;
        let bytes = self.take(8)?.try_into().map_err(|_| Malformed)?;
        Ok(f64::from_le_bytes(bytes))
    }

    /// Skips an unknown field. `depth` is what is left of the recursion limit.
    fn skip(&mut self, tag: u32, wire: u8, depth: u32) -> Result<(), Malformed> {
        if depth == 0 {
            return Err(Malformed);
        }
        match wire {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.take(8)?;
            }
            LEN => {
                self.len_delimited(wire)?;
            }
            FIXED32 => {
                self.take(4)?;
            }
            START_GROUP => loop {
                match self.key()? {
                    (inner, END_GROUP) if inner == tag => break,
                    (_, END_GROUP) => return Err(Malformed),
                    (inner, wire) => self.skip(inner, wire, depth - 1)?,
                }
            },
            _ => return Err(Malformed),
        }
        Ok(())
    }
}

/// The text of a string field, or an error if it is not UTF-8. ASCII (every name and most
/// values) is checked inline; `str::from_utf8`, an out-of-line call, checks the rest.
#[inline]
fn utf8(bytes: &[u8]) -> Result<&str, Malformed> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|_| Malformed)
}

fn expect(wire: u8, expected: u8) -> Result<(), Malformed> {
    if wire == expected {
        Ok(())
    } else {
        Err(Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{telemetry_value, TelemetryEvent, TelemetryValue};
    use prost::Message;

    fn key(tag: u32, wire: u8, out: &mut Vec<u8>) {
        prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wire)), out);
    }

    fn len_field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
        key(tag, LEN, out);
        prost::encoding::encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn entry(key: Option<&str>, value: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(k) = key {
            len_field(1, k.as_bytes(), &mut out);
        }
        if let Some(v) = value {
            len_field(2, v, &mut out);
        }
        out
    }

    fn prost_decodes(bytes: &[u8]) -> bool {
        TelemetryEvent::decode(bytes).is_ok()
    }

    #[test]
    fn reads_every_field() {
        let event = TelemetryEvent {
            event_parts: vec!["a".into(), "b".into()],
            measurements: [
                ("i", Some(telemetry_value::Value::IntValue(-7))),
                ("f", Some(telemetry_value::Value::FloatValue(0.25))),
                ("s", Some(telemetry_value::Value::StringValue("x".into()))),
                ("n", None),
            ]
            .map(|(k, value)| (k.to_string(), TelemetryValue { value }))
            .into_iter()
            .collect(),
            metadata: [("k".to_string(), "v".to_string()), (String::new(), String::new())]
                .into_iter()
                .collect(),
            timestamp_ns: i64::MIN,
            correlation_id: "c".into(),
        };
        let bytes = event.encode_to_vec();
        let view = EventView::parse(&bytes).expect("valid");
        assert_eq!(view.parts().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            view.measurements[..],
            [
                ("f", ValueView::Float(0.25)),
                ("i", ValueView::Int(-7)),
                ("n", ValueView::None),
                ("s", ValueView::Str("x"))
            ]
        );
        assert_eq!(view.metadata[..], [("", ""), ("k", "v")]);
        assert_eq!((view.timestamp_ns, view.correlation_id), (i64::MIN, "c"));
    }

    #[test]
    fn repeated_keys_and_fields_keep_the_last() {
        let mut bytes = Vec::new();
        for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
            len_field(3, &entry(Some(k), Some(v.as_bytes())), &mut bytes);
        }
        // A metadata entry with its key and value twice, one without a value, one without a key.
        let mut twice = entry(Some("x"), Some(b"old"));
        twice.extend(entry(Some("y"), Some(b"new")));
        len_field(3, &twice, &mut bytes);
        len_field(3, &entry(Some("novalue"), None), &mut bytes);
        len_field(3, &entry(None, Some(b"nokey")), &mut bytes);
        // Measurement "m" twice: the second replaces the first, and within it the value
        // messages are merged (an empty one changes nothing; the last oneof field wins).
        let int = [0x08, 0x05]; // int_value = 5
        let float = [0x11, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]; // float_value = 1.0
        len_field(2, &entry(Some("m"), Some(&int)), &mut bytes);
        let mut merged = entry(Some("m"), Some(&float));
        merged.extend(entry(None, Some(&[])));
        len_field(2, &merged, &mut bytes);
        len_field(2, &entry(Some("gone"), Some(&int)), &mut bytes);
        len_field(2, &entry(Some("gone"), None), &mut bytes);
        // Scalars twice.
        bytes.extend([0x20, 0x01, 0x20, 0x7f]);
        len_field(5, b"first", &mut bytes);
        len_field(5, b"last", &mut bytes);

        let view = EventView::parse(&bytes).expect("valid");
        assert_eq!(view.metadata[..], [("", "nokey"), ("a", "3"), ("b", "2"), ("novalue", ""), ("y", "new")]);
        assert_eq!(view.measurements[..], [("gone", ValueView::None), ("m", ValueView::Float(1.0))]);
        assert_eq!((view.timestamp_ns, view.correlation_id), (127, "last"));

        let prost = TelemetryEvent::decode(bytes.as_slice()).expect("prost agrees");
        assert_eq!(prost.metadata.len(), 5);
        assert_eq!(prost.measurements["m"].value, Some(telemetry_value::Value::FloatValue(1.0)));
        assert_eq!(prost.measurements["gone"].value, None);
    }

    #[test]
    fn int64_is_twos_complement_and_double_little_endian() {
        let mut bytes = vec![0x20];
        prost::encoding::encode_varint(-2i64 as u64, &mut bytes);
        let mut value = vec![0x11];
        value.extend(f64::NAN.to_le_bytes());
        len_field(2, &entry(Some("nan"), Some(&value)), &mut bytes);
        let view = EventView::parse(&bytes).expect("valid");
        assert_eq!(view.timestamp_ns, -2);
        assert!(matches!(view.measurements[0], ("nan", ValueView::Float(f)) if f.is_nan()));
    }

    #[test]
    fn unknown_fields_are_skipped_groups_included() {
        let mut bytes = vec![
            0x30, 0x96, 0x01, // field 6 varint
            0x39, 1, 2, 3, 4, 5, 6, 7, 8, // field 7 fixed64
            0x45, 1, 2, 3, 4, // field 8 fixed32
            0x4a, 0x01, 0xff, // field 9 bytes, not UTF-8 (never checked)
            0x53, 0x08, 0x01, 0x5b, 0x5c, 0x54, // field 10 group holding a varint and group 11
        ];
        len_field(2, &[0x0a, 0x01, b'k', 0x18, 0x01, 0x12, 0x04, 0x08, 0x01, 0x20, 0x02], &mut bytes);
        len_field(3, &[0x0a, 0x01, b'k', 0x1d, 0, 0, 0, 0], &mut bytes);
        let view = EventView::parse(&bytes).expect("valid");
        assert_eq!(view.measurements[..], [("k", ValueView::Int(1))]);
        assert_eq!(view.metadata[..], [("k", "")]);
        assert!(prost_decodes(&bytes));
    }

    #[test]
    fn malformed_wire_data_is_rejected_as_prost_does() {
        let bad: &[(&[u8], &str)] = &[
            (&[0x0a], "length missing"),
            (&[0x0a, 0x05, b'a'], "length past the end"),
            (&[0x20], "varint missing"),
            (&[0x20, 0x80], "varint truncated"),
            (&[0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], "over u64::MAX"),
            (&[0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], "11 bytes"),
            (&[0x80, 0x80, 0x80, 0x80, 0x10], "key over u32::MAX"),
            (&[0x00, 0x00], "field number 0"),
            (&[0x36], "wire type 6"),
            (&[0x37], "wire type 7"),
            (&[0x34], "end group without a start"),
            (&[0x33, 0x08, 0x01], "group never ended"),
            (&[0x33, 0x3c], "group ended by another field's end"),
            (&[0x39, 1, 2, 3], "fixed64 truncated"),
            (&[0x3d, 1, 2, 3], "fixed32 truncated"),
            (&[0x0a, 0x02, 0xc3, 0x28], "event part not UTF-8"),
            (&[0x2a, 0x01, 0x80], "correlation_id not UTF-8"),
            (&[0x08, 0x01], "field 1 as a varint"),
            (&[0x10, 0x01], "field 2 as a varint"),
            (&[0x1d, 1, 2, 3, 4], "field 3 as fixed32"),
            (&[0x21, 1, 2, 3, 4, 5, 6, 7, 8], "field 4 as fixed64"),
            (&[0x22, 0x01, 0x01], "field 4 as bytes (no packing)"),
            (&[0x28, 0x01], "field 5 as a varint"),
            (&[0x1a, 0x02, 0x08, 0x01], "metadata key as a varint"),
            (&[0x1a, 0x02, 0x10, 0x01], "metadata value as a varint"),
            (&[0x12, 0x02, 0x10, 0x01], "measurement value as a varint"),
            (&[0x12, 0x04, 0x12, 0x02, 0x08, 0xff], "int_value truncated inside its entry"),
            (&[0x12, 0x04, 0x12, 0x02, 0x11, 0x00], "float_value truncated"),
            (&[0x12, 0x04, 0x12, 0x02, 0x10, 0x01], "float_value as a varint"),
            (&[0x12, 0x04, 0x12, 0x02, 0x18, 0x01], "string_value as a varint"),
            (&[0x12, 0x05, 0x12, 0x03, 0x1a, 0x01, 0xff], "string_value not UTF-8"),
            (&[0x1a, 0x03, 0x0a, 0x02, b'k'], "entry field past the entry's end"),
            (&[0x1a, 0x01, 0x0a, 0x00], "entry shorter than its field"),
        ];
        for &(bytes, what) in bad {
            assert_eq!(EventView::parse(bytes), Err(Malformed), "{what}");
            assert!(!prost_decodes(bytes), "prost accepts: {what}");
        }
        // The largest varint prost takes.
        let max = [0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(EventView::parse(&max).map(|v| v.timestamp_ns), Ok(-1));
        assert!(prost_decodes(&max));
    }

    #[test]
    fn groups_nest_as_deep_as_prosts_recursion_limit() {
        // `depth` groups of field 6 nested in one another, the innermost holding a varint.
        let nested = |depth: usize| {
            let mut out = [0x33].repeat(depth);
            out.extend([0x38, 0x01]);
            out.extend([0x34].repeat(depth));
            out
        };
        let in_entry = |inner: &[u8]| {
            let mut out = Vec::new();
            len_field(3, inner, &mut out);
            out
        };
        let in_value = |inner: &[u8]| {
            let mut out = Vec::new();
            len_field(2, &entry(Some("k"), Some(inner)), &mut out);
            out
        };
        for (limit, wrap) in [
            (RECURSION_LIMIT, &(|b: &[u8]| b.to_vec()) as &dyn Fn(&[u8]) -> Vec<u8>),
            (RECURSION_LIMIT - 1, &in_entry),
            (RECURSION_LIMIT - 2, &in_value),
        ] {
            let limit = limit as usize;
            let fits = wrap(&nested(limit - 1));
            assert!(EventView::parse(&fits).is_ok() && prost_decodes(&fits), "{limit}");
            let too_deep = wrap(&nested(limit));
            assert!(EventView::parse(&too_deep).is_err() && !prost_decodes(&too_deep), "{limit}");
        }
    }
}
