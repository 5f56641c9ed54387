//! A `TelemetryEventBatch` message (the `StreamTelemetryBatched` RPC) split into its events
//! without decoding them: each `events` entry (field 1, length-delimited) is handed on as its
//! own bytes, a zero-copy slice of the message, and checked like a `StreamTelemetry` message.
//! Other fields are skipped; a message that is not well-formed protobuf is an error as a
//! whole (its events cannot be told apart).

use bytes::Bytes;

const EVENTS_FIELD: u64 = 1;

/// The message is not well-formed protobuf.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// The events of one batch message, in order.
pub fn events(message: &Bytes) -> Result<Vec<Bytes>, Malformed> {
    let mut events = Vec::new();
    scan(message, |at, end| events.push(message.slice(at..end)))?;
    Ok(events)
}

/// The events of one batch message, in order, borrowed from it: no reference count is
/// touched per event (the message outlives them where they are checked).
pub fn event_slices(message: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let mut events = Vec::new();
    scan(message, |at, end| events.push(&message[at..end]))?;
    Ok(events)
}

/// Calls `event` with the range of each event, in order; all of the message is checked.
fn scan(message: &[u8], mut event: impl FnMut(usize, usize)) -> Result<(), Malformed> {
    let mut at = 0;
    while at < message.len() {
        let tag = varint(message, &mut at)?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        match wire_type {
            0 => {
                varint(message, &mut at)?;
            }
            1 => at = skip(message, at, 8)?,
            2 => {
                let len = usize::try_from(varint(message, &mut at)?).map_err(|_| Malformed)?;
                let end = skip(message, at, len)?;
                if field == EVENTS_FIELD {
                    event(at, end);
                }
                at = end;
            }
            5 => at = skip(message, at, 4)?,
            _ => return Err(Malformed),
        }
    }
    Ok(())
}

fn skip(message: &[u8], at: usize, len: usize) -> Result<usize, Malformed> {
    let end = at.checked_add(len).ok_or(Malformed)?;
    if end > message.len() {
        return Err(Malformed);
    }
    Ok(end)
}

fn varint(message: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *message.get(*at).ok_or(Malformed)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TelemetryEvent, TelemetryEventBatch};
    use prost::Message;

    fn event(name: &str) -> TelemetryEvent {
        TelemetryEvent { event_parts: name.split('.').map(String::from).collect(), ..Default::default() }
    }

    #[test]
    fn splits_a_batch_into_its_events_in_order() {
        let batch = TelemetryEventBatch { events: vec![event("a.b"), event("c.d"), event("e.f")] };
        let bytes = Bytes::from(batch.encode_to_vec());
        let split = events(&bytes).expect("well-formed");
        let names: Vec<_> = split
            .iter()
            .map(|b| TelemetryEvent::decode(b.as_ref()).expect("an event").event_parts.join("."))
            .collect();
        assert_eq!(names, ["a.b", "c.d", "e.f"]);
    }

    #[test]
    fn concatenated_serialized_events_are_a_batch() {
        let mut bytes = Vec::new();
        for name in ["x.y", "z.w"] {
            let encoded = event(name).encode_to_vec();
            bytes.push(0x0a);
            prost::encoding::encode_varint(encoded.len() as u64, &mut bytes);
            bytes.extend_from_slice(&encoded);
        }
        assert_eq!(events(&Bytes::from(bytes)).map(|e| e.len()), Ok(2));
    }

    #[test]
    fn empty_unknown_fields_and_malformed_input() {
        assert_eq!(events(&Bytes::new()), Ok(vec![]));
        // field 2 varint, field 3 fixed32, then one event.
        let mut bytes = vec![0x10, 0x96, 0x01, 0x1d, 1, 2, 3, 4];
        bytes.extend_from_slice(&[0x0a, 0x02, 0x0a, 0x00]);
        assert_eq!(events(&Bytes::from(bytes)).map(|e| e.len()), Ok(1));
        for bad in [
            vec![0x0a],                                                                   // length missing
            vec![0x0a, 0x05, 1, 2], // length past the end
            vec![0x0b],             // wire type 3 (groups): not accepted
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // varint too long
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // 4 GiB length
        ] {
            assert_eq!(events(&Bytes::from(bad.clone())), Err(Malformed), "{bad:?}");
        }
    }
}
