//! From the bytes of one gRPC message to an [`EventRecord`] the catalog accepts, or the
//! reason it is dropped. Pure Rust (no NIF types), so every rule here is unit-tested.
//!
//! Each message is decoded here rather than by the gRPC codec, so one bad message is a
//! counted `decode_error` and the stream goes on. Decoding is [`EventView`]'s: prost's rules,
//! without building prost's message (its strings and hash maps) first.
//!
//! Every value that passes becomes a valid BEAM term: non-finite floats (which Erlang has
//! no term for) are `invalid_measurement`, and an event with more metadata keys than the
//! configured limit is `too_many_keys`.

use crate::catalog::{Catalog, EventIndex};
use crate::counters::DropReason;
use crate::event_view::{EventView, ValueView};
use crate::proto::TelemetryEvent;
use prost::Message;

pub use crate::record::{EventRecord, MetaKey, Value};

/// How many `:native` time units make a second on this VM; the worker sends nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct NativeTime {
    per_second: u64,
}

const NANOS_PER_SECOND: u64 = 1_000_000_000;

impl NativeTime {
    pub fn new(per_second: u64) -> NativeTime {
        NativeTime { per_second: per_second.max(1) }
    }

    pub fn from_nanos(self, value: Value) -> Value {
        if self.per_second == NANOS_PER_SECOND {
            return value;
        }
        match value {
            Value::Int(ns) => {
                let native = i128::from(ns) * i128::from(self.per_second) / i128::from(NANOS_PER_SECOND);
                Value::Int(native.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
            }
            Value::Float(ns) => Value::Float(ns * self.per_second as f64 / NANOS_PER_SECOND as f64),
            other => other,
        }
    }
}

/// What one message may carry, from the application config.
#[derive(Clone, Copy, Debug)]
pub struct EventLimits {
    pub native_time: NativeTime,
    /// Most metadata keys one event may carry (`max_metadata_keys`).
    pub max_metadata_keys: usize,
}

/// What a stream keeps between events to find their names in the catalog: the buffer a
/// name is joined in, and the last name found with its event. A worker sends the same few
/// events over and over, and a name equal to the last one is not looked up again (the
/// lookup took a tenth of the time `translate` takes for a typical event).
#[derive(Debug, Default)]
pub struct EventNames {
    joined: String,
    last: Option<(String, EventIndex)>,
}

impl EventNames {
    /// The catalog event named by `parts` (joined with dots; no part may be empty or hold a
    /// dot).
    fn find<'v>(
        &mut self,
        catalog: &Catalog,
        parts: impl Iterator<Item = &'v str>,
    ) -> Result<EventIndex, DropReason> {
        self.joined.clear();
        for (i, part) in parts.enumerate() {
            if part.is_empty() || part.contains('.') {
                return Err(DropReason::UnknownEvent);
            }
            if i > 0 {
                self.joined.push('.');
            }
            self.joined.push_str(part);
        }
        if let Some((name, event)) = &self.last {
            if *name == self.joined {
                return Ok(*event);
            }
        }
        let event = catalog.event_index(&self.joined).ok_or(DropReason::UnknownEvent)?;
        match &mut self.last {
            Some((name, last)) => {
                name.clear();
                name.push_str(&self.joined);
                *last = event;
            }
            None => self.last = Some((self.joined.clone(), event)),
        }
        Ok(event)
    }
}

/// Decodes one message and checks it against the catalog. `names` is kept by the caller
/// across calls (one per stream). `gate` decides, from the event alone, whether the worker's
/// settings keep it (before its fields are converted).
///
/// Inlined into the stream task (another crate), so that the record is made where the
/// caller keeps it rather than copied out (5 % of `translate`, `examples/translate_cost`).
#[inline]
pub fn translate(
    catalog: &Catalog,
    limits: EventLimits,
    bytes: &[u8],
    names: &mut EventNames,
    gate: impl FnOnce(EventIndex) -> Result<(), DropReason>,
) -> Result<EventRecord, DropReason> {
    let mut view = EventView::empty();
    view.read(bytes).map_err(|_| DropReason::DecodeError)?;
    check_view(catalog, limits, &view, bytes.len(), names, gate)
}

