//! `pack_bytes`: the inner loop of the consumer's batch packing
//! (`TelemetryStream._pack_buffered`) for buffered entries that are already bytes, which is
//! every entry the native producer makes.
//!
//! The Python loop took about 0.4 µs per event with the GIL held (popping the entry,
//! framing it, two list appends, then `b"".join`), most of what a worker's sender spends
//! per event when it drains a backlog. Here the entries are framed into one buffer and the
//! result is a single `bytes`, which the caller appends to its parts as it did each entry.
//!
//! The rules are the caller's: field 1, length-delimited (`0x0A`, varint length, the event)
//! per entry; at most `max_events` events and `max_bytes` bytes in the batch, framing
//! included, counting the `count` events and `total` bytes already in it; the first event of
//! a batch always goes, alone if it does not fit. An entry that does not fit goes back to the
//! front of the buffer untouched, as does an entry that is not `bytes` (an event record of
//! the Python producer, which the caller serializes itself).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Field 1, wire type 2 (length-delimited): `TelemetryEventBatch.events`.
const BATCH_TAG: u8 = 0x0A;
/// Most bytes reserved for a batch before it is packed (a batch is 1 MiB by default).
const RESERVE_LIMIT: usize = 4 << 20;

/// What `pack_bytes` returns: the framed entries as one `bytes` (empty when none), the
/// batch's event count and bytes after them, the charge of the entries taken (their length,
/// as `entry_charge` counts bytes), and whether the batch is full (by count, or an entry
/// that did not fit was put back) rather than stopped at a non-`bytes` entry or an empty
/// buffer.
type Packed<'py> = (Bound<'py, PyBytes>, usize, usize, usize, bool);

/// Takes `bytes` entries from the front of `buffer` (a `collections.deque`) into a batch
/// that already holds `count` events in `total` bytes. See the module doc.
#[pyfunction]
pub fn pack_bytes<'py>(
    py: Python<'py>,
    buffer: &Bound<'py, PyAny>,
    count: usize,
    total: usize,
    max_events: usize,
    max_bytes: usize,
) -> PyResult<Packed<'py>> {
    let popleft = buffer.getattr(intern!(py, "popleft"))?;
    let mut out: Vec<u8> = Vec::new();
    let (mut count, mut total, mut charged) = (count, total, 0usize);
    let mut full = false;
    while count < max_events && buffer.len()? > 0 {
        let item = popleft.call0()?;
        let Ok(event) = item.cast::<PyBytes>() else {
            buffer.call_method1(intern!(py, "appendleft"), (&item,))?;
            break;
        };
        let bytes = event.as_bytes();
        let entry = framed_len(bytes.len());
        if count > 0 && total + entry > max_bytes {
            buffer.call_method1(intern!(py, "appendleft"), (&item,))?;
            full = true;
            break;
        }
        if out.capacity() == 0 {
            // Room for as many more entries of this size as the bounds allow, at most
            // `RESERVE_LIMIT` up front (the buffer grows past it if it must).
            let room = (max_events - count).saturating_mul(entry);
            out.reserve(room.min(max_bytes.saturating_sub(total)).max(entry).min(RESERVE_LIMIT));
        }
        frame(&mut out, bytes);
        count += 1;
        total += entry;
        charged += bytes.len();
    }
    full |= count >= max_events;
    Ok((PyBytes::new(py, &out), count, total, charged, full))
}

/// The size of an event of `len` bytes framed as a batch entry.
fn framed_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends `event` framed as a batch entry.
fn frame(out: &mut Vec<u8>, event: &[u8]) {
    out.push(BATCH_TAG);
    let mut n = event.len() as u64;
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(event);
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}
