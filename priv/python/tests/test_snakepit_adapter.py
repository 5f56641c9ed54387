"""Code written against Snakepit v0.13's ``snakepit_bridge.telemetry`` runs here unchanged.

Each test uses the API the way a Snakepit adapter does: Snakepit's import paths, a custom
backend subclass with Snakepit's ``emit`` signature, ``emit``/``span`` with correlation
ids, the correlation helpers, the stderr line, and a ``grpc.aio`` servicer that serves
``TelemetryStream.stream`` as Snakepit's ``grpc_server.py`` does (here to a Python client;
``test/snakepit/telemetry/snakepit_style_servicer_test.exs`` serves one to the NIF).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from stream_client import StreamClient, event_filter, sampling, toggle, wait_until

# Snakepit's import paths, as adapters write them.
from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.backends.base import TelemetryBackend
from snakepit_bridge.telemetry.backends.grpc import GrpcBackend
from snakepit_bridge.telemetry.backends.stderr import StderrBackend
from snakepit_bridge.telemetry.manager import get_backend, is_enabled, set_backend
from snakepit_bridge.telemetry.stream import TelemetryStream


class ListBackend(TelemetryBackend):
    """A custom backend, written with Snakepit's signature."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], dict[str, Any] | None, str | None]] = []
        self.closed = False

    def emit(
        self,
        event_name: str,
        measurements: dict[str, Any],  # type: ignore[override]
        metadata: dict[str, Any] | None = None,  # type: ignore[override]
        correlation_id: str | None = None,
    ) -> None:
        self.events.append((event_name, dict(measurements), metadata, correlation_id))

    def close(self) -> None:
        self.closed = True


def test_manager_installs_a_custom_backend_that_receives_emit_and_span() -> None:
    backend = ListBackend()
    set_backend(backend)
    assert get_backend() is backend
    assert telemetry.get_backend() is backend
    assert is_enabled()

    telemetry.emit("tool.result_size", {"bytes": 10}, {"tool": "predict"}, correlation_id="c-1")
    telemetry.emit("tool.result_size", {"bytes": 11})
    with telemetry.span("tool.execution", {"tool": "predict"}, "c-2"):
        pass
    with pytest.raises(ZeroDivisionError), telemetry.span("inference", {"model": "m"}, "c-3"):
        _ = 1 / 0

    names = [event[0] for event in backend.events]
    assert names == [
        "tool.result_size",
        "tool.result_size",
        "tool.execution.start",
        "tool.execution.stop",
        "inference.start",
        "inference.exception",
    ]
    assert backend.events[0] == ("tool.result_size", {"bytes": 10}, {"tool": "predict"}, "c-1")
    assert backend.events[1][3] is None
    assert {event[3] for event in backend.events[2:4]} == {"c-2"}
    start, stop = backend.events[2], backend.events[3]
    assert set(start[1]) == {"system_time"}
    assert set(stop[1]) == {"duration"} and stop[1]["duration"] >= 0
    exception = backend.events[5]
    assert exception[2] == {
        "model": "m",
        "error_type": "ZeroDivisionError",
        "error_message": "division by zero",
    }
    assert exception[3] == "c-3"

    set_backend(None)
    assert get_backend() is None
    assert not is_enabled()
    telemetry.emit("tool.result_size", {"bytes": 12})
    assert len(backend.events) == 6


