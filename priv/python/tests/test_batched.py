"""StreamTelemetryBatched: many events per message, same behaviour as StreamTelemetry."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import ServedStream
from stream_client import StreamClient, event_filter, sampling, toggle, wait_until

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import (
    CAPABILITIES_HEADER,
    CAPABILITY_BATCHED,
    CAPABILITY_RESTATED_DROPS,
    CAPABILITY_SAMPLING_PATTERNS,
    BridgeServer,
    TelemetryService,
    client_max_message_bytes,
)
from snakepit_bridge.telemetry.counters import Counter
from snakepit_bridge.telemetry.encoding import encode_event
from snakepit_bridge.telemetry.stream import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MIN_BATCH_INTERVAL,
    TelemetryStream,
    batch_entry_size,
)

Serve = Callable[..., ServedStream]
Connect = Callable[[int], StreamClient]

TOKEN = "tok-batched-7c1e0a9d-secret"


def _name(event: pb.TelemetryEvent) -> str:
    return ".".join(event.event_parts)


def _names(batch: pb.TelemetryEventBatch) -> list[str]:
    return [_name(event) for event in batch.events]


def _reports(events: list[pb.TelemetryEvent]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for event in events:
        if _name(event) == "telemetry.dropped":
            reason = event.metadata["reason"]
            totals[reason] = totals.get(reason, 0) + event.measurements["count"].int_value
    return totals


def _serialized(name: str, pad: int = 0) -> bytes:
    metadata = {"pad": "z" * pad} if pad else {}
    return encode_event(name, {"n": 1}, metadata, None, 1).SerializeToString()


# -- the batch format, without gRPC -------------------------------------------------------


@pytest.mark.parametrize("pad", [0, 100, 200, 16_300, 16_400, 300_000])
def test_a_batch_is_the_events_framed_as_field_1(pad: int) -> None:
    # Pads cover one-, two- and three-byte varint lengths.
    stream = TelemetryStream(max_buffer_bytes=1 << 22, max_event_bytes=1 << 21)
    messages = [_serialized("a.first"), _serialized("b.padded", pad), _serialized("c.last")]
    for message in messages:
        assert stream.enqueue_raw(message)
    batch, count = stream.pop_batch(10, 1 << 22)
    assert count == 3
    expected = pb.TelemetryEventBatch(events=[pb.TelemetryEvent.FromString(m) for m in messages])
    assert batch == expected.SerializeToString()
    assert len(batch) == sum(batch_entry_size(len(m)) for m in messages)
    assert stream.buffered_bytes == 0
    assert stream.pop_batch(10, 1 << 22) == (b"", 0)


def test_pop_batch_respects_both_bounds_and_sends_an_oversized_event_alone() -> None:
    stream = TelemetryStream()
    small = _serialized("s", 50)
    huge = _serialized("h", 5_000)
    for message in [small] * 5 + [huge] + [small] * 3:
        stream.enqueue_raw(message)
    entry = batch_entry_size(len(small))
    # Bytes: room for exactly two small events.
    batch, count = stream.pop_batch(100, 2 * entry + entry - 1)
    assert count == 2
    assert len(batch) == 2 * entry
    # Count: three, though the bytes would allow more.
    batch, count = stream.pop_batch(3, 1 << 20)
    assert count == 3
    # The huge event does not fit the byte bound: it goes alone, next.
    batch, count = stream.pop_batch(100, 1_000)
    assert count == 1
    assert len(batch) == batch_entry_size(len(huge)) > 1_000
    batch, count = stream.pop_batch(100, 1_000)
    assert count == 3
    assert stream.stats().buffered == 0
    assert stream.buffered_bytes == 0


def test_reports_go_first_within_the_bounds_and_the_rest_waits() -> None:
    stream = TelemetryStream()
    stream.enqueue_raw(_serialized("buffered"))
    reports = [_serialized(f"report.{i}") for i in range(3)]
    batch, count = stream.pop_batch(2, 1 << 20, reports)
    assert count == 2
    assert _names(pb.TelemetryEventBatch.FromString(batch)) == ["report.0", "report.1"]
    assert len(reports) == 1
    batch, count = stream.pop_batch(2, 1 << 20, reports)
    assert _names(pb.TelemetryEventBatch.FromString(batch)) == ["report.2", "buffered"]
    assert reports == []


def test_batch_bounds_are_checked() -> None:
    stream = TelemetryStream()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_batch_events"):
            TelemetryService(stream, max_batch_events=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_batch_bytes"):
            BridgeServer(stream, max_batch_bytes=bad, token=None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_batch_events"):
            stream.attach().batches(max_events=bad)  # type: ignore[arg-type]
    service = TelemetryService(stream)
    assert (service.max_batch_events, service.max_batch_bytes) == (
        DEFAULT_MAX_BATCH_EVENTS,
        DEFAULT_MAX_BATCH_BYTES,
    )


def test_batch_interval_is_checked() -> None:
    stream = TelemetryStream()
    for bad in (-0.001, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match="min_batch_interval"):
            stream.attach().batches(min_interval=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="min_batch_interval"):
            TelemetryService(stream, min_batch_interval=bad)  # type: ignore[arg-type]
    assert DEFAULT_MIN_BATCH_INTERVAL == 0.2


def _emit_later(stream: TelemetryStream, delay: float, names: list[str]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        for name in names:
            stream.emit(name, {})

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _next_timed(batches: Iterator[bytes]) -> tuple[list[str], float]:
    started = time.monotonic()
    batch = pb.TelemetryEventBatch.FromString(next(batches))
    return _names(batch), time.monotonic() - started


def test_pacing_first_event_goes_at_once_the_next_waits_the_interval() -> None:
    stream = TelemetryStream()
    batches = stream.attach().batches(max_events=100, min_interval=0.3)
    stream.emit("first", {})
    names, _ = _next_timed(batches)
    assert names == ["first"]
    sent = time.monotonic()
    stream.emit("second", {})
    later = _emit_later(stream, 0.1, ["third", "fourth"])
    names, _ = _next_timed(batches)
    later.join()
    # Not before the interval since the previous batch; everything emitted meanwhile in one.
    assert time.monotonic() - sent >= 0.29
    assert names == ["second", "third", "fourth"]
    assert stream.stats().sent_batches == 2


def test_pacing_half_the_buffer_ends_the_wait_before_it_fills() -> None:
    # A batch bound as large as the buffer's (the defaults: 8192 both) must not leave the
    # wait to end only when the buffer is full, which dropped events while the consumer
    # woke up: half the buffer ends it.
    stream = TelemetryStream(max_buffer=8)
    batches = stream.attach().batches(max_events=8, min_interval=30.0)
    stream.emit("first", {})
    assert _next_timed(batches)[0] == ["first"]
    later = _emit_later(stream, 0.1, ["a", "b", "c", "d"])
    names, waited = _next_timed(batches)
    later.join()
    assert names[:4] == ["a", "b", "c", "d"]
    assert waited < 10.0
    assert stream.stats().dropped_total == 0


def test_pacing_half_the_byte_bound_ends_the_wait() -> None:
    stream = TelemetryStream(max_buffer_bytes=4000)
    batches = stream.attach().batches(max_events=1000, min_interval=30.0)
    stream.emit("first", {})
    assert _next_timed(batches)[0] == ["first"]
    pad = {"tool": "z" * 900}

    def emit_three() -> None:
        for _ in range(3):
            stream.emit("big", {}, pad)

    later = threading.Timer(0.1, emit_three)
    later.start()
    names, waited = _next_timed(batches)
    later.join()
    # 3 events of about 900 bytes pass 2000 bytes, half the bound, long before 30 s.
    assert names[:3] == ["big", "big", "big"]
    assert waited < 10.0
    assert stream.stats().dropped_total == 0


def test_pacing_a_full_batch_or_close_ends_the_wait() -> None:
    stream = TelemetryStream()
    batches = stream.attach().batches(max_events=4, min_interval=30.0)
    stream.emit("first", {})
    assert _next_timed(batches)[0] == ["first"]
    stream.emit("a", {})
    # A full batch (4 events) wakes the lingering consumer long before the 30 s interval.
    later = _emit_later(stream, 0.1, ["b", "c", "d"])
    names, waited = _next_timed(batches)
    later.join()
    assert names == ["a", "b", "c", "d"]
    assert waited < 10.0
    stream.emit("e", {})
    closer = threading.Timer(0.1, stream.close)
    closer.start()
    names, waited = _next_timed(batches)
    closer.join()
    assert names == ["e"]
    assert waited < 10.0
    assert list(batches) == []


def test_pacing_a_batch_full_by_bytes_ends_the_wait() -> None:
    stream = TelemetryStream()
    big = 1_000
    batches = stream.attach().batches(max_events=100, max_bytes=3 * big, min_interval=30.0)
    stream.emit("first", {})
    assert _next_timed(batches)[0] == ["first"]
    stream.emit("a", {"n": 1}, {"pad": "z" * big})

    def later() -> None:
        time.sleep(0.1)
        for name in ("b", "c"):
            stream.emit(name, {"n": 1}, {"pad": "z" * big})

    thread = threading.Thread(target=later)
    thread.start()
    names, waited = _next_timed(batches)
    thread.join()
    # Three events of about 1 KB fill the 3,000-byte bound: no 30 s wait, 2 or 3 of them
    # go (whatever fits the byte bound), the rest in the next batch.
    assert waited < 10.0
    assert names[0] == "a" and len(names) >= 2


def test_pacing_a_control_message_sends_what_is_buffered_at_once() -> None:
    # Events emitted before a control reach the client right after it (controls take effect
    # in milliseconds), not up to the interval later, when a quick second control (say
    # toggle(true) right after toggle(false)) could have changed what the client does.
    stream = TelemetryStream()
    consumer = stream.attach()
    batches = consumer.batches(max_events=100, min_interval=30.0)
    stream.emit("first", {})
    assert _next_timed(batches)[0] == ["first"]
    stream.emit("queued.a", {})
    stream.emit("queued.b", {})
    control = threading.Timer(0.1, stream.apply_control, (toggle(False), consumer))
    control.start()
    names, waited = _next_timed(batches)
    control.join()
    assert names == ["queued.a", "queued.b"]
    assert waited < 10.0
    # The flush is one batch: the next one is paced again.
    stream.apply_control(toggle(True), consumer)  # nothing buffered: nothing to send
    stream.emit("paced", {})
    later = threading.Timer(0.3, stream.close)
    later.start()
    names, waited = _next_timed(batches)
    later.join()
    assert names == ["paced"]
    assert waited >= 0.25  # held until close ended the wait, not sent by the earlier control


def test_no_pacing_with_a_zero_interval() -> None:
    stream = TelemetryStream()
    batches = stream.attach().batches(max_events=100, min_interval=0.0)
    for name in ("one", "two", "three"):
        stream.emit(name, {})
        assert _next_timed(batches)[0] == [name]
    assert stream.stats().sent_batches == 3


def test_counter_add_is_exact_across_threads() -> None:
    counter = Counter()

    def work() -> None:
        for _ in range(2_000):
            counter.add(7)
            counter.increment()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value == 4 * 2_000 * 8
    counter.add(0)
    assert counter.value == 4 * 2_000 * 8


def test_close_drains_in_batches_then_sends_the_final_drop_report() -> None:
    stream = TelemetryStream(max_buffer=4)
    consumer = stream.attach()
    for index in range(10):
        stream.emit(f"e.{index}", {})
    stream.close()
    batches = [pb.TelemetryEventBatch.FromString(b) for b in consumer.batches(max_events=3)]
    events = [event for batch in batches for event in batch.events]
    assert [_name(e) for e in events[:4]] == [f"e.{i}" for i in range(4)]
    assert _reports(events) == {"overflow": 6}
    # The buffer drains (3 + 1), then the final report goes in a batch of its own (or
    # with the last event, if this thread stalled past the report interval in between).
    assert [len(batch.events) for batch in batches] in ([3, 1, 1], [3, 2])
    stats = stream.stats()
    assert stats.sent == 5
    assert stats.sent_batches == len(batches)
    assert stats.sent_reports == 1


# -- over gRPC ------------------------------------------------------------------------------


def test_headers_announce_the_capability_before_any_event(
    serve: Serve, connect_batched: Connect
) -> None:
    served = serve()
    client = connect_batched(served.port)
    headers = client.wait_headers(timeout=2.0)
    [value] = [value for key, value in headers if key == CAPABILITIES_HEADER]
    assert set(value.split(",")) == {
        CAPABILITY_SAMPLING_PATTERNS,
        CAPABILITY_BATCHED,
        CAPABILITY_RESTATED_DROPS,
    }
    client.assert_no_message(within=0.05)


def test_every_event_arrives_in_order(serve: Serve, connect_batched: Connect) -> None:
    total = 5_000
    served = serve(max_buffer=total)
    telemetry.set_backend(telemetry.GrpcBackend(served.stream))
    client = connect_batched(served.port)
    client.wait_headers()
    emitter = threading.Thread(
        target=lambda: [telemetry.emit("tool.result_size", {"bytes": i}) for i in range(total)]
    )
    emitter.start()
    events = client.events(total)
    emitter.join()
    assert [e.measurements["bytes"].int_value for e in events] == list(range(total))
    assert {_name(e) for e in events} == {"tool.result_size"}
    stats = served.stream.stats()
    assert stats.sent == total
    assert stats.dropped_total == 0
    assert 1 <= stats.sent_batches <= total


def test_a_backlog_is_packed_many_events_per_message(
    serve: Serve, connect_batched: Connect
) -> None:
    full = DEFAULT_MAX_BATCH_EVENTS
    total = 2 * full + 904
    served = serve(max_buffer=total)
    for index in range(total):
        served.stream.emit(f"early.{index}", {"n": index})
    client = connect_batched(served.port)
    batches = [client.next_batch() for _ in range(3)]
    assert [len(b.events) for b in batches] == [full, full, 904]
    names = [name for batch in batches for name in _names(batch)]
    assert names == [f"early.{i}" for i in range(total)]
    wait_until(lambda: served.stream.stats().sent == total)
    assert served.stream.stats().sent_batches == 3


def test_batches_fit_the_message_size_the_client_reads(serve: Serve) -> None:
    served = serve(max_buffer=2_000)
    for index in range(2_000):
        served.stream.emit("tool.result_size", {"bytes": index}, {"k": "v" * 20})
    client = StreamClient(served.port, (("x-snakepit-max-message-bytes", "4096"),), batched=True)
    try:
        received = 0
        while received < 2_000:
            raw = client.next_raw()
            assert len(raw) <= 4096
            received += len(pb.TelemetryEventBatch.FromString(raw).events)
        assert received == 2_000
    finally:
        client.close()


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, 1_048_576),
        ((("x-snakepit-max-message-bytes", "65536"),), 65_536),
        ((("x-snakepit-max-message-bytes", b"65536"),), 65_536),
        ((("x-snakepit-max-message-bytes", "4194304"),), 1_048_576),  # never raises the bound
        ((("x-snakepit-max-message-bytes", "1023"),), 1_048_576),  # too small: ignored
        ((("x-snakepit-max-message-bytes", "-5"),), 1_048_576),
        ((("x-snakepit-max-message-bytes", "1e6"),), 1_048_576),
        ((("x-snakepit-max-message-bytes", "٣٣٣٣٣"),), 1_048_576),  # non-ASCII digits
        ((("x-snakepit-max-message-bytes", "9" * 40),), 1_048_576),
        (
            (("x-snakepit-max-message-bytes", "4096"), ("x-snakepit-max-message-bytes", "8192")),
            1_048_576,
        ),
    ],
)
def test_client_max_message_bytes(
    metadata: tuple[tuple[str, str | bytes], ...] | None, expected: int
) -> None:
    assert client_max_message_bytes(metadata, 1_048_576) == expected


def test_under_load_messages_carry_many_events(serve: Serve, connect_batched: Connect) -> None:
    total = 20_000
    served = serve(max_buffer=total)
    client = connect_batched(served.port)
    client.wait_headers()
    for index in range(total):
        served.stream.emit("tool.result_size", {"bytes": index})
    received = 0
    messages = 0
    while received < total:
        received += len(client.next_batch().events)
        messages += 1
    assert received == total
    assert messages < total / 5  # many events per message, not one
    assert served.stream.stats().sent_batches == messages


def test_a_lone_event_leaves_at_once(serve: Serve, connect_batched: Connect) -> None:
    # The count bound is far away: a sender that waited to fill a batch would never send.
    served = serve(max_batch_events=1_000_000)
    client = connect_batched(served.port)
    client.wait_headers()
    for index in range(3):
        served.stream.emit(f"lone.{index}", {})
        batch = client.next_batch(timeout=5.0)
        assert _names(batch) == [f"lone.{index}"]


def test_bounds_over_grpc(serve: Serve, connect_batched: Connect) -> None:
    small = _serialized("small.event", 100)
    huge = _serialized("huge.event", 20_000)
    max_bytes = 10 * batch_entry_size(len(small))
    served = serve(max_batch_events=7, max_batch_bytes=max_bytes)
    for _ in range(20):
        served.stream.enqueue_raw(small)
    served.stream.enqueue_raw(huge)
    for _ in range(3):
        served.stream.enqueue_raw(small)
    client = connect_batched(served.port)
    raws = [client.next_raw() for _ in range(5)]
    batches = [pb.TelemetryEventBatch.FromString(raw) for raw in raws]
    assert [len(b.events) for b in batches] == [7, 7, 6, 1, 3]
    assert _names(batches[3]) == ["huge.event"]
    assert len(raws[3]) == batch_entry_size(len(huge)) > max_bytes
    assert all(len(raw) <= max_bytes for i, raw in enumerate(raws) if i != 3)


def test_byte_bound_over_grpc(serve: Serve, connect_batched: Connect) -> None:
    message = _serialized("sized.event", 1_000)
    entry = batch_entry_size(len(message))
    served = serve(max_batch_bytes=3 * entry + entry // 2)
    for _ in range(10):
        served.stream.enqueue_raw(message)
    client = connect_batched(served.port)
    raws = [client.next_raw() for _ in range(4)]
    assert [len(raw) for raw in raws] == [3 * entry, 3 * entry, 3 * entry, entry]


def test_controls_take_effect_on_the_batched_rpc(serve: Serve, connect_batched: Connect) -> None:
    served = serve()
    stream = served.stream
    service = served.server.service
    client = connect_batched(served.port)
    client.wait_headers()
    client.send(toggle(False))
    wait_until(lambda: not stream.is_enabled())
    stream.emit("while.off", {})
    assert stream.dropped_counts()["disabled"] == 1
    client.send(toggle(True))
    client.send(sampling(0.0, "python.call.*"))
    client.send(event_filter(allow=("tool.*", "python.*"), deny=("tool.result_size",)))
    wait_until(lambda: service.controls_applied == 4)
    for name in ("python.call.start", "tool.result_size", "other.event", "tool.execution.stop"):
        stream.emit(name, {})
    events = client.events(1)
    # A drop report may come first, in a batch of its own or with the event.
    while _name(events[-1]) == "telemetry.dropped":
        events += client.events(1)
    assert [_name(e) for e in events if _name(e) != "telemetry.dropped"] == ["tool.execution.stop"]
    counts = stream.dropped_counts()
    assert counts["sampled_out"] == 1
    assert counts["filtered_out"] == 2


def test_drop_reports_arrive_in_batches(serve: Serve, connect_batched: Connect) -> None:
    served = serve(max_buffer=4)
    for index in range(10):
        served.stream.emit(f"burst.{index}", {})
    client = connect_batched(served.port)
    first = client.next_batch()
    assert _names(first) == [f"burst.{i}" for i in range(4)]
    # The report follows once the rate limit allows, in a batch message.
    report = client.next_batch()
    assert _reports(list(report.events)) == {"overflow": 6}
    stats = served.stream.stats()
    wait_until(lambda: served.stream.stats().sent == 5)
    assert served.stream.stats().sent_batches == 2
    # The final report on close: drops made while telemetry is off, then the server stops.
    client.send(toggle(False))
    wait_until(lambda: not served.stream.is_enabled())
    for _ in range(3):
        served.stream.emit("while.off", {})
    served.server.stop(grace=1.0)
    later: list[pb.TelemetryEvent] = []
    while True:
        try:
            later.extend(client.next_batch().events)
        except AssertionError:  # the stream ended
            break
    assert _reports(later) == {"disabled": 3}
    assert stats.dropped["overflow"] == 6


def test_a_batched_call_replaces_a_single_one_and_back(
    serve: Serve, connect: Connect, connect_batched: Connect
) -> None:
    served = serve()
    stream = served.stream
    service = served.server.service
    single = connect(served.port)
    single.wait_headers()
    stream.emit("to.single", {})
    assert _name(single.next_event()) == "to.single"

    batched = connect_batched(served.port)
    batched.wait_headers()
    assert single.wait_end() == grpc.StatusCode.OK
    stream.emit("to.batched", {})
    assert _names(batched.next_batch()) == ["to.batched"]
    # The replaced call's controls are ignored.
    single.send(toggle(False))
    batched.send(sampling(1.0))
    wait_until(lambda: service.controls_applied >= 1)
    assert stream.is_enabled()

    again = connect(served.port)
    again.wait_headers()
    assert batched.wait_end() == grpc.StatusCode.OK
    stream.emit("to.single.again", {})
    assert _name(again.next_event()) == "to.single.again"
    batched.send(toggle(False))  # too late: the call is over
    again.send(sampling(1.0))
    wait_until(lambda: service.controls_applied >= 2)
    assert stream.is_enabled()
    stats = stream.stats()
    assert (stats.sent, stats.sent_batches) == (3, 1)


def test_batched_call_without_the_token_is_unauthenticated(serve: Serve) -> None:
    served = serve(token=TOKEN)
    served.stream.emit("tool.result_size", {"bytes": 1})
    for metadata in ((), (("authorization", "Bearer wrong"),)):
        client = StreamClient(served.port, metadata=metadata, batched=True)
        try:
            assert client.wait_end() == grpc.StatusCode.UNAUTHENTICATED
            assert client.error is not None
            assert client.error.details() == "missing or invalid bearer token"
        finally:
            client.close()
    assert served.stream.stats().sent == 0
    assert served.server.service.controls_received == 0
    client = StreamClient(
        served.port, metadata=(("authorization", f"Bearer {TOKEN}"),), batched=True
    )
    try:
        client.wait_headers()
        assert _names(client.next_batch()) == ["tool.result_size"]
    finally:
        client.close()


def test_worker_that_ignores_control_serves_batches_without_the_header(
    serve: Serve, connect_batched: Connect
) -> None:
    served = serve(honour_control=False)
    client = connect_batched(served.port)
    assert all(key != CAPABILITIES_HEADER for key, _ in client.wait_headers())
    client.send(toggle(False))
    wait_until(lambda: served.server.service.controls_received == 1)
    served.stream.emit("still.sent", {})
    assert _names(client.next_batch()) == ["still.sent"]
