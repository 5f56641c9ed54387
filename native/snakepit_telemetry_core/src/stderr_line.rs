//! From one line of a worker's stderr to what [`translate::check`] makes of a gRPC
//! message: a worker that cannot stream over gRPC writes each event as a line
//! `TELEMETRY:{json}` (Snakepit's stderr backend). A line without the prefix is ordinary
//! stderr, for the caller to log. Lines come bounded in length (the Elixir port reads its
//! output in lines of at most `max_line_bytes`; longer ones never reach here).
//!
//! # The line
//!
//! `TELEMETRY:` then one JSON object with the keys `event` (the dotted name, required),
//! `measurements` (an object), `metadata` (an object), `timestamp_ns` (an integer) and
//! `correlation_id` (a string). Two formats, both accepted:
//!
//! - Snakepit's (`nshkrdotcom/snakepit`, `priv/python/snakepit_bridge/telemetry/backends/stderr.py`),
//!   which this repo's `StderrBackend` (`priv/python/snakepit_bridge/telemetry/backends/stderr.py`)
//!   now writes byte for byte: plain `json.dumps(payload)`, so `", "`/`": "` separators,
//!   `NaN`/`Infinity`/`-Infinity` for non-finite floats, the caller's measurement and metadata
//!   values as they were (bools, numbers, null), and `correlation_id` `""` when unset;
//! - the one earlier versions of this repo's `StderrBackend` wrote: compact separators, no
//!   NaN, measurements already int, float or string, metadata strings, `correlation_id` null
//!   when unset.
//!
//! Neither writes another key, so any other key is a `decode_error`, and so is a key given
//! twice at the top level. A missing or null field other than `event` takes its gRPC default
//! (empty, 0, ""). Inside `measurements` and `metadata` a repeated key keeps its last value,
//! as a repeated protobuf map entry does.
//!
//! # Values: what the same event sent over gRPC gives
//!
//! Both Python workers convert values before they reach gRPC (bools to ints, metadata with
//! `str()`); a JSON line is given the same conversion, so a handler sees the same event
//! whichever way the worker sent it.
//!
//! - Measurement: a string stays a string; an integer that fits i64 is an integer; any other
//!   number is a float if it is finite as an f64 (`1e3`, `2.5`, `18446744073709551615`),
//!   else `invalid_measurement` (`1e400`, a 400-digit integer), as are `NaN` and
//!   `Infinity` (not JSON, but Snakepit writes them: read as non-finite floats); `true`
//!   and `false` are 1 and 0; null, an array or an object is a measurement without a value:
//!   `invalid_measurement`. The string `"NaN"` is just a string.
//! - Metadata: a string stays a string; a number is the text it was written as (what
//!   Python's `str()` gives for what `json.dumps` wrote); `true`, `false`, null become
//!   `"True"`, `"False"`, `"None"` and `NaN`, `Infinity`, `-Infinity` become `"nan"`,
//!   `"inf"`, `"-inf"`, as `str()` spells them on the gRPC path; an array or an object is
//!   a `decode_error`.
//!
//! # How
//!
//! The line is parsed (serde_json, into borrowed raw values, so numbers are read from their
//! text and never overflow inside the parser) into a `TelemetryEvent`, which is handed to
//! [`translate::check`]: the catalog checks, drop reasons and their order are the gRPC
//! path's own, not a copy. Every `decode_error` of the line comes before them, as protobuf
//! decoding does. Work and memory are proportional to the line;
//! serde_json's parse of a raw value is iterative, so nesting depth costs no stack.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::catalog::{Catalog, EventIndex};
use crate::counters::DropReason;
use crate::proto::{telemetry_value, TelemetryEvent, TelemetryValue};
use crate::translate::{self, EventLimits, EventNames, EventRecord};

/// What starts a telemetry line.
pub const PREFIX: &[u8] = b"TELEMETRY:";

/// What one stderr line is. (Returned and matched at once, never stored: the record is
/// not boxed for the sake of the variant without data.)
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum LineOutcome {
    /// Not a telemetry line: ordinary stderr, for the caller to log.
    NotTelemetry,
    /// A telemetry line: the event, or why it is dropped (counted like a gRPC message).
    Telemetry(Result<EventRecord, DropReason>),
}

