"""A worker wired the way Snakepit (v0.13) wires its gRPC server, for the Elixir tests.

Snakepit's ``grpc_server.py`` runs a ``grpc.aio`` server whose servicer owns one
``TelemetryStream``, installs a ``GrpcBackend`` over it, and serves ``StreamTelemetry``
with the stream's async generator::

    async def StreamTelemetry(self, request_iterator, context):
        async for event in self.telemetry_stream.stream(request_iterator, context):
            yield event

This script does exactly that, with only ``StreamTelemetry`` registered (as Snakepit's
generated ``add_BridgeServiceServicer_to_server`` does; this repository has no generated
``_pb2_grpc`` module), so clients use the one-event-per-message protocol.

Run as ``.venv/bin/python test/support/python/snakepit_style_worker.py --port 0``. It binds
127.0.0.1, prints ``GRPC_READY:<port>`` once serving, then runs JSON commands read from
stdin, one per line, in order, on the event loop. After a command with an ``"id"`` it
prints ``ACK <id>`` once the command's events are emitted. Exits when stdin closes.

Commands (``op``):

* ``emit``: ``event``, ``measurements``, ``metadata``, ``correlation_id``, ``count`` (1),
  ``thread`` (false): calls ``telemetry.emit`` ``count`` times, on the event loop's thread
  or, with ``thread``, on another thread (``asyncio.to_thread``), as Snakepit adapters do
  from their tool threads.
* ``span``: ``operation``, ``metadata``, ``correlation_id``, ``thread`` (false),
  ``inner`` (none): runs ``with telemetry.span(...)``; with ``inner`` (an event name) it
  also emits that event inside the span without a correlation id (measurement
  ``count``: 1), so it carries the span's.
* ``tool``: as ``scripted_worker.py``'s (``bench_tools.py``), on a thread of its own
  (``asyncio.to_thread``, as Snakepit runs tools); acknowledged when it is done.
* ``close``: closes the stream (the call drains it and ends with status OK).
* ``stats``: prints ``STATS {json}``: the stream's ``dropped_count``, ``enabled`` and
  ``sampling_rate`` (Snakepit's attributes), ``correlation_id`` (what
  ``telemetry.get_correlation_id()`` returns outside any span) and ``policy``: the
  settings the stream applies (``sampling_rules``, ``allow``, ``deny``), so tests can wait
  until a control message has arrived; also the stream's counters as
  ``scripted_worker.py`` gives them (``emitted``, ``enqueued``, ``sent``,
  ``sent_reports``, ``dropped_total``, ...) and the last ``tool`` run.

A command that fails prints ``ERROR <id or -> <message>`` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

import grpc


def _ensure_package_importable() -> None:
    """Fall back to the source tree when snakepit_bridge is not installed."""
    try:
        import snakepit_bridge  # noqa: F401, PLC0415
    except ImportError:
        repo_root = Path(__file__).resolve().parents[3]
        sys.path.insert(0, str(repo_root / "priv" / "python"))


_ensure_package_importable()

from snakepit_bridge import telemetry  # noqa: E402
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb  # noqa: E402
from snakepit_bridge.telemetry.backends.grpc import GrpcBackend  # noqa: E402
from snakepit_bridge.telemetry.manager import set_backend  # noqa: E402
from snakepit_bridge.telemetry.stream import TelemetryStream  # noqa: E402

from bench_tools import run_tool_command  # noqa: E402 - beside this script

Command = Mapping[str, Any]

SERVICE_NAME: Final = "snakepit.bridge.BridgeService"
HOST: Final = "127.0.0.1"
MAX_BUFFER: Final = 1024
"""Snakepit's own ``TelemetryStream(max_buffer=1024)``."""
STOP_GRACE_SECONDS: Final = 1.0


class CommandError(Exception):
    """A command that cannot be run as given."""


class BridgeServiceServicer:
    """The telemetry part of Snakepit's ``BridgeServiceServicer``."""

    def __init__(self) -> None:
        self.telemetry_stream = TelemetryStream(max_buffer=MAX_BUFFER)
        set_backend(GrpcBackend(self.telemetry_stream))

    async def StreamTelemetry(  # noqa: N802 - the RPC's name, as Snakepit's servicer
        self,
        request_iterator: AsyncIterable[pb.TelemetryControl],
        context: grpc.aio.ServicerContext[pb.TelemetryControl, pb.TelemetryEvent],
    ) -> AsyncIterator[pb.TelemetryEvent]:
        """Bidirectional telemetry: control messages in, events out."""
        async for event in self.telemetry_stream.stream(request_iterator, context):
            yield event

    def close(self) -> None:
        """Close the telemetry stream (Snakepit does this on shutdown)."""
        self.telemetry_stream.close()