/// Checks an already decoded event against the catalog, as [`translate`] does (the stderr
/// line reader builds the same message from JSON). `wire_bytes` is how large the event was
/// as it arrived. The event goes through its wire form, so both paths share every rule; the
/// encoding round trip is exact (its map keys are unique, an absent value stays absent).
pub fn check(
    catalog: &Catalog,
    limits: EventLimits,
    decoded: TelemetryEvent,
    wire_bytes: usize,
    names: &mut EventNames,
    gate: impl FnOnce(EventIndex) -> Result<(), DropReason>,
) -> Result<EventRecord, DropReason> {
    let bytes = decoded.encode_to_vec();
    let view = EventView::parse(&bytes).map_err(|_| DropReason::DecodeError)?;
    check_view(catalog, limits, &view, wire_bytes, names, gate)
}

#[inline]
fn check_view(
    catalog: &Catalog,
    limits: EventLimits,
    view: &EventView<'_>,
    wire_bytes: usize,
    names: &mut EventNames,
    gate: impl FnOnce(EventIndex) -> Result<(), DropReason>,
) -> Result<EventRecord, DropReason> {
    let event = names.find(catalog, view.parts())?;
    gate(event)?;
    // The view's keys are distinct, as in a decoded map.
    if view.metadata.len() > limits.max_metadata_keys {
        return Err(DropReason::TooManyKeys);
    }
    let spec = catalog.event(event);

    // Room for every string the record may keep (an upper bound: allowlisted keys become
    // ids, not text), so that it allocates once.
    let text_bytes = view.correlation_id.len()
        + view.metadata.iter().map(|(key, value)| key.len() + value.len()).sum::<usize>();
    let mut record = EventRecord::new(event, wire_bytes, text_bytes);
    for &(key, value) in &view.measurements {
        let key = catalog.measurement_key(spec, key).ok_or(DropReason::InvalidMeasurement)?;
        let value = match value {
            ValueView::Int(v) => Value::Int(v),
            ValueView::Float(v) => Value::Float(v),
            ValueView::Str(v) => Value::Str(v.to_owned()),
            ValueView::None => return Err(DropReason::InvalidMeasurement),
        };
        let value = if key.native_time { limits.native_time.from_nanos(value) } else { value };
        // Also after the unit conversion, which can overflow a huge finite value.
        if matches!(value, Value::Float(f) if !f.is_finite()) {
            return Err(DropReason::InvalidMeasurement);
        }
        record.measurements.push((key.id, value));
    }
    for &(key, value) in &view.metadata {
        let key = match catalog.metadata_key(key) {
            Some(id) => MetaKey::Known(id),
            None => MetaKey::Other(key),
        };
        record.push_metadata(key, value);
    }
    record.timestamp_ns = view.timestamp_ns;
    record.set_correlation_id(view.correlation_id);
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_catalog;
    use crate::proto::{telemetry_value, TelemetryValue};
    use std::collections::HashMap;

    fn event(
        name: &str,
        measurements: &[(&str, telemetry_value::Value)],
        metadata: &[(&str, &str)],
    ) -> Vec<u8> {
        TelemetryEvent {
            event_parts: name.split('.').map(String::from).collect(),
            measurements: measurements
                .iter()
                .map(|(k, v)| (k.to_string(), TelemetryValue { value: Some(v.clone()) }))
                .collect::<HashMap<_, _>>(),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            timestamp_ns: 1_700_000_000_000_000_000,
            correlation_id: "abc-123".into(),
        }
        .encode_to_vec()
    }

    const LIMITS: EventLimits =
        EventLimits { native_time: NativeTime { per_second: NANOS_PER_SECOND }, max_metadata_keys: 64 };

    fn run(catalog: &Catalog, bytes: &[u8]) -> Result<EventRecord, DropReason> {
        translate(catalog, LIMITS, bytes, &mut EventNames::default(), |_| Ok(()))
    }

    #[test]
    fn a_catalog_event_becomes_a_record() {
        let catalog = test_catalog();
        let bytes = event(
            "tool.execution.stop",
            &[("duration", telemetry_value::Value::IntValue(1500))],
            &[("tool", "predict"), ("user_key", "x")],
        );
        let record = run(&catalog, &bytes).expect("accepted");
        assert_eq!(catalog.event(record.event).worker_name.as_ref(), "tool.execution.stop");
        let duration = catalog.names().get("duration").expect("interned");
        assert_eq!(record.measurements[..], [(duration, Value::Int(1500))]);
        let tool = catalog.metadata_key("tool").expect("allowlisted");
        assert_eq!(record.metadata_value(MetaKey::Known(tool)), Some("predict"));
        assert_eq!(record.metadata_value(MetaKey::Other("user_key")), Some("x"));
        assert_eq!(record.correlation_id(), "abc-123");
        assert_eq!(record.timestamp_ns, 1_700_000_000_000_000_000);
    }

    #[test]
    fn a_name_like_the_last_one_finds_its_event_and_no_other() {
        let catalog = test_catalog();
        let mut names = EventNames::default();
        let parts = |name: &str| TelemetryEvent {
            event_parts: name.split('|').map(String::from).collect(),
            ..TelemetryEvent::default()
        };
        let mut event_of = |name: &str| {
            let bytes = parts(name).encode_to_vec();
            translate(&catalog, LIMITS, &bytes, &mut names, |_| Ok(()))
                .map(|record| catalog.event(record.event).worker_name.to_string())
        };
        let stop = Ok("tool.execution.stop".to_string());
        assert_eq!(event_of("tool|execution|stop"), stop);
        assert_eq!(event_of("tool|execution|stop"), stop);
        // Joined, these read as the last name; their parts do not.
        assert_eq!(event_of("tool.execution|stop"), Err(DropReason::UnknownEvent));
        assert_eq!(event_of("tool|execution.stop"), Err(DropReason::UnknownEvent));
        assert_eq!(event_of("tool|execution||stop"), Err(DropReason::UnknownEvent));
        assert_eq!(event_of("tool|execution"), Err(DropReason::UnknownEvent));
        assert_eq!(event_of("tool|execution|start"), Ok("tool.execution.start".to_string()));
        assert_eq!(event_of("tool|execution|stop"), stop);
        // An unknown name does not replace the last one found.
        assert_eq!(event_of("nope"), Err(DropReason::UnknownEvent));
        assert_eq!(event_of("tool|execution|stop"), stop);
    }

    #[test]
    fn values_keep_their_type() {
        let catalog = test_catalog();
        let bytes =
            event("python.cpu.sampled", &[("cpu_percent", telemetry_value::Value::FloatValue(12.5))], &[]);
        let record = run(&catalog, &bytes).expect("accepted");
        assert_eq!(record.measurements[0].1, Value::Float(12.5));
        let bytes =
            event("tool.result_size", &[("bytes", telemetry_value::Value::StringValue("12kb".into()))], &[]);
        assert_eq!(run(&catalog, &bytes).expect("accepted").measurements[0].1, Value::Str("12kb".into()));
    }

    #[test]
    fn unknown_names_are_rejected() {
        let catalog = test_catalog();
        for name in ["tool.execution.nope", "pool.initialized", "", "tool..stop"] {
            assert_eq!(run(&catalog, &event(name, &[], &[])), Err(DropReason::UnknownEvent), "{name:?}");
        }
        let split_wrong = TelemetryEvent {
            event_parts: vec!["tool.execution".into(), "stop".into()],
            ..Default::default()
        };
        assert_eq!(run(&catalog, &split_wrong.encode_to_vec()), Err(DropReason::UnknownEvent));
    }

    #[test]
    fn measurement_keys_outside_the_allowlist_are_rejected() {
        let catalog = test_catalog();
        let bytes = event("tool.execution.stop", &[("evil_key", telemetry_value::Value::IntValue(1))], &[]);
        assert_eq!(run(&catalog, &bytes), Err(DropReason::InvalidMeasurement));
        let empty_value = TelemetryEvent {
            event_parts: vec!["tool".into(), "execution".into(), "stop".into()],
            measurements: [("duration".to_string(), TelemetryValue { value: None })].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(run(&catalog, &empty_value.encode_to_vec()), Err(DropReason::InvalidMeasurement));
    }

    #[test]
    fn garbage_and_invalid_utf8_are_decode_errors() {
        let catalog = test_catalog();
        assert_eq!(run(&catalog, &[0xff, 0xff, 0xff, 0x01]), Err(DropReason::DecodeError));
        // Field 1 (event_parts), length 2, bytes that are not UTF-8.
        assert_eq!(run(&catalog, &[0x0a, 0x02, 0xc3, 0x28]), Err(DropReason::DecodeError));
        // A valid event whose metadata value (field 3 map entry, value field 2) is not UTF-8.
        let mut bytes = event("tool.execution.stop", &[], &[]);
        bytes.extend_from_slice(&[0x1a, 0x07, 0x0a, 0x01, b'k', 0x12, 0x02, 0xff, 0xfe]);
        assert_eq!(run(&catalog, &bytes), Err(DropReason::DecodeError));
    }

    #[test]
    fn the_gate_sees_catalog_events_only_and_can_drop_them() {
        let catalog = test_catalog();
        let stop = event("tool.execution.stop", &[("duration", telemetry_value::Value::IntValue(1))], &[]);
        let mut seen = None;
        let gate = |index| {
            seen = Some(index);
            Err(DropReason::FilteredOut)
        };
        let result = translate(&catalog, LIMITS, &stop, &mut EventNames::default(), gate);
        assert_eq!(result, Err(DropReason::FilteredOut));
        assert_eq!(seen, catalog.event_index("tool.execution.stop"));
        // Unknown names never reach the gate.
        let unknown = event("nope", &[], &[]);
        let result = translate(&catalog, LIMITS, &unknown, &mut EventNames::default(), |_| {
            panic!("gate called for an unknown event")
        });
        assert_eq!(result, Err(DropReason::UnknownEvent));
    }

    #[test]
    fn non_finite_floats_never_pass() {
        let catalog = test_catalog();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            let bytes =
                event("python.cpu.sampled", &[("cpu_percent", telemetry_value::Value::FloatValue(bad))], &[]);
            assert_eq!(run(&catalog, &bytes), Err(DropReason::InvalidMeasurement), "{bad}");
        }
        // A finite value that the unit conversion would overflow.
        let huge =
            event("tool.execution.stop", &[("duration", telemetry_value::Value::FloatValue(f64::MAX))], &[]);
        let limits = EventLimits { native_time: NativeTime::new(10 * NANOS_PER_SECOND), ..LIMITS };
        assert_eq!(
            translate(&catalog, limits, &huge, &mut EventNames::default(), |_| Ok(())),
            Err(DropReason::InvalidMeasurement)
        );
        let fine =
            event("python.cpu.sampled", &[("cpu_percent", telemetry_value::Value::FloatValue(-0.0))], &[]);
        assert!(run(&catalog, &fine).is_ok());
    }

    #[test]
    fn metadata_keys_are_capped() {
        let catalog = test_catalog();
        let keys: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert_eq!(run(&catalog, &event("tool.execution.stop", &[], &pairs)), Err(DropReason::TooManyKeys));
        let record = run(&catalog, &event("tool.execution.stop", &[], &pairs[..64])).expect("at the limit");
        assert_eq!(record.metadata().len(), 64);
    }

    /// The decoder before `EventView`: prost's message, then the same checks on it.
    fn prost_translate(
        catalog: &Catalog,
        limits: EventLimits,
        bytes: &[u8],
        gate: impl FnOnce(EventIndex) -> Result<(), DropReason>,
    ) -> Result<EventRecord, DropReason> {
        let decoded = TelemetryEvent::decode(bytes).map_err(|_| DropReason::DecodeError)?;
        if decoded.event_parts.iter().any(|part| part.is_empty() || part.contains('.')) {
            return Err(DropReason::UnknownEvent);
        }
        let event = catalog.event_index(&decoded.event_parts.join(".")).ok_or(DropReason::UnknownEvent)?;
        gate(event)?;
        if decoded.metadata.len() > limits.max_metadata_keys {
            return Err(DropReason::TooManyKeys);
        }
        let spec = catalog.event(event);
        let mut measurements = Vec::with_capacity(decoded.measurements.len());
        for (key, value) in decoded.measurements {
            let key = catalog.measurement_key(spec, &key).ok_or(DropReason::InvalidMeasurement)?;
            let value = match value.value {
                Some(telemetry_value::Value::IntValue(v)) => Value::Int(v),
                Some(telemetry_value::Value::FloatValue(v)) => Value::Float(v),
                Some(telemetry_value::Value::StringValue(v)) => Value::Str(v),
                None => return Err(DropReason::InvalidMeasurement),
            };
            let value = if key.native_time { limits.native_time.from_nanos(value) } else { value };
            if matches!(value, Value::Float(f) if !f.is_finite()) {
                return Err(DropReason::InvalidMeasurement);
            }
            measurements.push((key.id, value));
        }
        let mut record = EventRecord::new(event, bytes.len(), 0);
        record.measurements = measurements.into();
        // In key order, as EventView leaves them.
        let mut metadata: Vec<_> = decoded.metadata.into_iter().collect();
        metadata.sort();
        for (key, value) in &metadata {
            let key = match catalog.metadata_key(key) {
                Some(id) => MetaKey::Known(id),
                None => MetaKey::Other(key),
            };
            record.push_metadata(key, value);
        }
        record.timestamp_ns = decoded.timestamp_ns;
        record.set_correlation_id(&decoded.correlation_id);
        Ok(record)
    }

    /// xorshift64: a cheap deterministic generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const WORKER_NAMES: &[&str] = &[
        "tool.execution.stop",
        "python.cpu.sampled",
        "tool.result_size",
        "myapp.model.loaded",
        "python.call.start",
    ];
    const PARTS: &[&str] = &["tool", "execution", "stop", "python", "cpu", "", "a.b", "é", "nope"];
    const MEASUREMENT_KEYS: &[&str] = &["duration", "count", "cpu_percent", "bytes", "weights", "evil", ""];
    const METADATA_KEYS: &[&str] = &["tool", "worker_id", "node", "user", "k1", "k2", "k3", "", "ключ"];
    const STRINGS: &[&str] = &["", "v", "predict", "значение", "a.b", "12kb"];

    fn random_value(rng: &mut Rng) -> Option<telemetry_value::Value> {
        const FLOATS: [f64; 8] =
            [0.5, -0.0, 12.5, 1e300, f64::MAX, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        match rng.below(8) {
            0 => None,
            1 | 2 => Some(telemetry_value::Value::IntValue(match rng.below(4) {
                0 => i64::MIN,
                1 => i64::MAX,
                2 => -(rng.below(1000) as i64),
                _ => rng.next() as i64,
            })),
            3..=5 => Some(telemetry_value::Value::FloatValue(FLOATS[rng.below(FLOATS.len())])),
            _ => Some(telemetry_value::Value::StringValue(rng.pick(STRINGS).into())),
        }
    }

    fn put_key(tag: u32, wire: u8, out: &mut Vec<u8>) {
        prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wire)), out);
    }

    fn put_len(tag: u32, body: &[u8], out: &mut Vec<u8>) {
        put_key(tag, 2, out);
        prost::encoding::encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    /// An unknown field (tag 6..), of any valid wire type, groups included.
    fn unknown_field(rng: &mut Rng, out: &mut Vec<u8>) {
        let tag = 6 + rng.below(40) as u32;
        match rng.below(5) {
            0 => {
                put_key(tag, 0, out);
                prost::encoding::encode_varint(rng.next(), out);
            }
            1 => {
                put_key(tag, 1, out);
                out.extend(rng.next().to_le_bytes());
            }
            2 => {
                put_key(tag, 5, out);
                out.extend((rng.next() as u32).to_le_bytes());
            }
            3 => put_len(tag, &rng.next().to_le_bytes()[..rng.below(9)], out),
            _ => {
                put_key(tag, 3, out);
                if rng.chance(50) {
                    unknown_field(rng, out);
                }
                put_key(tag, 4, out);
            }
        }
    }

    /// A hand-written map entry: key and value each absent, once or twice, among unknown
    /// fields; a measurement's value may come as several messages (merged).
    fn hand_entry(rng: &mut Rng, measurement: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(4) {
            match rng.below(3) {
                0 => {
                    let keys = if measurement { MEASUREMENT_KEYS } else { METADATA_KEYS };
                    put_len(1, rng.pick(keys).as_bytes(), &mut out);
                }
                1 if measurement => {
                    let value = TelemetryValue { value: random_value(rng) };
                    let mut body = value.encode_to_vec();
                    if rng.chance(20) {
                        unknown_field(rng, &mut body);
                    }
                    put_len(2, &body, &mut out);
                }
                1 => put_len(2, rng.pick(STRINGS).as_bytes(), &mut out),
                _ => unknown_field(rng, &mut out),
            }
        }
        out
    }

    fn random_message(rng: &mut Rng) -> Vec<u8> {
        let event_parts = if rng.chance(75) {
            rng.pick(WORKER_NAMES).split('.').map(String::from).collect()
        } else {
            (0..rng.below(4)).map(|_| rng.pick(PARTS).to_string()).collect()
        };
        let measurements = (0..rng.below(4))
            .map(|_| (rng.pick(MEASUREMENT_KEYS).to_string(), TelemetryValue { value: random_value(rng) }))
            .collect();
        let metadata = (0..rng.below(5))
            .map(|_| (rng.pick(METADATA_KEYS).to_string(), rng.pick(STRINGS).to_string()))
            .collect();
        let event = TelemetryEvent {
            event_parts,
            measurements,
            metadata,
            timestamp_ns: if rng.chance(50) { rng.next() as i64 } else { 0 },
            correlation_id: rng.pick(STRINGS).into(),
        };
        let mut bytes = event.encode_to_vec();
        // Fields prost never writes this way, anywhere in the message.
        for _ in 0..rng.below(4) {
            let mut extra = Vec::new();
            match rng.below(6) {
                0 => put_len(2, &hand_entry(rng, true), &mut extra),
                1 => put_len(3, &hand_entry(rng, false), &mut extra),
                2 => unknown_field(rng, &mut extra),
                3 => {
                    put_key(4, 0, &mut extra);
                    prost::encoding::encode_varint(rng.next(), &mut extra);
                }
                4 => put_len(5, rng.pick(STRINGS).as_bytes(), &mut extra),
                _ => put_len(1, rng.pick(PARTS).as_bytes(), &mut extra),
            }
            if rng.chance(50) {
                bytes.extend(extra);
            } else {
                bytes.splice(0..0, extra);
            }
        }
        // Then maybe break it.
        for _ in 0..rng.below(3) {
            if bytes.is_empty() || rng.chance(40) {
                break;
            }
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes.truncate(at),
                1 => bytes[at] ^= 1 << rng.below(8),
                2 => bytes.insert(at, rng.next() as u8),
                _ => bytes[at] = rng.next() as u8,
            }
        }
        bytes
    }

    /// A record with its maps in a fixed order (the decoders' orders differ).
    fn sorted(result: Result<EventRecord, DropReason>) -> Result<EventRecord, DropReason> {
        result.map(|mut record| {
            record.measurements.sort_by_key(|(id, _)| *id);
            record
        })
    }

    /// Drops some events, and notes which one it saw.
    fn gate(
        seen: &mut Option<EventIndex>,
        salt: usize,
    ) -> impl FnOnce(EventIndex) -> Result<(), DropReason> + '_ {
        move |index| {
            *seen = Some(index);
            if (index as usize + salt).is_multiple_of(7) {
                Err(DropReason::FilteredOut)
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn the_view_decodes_exactly_as_prost_did() {
        let catalog = test_catalog();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut outcomes = HashMap::<String, usize>::new();
        for i in 0..20_000 {
            let bytes = random_message(&mut rng);
            let limits = EventLimits {
                native_time: NativeTime::new([NANOS_PER_SECOND, 1_000_000, 10 * NANOS_PER_SECOND][i % 3]),
                max_metadata_keys: [64, 3, 2, 0][i % 4],
            };
            let (mut seen_new, mut seen_old) = (None, None);
            let new = translate(&catalog, limits, &bytes, &mut EventNames::default(), gate(&mut seen_new, i));
            let old = prost_translate(&catalog, limits, &bytes, gate(&mut seen_old, i));
            assert_eq!(seen_new, seen_old, "gate, message {i}: {bytes:02x?}");
            let new = sorted(new);
            assert_eq!(new, sorted(old), "message {i}: {bytes:02x?}");
            // The stderr path's entry, from the message prost decoded.
            if let Ok(decoded) = TelemetryEvent::decode(bytes.as_slice()) {
                let checked = check(
                    &catalog,
                    limits,
                    decoded,
                    bytes.len(),
                    &mut EventNames::default(),
                    gate(&mut None, i),
                );
                assert_eq!(sorted(checked), new, "check, message {i}: {bytes:02x?}");
            }
            let outcome = match &new {
                Ok(record) if record.metadata().len() == 0 => "ok".to_string(),
                Ok(_) => "ok with metadata".to_string(),
                Err(reason) => format!("{reason:?}"),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        for outcome in [
            "ok",
            "ok with metadata",
            "DecodeError",
            "UnknownEvent",
            "FilteredOut",
            "TooManyKeys",
            "InvalidMeasurement",
        ] {
            assert!(outcomes.get(outcome).copied().unwrap_or(0) > 200, "{outcome}: {outcomes:?}");
        }
    }

    #[test]
    fn nanoseconds_become_native_units() {
        let micro = NativeTime::new(1_000_000);
        assert_eq!(micro.from_nanos(Value::Int(1_500_000)), Value::Int(1_500));
        assert_eq!(micro.from_nanos(Value::Float(2_000.0)), Value::Float(2.0));
        assert_eq!(NativeTime::new(NANOS_PER_SECOND).from_nanos(Value::Int(7)), Value::Int(7));
        assert_eq!(NativeTime::new(u64::MAX).from_nanos(Value::Int(i64::MAX)), Value::Int(i64::MAX));

        let catalog = test_catalog();
        let bytes = event(
            "tool.execution.stop",
            &[
                ("duration", telemetry_value::Value::IntValue(3_000)),
                ("count", telemetry_value::Value::IntValue(3_000)),
            ],
            &[],
        );
        let limits = EventLimits { native_time: micro, ..LIMITS };
        let record =
            translate(&catalog, limits, &bytes, &mut EventNames::default(), |_| Ok(())).expect("accepted");
        let count = catalog.names().get("count").expect("count");
        let duration = catalog.names().get("duration").expect("duration");
        assert!(record.measurements.contains(&(duration, Value::Int(3))));
        assert!(record.measurements.contains(&(count, Value::Int(3_000))), "only time keys convert");
    }
}