/// Reads one line (without its `\n`). `names` and `gate` are [`translate::check`]'s; the
/// record's `wire_bytes` is the line's length.
pub fn parse_line(
    catalog: &Catalog,
    limits: EventLimits,
    line: &[u8],
    names: &mut EventNames,
    gate: impl FnOnce(EventIndex) -> Result<(), DropReason>,
) -> LineOutcome {
    let Some(json) = line.strip_prefix(PREFIX) else {
        return LineOutcome::NotTelemetry;
    };
    let result =
        decode(json).and_then(|event| translate::check(catalog, limits, event, line.len(), names, gate));
    LineOutcome::Telemetry(result)
}

fn decode(json: &[u8]) -> Result<TelemetryEvent, DropReason> {
    let first_error = match decode_json(json, &[]) {
        Ok(event) => return Ok(event),
        Err(reason) => reason,
    };
    // Only when strict JSON fails: Snakepit's `NaN`, `Infinity`, `-Infinity`.
    match replace_non_finite(json) {
        Some((replaced, marks)) => decode_json(&replaced, &marks),
        None => Err(first_error),
    }
}

/// The JSON object, as written (keys and raw values borrowed from the line).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    measurements: Option<Entries<'a>>,
    #[serde(borrow)]
    metadata: Option<Entries<'a>>,
    timestamp_ns: Option<i64>,
    correlation_id: Option<String>,
}

/// `marks`: where `replace_non_finite` put a stand-in for a non-finite token.
fn decode_json(json: &[u8], marks: &[Mark]) -> Result<TelemetryEvent, DropReason> {
    // serde would also take a JSON array as the struct's fields in order: only an object is.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DropReason::DecodeError);
    }
    let payload: Payload = serde_json::from_slice(json).map_err(|_| DropReason::DecodeError)?;
    let values = Values { start: json.as_ptr() as usize, marks };

    let mut measurements = HashMap::new();
    for (key, raw) in payload.measurements.map(|e| e.0).unwrap_or_default() {
        let value = match values.read(raw)? {
            Json::Str(s) => Some(telemetry_value::Value::StringValue(s)),
            Json::Number(text) => number(text),
            Json::Bool(b) => Some(telemetry_value::Value::IntValue(i64::from(b))),
            Json::NonFinite(kind) => Some(telemetry_value::Value::FloatValue(kind.value())),
            // translate counts a measurement without a value as invalid_measurement.
            Json::Null | Json::Nested => None,
        };
        measurements.insert(key.into_owned(), TelemetryValue { value });
    }

    let mut metadata = HashMap::new();
    for (key, raw) in payload.metadata.map(|e| e.0).unwrap_or_default() {
        let value = match values.read(raw)? {
            Json::Str(s) => s,
            Json::Number(text) => text.to_owned(),
            Json::Bool(true) => "True".to_owned(),
            Json::Bool(false) => "False".to_owned(),
            Json::Null => "None".to_owned(),
            Json::NonFinite(kind) => kind.python_str().to_owned(),
            Json::Nested => return Err(DropReason::DecodeError),
        };
        metadata.insert(key.into_owned(), value);
    }

    Ok(TelemetryEvent {
        event_parts: payload.event.split('.').map(str::to_owned).collect(),
        measurements,
        metadata,
        timestamp_ns: payload.timestamp_ns.unwrap_or(0),
        correlation_id: payload.correlation_id.unwrap_or_default(),
    })
}

/// A JSON number's text (already checked by the parser) as a measurement value.
fn number(text: &str) -> Option<telemetry_value::Value> {
    match text.parse::<i64>() {
        Ok(v) => Some(telemetry_value::Value::IntValue(v)),
        // A fraction, an exponent or an integer beyond i64; non-finite results (1e400) are
        // left for translate's check.
        Err(_) => text.parse::<f64>().ok().map(telemetry_value::Value::FloatValue),
    }
}

/// One raw value, by kind.
enum Json<'a> {
    Str(String),
    Number(&'a str),
    Bool(bool),
    Null,
    Nested,
    NonFinite(NonFinite),
}

struct Values<'m> {
    /// Address of the parsed buffer, to find a raw value's offset in it.
    start: usize,
    marks: &'m [Mark],
}