def test_a_backend_that_raises_does_not_break_the_caller() -> None:
    class Broken(ListBackend):
        def emit(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("backend down")

    set_backend(Broken())
    telemetry.emit("tool.result_size", {"bytes": 1})
    with telemetry.span("tool.execution"):
        pass
    assert telemetry.dropped_counts()["backend_error"] == 3


def test_correlation_helpers() -> None:
    assert telemetry.CORRELATION_HEADER == "x-snakepit-correlation-id"
    assert telemetry.get_correlation_id() is None
    assert telemetry.get_correlation_id("-") == "-"
    assert telemetry.outgoing_metadata() == []
    initial = [("authorization", "Bearer t")]
    assert telemetry.outgoing_metadata(initial) == initial

    new_id = telemetry.new_correlation_id()
    assert re.fullmatch(r"[0-9a-f]{32}", new_id)
    assert telemetry.new_correlation_id() != new_id

    token = telemetry.set_correlation_id(new_id)
    try:
        assert telemetry.get_correlation_id() == new_id
        assert telemetry.get_correlation_id("-") == new_id
        assert telemetry.outgoing_metadata(initial) == [
            ("authorization", "Bearer t"),
            ("x-snakepit-correlation-id", new_id),
        ]
        assert initial == [("authorization", "Bearer t")]  # copied, not changed
        # Emitted without an explicit id, events carry the context's.
        backend = ListBackend()
        set_backend(backend)
        telemetry.emit("tool.result_size", {"bytes": 1})
        assert backend.events[0][3] == new_id
    finally:
        telemetry.reset_correlation_id(token)
    assert telemetry.get_correlation_id() is None
    telemetry.reset_correlation_id(None)  # Snakepit accepts a None token


def test_correlation_filter_puts_the_id_on_log_records() -> None:
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(correlation_id)s %(message)s"))
    handler.addFilter(telemetry.correlation_filter())
    logger = logging.getLogger("snakepit_adapter_test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside")
        token = telemetry.set_correlation_id("req-7")
        try:
            logger.warning("inside")
        finally:
            telemetry.reset_correlation_id(token)
    finally:
        logger.removeHandler(handler)
    assert output.getvalue().splitlines() == ["- outside", "req-7 inside"]


def test_stderr_backend_line_matches_snakepits(capsys: pytest.CaptureFixture[str]) -> None:
    set_backend(StderrBackend())
    telemetry.emit(
        "tool.execution.stop", {"duration": 1500}, {"tool": "predict"}, correlation_id="abc-123"
    )
    telemetry.emit("tool.result_size", {"bytes": 3})
    first, second = capsys.readouterr().err.splitlines()
    timestamp = json.loads(first.removeprefix("TELEMETRY:"))["timestamp_ns"]
    assert first == (
        'TELEMETRY:{"event": "tool.execution.stop", "measurements": {"duration": 1500}, '
        f'"metadata": {{"tool": "predict"}}, "timestamp_ns": {timestamp}, '
        '"correlation_id": "abc-123"}'
    )
    assert second.endswith(', "correlation_id": ""}')


def test_stream_attributes_as_snakepit_has_them() -> None:
    stream = TelemetryStream(max_buffer=1024)
    assert stream.enabled is True
    assert stream.sampling_rate == 1.0
    assert stream.dropped_count == 0
    set_backend(GrpcBackend(stream))

    stream.enabled = False
    telemetry.emit("tool.result_size", {"bytes": 1})
    assert stream.dropped_count == 1
    assert not telemetry.is_enabled()
    stream.enabled = True

    stream.sampling_rate = 0.0
    telemetry.emit("tool.result_size", {"bytes": 1})
    assert stream.dropped_count == 2
    stream.sampling_rate = 7  # clamped, as Snakepit clamps
    assert stream.sampling_rate == 1.0
    stream.sampling_rate = -1
    assert stream.sampling_rate == 0.0
    with pytest.raises(ValueError, match="nan"):
        stream.sampling_rate = float("nan")
    assert stream.sampling_rate == 0.0
    stream.sampling_rate = 1.0
    telemetry.emit("tool.result_size", {"bytes": 1})
    assert len(stream.buffer) == 1

    stream.close()
    assert stream.enabled is False
    stream.enabled = True  # a closed stream stays closed
    assert stream.enabled is False


# -- a grpc.aio servicer written as Snakepit's ------------------------------------------


class SnakepitStyleServicer:
    """The telemetry half of a Snakepit-style ``BridgeServiceServicer``."""

    def __init__(self) -> None:
        self.telemetry_stream = TelemetryStream(max_buffer=1024)
        set_backend(GrpcBackend(self.telemetry_stream))

    async def StreamTelemetry(  # noqa: N802 - the gRPC method's name
        self,
        request_iterator: AsyncIterator[pb.TelemetryControl],
        context: grpc.aio.ServicerContext[pb.TelemetryControl, pb.TelemetryEvent],
    ) -> AsyncIterator[pb.TelemetryEvent]:
        async for event in self.telemetry_stream.stream(request_iterator, context):
            yield event


class AioServer:
    """A ``grpc.aio`` server on its own event loop thread, as a Snakepit worker runs one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.servicer: SnakepitStyleServicer
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self.run(self._start())

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def _start(self) -> grpc.aio.Server:
        self.servicer = SnakepitStyleServicer()
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self.servicer.StreamTelemetry,
            request_deserializer=pb.TelemetryControl.FromString,
            response_serializer=pb.TelemetryEvent.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "snakepit.bridge.BridgeService", {"StreamTelemetry": handler}
                ),
            )
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server

    def stop(self) -> None:
        self.run(self._server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def aio_server() -> Iterator[AioServer]:
    server = AioServer()
    yield server
    server.stop()


@pytest.fixture
def client(aio_server: AioServer) -> Iterator[StreamClient]:
    stream_client = StreamClient(aio_server.port)
    yield stream_client
    stream_client.close()


def test_aio_servicer_streams_events_with_the_capability_header(
    aio_server: AioServer, client: StreamClient
) -> None:
    headers = dict(client.wait_headers())
    assert headers["x-snakepit-telemetry-capabilities"] == "sampling-patterns,restated-drops"
    assert headers["x-snakepit-telemetry-sent"] == "0"
    assert len(headers["x-snakepit-telemetry-stream-id"]) == 16
    telemetry.emit("tool.execution.stop", {"duration": 5}, {"tool": "t"}, correlation_id="c")
    event = client.next_event()
    assert list(event.event_parts) == ["tool", "execution", "stop"]
    assert event.measurements["duration"].int_value == 5
    assert dict(event.metadata) == {"tool": "t"}
    assert event.correlation_id == "c"

    # From another thread while the call waits, and from the event loop's own thread.
    emitter = threading.Thread(
        target=lambda: [telemetry.emit("tool.result_size", {"bytes": n}) for n in range(100)]
    )
    emitter.start()
    emitter.join()
    aio_server.run(_emit_on_loop())
    received = client.events(101)
    assert [e.measurements["bytes"].int_value for e in received[:100]] == list(range(100))
    assert list(received[100].event_parts) == ["python", "gc", "completed"]
    assert aio_server.servicer.telemetry_stream.stats().sent == 102


async def _emit_on_loop() -> None:
    telemetry.emit("python.gc.completed", {"collected": 1})


def test_aio_servicer_applies_controls_as_they_arrive(
    aio_server: AioServer, client: StreamClient
) -> None:
    stream = aio_server.servicer.telemetry_stream
    client.wait_headers()

    client.send(toggle(False))
    wait_until(lambda: not stream.enabled)
    telemetry.emit("tool.result_size", {"bytes": 1})
    assert stream.dropped_counts()["disabled"] == 1
    client.send(toggle(True))
    wait_until(lambda: stream.enabled)

    client.send(sampling(0.0))
    wait_until(lambda: stream.sampling_rate == 0.0)
    telemetry.emit("tool.result_size", {"bytes": 2})
    assert stream.dropped_counts()["sampled_out"] == 1
    client.send(sampling(1.0))
    client.send(sampling(0.0, "python.*"))  # pattern-scoped, applied at the source
    client.send(event_filter(deny=("tool.debug.*",)))
    wait_until(lambda: stream.policy.deny)
    telemetry.emit("python.gc.completed", {"collected": 1})
    telemetry.emit("tool.debug.trace", {"n": 1})
    telemetry.emit("tool.result_size", {"bytes": 3})
    kept = _next_event_not_a_drop_report(client)
    assert list(kept.event_parts) == ["tool", "result_size"]
    assert kept.measurements["bytes"].int_value == 3
    assert stream.dropped_counts()["filtered_out"] == 1
    assert stream.dropped_counts()["sampled_out"] == 2


def _next_event_not_a_drop_report(client: StreamClient) -> pb.TelemetryEvent:
    while True:
        event = client.next_event()
        if list(event.event_parts) != ["telemetry", "dropped"]:
            return event


def test_aio_servicer_reports_drops_and_counts_rejected_controls(
    aio_server: AioServer, client: StreamClient
) -> None:
    stream = aio_server.servicer.telemetry_stream
    client.wait_headers()
    client.send(sampling(float("nan")))
    wait_until(lambda: stream.controls_rejected == 1)
    assert stream.sampling_rate == 1.0
    client.send(toggle(False))
    wait_until(lambda: not stream.enabled)
    for _ in range(5):
        telemetry.emit("tool.result_size", {"bytes": 1})
    report = client.next_event()
    assert list(report.event_parts) == ["telemetry", "dropped"]
    assert report.measurements["count"].int_value == 5
    assert dict(report.metadata) == {"reason": "disabled"}


def test_aio_servicer_call_ends_after_close_drains(
    aio_server: AioServer, client: StreamClient
) -> None:
    client.wait_headers()
    stream = aio_server.servicer.telemetry_stream
    for n in range(3):
        telemetry.emit("tool.result_size", {"bytes": n})
    stream.close()
    assert [e.measurements["bytes"].int_value for e in client.events(3)] == [0, 1, 2]
    assert client.wait_end() == grpc.StatusCode.OK


def test_a_newer_call_replaces_the_current_one(aio_server: AioServer, client: StreamClient) -> None:
    client.wait_headers()
    second = StreamClient(aio_server.port)
    try:
        second.wait_headers()
        assert client.wait_end() == grpc.StatusCode.OK
        telemetry.emit("tool.result_size", {"bytes": 9})
        assert second.next_event().measurements["bytes"].int_value == 9
        # The second call was told what the first one had been handed (nothing).
        assert dict(second.wait_headers())["x-snakepit-telemetry-sent"] == "0"
    finally:
        second.close()
    stream = aio_server.servicer.telemetry_stream
    wait_until(lambda: stream.current_consumer is None)


def test_aio_servicer_serves_only_the_holder_of_the_workers_token(
    aio_server: AioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Elixir Worker starts a worker with SNAKEPIT_WORKER_TOKEN; the NIF sends it.
    monkeypatch.setenv("SNAKEPIT_WORKER_TOKEN", "s3cret-token")
    stream = aio_server.servicer.telemetry_stream
    owner = StreamClient(aio_server.port, (("authorization", "Bearer s3cret-token"),))
    try:
        owner.wait_headers()
        consumer = stream.current_consumer
        assert consumer is not None
        owner.send(sampling(0.5))
        wait_until(lambda: stream.sampling_rate == 0.5)
        for metadata in (None, (("authorization", "Bearer wrong-token"),)):
            intruder = StreamClient(aio_server.port, metadata)
            try:
                intruder.send(toggle(False))
                assert intruder.wait_end() == grpc.StatusCode.UNAUTHENTICATED
            finally:
                intruder.close()
        # The owner's call and settings are untouched.
        assert stream.current_consumer is consumer
        assert stream.enabled and stream.sampling_rate == 0.5
        owner.send(sampling(1.0))
        wait_until(lambda: stream.sampling_rate == 1.0)
        telemetry.emit("tool.result_size", {"bytes": 4})
        assert _next_event_not_a_drop_report(owner).measurements["bytes"].int_value == 4
    finally:
        owner.close()


def test_aio_servicer_drops_and_counts_what_protobuf_refuses(
    aio_server: AioServer, client: StreamClient
) -> None:
    client.wait_headers()
    stream = aio_server.servicer.telemetry_stream
    telemetry.emit("tool.result_size", {"bytes": 1}, {"bad": "\ud800"})  # lone surrogate
    telemetry.emit("tool.result_size", {"bytes": 2**64})  # outside int64
    telemetry.emit("tool.result_size", {"bytes": 3}, {f"k{n}": "v" for n in range(300)})
    event = _next_event_not_a_drop_report(client)
    assert event.measurements["bytes"].int_value == 3
    assert len(event.metadata) == 300
    assert stream.dropped_counts()["encode_error"] == 2
    stats = stream.stats()
    assert stats.emitted == stats.enqueued + stats.dropped_total


def test_aio_servicer_under_a_burst_from_many_threads_accounts_for_every_event(
    aio_server: AioServer, client: StreamClient
) -> None:
    client.wait_headers()
    stream = aio_server.servicer.telemetry_stream
    threads = [
        threading.Thread(
            target=lambda: [telemetry.emit("tool.result_size", {"bytes": n}) for n in range(5_000)]
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = stream.stats()
    assert stats.emitted == 40_000
    # Everything kept arrives (drop reports apart); the rest was dropped and counted.
    received = 0
    while received < stats.enqueued:
        event = client.next_event()
        if list(event.event_parts) != ["telemetry", "dropped"]:
            received += 1
    assert received == stats.enqueued
    assert stats.enqueued + stats.dropped_total == 40_000
    wait_until(lambda: stream.stats().buffered == 0)
