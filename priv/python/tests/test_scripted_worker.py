"""test/support/python/scripted_worker.py, driven as the Elixir tests drive it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError
from stream_client import StreamClient, StreamEnded, toggle, wait_until
from worker_process import WorkerProcess

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import CAPABILITIES_HEADER

SCRIPT = Path(__file__).resolve().parents[3] / "test" / "support" / "python" / "scripted_worker.py"

StartScripted = Callable[..., tuple[WorkerProcess, StreamClient]]


@pytest.fixture
def start_scripted() -> Iterator[StartScripted]:
    started: list[tuple[WorkerProcess, StreamClient]] = []

    def start(*extra: str) -> tuple[WorkerProcess, StreamClient]:
        worker = WorkerProcess([sys.executable, str(SCRIPT), "--port", "0", *extra])
        client = StreamClient(worker.port)
        started.append((worker, client))
        client.wait_headers()
        return worker, client

    yield start
    for worker, client in started:
        client.close()
        worker.kill()


def _command(worker: WorkerProcess, **command: object) -> str:
    worker.send(json.dumps(command))
    return worker.next_line()


def _stats(worker: WorkerProcess) -> dict[str, object]:
    line = _command(worker, op="stats")
    assert line.startswith("STATS ")
    stats = json.loads(line.removeprefix("STATS "))
    assert isinstance(stats, dict)
    return stats


def _name(event: pb.TelemetryEvent) -> str:
    return ".".join(event.event_parts)


def test_emit_command_keeps_value_types(start_scripted: StartScripted) -> None:
    worker, client = start_scripted()
    reply = _command(
        worker,
        op="emit",
        id=1,
        event="tool.execution.stop",
        measurements={"duration": 5, "ratio": 1.0},
        metadata={"tool": "t"},
        correlation_id="x",
        count=3,
    )
    assert reply == "ACK 1"
    events = client.events(3)
    for event in events:
        assert _name(event) == "tool.execution.stop"
        assert event.measurements["duration"].WhichOneof("value") == "int_value"
        assert event.measurements["ratio"].WhichOneof("value") == "float_value"
        assert dict(event.metadata) == {"tool": "t"}
        assert event.correlation_id == "x"


def test_span_commands(start_scripted: StartScripted) -> None:
    worker, client = start_scripted()
    assert (
        _command(
            worker,
            op="span",
            id="s1",
            operation="tool.execution",
            metadata={"tool": "t"},
            correlation_id="abc-123",
            sleep_ms=5,
        )
        == "ACK s1"
    )
    worker.send(
        json.dumps({"op": "span", "id": "s2", "operation": "tool.execution", "raise": False})
    )
    assert worker.next_line() == "ACK s2"
    worker.send(json.dumps({"op": "span", "id": "s3", "operation": "python.call", "raise": True}))
    assert worker.next_line() == "ACK s3"
    start, stop, _, stop2, _, failed = client.events(6)
    assert [_name(start), _name(stop)] == ["tool.execution.start", "tool.execution.stop"]
    assert start.correlation_id == stop.correlation_id == "abc-123"
    assert stop.measurements["duration"].int_value >= 5_000_000
    assert _name(stop2) == "tool.execution.stop"
    assert _name(failed) == "python.call.exception"
    assert failed.metadata["error_type"] == "RuntimeError"
    assert failed.metadata["error_message"] == "boom"


def test_raw_hex_and_bad_utf8(start_scripted: StartScripted) -> None:
    worker, client = start_scripted()
    assert _command(worker, op="raw_hex", id=1, hex="ff00deadbeef") == "ACK 1"
    assert client.next_raw() == bytes.fromhex("ff00deadbeef")

    assert _command(worker, op="bad_utf8", id=2, event="tool.execution.stop") == "ACK 2"
    raw = client.next_raw()
    with pytest.raises(DecodeError):
        pb.TelemetryEvent.FromString(raw)
    # Same bytes with the invalid value replaced by valid UTF-8 of the same length decode
    # to the intended event: only the metadata value is wrong.
    invalid = b"bad\xff\xfe\xc3("
    assert raw.count(invalid) == 1
    repaired = pb.TelemetryEvent.FromString(raw.replace(invalid, b"bad-ok("))
    assert list(repaired.event_parts) == ["tool", "execution", "stop"]
    assert dict(repaired.metadata) == {"tool": "bad-ok("}
    assert repaired.timestamp_ns > 0


def test_random_command_and_stats(start_scripted: StartScripted) -> None:
    worker, client = start_scripted("--max-buffer", "5000")
    assert _command(worker, op="random", id=1, count=2_000, seed=1) == "ACK 1"
    assert _command(worker, op="wait_sent", id=2, timeout_ms=20_000) == "ACK 2"
    events = client.events(2_000)
    names = {_name(event) for event in events}
    assert len(names) == 2_000
    assert all(name.startswith("rnd_") and name.endswith(".x") for name in names)
    metadata_keys = {key for event in events for key in event.metadata}
    measurement_keys = {key for event in events for key in event.measurements}
    assert len(metadata_keys) == len(measurement_keys) == 2_000
    stats = _stats(worker)
    assert stats["emitted"] == 2_000
    assert stats["sent"] == 2_000
    assert stats["buffered"] == 0
    assert stats["dropped_total"] == 0


def test_stats_report_overflow_and_control(start_scripted: StartScripted) -> None:
    worker, client = start_scripted("--max-buffer", "4")
    client.send(toggle(False))
    wait_until(lambda: _stats(worker)["controls_applied"] == 1)
    _command(worker, op="emit", id=1, event="a.b", measurements={}, count=2)
    stats = _stats(worker)
    assert stats["policy"] == {
        "enabled": False,
        "sampling_rate": 1.0,
        "sampling_rules": [],
        "allow": [],
        "deny": [],
    }
    dropped = stats["dropped"]
    assert isinstance(dropped, dict)
    assert dropped["disabled"] == 2


def test_ignore_control(start_scripted: StartScripted) -> None:
    worker, client = start_scripted("--ignore-control")
    assert client.headers is not None
    assert all(key != CAPABILITIES_HEADER for key, _ in client.headers)
    client.send(toggle(False))
    wait_until(lambda: _stats(worker)["controls_received"] == 1)
    assert _command(worker, op="emit", id=1, event="a.b", measurements={"n": 1}) == "ACK 1"
    assert _name(client.next_event()) == "a.b"
    assert _stats(worker)["controls_applied"] == 0


def test_exit_command_crashes_with_the_code(start_scripted: StartScripted) -> None:
    worker, client = start_scripted()
    worker.send(json.dumps({"op": "exit", "code": 3}))
    assert worker.wait() == 3
    assert client.wait_end() != grpc.StatusCode.OK


def test_bad_commands_reply_error(start_scripted: StartScripted) -> None:
    worker, _ = start_scripted()
    assert _command(worker, op="nope", id=7).startswith("ERROR 7 CommandError: unknown op")
    worker.send("not json")
    assert worker.next_line().startswith("ERROR - JSONDecodeError")
    assert _command(worker, op="emit", id=8).startswith("ERROR 8 KeyError")


def test_exits_when_stdin_closes(start_scripted: StartScripted) -> None:
    worker, client = start_scripted()
    worker.close_stdin()
    assert worker.wait() == 0
    assert client.wait_end() == grpc.StatusCode.OK


def test_byte_bound_flags_are_honoured(start_scripted: StartScripted) -> None:
    worker, client = start_scripted("--max-event-bytes", "1000", "--max-buffer-bytes", "50000")
    for index, size in enumerate((10, 5_000, 10)):
        reply = _command(
            worker,
            op="emit",
            id=index,
            event="tool.execution.stop",
            measurements={"duration": 1},
            metadata={"tool": "t" * size},
        )
        assert reply == f"ACK {index}"
    assert [len(event.metadata["tool"]) for event in client.events(2)] == [10, 10]
    stats = _stats(worker)
    assert stats["dropped"]["oversize"] == 1  # type: ignore[index]
    assert stats["sent"] == 2
    assert stats["buffered_bytes"] == 0
    assert stats["controls_rejected"] == 0


@pytest.mark.parametrize("kind", ["busy", "native"])
def test_tool_runs_for_its_time_and_close_ends_the_call(
    start_scripted: StartScripted, kind: str
) -> None:
    # What bench/tool_throughput.exs relies on: the tool's figures in stats, a close that
    # drains the queue and ends the call with OK, and sent / sent_reports that match
    # what the client got.
    worker, client = start_scripted("--max-buffer", "64")
    reply = _command(
        worker,
        op="tool",
        id=1,
        kind=kind,
        seconds=0.2,
        event="tool.execution.stop",
        measurements={"duration": 1},
        block_bytes=4096,
    )
    assert reply == "ACK 1"
    assert _command(worker, op="close", id=2) == "ACK 2"
    names: list[str] = []
    while not isinstance(item := client.messages.get(timeout=10), StreamEnded):
        names.append(_name(pb.TelemetryEvent.FromString(item)))
    assert item.code == grpc.StatusCode.OK
    stats = _stats(worker)
    tool = stats["tool"]
    assert isinstance(tool, dict)
    assert tool["kind"] == kind
    assert tool["seconds"] >= 0.2
    assert tool["cpu_ns"] > 0
    assert stats["emitted"] == tool["iterations"] > 0
    assert stats["sent"] == len(names)
    assert stats["sent_reports"] == names.count("telemetry.dropped")
    assert names.count("tool.execution.stop") == stats["enqueued"]
    if kind == "busy":
        # Flat out into a queue of 64: most of it overflowed, and the close reported it.
        assert stats["dropped_total"] > 0
        assert stats["sent_reports"] >= 1


def test_tool_rejects_an_unknown_kind(start_scripted: StartScripted) -> None:
    worker, _ = start_scripted()
    reply = _command(worker, op="tool", id=3, kind="lazy", seconds=1, event="a.b")
    assert reply.startswith("ERROR 3 CommandError: kind must be busy or native")
