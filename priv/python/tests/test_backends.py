from __future__ import annotations

import io
import json
import time

import pytest

from snakepit_bridge import telemetry
from snakepit_bridge.telemetry.backends.stderr import format_line
from snakepit_bridge.telemetry.stream import TelemetryStream


def _lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert all(line.startswith("TELEMETRY:") for line in lines)
    return [json.loads(line.removeprefix("TELEMETRY:")) for line in lines]


def test_stderr_line_is_snakepits_byte_for_byte() -> None:
    # Snakepit v0.13 writes "TELEMETRY:" + json.dumps(payload) + "\n": default separators,
    # keys in this order, values as given, correlation_id "" when unset.
    line = format_line(
        "tool.execution.stop",
        {"duration": 12, "ratio": 0.5, "unit": "ms", "ok": True},
        {"tool": "resize", "attempt": 2, "parent": None, "é": "ü"},
        "cid-9",
        1700000000000000000,
    )
    assert line == (
        'TELEMETRY:{"event": "tool.execution.stop", '
        '"measurements": {"duration": 12, "ratio": 0.5, "unit": "ms", "ok": true}, '
        '"metadata": {"tool": "resize", "attempt": 2, "parent": null, "\\u00e9": "\\u00fc"}, '
        '"timestamp_ns": 1700000000000000000, "correlation_id": "cid-9"}\n'
    )
    assert format_line("python.gc.completed", {}, None, None, 5) == (
        'TELEMETRY:{"event": "python.gc.completed", "measurements": {}, "metadata": {}, '
        '"timestamp_ns": 5, "correlation_id": ""}\n'
    )
    # Non-finite floats as Python's json writes them (the Elixir side reads them: a
    # non-finite measurement is dropped there as invalid_measurement).
    assert format_line("a.b", {"x": float("nan"), "y": float("-inf")}, None, "", 1) == (
        'TELEMETRY:{"event": "a.b", "measurements": {"x": NaN, "y": -Infinity}, '
        '"metadata": {}, "timestamp_ns": 1, "correlation_id": ""}\n'
    )


def test_stderr_backend_writes_one_line_per_event_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    telemetry.set_backend(telemetry.StderrBackend())
    before = time.time_ns()
    telemetry.emit(
        "tool.execution.stop",
        {"duration": 12, "ratio": 0.5, "unit": "ms"},
        {"tool": "resize", "attempt": 2},
        correlation_id="cid-9",
    )
    telemetry.emit("python.gc.completed", {"collected": 3})
    captured = capsys.readouterr()
    assert captured.out == ""
    first, second = _lines(captured.err)
    timestamp = first["timestamp_ns"]
    assert isinstance(timestamp, int)
    assert before <= timestamp <= time.time_ns()
    assert captured.err.splitlines()[0] == format_line(
        "tool.execution.stop",
        {"duration": 12, "ratio": 0.5, "unit": "ms"},
        {"tool": "resize", "attempt": 2},
        "cid-9",
        timestamp,
    ).removesuffix("\n")
    assert second["metadata"] == {}
    assert second["correlation_id"] == ""


def test_stderr_backend_uses_context_correlation_and_span() -> None:
    output = io.StringIO()
    telemetry.set_backend(telemetry.StderrBackend(output))
    with telemetry.span("tool.execution", correlation_id="span-id"):
        pass
    events = _lines(output.getvalue())
    assert [e["event"] for e in events] == ["tool.execution.start", "tool.execution.stop"]
    assert {e["correlation_id"] for e in events} == {"span-id"}


def test_stderr_backend_drops_what_json_cannot_encode() -> None:
    output = io.StringIO()
    backend = telemetry.StderrBackend(output)
    telemetry.set_backend(backend)
    telemetry.emit("a.b", {"obj": object()})  # type: ignore[dict-item]
    telemetry.emit("a.b", {}, {"when": time})
    telemetry.emit("a.b", {(1, 2): 1})  # type: ignore[dict-item]
    telemetry.emit("a.b", {"huge": 10**5000})  # over Python's int-to-str digit limit
    assert output.getvalue() == ""
    assert backend.dropped_counts()["encode_error"] == 4
    assert telemetry.dropped_count() == 4
    # What json.dumps accepts is written, as Snakepit writes it (an int key becomes "1").
    telemetry.emit("a.b", {1: 1})  # type: ignore[dict-item]
    assert _lines(output.getvalue())[0]["measurements"] == {"1": 1}


def test_stderr_backend_counts_write_errors() -> None:
    output = io.StringIO()
    output.close()
    backend = telemetry.StderrBackend(output)
    telemetry.set_backend(backend)
    telemetry.emit("a.b", {})
    assert backend.dropped_counts()["write_error"] == 1


def test_grpc_backend_reflects_stream_state() -> None:
    stream = TelemetryStream()
    backend = telemetry.GrpcBackend(stream)
    telemetry.set_backend(backend)
    assert backend.stream is stream
    assert telemetry.is_enabled()
    telemetry.emit("a.b", {})
    assert len(stream.buffer) == 1
    backend.close()
    assert stream.closed
    assert not telemetry.is_enabled()
    telemetry.emit("a.b", {})
    assert telemetry.dropped_counts()["closed"] == 1