def add_servicer_to_server(servicer: BridgeServiceServicer, server: grpc.aio.Server) -> None:
    """Register ``StreamTelemetry`` the way Snakepit's generated ``_pb2_grpc`` code does."""
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "StreamTelemetry": grpc.stream_stream_rpc_method_handler(
                servicer.StreamTelemetry,
                request_deserializer=pb.TelemetryControl.FromString,
                response_serializer=pb.TelemetryEvent.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


def reply(line: str) -> None:
    """Write one line to stdout and flush it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


class ScriptRunner:
    """Runs stdin commands against the servicer's stream, on the event loop."""

    def __init__(self, servicer: BridgeServiceServicer) -> None:
        self._servicer = servicer
        self._last_tool: dict[str, object] | None = None
        self._handlers: dict[str, Callable[[Command], Awaitable[None]]] = {
            "emit": self._emit,
            "span": self._span,
            "tool": self._tool,
            "close": self._close,
            "stats": self._stats,
        }

    async def run_line(self, line: str) -> None:
        """Run one JSON command line; reply ``ACK``/``ERROR`` as documented."""
        command_id: object = None
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise CommandError("a command must be a JSON object")
            command_id = command.get("id")
            handler = self._handlers.get(str(command.get("op", "")))
            if handler is None:
                raise CommandError(f"unknown op {command.get('op')!r}")
            await handler(command)
        except Exception as exc:
            label = "-" if command_id is None else command_id
            reply(f"ERROR {label} {type(exc).__name__}: {exc}")
            return
        if command_id is not None:
            reply(f"ACK {command_id}")

    async def _emit(self, command: Command) -> None:
        event = str(command["event"])
        measurements: dict[str, Any] = dict(command.get("measurements") or {})
        raw_metadata = command.get("metadata")
        metadata: dict[str, Any] | None = None if raw_metadata is None else dict(raw_metadata)
        correlation_id = _str_or_none(command.get("correlation_id"))
        count = int(command.get("count", 1))

        def emit_all() -> None:
            for _ in range(count):
                telemetry.emit(event, measurements, metadata, correlation_id=correlation_id)

        if command.get("thread", False):
            await asyncio.to_thread(emit_all)
        else:
            emit_all()

    async def _span(self, command: Command) -> None:
        operation = str(command["operation"])
        raw_metadata = command.get("metadata")
        metadata: dict[str, Any] | None = None if raw_metadata is None else dict(raw_metadata)
        correlation_id = _str_or_none(command.get("correlation_id"))
        inner = _str_or_none(command.get("inner"))

        def run_span() -> None:
            with telemetry.span(operation, metadata, correlation_id=correlation_id):
                if inner is not None:
                    telemetry.emit(inner, {"count": 1}, metadata)

        if command.get("thread", False):
            await asyncio.to_thread(run_span)
        else:
            run_span()

    async def _tool(self, command: Command) -> None:
        try:
            self._last_tool = await asyncio.to_thread(run_tool_command, command)
        except ValueError as error:
            raise CommandError(str(error)) from error

    async def _close(self, command: Command) -> None:
        self._servicer.close()

    async def _stats(self, command: Command) -> None:
        stream = self._servicer.telemetry_stream
        policy = stream.policy
        stats: dict[str, object] = {
            **stream.stats().to_dict(),
            "tool": self._last_tool,
            "dropped_count": stream.dropped_count,
            "enabled": stream.enabled,
            "sampling_rate": stream.sampling_rate,
            "correlation_id": telemetry.get_correlation_id(),
            "policy": {
                "sampling_rules": [
                    {"patterns": list(rule.patterns.patterns), "rate": rule.rate}
                    for rule in policy.sampling_rules
                ],
                "allow": list(policy.allow.patterns),
                "deny": list(policy.deny.patterns),
            },
        }
        reply(f"STATS {json.dumps(stats, separators=(',', ':'))}")


async def serve(port: int) -> int:
    """Serve on ``HOST:port``, announce readiness, run stdin commands until EOF, then stop."""
    server = grpc.aio.server()
    servicer = BridgeServiceServicer()
    add_servicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{HOST}:{port}")
    if bound == 0:
        reply(f"ERROR - cannot bind {HOST}:{port}")
        return 1
    await server.start()
    reply(f"GRPC_READY:{bound}")
    runner = ScriptRunner(servicer)
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip():
                await runner.run_line(line)
    finally:
        servicer.close()
        await server.stop(STOP_GRACE_SECONDS)
    return 0


def main() -> int:
    """Parse the arguments and serve until stdin closes."""
    parser = argparse.ArgumentParser(prog="snakepit_style_worker.py")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 picks one)")
    args = parser.parse_args()
    return asyncio.run(serve(args.port))


if __name__ == "__main__":
    sys.exit(main())
