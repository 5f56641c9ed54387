"""End to end over a real gRPC channel on 127.0.0.1, server in-process."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from conftest import ServedStream
from stream_client import StreamClient, event_filter, sampling, toggle, wait_until

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import (
    CAPABILITIES_HEADER,
    CAPABILITY_BATCHED,
    CAPABILITY_RESTATED_DROPS,
    CAPABILITY_SAMPLING_PATTERNS,
)

Serve = Callable[..., ServedStream]
Connect = Callable[[int], StreamClient]


def _name(event: pb.TelemetryEvent) -> str:
    return ".".join(event.event_parts)


def test_headers_arrive_before_any_event(serve: Serve, connect: Connect) -> None:
    served = serve()
    client = connect(served.port)
    # Nothing has been emitted: the headers must come on their own, not with an event.
    headers = client.wait_headers(timeout=2.0)
    [value] = [value for key, value in headers if key == CAPABILITIES_HEADER]
    assert value.split(",") == [
        CAPABILITY_SAMPLING_PATTERNS,
        CAPABILITY_BATCHED,
        CAPABILITY_RESTATED_DROPS,
    ]
    client.assert_no_message(within=0.05)


def test_events_arrive_in_order_with_their_content(serve: Serve, connect: Connect) -> None:
    served = serve()
    telemetry.set_backend(telemetry.GrpcBackend(served.stream))
    client = connect(served.port)
    client.wait_headers()
    telemetry.emit("tool.execution.stop", {"duration": 900, "ratio": 0.5}, {"tool": "t"}, "c-1")
    with telemetry.span("python.call", {"command": "ping"}, correlation_id="c-2"):
        pass
    first, start, stop = client.events(3)
    assert _name(first) == "tool.execution.stop"
    assert first.measurements["duration"].int_value == 900
    assert first.measurements["ratio"].float_value == 0.5
    assert dict(first.metadata) == {"tool": "t"}
    assert first.correlation_id == "c-1"
    assert [_name(start), _name(stop)] == ["python.call.start", "python.call.stop"]
    assert start.correlation_id == stop.correlation_id == "c-2"
    assert stop.measurements["duration"].int_value > 0
    wait_until(lambda: served.stream.stats().sent == 3)


def test_events_emitted_before_the_client_connects_are_delivered(
    serve: Serve, connect: Connect
) -> None:
    served = serve()
    for index in range(5):
        served.stream.emit(f"early.{index}", {"n": index})
    client = connect(served.port)
    assert [_name(e) for e in client.events(5)] == [f"early.{i}" for i in range(5)]


def test_toggle_takes_effect(serve: Serve, connect: Connect) -> None:
    served = serve()
    stream = served.stream
    client = connect(served.port)
    client.wait_headers()
    client.send(toggle(False))
    wait_until(lambda: not stream.is_enabled())
    stream.emit("while.off", {})
    client.assert_no_message(within=0.1)
    assert stream.dropped_counts()["disabled"] == 1
    client.send(toggle(True))
    wait_until(stream.is_enabled)
    stream.emit("while.on", {})
    assert _name(client.next_event()) == "while.on"


def test_pattern_sampling_and_filters_take_effect(serve: Serve, connect: Connect) -> None:
    served = serve()
    stream = served.stream
    service = served.server.service
    client = connect(served.port)
    client.wait_headers()
    client.send(sampling(0.0, "python.call.*"))
    client.send(event_filter(allow=("tool.*", "python.*"), deny=("tool.result_size",)))
    wait_until(lambda: service.controls_applied == 2)
    for name in ("python.call.start", "tool.result_size", "other.event", "tool.execution.stop"):
        stream.emit(name, {})
    assert _name(client.next_event()) == "tool.execution.stop"
    client.assert_no_message(within=0.05)
    counts = stream.dropped_counts()
    assert counts["sampled_out"] == 1
    assert counts["filtered_out"] == 2


def test_new_call_replaces_the_previous_one(serve: Serve, connect: Connect) -> None:
    served = serve()
    stream = served.stream
    service = served.server.service
    first = connect(served.port)
    first.wait_headers()
    stream.emit("to.first", {})
    assert _name(first.next_event()) == "to.first"

    second = connect(served.port)
    second.wait_headers()
    assert first.wait_end() == grpc.StatusCode.OK  # the old response stream ends
    stream.emit("to.second", {})
    assert _name(second.next_event()) == "to.second"

    # A control message on the replaced call must not change the new call's settings.
    first.send(toggle(False))
    second.send(sampling(1.0))
    wait_until(lambda: service.controls_applied >= 1)
    assert stream.is_enabled()


def test_worker_that_ignores_control(serve: Serve, connect: Connect) -> None:
    served = serve(honour_control=False)
    service = served.server.service
    client = connect(served.port)
    headers = client.wait_headers()
    assert all(key != CAPABILITIES_HEADER for key, _ in headers)
    client.send(toggle(False))
    wait_until(lambda: service.controls_received == 1)
    assert service.controls_applied == 0
    served.stream.emit("still.sent", {})
    assert _name(client.next_event()) == "still.sent"


def test_raw_bytes_go_on_the_wire_unchanged(serve: Serve, connect: Connect) -> None:
    served = serve()
    client = connect(served.port)
    served.stream.enqueue_raw(b"\xff\x00garbage")
    assert client.next_raw() == b"\xff\x00garbage"


def test_stop_drains_then_ends_the_call_ok(serve: Serve, connect: Connect) -> None:
    served = serve()
    client = connect(served.port)
    client.wait_headers()
    served.stream.emit("last.words", {})
    assert _name(client.next_event()) == "last.words"
    served.server.stop(grace=1.0)
    assert client.wait_end() == grpc.StatusCode.OK


def test_overflow_while_client_is_slow_is_counted_not_blocking(
    serve: Serve, connect: Connect
) -> None:
    served = serve(max_buffer=16)
    for index in range(1_000):
        served.stream.emit(f"burst.{index}", {})
    stats = served.stream.stats()
    assert stats.dropped["overflow"] == 1_000 - 16
    client = connect(served.port)
    assert [_name(e) for e in client.events(16)] == [f"burst.{i}" for i in range(16)]