impl Values<'_> {
    fn read<'a>(&self, raw: &'a RawValue) -> Result<Json<'a>, DropReason> {
        let text = raw.get();
        Ok(match text.as_bytes().first() {
            // The raw parse does not check \u escapes (a lone surrogate): this does.
            Some(b'"') => Json::Str(serde_json::from_str(text).map_err(|_| DropReason::DecodeError)?),
            Some(b't') => Json::Bool(true),
            Some(b'f') => Json::Bool(false),
            Some(b'n') => Json::Null,
            Some(b'[' | b'{') => Json::Nested,
            Some(_) => {
                let offset = (text.as_ptr() as usize).wrapping_sub(self.start);
                match self.marks.binary_search_by_key(&offset, |(at, _)| *at) {
                    Ok(i) => Json::NonFinite(self.marks[i].1),
                    Err(_) => Json::Number(text),
                }
            }
            None => return Err(DropReason::DecodeError),
        })
    }
}

/// Where `replace_non_finite` put a stand-in (offset in its output), and for which token.
type Mark = (usize, NonFinite);

/// A non-finite float as Python's `json.dumps` writes it by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NonFinite {
    Nan,
    Infinity,
    NegInfinity,
}

impl NonFinite {
    const TOKENS: [(&'static [u8], NonFinite); 3] = [
        (b"NaN", NonFinite::Nan),
        (b"Infinity", NonFinite::Infinity),
        (b"-Infinity", NonFinite::NegInfinity),
    ];

    fn value(self) -> f64 {
        match self {
            NonFinite::Nan => f64::NAN,
            NonFinite::Infinity => f64::INFINITY,
            NonFinite::NegInfinity => f64::NEG_INFINITY,
        }
    }

    fn python_str(self) -> &'static str {
        match self {
            NonFinite::Nan => "nan",
            NonFinite::Infinity => "inf",
            NonFinite::NegInfinity => "-inf",
        }
    }
}

/// Copies `json` with each `NaN`, `Infinity`, `-Infinity` that stands where a value does
/// (after `:`, `,` or `[`, outside strings, followed by the end of the value) replaced by a
/// valid JSON number, and returns where each stand-in starts; `None` if there was none.
fn replace_non_finite(json: &[u8]) -> Option<(Vec<u8>, Vec<Mark>)> {
    let mut out = Vec::with_capacity(json.len() + 8);
    let mut marks = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    let mut last = 0u8; // the last byte outside strings that is not whitespace
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            let token = NonFinite::TOKENS.iter().find(|(token, _)| {
                matches!(last, b':' | b',' | b'[')
                    && json[i..].starts_with(token)
                    && matches!(
                        json.get(i + token.len()),
                        None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                    )
            });
            if let Some((token, kind)) = token {
                marks.push((out.len(), *kind));
                out.extend_from_slice(if *kind == NonFinite::NegInfinity { b"-1e999" } else { b"1e999" });
                last = b'0';
                i += token.len();
                continue;
            }
            if !b.is_ascii_whitespace() {
                last = b;
                in_string = b == b'"';
            }
        }
        out.push(b);
        i += 1;
    }
    (!marks.is_empty()).then_some((out, marks))
}

