"""The producer side of a stream (``emit``) under hostile input, for whichever producer is
in use: scripts/test runs pytest once with the native producer (``_wire.StreamProducer``)
and once with the Python fallback (``SNAKEPIT_BRIDGE_NATIVE_ENCODER=0``).

Every test ends with the same accounting: every emit is either delivered (drained through
``pop_batch``, as a batched call sends) or counted as dropped under one reason, and nothing
raises into the caller.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
import types
import weakref
from collections.abc import Iterator, Mapping

import pytest

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry import api, encoding
from snakepit_bridge.telemetry.backends import GrpcBackend, TelemetryBackend
from snakepit_bridge.telemetry.stream import NATIVE_PRODUCER, TelemetryStream


def _drain(stream: TelemetryStream) -> list[pb.TelemetryEvent]:
    """Take every buffered event as the batched sender does, and check the accounting."""
    events: list[pb.TelemetryEvent] = []
    while stream.buffer:
        batch, _count = stream.pop_batch(8192, 1 << 20)
        events.extend(pb.TelemetryEventBatch.FromString(batch).events)
    stats = stream.stats()
    assert stats.buffered == 0
    assert stats.buffered_bytes == 0
    assert stats.sent == len(events)
    assert stats.emitted == len(events) + stats.dropped_total
    return events


def _name(event: pb.TelemetryEvent) -> str:
    return ".".join(event.event_parts)


def test_the_native_producer_is_in_use_unless_switched_off() -> None:
    switched_off = os.environ.get(encoding.NATIVE_ENCODER_ENV) == "0"
    assert NATIVE_PRODUCER is (not switched_off), (
        "the native extension is not built (or is stale): run scripts/setup or mix compile"
    )
    assert (telemetry.emit is api.python_emit) is switched_off


def test_non_finite_floats_are_sent_as_they_are_and_the_nif_decides() -> None:
    stream = TelemetryStream()
    for value in (math.nan, math.inf, -math.inf):
        stream.emit("m.f", {"v": value})
    values = [event.measurements["v"].float_value for event in _drain(stream)]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**100])
def test_an_int_beyond_int64_is_an_encode_error(value: int) -> None:
    stream = TelemetryStream()
    stream.emit("m.big", {"v": value})
    stream.emit("m.ok", {"v": 2**63 - 1, "w": -(2**63)})
    events = _drain(stream)
    assert [_name(e) for e in events] == ["m.ok"]
    assert events[0].measurements["v"].int_value == 2**63 - 1
    assert stream.dropped_counts()["encode_error"] == 1


def test_wide_maps_are_delivered_whole() -> None:
    stream = TelemetryStream()
    metadata = {f"key_{i}": f"value_{i}" for i in range(300)}
    measurements = {f"m_{i}": i for i in range(300)}
    stream.emit("wide.event", measurements, metadata)
    (event,) = _drain(stream)
    assert dict(event.metadata) == metadata
    assert {k: v.int_value for k, v in event.measurements.items()} == measurements


@pytest.mark.parametrize(
    ("name", "measurements", "metadata", "correlation_id"),
    [
        ("bad\udc80.name", {"n": 1}, None, None),
        ("a.b", {"k\ud800": 1}, None, None),
        ("a.b", {"n": 1}, {"k": "v\udfff"}, None),
        ("a.b", {"n": 1}, None, "id\ud800"),
        ("a.b", {b"\xff\xfe": 1}, None, None),
        ("a.b", {"n": object()}, None, None),
        ("a.b", {1: 1}, None, None),
        (42, {"n": 1}, None, None),
        (None, {"n": 1}, None, None),
        ("a.b", None, None, None),
        ("a.b", 17, None, None),
        ("a.b", {"n": 1}, 17, None),
        ("a.b", {"n": 1}, None, 17),
    ],
)
def test_what_protobuf_refuses_is_an_encode_error_and_never_raises(
    name: object, measurements: object, metadata: object, correlation_id: object
) -> None:
    stream = TelemetryStream()
    stream.emit(name, measurements, metadata, correlation_id)  # type: ignore[arg-type]
    stream.emit("after.it", {"n": 1})
    assert [_name(e) for e in _drain(stream)] == ["after.it"]
    assert stream.dropped_counts()["encode_error"] == 1


@pytest.mark.parametrize("metadata", [None, {}, 0, "", [], False, types.MappingProxyType({})])
def test_falsy_metadata_means_none(metadata: object) -> None:
    stream = TelemetryStream()
    stream.emit("a.b", {"n": 1}, metadata)  # type: ignore[arg-type]
    (event,) = _drain(stream)
    assert dict(event.metadata) == {}


def test_utf8_bytes_keys_are_accepted_as_protobuf_accepts_them() -> None:
    stream = TelemetryStream()
    stream.emit("a.b", {b"bytes_key": 1}, {b"meta": "v"}, "cid")
    (event,) = _drain(stream)
    assert event.measurements["bytes_key"].int_value == 1
    assert event.metadata["meta"] == "v"
    assert event.correlation_id == "cid"


class _Exploding:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class _Mutating:
    """Changes the dict it is a value of while it is converted."""

    def __init__(self, target: dict[str, object]) -> None:
        self.target = target

    def __str__(self) -> str:
        self.target.clear()
        self.target.update({f"new_{i}": i for i in range(50)})
        return "mutated"


class _Reentrant:
    """Emits into the same stream while it is converted."""

    def __init__(self, stream: TelemetryStream) -> None:
        self.stream = stream

    def __str__(self) -> str:
        self.stream.emit("inner.event", {"n": 1})
        return "outer"


class _Interrupting:
    def __str__(self) -> str:
        raise KeyboardInterrupt


def test_a_value_whose_str_raises_is_an_encode_error() -> None:
    stream = TelemetryStream()
    stream.emit("a.b", {"n": 1}, {"v": _Exploding()})
    assert _drain(stream) == []
    assert stream.dropped_counts()["encode_error"] == 1


def test_a_value_that_changes_its_dict_while_converted_neither_crashes_nor_loses_count() -> None:
    stream = TelemetryStream()
    metadata: dict[str, object] = {"first": "x"}
    metadata["second"] = _Mutating(metadata)
    metadata["third"] = "z"
    stream.emit("a.b", {"n": 1}, metadata)
    events = _drain(stream)
    assert len(events) + stream.stats().dropped_total == 1
    if events:  # what was read before the change is what goes out
        assert events[0].metadata["second"] == "mutated"


def test_an_emit_from_inside_a_conversion_is_accounted_for() -> None:
    stream = TelemetryStream()
    stream.emit("outer.event", {"n": 1}, {"v": _Reentrant(stream)})
    names = sorted(_name(e) for e in _drain(stream))
    assert names == ["inner.event", "outer.event"]


def test_keyboard_interrupt_is_not_swallowed() -> None:
    stream = TelemetryStream()
    with pytest.raises(KeyboardInterrupt):
        stream.emit("a.b", {"n": 1}, {"v": _Interrupting()})
    stream.emit("a.c", {"n": 1})
    assert [_name(e) for e in _drain(stream)] == ["a.c"]


class _Metrics(Mapping[str, object]):
    """A Mapping that is not a dict."""

    def __init__(self, **values: object) -> None:
        self._values = values

    def __getitem__(self, key: str) -> object:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_mappings_that_are_not_dicts_are_read() -> None:
    stream = TelemetryStream()
    stream.emit("a.b", _Metrics(n=1, f=0.5), types.MappingProxyType({"k": "v", "i": 3}))
    (event,) = _drain(stream)
    assert event.measurements["n"].int_value == 1
    assert event.measurements["f"].float_value == 0.5
    assert dict(event.metadata) == {"k": "v", "i": "3"}


def test_bools_and_str_measurements_keep_protobufs_types() -> None:
    stream = TelemetryStream()
    stream.emit("a.b", {"t": True, "s": "text", "f": 1.25, "i": -5})
    (event,) = _drain(stream)
    m = event.measurements
    assert (m["t"].int_value, m["s"].string_value, m["f"].float_value, m["i"].int_value) == (
        1,
        "text",
        1.25,
        -5,
    )


def test_an_event_over_max_event_bytes_is_oversize_and_the_bound_is_exact() -> None:
    stream = TelemetryStream(max_event_bytes=1000)
    stream.emit("a.big", {"n": 1}, {"blob": "x" * 2000})
    stream.emit("a.small", {"n": 1}, {"blob": "x" * 100})
    assert [_name(e) for e in _drain(stream)] == ["a.small"]
    assert stream.dropped_counts()["oversize"] == 1


def test_keyword_arguments_and_the_context_correlation_id() -> None:
    stream = TelemetryStream()
    stream.emit(event_name="k.w", measurements={"n": 1}, metadata={"a": "b"}, correlation_id="c1")
    with telemetry.correlation("from-context"):
        stream.emit("k.ctx", {"n": 2})
    events = _drain(stream)
    assert [(e.correlation_id, _name(e)) for e in events] == [
        ("c1", "k.w"),
        ("from-context", "k.ctx"),
    ]


def test_native_sampling_keeps_about_the_rate() -> None:
    stream = TelemetryStream(max_buffer=100_000, max_buffer_bytes=64 << 20)
    stream.sampling_rate = 0.5
    for _ in range(20_000):
        stream.emit("s.e", {"n": 1})
    kept = len(_drain(stream))
    assert 9_000 < kept < 11_000  # binomial(20,000, 0.5): sd 71, so 14 sd either side
    assert stream.dropped_counts()["sampled_out"] == 20_000 - kept


class _SlowText:
    """A value whose conversion releases the GIL, so that other emitters run meanwhile."""

    def __str__(self) -> str:
        time.sleep(0)
        return "slow"


def test_a_burst_from_many_threads_with_a_reader_stays_exact_and_bounded() -> None:
    stream = TelemetryStream(max_buffer=500, max_buffer_bytes=20_000)
    threads_n, per_thread = 8, 4_000
    stop = threading.Event()
    delivered: list[int] = []
    over_bound: list[int] = []

    def reader() -> None:
        count = 0
        while not stop.is_set() or stream.buffer:
            if stream.buffered_bytes > 20_000 + 200:  # a put-back may add its framing
                over_bound.append(stream.buffered_bytes)
            # A slow reader (16 events a millisecond at most), so that the producers
            # certainly reach the bound while it reads.
            _batch, n = stream.pop_batch(16, 4096)
            count += n
            time.sleep(0.001)
        delivered.append(count)

    def producer(index: int) -> None:
        slow = _SlowText()
        for i in range(per_thread):
            metadata = {"i": str(i), "slow": slow} if i % 7 == 0 else {"i": str(i)}
            stream.emit(f"t{index}.e", {"n": i, "f": i / 3}, metadata)

    read = threading.Thread(target=reader)
    read.start()
    workers = [threading.Thread(target=producer, args=(k,)) for k in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    read.join()
    stats = stream.stats()
    assert over_bound == []
    assert stats.emitted == threads_n * per_thread
    assert stats.emitted == delivered[0] + stats.dropped_total
    assert stats.sent == delivered[0] > 0
    assert stats.dropped["overflow"] > 0  # the bound was reached and counted
    assert stats.buffered_bytes == 0


class _Failing(TelemetryBackend):
    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        raise ValueError("broken backend")


def test_telemetry_emit_forwards_to_the_active_backend_and_counts_its_errors() -> None:
    previous = telemetry.set_backend(None)
    try:
        telemetry.emit("nobody.listens", {"n": 1})  # no backend: returns at once
        telemetry.set_backend(_Failing())
        for _ in range(3):
            telemetry.emit("a.b", {"n": 1})
        assert telemetry.dropped_counts()["backend_error"] == 3
        stream = TelemetryStream()
        telemetry.set_backend(GrpcBackend(stream))
        assert telemetry.dropped_counts()["backend_error"] == 0  # counted per backend
        telemetry.emit(event="kw.e", measurements={"n": 1}, metadata={"m": 1})
        telemetry.emit("pos.e", {"n": 2}, None, "cid")
        stream.apply_control(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False)))
        telemetry.emit("off.e", {"n": 3})
        events = _drain(stream)
        assert [(_name(e), e.correlation_id) for e in events] == [("kw.e", ""), ("pos.e", "cid")]
        assert telemetry.dropped_counts()["disabled"] == 1
    finally:
        telemetry.set_backend(previous)


def test_a_dropped_stream_with_an_attached_consumer_is_collected() -> None:
    # stream -> producer -> consumer -> stream: a cycle through the producer, which the
    # garbage collector must be able to see into (the native one implements __traverse__).
    stream = TelemetryStream()
    stream.attach()
    stream.emit("a.b", {"n": 1})
    ref = weakref.ref(stream)
    del stream
    gc.collect()
    assert ref() is None


class _CountingStream(TelemetryStream):
    """A subclass that overrides emit (as an application might, to count or enrich)."""

    calls = 0

    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        type(self).calls += 1
        super().emit(event_name, measurements, {**(metadata or {}), "via": "subclass"})


def test_a_subclass_overriding_emit_is_honoured_by_telemetry_emit() -> None:
    stream = _CountingStream()
    previous = telemetry.set_backend(GrpcBackend(stream))
    try:
        telemetry.emit("sub.e", {"n": 1})
        stream.emit("sub.f", {"n": 2})
    finally:
        telemetry.set_backend(previous)
    assert _CountingStream.calls == 2
    assert [e.metadata["via"] for e in _drain(stream)] == ["subclass", "subclass"]
