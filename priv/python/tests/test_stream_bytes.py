"""The stream's byte bounds: max_buffer_bytes (overflow) and max_event_bytes (oversize)."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator

import pytest
from stream_client import decode, event_filter

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.policy import ControlPolicy
from snakepit_bridge.telemetry.stream import (
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    DROP_REASONS,
    NATIVE_PRODUCER,
    TelemetryStream,
    entry_charge,
)

TEN_MB = 10 * 1000 * 1000


def _buffer_sum(stream: TelemetryStream) -> int:
    return sum(entry_charge(entry) for entry in stream.buffer)


def _drain(stream: TelemetryStream) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(stream.pop())
        except IndexError:
            return messages


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the GIL switch threads as often as possible, to shake out races."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_defaults_and_read_only_bounds() -> None:
    stream = TelemetryStream()
    assert DEFAULT_MAX_BUFFER_BYTES == 4_194_304
    assert DEFAULT_MAX_EVENT_BYTES == 262_144
    assert stream.max_buffer_bytes == DEFAULT_MAX_BUFFER_BYTES
    assert stream.max_event_bytes == DEFAULT_MAX_EVENT_BYTES
    assert stream.buffered_bytes == 0
    assert "oversize" in DROP_REASONS
    with pytest.raises(AttributeError):
        stream.max_buffer_bytes = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        stream.max_event_bytes = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", ["max_buffer", "max_buffer_bytes", "max_event_bytes"])
@pytest.mark.parametrize("value", [0, -1, 1.5, None])
def test_bounds_must_be_positive_integers(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        TelemetryStream(**{name: value})  # type: ignore[arg-type]


def test_event_bound_never_exceeds_buffer_bound() -> None:
    stream = TelemetryStream(max_buffer_bytes=1000, max_event_bytes=5000)
    assert stream.max_event_bytes == 1000
    stream.emit("big", {}, {"blob": "x" * 2000})
    assert stream.dropped_counts()["oversize"] == 1


def test_forty_ten_megabyte_events_are_oversize_and_never_buffered() -> None:
    stream = TelemetryStream()
    blob = "x" * TEN_MB
    for index in range(40):
        stream.emit("tool.result_size", {"bytes": TEN_MB}, {"blob": blob, "n": index})
        stream.emit("tool.execution.stop", {"n": index})  # small ones still get through
        assert stream.buffered_bytes <= stream.max_buffer_bytes
        assert stream.buffered_bytes == _buffer_sum(stream)
    stats = stream.stats()
    assert stats.dropped["oversize"] == 40
    assert stats.dropped["overflow"] == 0
    assert stats.buffered == 40
    assert stats.buffered_bytes == _buffer_sum(stream) < 40 * 100
    # The raw path obeys the same bound.
    assert not stream.enqueue_raw(b"\x00" * TEN_MB)
    assert stream.dropped_counts()["oversize"] == 41


def test_an_event_of_exactly_max_event_bytes_is_accepted() -> None:
    def size(pad: int) -> int:
        probe = TelemetryStream()
        probe.emit("a", {}, {"k": "v" * pad})
        return probe.buffered_bytes

    pad = next(pad for pad in range(300) if size(pad) == 200)
    stream = TelemetryStream(max_event_bytes=200)
    stream.emit("a", {}, {"k": "v" * (pad + 1)})
    assert stream.dropped_counts()["oversize"] == 1
    assert stream.buffered_bytes == 0
    stream.emit("a", {}, {"k": "v" * pad})
    assert stream.buffered_bytes == 200
    assert stream.dropped_counts()["oversize"] == 1


def test_a_name_longer_than_the_event_bound_is_dropped_before_patterns_run() -> None:
    stream = TelemetryStream(max_event_bytes=1000)
    stream.apply_control(event_filter(deny=("nothing.*",)))
    stream.emit("n" * 1001, {})
    assert stream.dropped_counts()["oversize"] == 1
    assert stream.policy.decisions == {}  # never decided, never cached


def test_medium_events_overflow_by_bytes() -> None:
    stream = TelemetryStream()
    blob = "m" * 100_000  # about 100 kB serialized: under max_event_bytes
    for _ in range(100):
        stream.emit("tool.result_size", {"bytes": 100_000}, {"blob": blob})
        assert stream.buffered_bytes <= DEFAULT_MAX_BUFFER_BYTES
    stats = stream.stats()
    size = entry_charge(stream.buffer[0])  # names, keys and values, plus framing
    assert 100_000 < size < 100_100
    assert stats.buffered == DEFAULT_MAX_BUFFER_BYTES // size  # 41
    assert stats.buffered < stream.max_buffer  # the count bound is not what stopped them
    assert stats.dropped["overflow"] == 100 - stats.buffered
    assert stats.dropped["oversize"] == 0
    assert stats.buffered_bytes == _buffer_sum(stream) == stats.buffered * size
    # Taking one out makes room for exactly one more.
    stream.pop()
    stream.emit("tool.result_size", {"bytes": 100_000}, {"blob": blob})
    stream.emit("tool.result_size", {"bytes": 100_000}, {"blob": blob})
    assert stream.stats().buffered == stats.buffered
    assert stream.stats().dropped["overflow"] == stats.dropped["overflow"] + 1


def test_a_small_event_still_fits_when_a_medium_one_does_not() -> None:
    stream = TelemetryStream(max_buffer_bytes=1000)
    stream.emit("a", {}, {"k": "x" * 900})
    stream.emit("b", {}, {"k": "x" * 200})  # would pass 1000 bytes
    stream.emit("c", {})
    assert [".".join(decode(m).event_parts) for m in stream.buffer] == ["a", "c"]
    assert stream.dropped_counts()["overflow"] == 1


def test_raw_bytes_obey_both_byte_bounds() -> None:
    stream = TelemetryStream(max_buffer_bytes=10, max_event_bytes=6)
    assert not stream.enqueue_raw(b"1234567")
    assert stream.dropped_counts()["oversize"] == 1
    assert stream.enqueue_raw(b"123456")
    assert stream.enqueue_raw(b"1234")
    assert not stream.enqueue_raw(b"1")
    assert stream.dropped_counts()["overflow"] == 1
    assert stream.buffered_bytes == 10
    assert _drain(stream) == [b"123456", b"1234"]
    assert stream.buffered_bytes == 0


def test_the_consumer_gives_bytes_back() -> None:
    stream = TelemetryStream()
    for index in range(5):
        stream.emit(f"e.{index}", {"n": index})
    total = stream.buffered_bytes
    assert total == _buffer_sum(stream) > 0
    first_charge = entry_charge(stream.buffer[0])
    consumer = stream.attach()
    events = consumer.events()
    first = next(events)
    assert isinstance(first, bytes)
    assert stream.buffered_bytes == total - first_charge
    stream.close()
    rest = list(events)
    assert len(rest) == 4
    assert stream.buffered_bytes == 0
    assert stream.stats().sent == 5


def test_api_emit_of_a_huge_event_is_dropped_and_counted() -> None:
    stream = TelemetryStream()
    telemetry.set_backend(telemetry.GrpcBackend(stream))
    telemetry.emit("tool.result_size", {"bytes": 1}, {"blob": "y" * TEN_MB})
    assert telemetry.dropped_counts()["oversize"] == 1
    assert stream.buffered_bytes == 0


def test_byte_accounting_is_exact_with_threads_emitting_while_the_consumer_pops(
    fast_switching: None,
) -> None:
    bound = 20_000
    stream = TelemetryStream(max_buffer=100_000, max_buffer_bytes=bound, max_event_bytes=2_000)
    producers, per_producer = 4, 5_000
    done = threading.Event()
    seen_over_bound: list[int] = []
    popped_bytes: list[int] = []

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        for index in range(per_producer):
            # Mostly small, some medium, some oversize (> 2000 bytes serialized).
            size = rng.choice((0, 10, 100, 500, 1_500, 2_500))
            stream.emit("load.event", {"n": index}, {"pad": "p" * size})

    def consume() -> None:
        total = 0
        while not done.is_set() or stream.buffer:
            try:
                message = stream.pop()
            except IndexError:
                continue
            total += len(message)
            if stream.buffered_bytes > bound:
                seen_over_bound.append(stream.buffered_bytes)
        popped_bytes.append(total)

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(seed,)) for seed in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    consumer.join(60)
    assert not consumer.is_alive()

    stats = stream.stats()
    dropped = stats.dropped
    assert stats.emitted == producers * per_producer
    assert stats.enqueued + dropped["overflow"] + dropped["oversize"] == producers * per_producer
    assert dropped["oversize"] > 0
    assert dropped["overflow"] >= 0
    assert stats.buffered == 0
    assert stats.buffered_bytes == 0  # no drift
    assert seen_over_bound == []
    assert popped_bytes[0] > 0


def test_byte_accounting_is_exact_with_a_grpc_like_consumer(fast_switching: None) -> None:
    """The real consumer (StreamConsumer.events) with several emitting threads."""
    stream = TelemetryStream(max_buffer=50, max_buffer_bytes=5_000)
    consumer = stream.attach()
    received: list[bytes] = []

    def consume() -> None:
        for message in consumer.events():
            assert isinstance(message, bytes)
            received.append(message)

    reader = threading.Thread(target=consume)
    reader.start()

    def produce() -> None:
        for index in range(3_000):
            stream.emit("load.event", {"n": index}, {"pad": "p" * (index % 300)})

    threads = [threading.Thread(target=produce) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stream.close()
    reader.join(60)
    assert not reader.is_alive()
    stats = stream.stats()
    events = [pb.TelemetryEvent.FromString(message) for message in received]
    reports = [e for e in events if list(e.event_parts) == ["telemetry", "dropped"]]
    assert stats.sent == len(received)
    assert stats.enqueued == len(events) - len(reports)
    assert stats.enqueued + stats.dropped["overflow"] == 9_000
    assert stats.buffered_bytes == 0
    # Every drop was reported on the stream (the last report goes out on close).
    reported = sum(e.measurements["count"].int_value for e in reports)
    assert reported == stats.dropped["overflow"] > 0
    assert {e.metadata["reason"] for e in reports} == {"overflow"}


def test_attach_resets_the_policy_but_keeps_bytes_consistent() -> None:
    stream = TelemetryStream()
    stream.emit("a", {})
    stream.attach()
    assert stream.policy == ControlPolicy()
    assert stream.buffered_bytes == _buffer_sum(stream) > 0


def test_emit_snapshots_the_callers_dicts() -> None:
    stream = TelemetryStream()
    measurements: dict[str, object] = {"n": 1}
    metadata: dict[str, object] = {"tool": "a", "attempt": 1}
    stream.emit("tool.execution.stop", measurements, metadata)
    measurements["n"] = 2
    metadata["tool"] = "changed"
    metadata["attempt"] = 99
    event = decode(stream.pop())
    assert event.measurements["n"].int_value == 1
    assert dict(event.metadata) == {"tool": "a", "attempt": "1"}


def test_an_event_that_does_not_fit_a_batch_goes_back_in_order_and_bytes_stay_exact() -> None:
    stream = TelemetryStream()
    for index in range(3):
        stream.emit(f"e.{index}", {"n": index}, {"blob": "x" * 100_000})
    assert stream.buffered_bytes == _buffer_sum(stream) > 300_000
    names = []
    while stream.buffer:
        batch, count = stream.pop_batch(10, 150_000)
        assert count == 1  # a second 100 kB event does not fit
        parsed = pb.TelemetryEventBatch.FromString(batch)
        names.extend(".".join(event.event_parts) for event in parsed.events)
        assert stream.buffered_bytes == _buffer_sum(stream)
    assert names == ["e.0", "e.1", "e.2"]
    assert stream.buffered_bytes == 0
    # pop_batch counts what it hands over, under the lock handover() reads it with.
    assert (stream.stats().sent, stream.stats().sent_batches) == (3, 3)


def test_an_event_found_oversize_when_serialized_is_dropped_and_counted() -> None:
    # The Python producer does not charge a str measurement by its length at emit (numbers
    # are the norm), so the consumer finds it oversize when it serializes it; the native
    # producer serializes at emit and drops it there.
    stream = TelemetryStream()
    stream.emit("a.b", {"text": "y" * (DEFAULT_MAX_EVENT_BYTES + 10)})
    stream.emit("a.c", {"n": 1})
    assert len(stream.buffer) == (1 if NATIVE_PRODUCER else 2)
    batch, count = stream.pop_batch(10, 1_000_000)
    assert count == 1
    assert [".".join(e.event_parts) for e in pb.TelemetryEventBatch.FromString(batch).events] == [
        "a.c"
    ]
    stats = stream.stats()
    assert stats.dropped["oversize"] == 1
    assert (stats.emitted, stats.enqueued, stats.buffered_bytes) == (2, 1, 0)
