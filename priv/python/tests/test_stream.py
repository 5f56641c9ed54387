from __future__ import annotations

import threading
import time

import pytest
from stream_client import decode, wait_until

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.counters import Counter
from snakepit_bridge.telemetry.stream import (
    DROP_REASONS,
    OutgoingMessage,
    TelemetryStream,
    entry_charge,
)


def _names(messages: list[OutgoingMessage]) -> list[str]:
    return [".".join(decode(message).event_parts) for message in messages]


def _drain_in_thread(
    stream: TelemetryStream, count: int
) -> tuple[threading.Thread, list[OutgoingMessage]]:
    received: list[OutgoingMessage] = []
    consumer = stream.attach()

    def run() -> None:
        for message in consumer.events():
            received.append(message)
            if len(received) == count:
                consumer.detach()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, received


def test_counter_is_exact_under_threads() -> None:
    counter = Counter()
    threads = [
        threading.Thread(target=lambda: [counter.increment() for _ in range(20_000)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value == 80_000


def test_max_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        TelemetryStream(max_buffer=0)


def test_full_buffer_drops_new_events_and_counts() -> None:
    stream = TelemetryStream(max_buffer=3)
    for index in range(5):
        stream.emit(f"e.{index}", {"n": index})
    assert _names(list(stream.buffer)) == ["e.0", "e.1", "e.2"]  # the oldest are kept
    assert stream.dropped_count == 2
    stats = stream.stats()
    assert stats.dropped["overflow"] == 2
    assert stats.enqueued == 3
    assert stats.buffered == 3
    assert stats.emitted == 5
    assert set(stats.dropped) == set(DROP_REASONS)


def test_emit_never_blocks_when_full_from_many_threads() -> None:
    stream = TelemetryStream(max_buffer=10)
    per_thread = 5_000

    def flood() -> None:
        for _ in range(per_thread):
            stream.emit("flood.event", {"n": 1}, {"k": "v"})

    threads = [threading.Thread(target=flood) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.monotonic() - started
    assert not any(thread.is_alive() for thread in threads)
    assert elapsed < 5.0
    stats = stream.stats()
    assert stats.emitted == 4 * per_thread  # every emit is accounted for, exactly
    # Admission checks the bound and appends under one lock: never over the bound.
    assert stats.buffered == 10
    assert stats.dropped["overflow"] == 4 * per_thread - stats.buffered


def test_events_before_attach_stay_buffered_and_are_delivered() -> None:
    stream = TelemetryStream()
    for index in range(3):
        stream.emit(f"early.{index}", {})
    thread, received = _drain_in_thread(stream, 5)
    stream.emit("late.3", {})
    stream.emit("late.4", {})
    thread.join(5)
    assert _names(received) == ["early.0", "early.1", "early.2", "late.3", "late.4"]
    assert stream.stats().sent == 5


def test_idle_consumer_is_woken_by_emit_from_another_thread() -> None:
    stream = TelemetryStream()
    thread, received = _drain_in_thread(stream, 1)
    consumer = stream.current_consumer
    assert consumer is not None
    wait_until(lambda: consumer.waiting)  # asleep on the empty buffer
    started = time.monotonic()
    threading.Thread(target=stream.emit, args=("wake.up", {})).start()
    thread.join(5)
    assert _names(received) == ["wake.up"]
    assert time.monotonic() - started < 0.5  # woken, not found by the 1 s safety poll


def test_new_consumer_replaces_old_one() -> None:
    stream = TelemetryStream()
    first = stream.attach()
    first_events = first.events()
    stream.emit("one", {})
    assert _names([next(first_events)]) == ["one"]
    second = stream.attach()
    assert not first.is_current
    assert second.is_current
    stream.emit("two", {})
    assert list(first_events) == []  # the old iterator ends
    assert _names([next(second.events())]) == ["two"]


def test_detached_consumer_leaves_events_for_the_next_one() -> None:
    stream = TelemetryStream()
    consumer = stream.attach()
    consumer.detach()
    assert stream.current_consumer is None
    stream.emit("kept", {})
    assert list(consumer.events()) == []
    assert _names([next(stream.attach().events())]) == ["kept"]


def test_close_drains_then_ends_and_drops_later_events() -> None:
    stream = TelemetryStream()
    stream.emit("a", {})
    stream.emit("b", {})
    consumer = stream.attach()
    stream.close()
    assert _names(list(consumer.events())) == ["a", "b"]
    stream.emit("after.close", {})
    assert stream.dropped_counts()["closed"] == 1
    assert not stream.is_enabled()
    assert not stream.enqueue_raw(b"\x00")


def test_close_wakes_an_idle_consumer() -> None:
    stream = TelemetryStream()
    consumer = stream.attach()
    done = threading.Event()

    def run() -> None:
        for _ in consumer.events():
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    wait_until(lambda: consumer.waiting)
    stream.close()
    assert done.wait(0.5)


def test_raw_bytes_bypass_policy_and_respect_the_bound() -> None:
    stream = TelemetryStream(max_buffer=2)
    stream.apply_control(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False)))
    assert stream.enqueue_raw(b"\xff\x00")
    assert stream.enqueue_raw(bytearray(b"\x01"))  # type: ignore[arg-type]
    assert not stream.enqueue_raw(b"\x02")
    assert list(stream.buffer) == [b"\xff\x00", b"\x01"]
    assert stream.dropped_counts()["overflow"] == 1


def test_stats_to_dict_is_json_ready() -> None:
    stream = TelemetryStream(max_buffer=1)
    stream.emit("a", {})
    stream.emit("b", {})
    assert stream.stats().to_dict() == {
        "emitted": 2,
        "enqueued": 1,
        "buffered": 1,
        "buffered_bytes": entry_charge(stream.buffer[0]),
        "sent": 0,
        "sent_batches": 0,
        "sent_reports": 0,
        "dropped_total": 1,
        "dropped": {
            "disabled": 0,
            "sampled_out": 0,
            "filtered_out": 0,
            "overflow": 1,
            "oversize": 0,
            "encode_error": 0,
            "closed": 0,
        },
        "controls_rejected": 0,
    }


def test_stats_snapshot_never_shows_a_batch_half_taken() -> None:
    # A snapshot taken while a consumer packs a batch must not show its events gone from
    # the buffer but not yet sent: a caller that waits for an empty buffer and then reads
    # `sent` (as a drain does) would read a count that is still to grow.
    stream = TelemetryStream(max_buffer=300_000, max_buffer_bytes=1 << 30)
    for index in range(200_000):
        stream.emit("tool.execution.stop", {"duration": index}, {"tool": "t" * 40})
    enqueued = stream.stats().enqueued
    assert enqueued == 200_000
    done = threading.Event()
    torn: list[tuple[int, int]] = []

    def watch() -> None:
        while not done.is_set():
            stats = stream.stats()
            if stats.buffered + stats.sent != enqueued:
                torn.append((stats.buffered, stats.sent))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    consumer = stream.attach()
    while stream.buffer:
        stream.pop_batch(2_000, 1 << 22, consumer=consumer)
    done.set()
    watcher.join()
    assert stream.stats().sent == enqueued
    assert torn == []
