from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from decimal import Decimal
from fractions import Fraction

import pytest
from conftest import RecordingBackend
from stream_client import decode

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry import api
from snakepit_bridge.telemetry.stream import TelemetryStream


def _stream_backend(max_buffer: int = 1024) -> TelemetryStream:
    stream = TelemetryStream(max_buffer=max_buffer)
    telemetry.set_backend(telemetry.GrpcBackend(stream))
    return stream


def _buffered_events(stream: TelemetryStream) -> list[pb.TelemetryEvent]:
    """Drain the stream as its consumer does: events it cannot send are dropped, counted."""
    events = []
    while True:
        try:
            events.append(decode(stream.pop()))
        except IndexError:
            return events


def test_no_backend_by_default_emit_is_a_no_op() -> None:
    assert telemetry.get_backend() is None
    assert not telemetry.is_enabled()
    telemetry.emit("tool.execution.stop", {"duration": 1})
    with telemetry.span("tool.execution"):
        pass
    assert telemetry.dropped_count() == 0


def test_set_backend_returns_previous_and_enables(recorder: RecordingBackend) -> None:
    assert telemetry.get_backend() is recorder
    assert telemetry.is_enabled()
    other = RecordingBackend()
    assert telemetry.set_backend(other) is recorder
    telemetry.emit("a.b", {"n": 1})
    assert other.names() == ["a.b"]
    assert recorder.events == []


def test_emit_wire_form() -> None:
    stream = _stream_backend()
    before = time.time_ns()
    telemetry.emit(
        "tool.execution.stop",
        {"duration": 1500, "ratio": 0.25, "unit": "ms", "flag": True},
        {"tool": "resize", "attempt": 3, "none": None},
        correlation_id="cid-1",
    )
    after = time.time_ns()
    (event,) = _buffered_events(stream)
    assert list(event.event_parts) == ["tool", "execution", "stop"]
    assert event.measurements["duration"].WhichOneof("value") == "int_value"
    assert event.measurements["duration"].int_value == 1500
    assert event.measurements["ratio"].WhichOneof("value") == "float_value"
    assert event.measurements["ratio"].float_value == 0.25
    assert event.measurements["unit"].string_value == "ms"
    assert event.measurements["flag"].int_value == 1
    assert dict(event.metadata) == {"tool": "resize", "attempt": "3", "none": "None"}
    assert event.correlation_id == "cid-1"
    assert before <= event.timestamp_ns <= after


def test_emit_does_not_validate_names_against_the_catalog() -> None:
    stream = _stream_backend()
    telemetry.emit("not.in.catalog", {})
    telemetry.emit("single", {})
    assert [list(e.event_parts) for e in _buffered_events(stream)] == [
        ["not", "in", "catalog"],
        ["single"],
    ]


