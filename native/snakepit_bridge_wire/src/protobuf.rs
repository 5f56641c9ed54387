//! Protobuf wire primitives for `TelemetryEvent` (proto/snakepit_bridge.proto): varints,
//! length-delimited fields, and the field tags of the messages it uses.

/// `TelemetryEvent.event_parts` (1), `.measurements` (2), `.metadata` (3): length-delimited.
pub const EVENT_PART: u8 = 0x0A;
pub const EVENT_MEASUREMENT: u8 = 0x12;
pub const EVENT_METADATA: u8 = 0x1A;
/// `TelemetryEvent.timestamp_ns` (4): varint.
pub const EVENT_TIMESTAMP: u8 = 0x20;
/// `TelemetryEvent.correlation_id` (5): length-delimited.
pub const EVENT_CORRELATION_ID: u8 = 0x2A;
/// A map entry's key (1) and value (2), both length-delimited here.
pub const ENTRY_KEY: u8 = 0x0A;
pub const ENTRY_VALUE: u8 = 0x12;
/// `TelemetryValue.int_value` (1, varint), `.float_value` (2, fixed64), `.string_value` (3).
pub const VALUE_INT: u8 = 0x08;
pub const VALUE_FLOAT: u8 = 0x11;
pub const VALUE_STRING: u8 = 0x1A;

pub fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Bytes `varint(value)` takes.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// A length-delimited field: tag, length, bytes.
pub fn bytes_field(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Bytes `bytes_field` takes for `len` bytes of content (one-byte tag).
pub fn bytes_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// A measurement's `TelemetryValue`, as it goes on the wire.
pub enum Value<'a> {
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Value<'_> {
    /// Bytes of the encoded `TelemetryValue` message.
    fn encoded_len(&self) -> usize {
        match self {
            // int64 is encoded as the two's complement u64: 10 bytes when negative.
            Value::Int(i) => 1 + varint_len(*i as u64),
            Value::Float(_) => 9,
            Value::Str(s) => bytes_field_len(s.len()),
        }
    }

    fn write(&self, buf: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                buf.push(VALUE_INT);
                varint(buf, *i as u64);
            }
            Value::Float(f) => {
                buf.push(VALUE_FLOAT);
                buf.extend_from_slice(&f.to_le_bytes());
            }
            Value::Str(s) => bytes_field(buf, VALUE_STRING, s.as_bytes()),
        }
    }
}

/// One `measurements` map entry: key, then the `TelemetryValue` message.
pub fn measurement_entry(buf: &mut Vec<u8>, key: &str, value: &Value<'_>) {
    let value_len = value.encoded_len();
    let entry_len = bytes_field_len(key.len()) + bytes_field_len(value_len);
    buf.push(EVENT_MEASUREMENT);
    varint(buf, entry_len as u64);
    bytes_field(buf, ENTRY_KEY, key.as_bytes());
    buf.push(ENTRY_VALUE);
    varint(buf, value_len as u64);
    value.write(buf);
}

/// One `metadata` map entry: key, value.
pub fn metadata_entry(buf: &mut Vec<u8>, key: &str, value: &str) {
    let entry_len = bytes_field_len(key.len()) + bytes_field_len(value.len());
    buf.push(EVENT_METADATA);
    varint(buf, entry_len as u64);
    bytes_field(buf, ENTRY_KEY, key.as_bytes());
    bytes_field(buf, ENTRY_VALUE, value.as_bytes());
}
