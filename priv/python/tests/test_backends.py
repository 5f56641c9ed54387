from __future__ import annotations

import io
import json
import time

import pytest

from snakepit_bridge import telemetry
from snakepit_bridge.telemetry.stream import TelemetryStream


def _lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert all(line.startswith("TELEMETRY:") for line in lines)
    return [json.loads(line.removeprefix("TELEMETRY:")) for line in lines]


def test_stderr_backend_writes_one_json_line_per_event(
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
    assert set(first) == {"event", "measurements", "metadata", "timestamp_ns", "correlation_id"}
    assert first["event"] == "tool.execution.stop"
    assert first["measurements"] == {"duration": 12, "ratio": 0.5, "unit": "ms"}
    measurements = first["measurements"]
    assert isinstance(measurements, dict)
    assert isinstance(measurements["duration"], int)
    assert first["metadata"] == {"tool": "resize", "attempt": "2"}
    assert first["correlation_id"] == "cid-9"
    timestamp = first["timestamp_ns"]
    assert isinstance(timestamp, int)
    assert before <= timestamp <= time.time_ns()
    assert second["metadata"] == {}
    assert second["correlation_id"] is None


def test_stderr_backend_uses_context_correlation_and_span() -> None:
    output = io.StringIO()
    telemetry.set_backend(telemetry.StderrBackend(output))
    with telemetry.span("tool.execution", correlation_id="span-id"):
        pass
    events = _lines(output.getvalue())
    assert [e["event"] for e in events] == ["tool.execution.start", "tool.execution.stop"]
    assert {e["correlation_id"] for e in events} == {"span-id"}


def test_stderr_backend_drops_unencodable_events() -> None:
    output = io.StringIO()
    backend = telemetry.StderrBackend(output)
    telemetry.set_backend(backend)
    telemetry.emit("a.b", {"nan": float("nan")})
    telemetry.emit("a.b", {"obj": object()})  # type: ignore[dict-item]
    telemetry.emit("a.b", {1: 1})  # type: ignore[dict-item]
    assert output.getvalue() == ""
    assert backend.dropped_counts()["encode_error"] == 3
    assert telemetry.dropped_count() == 3


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