def test_span_emits_start_and_stop(
    recorder: RecordingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monotonic = iter([1_000, 1_750])
    monkeypatch.setattr(api, "_monotonic_ns", lambda: next(monotonic))
    monkeypatch.setattr(api, "_time_ns", lambda: 42)
    with telemetry.span("tool.execution", {"tool": "t"}) as active:
        assert isinstance(active, telemetry.Span)
    start, stop = recorder.events
    assert start.event == "tool.execution.start"
    assert start.measurements == {"system_time": 42}
    assert start.metadata == {"tool": "t"}
    assert stop.event == "tool.execution.stop"
    assert stop.measurements == {"duration": 750}
    assert stop.metadata == {"tool": "t"}


def test_span_duration_is_real_elapsed_time(recorder: RecordingBackend) -> None:
    with telemetry.span("op"):
        time.sleep(0.02)
    duration = recorder.events[1].measurements["duration"]
    assert isinstance(duration, int)
    assert 20_000_000 <= duration < 2_000_000_000


def test_span_exception_path_reraises_and_reports(recorder: RecordingBackend) -> None:
    error = ValueError("bad input")
    with pytest.raises(ValueError) as raised, telemetry.span("python.call", {"command": "c"}):
        raise error
    assert raised.value is error
    names = recorder.names()
    assert names == ["python.call.start", "python.call.exception"]
    exception = recorder.events[1]
    assert set(exception.measurements) == {"duration"}
    assert exception.metadata == {
        "command": "c",
        "error_type": "ValueError",
        "error_message": "bad input",
    }


def test_span_survives_unprintable_exception(recorder: RecordingBackend) -> None:
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    with pytest.raises(UnprintableError), telemetry.span("op"):
        raise UnprintableError
    metadata = recorder.events[1].metadata
    assert metadata is not None
    assert metadata["error_type"] == "UnprintableError"
    assert metadata["error_message"] == "<unprintable UnprintableError>"


def test_span_in_asyncio(recorder: RecordingBackend) -> None:
    async def work() -> None:
        async with telemetry.span("async.op", correlation_id="a-1"):
            await asyncio.sleep(0)
            telemetry.emit("async.op.inner", {})

    asyncio.run(work())
    assert recorder.names() == ["async.op.start", "async.op.inner", "async.op.stop"]
    assert {e.correlation_id for e in recorder.events} == {"a-1"}


class _RaisingBackend(RecordingBackend):
    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None,
        correlation_id: str | None,
    ) -> None:
        raise OSError("backend down")

    def is_enabled(self) -> bool:
        raise OSError("backend down")


def test_broken_backend_never_raises_into_user_code() -> None:
    telemetry.set_backend(_RaisingBackend())
    telemetry.emit("a.b", {"n": 1})
    with telemetry.span("op"):
        pass
    assert not telemetry.is_enabled()
    assert telemetry.dropped_counts()["backend_error"] == 3
    assert telemetry.dropped_count() == 3


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot print")


@pytest.mark.parametrize(
    ("event", "measurements", "metadata"),
    [
        ("a.b", {"big": 2**63}, None),
        ("a.b", {"small": -(2**63) - 1}, None),
        ("a.b", {"obj": object()}, None),
        ("a.b", {"none": None}, None),
        ("a.b", {1: 2}, None),
        ("a.b", {"n": 1}, {2: "non-str key"}),
        ("a.b", {"n": 1}, {"k": _Unprintable()}),
        ("a.b", {"n": 1}, {"k": "\ud800 lone surrogate"}),
        ("a.b", None, None),
        ("a.b", {"n": 1}, ["not", "a", "mapping"]),
        (None, {"n": 1}, None),
        (["unhashable"], {"n": 1}, None),
    ],
)
def test_emit_never_raises_and_counts_encode_errors(
    event: object, measurements: object, metadata: object
) -> None:
    stream = _stream_backend()
    telemetry.emit(event, measurements, metadata)  # type: ignore[arg-type]
    # Refused by emit, or recorded and refused when the consumer serializes it.
    assert _buffered_events(stream) == []
    assert stream.dropped_counts()["encode_error"] == 1
    assert telemetry.dropped_counts()["encode_error"] == 1
    stats = stream.stats()
    assert (stats.emitted, stats.enqueued, stats.sent, stats.buffered_bytes) == (1, 0, 0, 0)


def test_int64_bounds_are_accepted() -> None:
    stream = _stream_backend()
    telemetry.emit("a.b", {"max": 2**63 - 1, "min": -(2**63), "nan": float("nan")})
    (event,) = _buffered_events(stream)
    assert event.measurements["max"].int_value == 2**63 - 1
    assert event.measurements["min"].int_value == -(2**63)


def test_numbers_abc_measurements_are_converted() -> None:
    stream = _stream_backend()
    telemetry.emit("a.b", {"fraction": Fraction(1, 4), "int": 1})  # type: ignore[dict-item]
    telemetry.emit("a.b", {"decimal": Decimal("1.5")})  # type: ignore[dict-item]
    events = _buffered_events(stream)
    assert len(events) == 1  # Decimal is not a numbers.Real: dropped, counted
    assert events[0].measurements["fraction"].float_value == 0.25
    assert stream.dropped_counts()["encode_error"] == 1