/// An object's entries in order, keys unescaped (borrowed when they have no escape).
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(entries)
            }
        }
        Ok(Entries(deserializer.deserialize_map(EntriesVisitor)?))
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_catalog;
    use crate::translate::{MetaKey, NativeTime, Value};
    use prost::Message;

    fn limits() -> EventLimits {
        EventLimits { native_time: NativeTime::new(1_000_000_000), max_metadata_keys: 64 }
    }

    fn parse_with(limits: EventLimits, line: &[u8]) -> LineOutcome {
        parse_line(&test_catalog(), limits, line, &mut EventNames::default(), |_| Ok(()))
    }

    fn run(line: &str) -> Result<EventRecord, DropReason> {
        run_bytes(line.as_bytes())
    }

    fn run_bytes(line: &[u8]) -> Result<EventRecord, DropReason> {
        match parse_with(limits(), line) {
            LineOutcome::Telemetry(result) => result,
            LineOutcome::NotTelemetry => panic!("not a telemetry line: {:?}", String::from_utf8_lossy(line)),
        }
    }

    /// `TELEMETRY:` and a tool.execution.stop event whose `field` is `json`.
    fn with_field(field: &str, json: &str) -> String {
        format!(r#"TELEMETRY:{{"event":"tool.execution.stop","{field}":{json}}}"#)
    }

    fn measurement(line: &str) -> Result<Value, DropReason> {
        let record = run(line)?;
        assert_eq!(record.measurements.len(), 1, "{line}");
        Ok(record.measurements[0].1.clone())
    }

    fn meta(record: &EventRecord, key: &str) -> Option<String> {
        let catalog = test_catalog();
        record.metadata().find_map(|(k, v)| {
            let name = match k {
                MetaKey::Known(id) => catalog.names().name(id),
                MetaKey::Other(name) => name,
            };
            (name == key).then(|| v.to_string())
        })
    }

    const OURS: &str = r#"TELEMETRY:{"event":"tool.execution.stop","measurements":{"duration":1500,"count":2.5,"bytes":"12kb"},"metadata":{"tool":"predict","user_key":"x"},"timestamp_ns":1700000000000000000,"correlation_id":null}"#;
    const SNAKEPITS: &str = r#"TELEMETRY:{"event": "tool.execution.stop", "measurements": {"duration": 1500, "count": true}, "metadata": {"tool": "predict", "retries": 3, "ratio": 1e-05, "cached": false, "parent": null}, "timestamp_ns": 1700000000000000000, "correlation_id": "abc-123"}"#;

    #[test]
    fn this_repos_line_is_accepted() {
        let catalog = test_catalog();
        let record = run(OURS).expect("accepted");
        assert_eq!(catalog.event(record.event).worker_name.as_ref(), "tool.execution.stop");
        assert_eq!(record.wire_bytes, OURS.len());
        let id = |name| catalog.names().get(name).expect("interned");
        for expected in [
            (id("duration"), Value::Int(1500)),
            (id("count"), Value::Float(2.5)),
            (id("bytes"), Value::Str("12kb".into())),
        ] {
            assert!(record.measurements.contains(&expected), "{expected:?}");
        }
        let tool = catalog.metadata_key("tool").expect("allowlisted");
        assert_eq!(record.metadata_value(MetaKey::Known(tool)), Some("predict"));
        assert_eq!(record.metadata_value(MetaKey::Other("user_key")), Some("x"));
        assert_eq!(record.timestamp_ns, 1_700_000_000_000_000_000);
        assert_eq!(record.correlation_id(), "");
    }

    #[test]
    fn snakepits_line_is_accepted_with_values_converted_as_on_the_grpc_path() {
        let record = run(SNAKEPITS).expect("accepted");
        let count = test_catalog().names().get("count").expect("count");
        assert!(record.measurements.contains(&(count, Value::Int(1))), "true is 1");
        assert_eq!(meta(&record, "tool").as_deref(), Some("predict"));
        assert_eq!(meta(&record, "retries").as_deref(), Some("3"));
        assert_eq!(meta(&record, "ratio").as_deref(), Some("1e-05"), "numbers as written");
        assert_eq!(meta(&record, "cached").as_deref(), Some("False"));
        assert_eq!(meta(&record, "parent").as_deref(), Some("None"));
        assert_eq!(record.correlation_id(), "abc-123");
        assert_eq!(record.wire_bytes, SNAKEPITS.len());
    }

    #[test]
    fn lines_written_by_the_real_writers() {
        // Printed by earlier versions of this repo's StderrBackend (compact, null id).
        let ours = r#"TELEMETRY:{"event":"tool.execution.stop","measurements":{"duration":1500,"count":1,"bytes":"x"},"metadata":{"tool":"p","n":"None","cl\u00e9":"3"},"timestamp_ns":5,"correlation_id":null}"#;
        let record = run(ours).expect("accepted");
        assert_eq!(record.measurements.len(), 3);
        assert_eq!((meta(&record, "n"), meta(&record, "clé")), (Some("None".into()), Some("3".into())));
        // Printed by Python's json.dumps(payload), as Snakepit's StderrBackend and ours call it.
        let snakepits = r#"TELEMETRY:{"event": "python.cpu.sampled", "measurements": {"cpu_percent": 12.5, "count": true}, "metadata": {"cl\u00e9": "\u00e9t\u00e9", "n": null, "f": 1e-05, "big": 1000000000000000000000000000000, "inf": -Infinity}, "timestamp_ns": 1, "correlation_id": ""}"#;
        let record = run(snakepits).expect("accepted");
        assert_eq!(record.measurements.len(), 2);
        for (key, value) in [
            ("clé", "été"),
            ("n", "None"),
            ("f", "1e-05"),
            ("big", "1000000000000000000000000000000"),
            ("inf", "-inf"),
        ] {
            assert_eq!(meta(&record, key).as_deref(), Some(value), "{key}");
        }
        let nan = snakepits.replace("12.5", "NaN");
        assert_eq!(run(&nan), Err(DropReason::InvalidMeasurement));
    }

    #[test]
    fn a_line_gives_what_translate_gives_for_the_same_grpc_message() {
        let message = TelemetryEvent {
            event_parts: vec!["tool".into(), "execution".into(), "stop".into()],
            measurements: [
                (
                    "duration".to_string(),
                    TelemetryValue { value: Some(telemetry_value::Value::IntValue(3_000)) },
                ),
                (
                    "count".to_string(),
                    TelemetryValue { value: Some(telemetry_value::Value::FloatValue(0.5)) },
                ),
            ]
            .into_iter()
            .collect(),
            metadata: [("tool", "t"), ("k", "v"), ("ключ", "значение")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into_iter()
                .collect(),
            timestamp_ns: -5,
            correlation_id: "c".into(),
        };
        let line = r#"TELEMETRY:{"event":"tool.execution.stop","measurements":{"duration":3000,"count":0.5},"metadata":{"tool":"t","k":"v","\u043a\u043b\u044e\u0447":"значение"},"timestamp_ns":-5,"correlation_id":"c"}"#;
        let micro = EventLimits { native_time: NativeTime::new(1_000_000), ..limits() };
        let catalog = test_catalog();
        let sort = |mut r: EventRecord| {
            r.measurements.sort_by_key(|(k, _)| *k);
            r
        };
        let mut grpc = translate::translate(
            &catalog,
            micro,
            &message.encode_to_vec(),
            &mut EventNames::default(),
            |_| Ok(()),
        )
        .expect("accepted");
        let LineOutcome::Telemetry(Ok(stderr)) =
            parse_line(&catalog, micro, line.as_bytes(), &mut EventNames::default(), |_| Ok(()))
        else {
            panic!("not accepted")
        };
        assert_eq!(stderr.wire_bytes, line.len());
        grpc.wire_bytes = line.len();
        assert_eq!(sort(stderr), sort(grpc));
    }

    #[test]
    fn lines_without_the_prefix_are_not_telemetry() {
        for line in ["", "hello", "TELEMETRY_ERROR: boom", " TELEMETRY:{}", "telemetry:{}", "TELEMETRY"] {
            assert_eq!(parse_with(limits(), line.as_bytes()), LineOutcome::NotTelemetry, "{line:?}");
        }
        assert_eq!(parse_with(limits(), b"\xff\xfe"), LineOutcome::NotTelemetry);
    }

    #[test]
    fn unknown_events_are_unknown_and_never_reach_the_gate() {
        let catalog = test_catalog();
        for name in
            ["tool.execution.nope", "", "tool..stop", ".tool.execution.stop", "tool.execution.stop.", "TOOL"]
        {
            let line = format!(r#"TELEMETRY:{{"event":"{name}","measurements":{{"nope":NaN}}}}"#);
            let outcome = parse_line(&catalog, limits(), line.as_bytes(), &mut EventNames::default(), |_| {
                panic!("gate called for an unknown event")
            });
            assert_eq!(outcome, LineOutcome::Telemetry(Err(DropReason::UnknownEvent)), "{name:?}");
        }
    }

    #[test]
    fn the_gate_sees_the_event_and_can_drop_it() {
        let catalog = test_catalog();
        let mut seen = None;
        let outcome = parse_line(&catalog, limits(), OURS.as_bytes(), &mut EventNames::default(), |index| {
            seen = Some(index);
            Err(DropReason::SampledOut)
        });
        assert_eq!(outcome, LineOutcome::Telemetry(Err(DropReason::SampledOut)));
        assert_eq!(seen, catalog.event_index("tool.execution.stop"));
    }

    #[test]
    fn measurement_values() {
        let m = |json: &str| measurement(&with_field("measurements", &format!(r#"{{"count":{json}}}"#)));
        assert_eq!(m("42"), Ok(Value::Int(42)));
        assert_eq!(m("-9223372036854775808"), Ok(Value::Int(i64::MIN)));
        assert_eq!(m("9223372036854775808"), Ok(Value::Float(9_223_372_036_854_775_808.0)), "beyond i64");
        assert_eq!(m("18446744073709551616"), Ok(Value::Float(18_446_744_073_709_551_616.0)), "beyond u64");
        assert_eq!(m("1e3"), Ok(Value::Float(1000.0)));
        assert_eq!(m("-0.0"), Ok(Value::Float(-0.0)));
        assert_eq!(m("1.7976931348623157e308"), Ok(Value::Float(f64::MAX)));
        assert_eq!(m("false"), Ok(Value::Int(0)));
        assert_eq!(m(r#""NaN""#), Ok(Value::Str("NaN".into())), "a string stays a string");
        assert_eq!(m(r#""caf\u00e9""#), Ok(Value::Str("café".into())));
        for invalid in
            ["1e400", "-1e400", &"9".repeat(400), "NaN", "Infinity", "-Infinity", "null", "[1]", "{}", "[]"]
        {
            assert_eq!(m(invalid), Err(DropReason::InvalidMeasurement), "{invalid}");
        }
    }

    #[test]
    fn measurement_keys_outside_the_allowlist_are_invalid() {
        for measurements in
            [r#"{"evil_key":1}"#, r#"{"duración":1}"#, r#"{"weights":1}"#, r#"{"duration":1,"x":1}"#]
        {
            let line = with_field("measurements", measurements);
            assert_eq!(run(&line), Err(DropReason::InvalidMeasurement), "{measurements}");
        }
        let escaped = with_field("measurements", r#"{"du\u0072ation":7}"#);
        assert_eq!(measurement(&escaped), Ok(Value::Int(7)), "an escaped key is the key");
    }

    #[test]
    fn time_measurements_are_converted_and_checked_after_conversion() {
        let line = with_field("measurements", r#"{"duration":1.7976931348623157e308}"#);
        assert!(run(&line).is_ok());
        let ten_per_ns = EventLimits { native_time: NativeTime::new(10_000_000_000), ..limits() };
        assert_eq!(
            parse_with(ten_per_ns, line.as_bytes()),
            LineOutcome::Telemetry(Err(DropReason::InvalidMeasurement))
        );
    }

    #[test]
    fn metadata_values() {
        let md = |json: &str| {
            let record = run(&with_field("metadata", &format!(r#"{{"x":{json}}}"#)))?;
            Ok::<_, DropReason>(meta(&record, "x").expect("present"))
        };
        assert_eq!(md(r#""plain""#), Ok("plain".into()));
        assert_eq!(md("-12"), Ok("-12".into()));
        assert_eq!(md("1e400"), Ok("1e400".into()), "the text, never a float");
        assert_eq!(md("true"), Ok("True".into()));
        assert_eq!(md("NaN"), Ok("nan".into()));
        assert_eq!(md("Infinity"), Ok("inf".into()));
        assert_eq!(md("-Infinity"), Ok("-inf".into()));
        assert_eq!(md("[1]"), Err(DropReason::DecodeError));
        assert_eq!(md(r#"{"a":"b"}"#), Err(DropReason::DecodeError));
    }

    #[test]
    fn keys_may_be_any_unicode() {
        let record = run(&with_field("metadata", r#"{"clé":"v","\u00e9t\u00e9":"w","😀":"x"}"#)).expect("ok");
        for key in ["clé", "été", "😀"] {
            assert!(record.metadata().any(|(k, _)| k == MetaKey::Other(key)), "{key}");
        }
    }

    #[test]
    fn repeated_keys_keep_the_last_value_and_repeated_fields_are_errors() {
        let record = run(r#"TELEMETRY:{"event":"python.cpu.sampled","measurements":{"cpu_percent":"x","cpu_percent":5},"metadata":{"k":"a","k":"b"}}"#)
            .expect("ok");
        assert_eq!(record.measurements.len(), 1);
        assert_eq!(record.measurements[0].1, Value::Int(5));
        assert_eq!(record.metadata().collect::<Vec<_>>(), [(MetaKey::Other("k"), "b")]);
        let twice = r#"TELEMETRY:{"event":"tool.execution.stop","event":"tool.execution.stop"}"#;
        assert_eq!(run(twice), Err(DropReason::DecodeError));
    }

    #[test]
    fn missing_and_null_fields_take_their_grpc_defaults() {
        for line in [
            r#"TELEMETRY:{"event":"tool.execution.stop"}"#,
            r#"TELEMETRY:{"event":"tool.execution.stop","measurements":{},"metadata":{}}"#,
            r#"TELEMETRY:{"correlation_id":null,"timestamp_ns":null,"metadata":null,"measurements":null,"event":"tool.execution.stop"}"#,
            "TELEMETRY: \t{ \"event\" : \"tool.execution.stop\" } \t",
        ] {
            let record = run(line).expect(line);
            assert!(record.measurements.is_empty() && record.metadata().len() == 0);
            assert_eq!((record.timestamp_ns, record.correlation_id()), (0, ""));
        }
    }

    #[test]
    fn malformed_lines_are_decode_errors() {
        let invalid_utf8 = [
            b"TELEMETRY:{\"event\":\"tool.execution.stop\",\"metadata\":{\"k\":\"\xff\"}}".as_slice(),
            b"TELEMETRY:{\"event\":\"tool.execution.stop\",\"metadata\":{\"\xc3\x28\":\"v\"}}",
            b"TELEMETRY:\xff{}",
        ];
        for line in invalid_utf8 {
            assert_eq!(run_bytes(line), Err(DropReason::DecodeError), "{:?}", String::from_utf8_lossy(line));
        }
        let stop = r#""event":"tool.execution.stop""#;
        for line in [
            "TELEMETRY:".to_string(),
            "TELEMETRY:{}".into(),
            "TELEMETRY:   ".into(),
            "TELEMETRY:null".into(),
            "TELEMETRY:[\"tool.execution.stop\"]".into(),
            "TELEMETRY:\"tool.execution.stop\"".into(),
            format!("TELEMETRY:{{{stop}"),
            format!("TELEMETRY:{{{stop}}}x"),
            format!("TELEMETRY:{{{stop}}}{{{stop}}}"),
            format!("TELEMETRY:{{{stop},}}"),
            format!("TELEMETRY:{{{stop},\"extra\":1}}"),
            r#"TELEMETRY:{"event":null}"#.into(),
            r#"TELEMETRY:{"event":["tool","execution","stop"]}"#.into(),
            with_field("measurements", "[]"),
            with_field("measurements", r#""duration""#),
            with_field("metadata", r#"{"k":"\ud800"}"#),
            with_field("measurements", r#"{"bytes":"\udc00x"}"#),
            with_field("metadata", r#"{"k":"bad \x escape"}"#),
            with_field("timestamp_ns", r#""1700000000000000000""#),
            with_field("timestamp_ns", "1.7e18"),
            with_field("timestamp_ns", "9223372036854775808"),
            with_field("timestamp_ns", "NaN"),
            with_field("correlation_id", "42"),
            with_field("measurements", r#"{"count":NaNx}"#),
            with_field("measurements", r#"{"count":-NaN}"#),
            with_field("measurements", r#"{"count":nan}"#),
            with_field("measurements", r#"{"count":1NaN}"#),
            with_field("measurements", r#"{"count":01}"#),
        ] {
            assert_eq!(run(&line), Err(DropReason::DecodeError), "{line}");
        }
    }

    #[test]
    fn non_finite_tokens_are_read_only_where_a_value_stands() {
        // A real NaN elsewhere must not touch the text of strings.
        let line = r#"TELEMETRY:{"event":"python.cpu.sampled","metadata":{"s":"a: NaN, [Infinity]","t":"\" :NaN"},"measurements":{"cpu_percent":NaN}}"#;
        assert_eq!(run(line), Err(DropReason::InvalidMeasurement));
        let line = line
            .replace(r#""cpu_percent":NaN"#, r#""cpu_percent":1"#)
            .replace(r#""t":"#, r#""u":-Infinity,"t":"#);
        let record = run(&line).expect("accepted");
        assert_eq!(meta(&record, "s").as_deref(), Some("a: NaN, [Infinity]"));
        assert_eq!(meta(&record, "t").as_deref(), Some("\" :NaN"));
        assert_eq!(meta(&record, "u").as_deref(), Some("-inf"));
    }

    #[test]
    fn too_many_metadata_keys_come_after_the_name_and_before_the_measurements() {
        let keys = |n: usize| (0..n).map(|i| format!(r#""k{i}":"v""#)).collect::<Vec<_>>().join(",");
        let line = |event: &str, n: usize| {
            format!(
                r#"TELEMETRY:{{"event":"{event}","measurements":{{"nope":1}},"metadata":{{{}}}}}"#,
                keys(n)
            )
        };
        assert_eq!(run(&line("tool.execution.stop", 65)), Err(DropReason::TooManyKeys));
        assert_eq!(run(&line("nope", 65)), Err(DropReason::UnknownEvent));
        assert_eq!(run(&line("tool.execution.stop", 64)), Err(DropReason::InvalidMeasurement));
        // Repeated keys count once, as in a protobuf map.
        let repeated =
            format!(r#"TELEMETRY:{{"event":"tool.execution.stop","metadata":{{{},"k0":"w"}}}}"#, keys(64));
        assert_eq!(run(&repeated).expect("64 distinct keys").metadata().len(), 64);
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep_objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        for n in [10, 200, 100_000] {
            let in_measurement = with_field("measurements", &format!(r#"{{"count":{}}}"#, deep(n)));
            assert_eq!(run(&in_measurement), Err(DropReason::InvalidMeasurement), "depth {n}");
            let in_measurement = with_field("measurements", &format!(r#"{{"count":{}}}"#, deep_objects(n)));
            assert_eq!(run(&in_measurement), Err(DropReason::InvalidMeasurement), "depth {n}");
            let in_metadata = with_field("metadata", &format!(r#"{{"k":{}}}"#, deep(n)));
            assert_eq!(run(&in_metadata), Err(DropReason::DecodeError), "depth {n}");
            assert_eq!(run(&format!("TELEMETRY:{}", deep(n))), Err(DropReason::DecodeError), "depth {n}");
            assert_eq!(run(&format!("TELEMETRY:{}", deep_objects(n))), Err(DropReason::DecodeError));
            assert_eq!(run(&with_field("event", &deep(n))), Err(DropReason::DecodeError), "depth {n}");
            let unclosed = with_field("measurements", &format!(r#"{{"count":{}}}"#, "[".repeat(n)));
            assert_eq!(run(&unclosed), Err(DropReason::DecodeError), "depth {n}");
        }
    }

    #[test]
    fn a_one_megabyte_line() {
        let big = "é".repeat(512 * 1024);
        let line = with_field("metadata", &format!(r#"{{"tool":"{big}"}}"#));
        assert!(line.len() > 1024 * 1024);
        let record = run(&line).expect("accepted");
        assert_eq!(meta(&record, "tool"), Some(big));
        assert_eq!(record.wire_bytes, line.len());

        let many: Vec<String> = (0..100_000).map(|i| format!(r#""key{i}":"v""#)).collect();
        let line = with_field("metadata", &format!("{{{}}}", many.join(",")));
        assert!(line.len() > 1024 * 1024);
        assert_eq!(run(&line), Err(DropReason::TooManyKeys));
    }

    /// A cheap deterministic generator for the no-panic checks.
    fn next(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        *seed >> 33
    }

    #[test]
    fn no_input_panics() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for base in [
            OURS,
            SNAKEPITS,
            r#"TELEMETRY:{"event":"python.cpu.sampled","measurements":{"cpu_percent":NaN},"metadata":{"a":-Infinity}}"#,
        ] {
            let base = base.as_bytes();
            lines.extend((PREFIX.len()..base.len()).map(|cut| base[..cut].to_vec()));
            let mut seed = base.len() as u64;
            for _ in 0..2_000 {
                let mut line = base.to_vec();
                for _ in 0..1 + next(&mut seed) % 4 {
                    let at = PREFIX.len() + (next(&mut seed) as usize) % (line.len() - PREFIX.len());
                    let alphabet = b"{}[]\":,\\NaIfity-0123456789e.E \xff\xc3";
                    line[at] = alphabet[(next(&mut seed) as usize) % alphabet.len()];
                }
                lines.push(line);
            }
        }
        for line in lines {
            match parse_with(limits(), &line) {
                LineOutcome::Telemetry(Ok(record)) => assert_eq!(record.wire_bytes, line.len()),
                LineOutcome::Telemetry(Err(_)) => {}
                LineOutcome::NotTelemetry => panic!("the prefix was kept"),
            }
        }
    }
}
