"""``_wire.pack_bytes`` (the native inner loop of batch packing) against the Python loop.

``TelemetryStream._pack_buffered`` frames runs of buffered bytes with ``_wire.pack_bytes``
when the native producer is in use. Both must make the same batch from the same buffer and
bounds: the same bytes, count, byte total and charge, the same entries left in the buffer
in the same order, and the same answer to "is the batch full". Buffers and bounds are
generated at random (seeded), with the sizes where a varint length changes width, empty
events, events larger than the byte bound, and records (non-bytes entries) mixed in.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

from snakepit_bridge.telemetry import stream as stream_module
from snakepit_bridge.telemetry.stream import TelemetryStream, _entry_prefix

_wire = pytest.importorskip("snakepit_bridge.telemetry._wire")
pack_bytes = getattr(_wire, "pack_bytes", None)
pytestmark = pytest.mark.skipif(pack_bytes is None, reason="_wire built without pack_bytes")

EDGE_SIZES = (0, 1, 126, 127, 128, 129, 16_382, 16_383, 16_384, 16_385, 70_000)


def reference(
    buffer: deque[object], count: int, total: int, max_events: int, max_bytes: int
) -> tuple[bytes, int, int, int, bool]:
    """The rules of ``_pack_buffered`` for bytes entries, written out in Python."""
    parts: list[bytes] = []
    charged = 0
    full = False
    while count < max_events and buffer:
        item = buffer[0]
        if not isinstance(item, bytes):
            break
        prefix = _entry_prefix(len(item))
        entry = len(prefix) + len(item)
        if count and total + entry > max_bytes:
            full = True
            break
        buffer.popleft()
        parts += (prefix, item)
        total += entry
        count += 1
        charged += len(item)
    full = full or count >= max_events
    return b"".join(parts), count, total, charged, full


def random_entry(rng: random.Random, index: int) -> object:
    if rng.random() < 0.05:
        return ("record", index)  # stands for an event record of the Python producer
    size = rng.choice(EDGE_SIZES) if rng.random() < 0.3 else rng.randrange(0, 400)
    return bytes([index % 251]) * size


@pytest.mark.parametrize("seed", range(40))
def test_native_packing_matches_the_python_rules(seed: int) -> None:
    rng = random.Random(seed)
    entries = [random_entry(rng, i) for i in range(rng.randrange(0, 300))]
    count = rng.choice((0, 0, 1, 5))
    total = 0 if count == 0 else rng.randrange(0, 2_000)
    max_events = rng.choice((1, 2, 7, 100, 8192))
    max_bytes = rng.choice((1, 50, 130, 1_000, 16_390, 100_000, 1 << 20))
    native_buffer: deque[object] = deque(entries)
    python_buffer: deque[object] = deque(entries)
    got = pack_bytes(native_buffer, count, total, max_events, max_bytes)
    want = reference(python_buffer, count, total, max_events, max_bytes)
    assert got == want
    assert list(native_buffer) == list(python_buffer)
    # The entries left are the very objects that were buffered, in order.
    left = entries[len(entries) - len(native_buffer) :]
    assert all(a is b for a, b in zip(native_buffer, left, strict=True))


def test_the_first_event_goes_alone_when_it_does_not_fit() -> None:
    big = b"x" * 500
    buffer: deque[object] = deque([big, b"y"])
    packed, count, total, charged, full = pack_bytes(buffer, 0, 0, 10, 100)
    assert (count, total, charged, full) == (1, 503, 500, True)
    assert packed == _entry_prefix(500) + big
    assert list(buffer) == [b"y"]


def test_an_empty_buffer_and_a_record_in_front_take_nothing() -> None:
    assert pack_bytes(deque(), 0, 0, 10, 100) == (b"", 0, 0, 0, False)
    record = ("record",)
    buffer: deque[object] = deque([record, b"a"])
    assert pack_bytes(buffer, 3, 40, 10, 100) == (b"", 3, 40, 0, False)
    assert list(buffer) == [record, b"a"]


def test_a_non_deque_buffer_raises_rather_than_losing_entries() -> None:
    with pytest.raises(AttributeError):
        pack_bytes([b"a"], 0, 0, 10, 100)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(10))
def test_pop_batch_is_the_same_with_and_without_the_native_loop(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = random.Random(seed).choices((0, 10, 127, 128, 300, 20_000), k=500)
    payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    batches: dict[bool, list[tuple[bytes, int]]] = {}
    for native in (True, False):
        monkeypatch.setattr(stream_module, "_PACK_BYTES", pack_bytes if native else None)
        stream = TelemetryStream(max_buffer=1000, max_buffer_bytes=1 << 30)
        for payload in payloads:
            assert stream.enqueue_raw(payload)
        bounds = random.Random(seed)  # the same batch bounds for both
        out = []
        while stream.buffer:
            out.append(stream.pop_batch(bounds.choice((3, 64, 8192)), 40_000))
        assert stream.buffered_bytes == 0
        assert stream.stats().sent == 500
        batches[native] = out
    assert batches[True] == batches[False]
    assert sum(count for _, count in batches[True]) == 500
