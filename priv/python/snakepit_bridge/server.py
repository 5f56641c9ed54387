"""The worker's gRPC server: ``snakepit.bridge.BridgeService``.

Serves ``StreamTelemetry``, ``StreamTelemetryBatched`` and ``ExecuteTool`` from a
``grpc.aio`` server whose event loop runs on a thread of its own
(:class:`~snakepit_bridge.event_loop_thread.EventLoopThread`), so the worker's own code
stays synchronous. On the event loop a message costs the worker far fewer thread
hand-offs, each a trip through the GIL, than on a thread-pool server; with a tool thread
holding the GIL that is several times the events per second (``bench/RESULTS.md``).

The Python worker is the server; the client (the NIF) opens one bidirectional telemetry
call, sends ``TelemetryControl`` messages and receives events: one ``TelemetryEvent`` per
message on ``StreamTelemetry`` (Snakepit's RPC), or ``TelemetryEventBatch`` messages of
many events on ``StreamTelemetryBatched`` (this project's extension). Both handlers

* send their response headers first, before any event, including the capability header
  ``x-snakepit-telemetry-capabilities: sampling-patterns,batched`` when they honour
  control messages (``sampling-patterns``: pattern-scoped sampling is applied;
  ``batched``: ``StreamTelemetryBatched`` is served);
* read control messages in a task of their own and apply them to the
  :class:`~snakepit_bridge.telemetry.stream.TelemetryStream` (one with an invalid rate or
  pattern is rejected whole and counted in the stream's ``controls_rejected``; nothing a
  client sends raises out of the handler);
* stream the buffered events; a newer call, of either RPC, replaces the current one,
  whose response stream then ends with status OK.

A batch packs whatever is buffered when it is built, up to ``max_batch_events`` events
and ``max_batch_bytes`` bytes, never waits to fill up, and paces messages by
``min_batch_interval`` (see :meth:`~snakepit_bridge.telemetry.stream.StreamConsumer.batches`);
it is built by concatenating the already-serialized events, so no protobuf object is made
per event.

The response serializer accepts a message or bytes that are already a serialized
message, so tests can put arbitrary bytes on the wire.

``ExecuteTool`` runs a tool from a :class:`~snakepit_bridge.tools.registry.ToolRegistry`
on a thread of :class:`ToolService`'s own pool, never on the event loop (the call's
correlation id comes from the ``x-snakepit-correlation-id`` header, else the request's
``metadata["correlation_id"]``).

With a token (``SNAKEPIT_WORKER_TOKEN`` or ``token=``), every method is behind
:class:`~snakepit_bridge.auth.BearerTokenInterceptor`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Final

import grpc
import grpc.aio

from snakepit_bridge.auth import BearerToken, BearerTokenInterceptor, TokenSource, resolve_token
from snakepit_bridge.event_loop_thread import EventLoopThread
from snakepit_bridge.rpc import (
    EXECUTE_TOOL_METHOD,
    EXECUTE_TOOL_PATH,
    SERVICE_NAME,
    STREAM_TELEMETRY_BATCHED_METHOD,
    STREAM_TELEMETRY_BATCHED_PATH,
    STREAM_TELEMETRY_METHOD,
    STREAM_TELEMETRY_PATH,
    parse_or_none,
    serialize_outgoing,
)
from snakepit_bridge.telemetry.protocol import (
    CAPABILITIES_HEADER,
    CAPABILITY_BATCHED,
    CAPABILITY_RESTATED_DROPS,
    CAPABILITY_SAMPLING_PATTERNS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MIN_BATCH_INTERVAL,
    SINGLE_RPC_CAPABILITIES,
)
from snakepit_bridge.telemetry.stream import TelemetryStream
from snakepit_bridge.telemetry_service import (
    CAPABILITIES,
    MAX_MESSAGE_HEADER,
    TelemetryService,
    client_max_message_bytes,
)
from snakepit_bridge.tools import DEFAULT_REGISTRY, ToolRegistry
from snakepit_bridge.tools.service import DEFAULT_MAX_TOOL_CALLS, ToolService

# The service's names, its handlers and their constants are re-exported: this module is
# where a worker's author looks for them.
__all__ = [
    "CAPABILITIES",
    "CAPABILITIES_HEADER",
    "CAPABILITY_BATCHED",
    "CAPABILITY_RESTATED_DROPS",
    "CAPABILITY_SAMPLING_PATTERNS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_TOOL_CALLS",
    "EXECUTE_TOOL_METHOD",
    "EXECUTE_TOOL_PATH",
    "KEEPALIVE_TIMEOUT_MS",
    "MAX_MESSAGE_HEADER",
    "SERVICE_NAME",
    "SINGLE_RPC_CAPABILITIES",
    "STREAM_TELEMETRY_BATCHED_METHOD",
    "STREAM_TELEMETRY_BATCHED_PATH",
    "STREAM_TELEMETRY_METHOD",
    "STREAM_TELEMETRY_PATH",
    "BridgeServer",
    "ServerStartError",
    "TelemetryService",
    "ToolService",
    "client_max_message_bytes",
    "parse_or_none",
    "serialize_outgoing",
]

KEEPALIVE_TIMEOUT_MS: Final = 300_000
"""The server's keepalive timeout, which gRPC also sets as the sockets' ``TCP_USER_TIMEOUT``
(gRFC A18): how long sent data may stay unacknowledged before the kernel aborts the
connection. gRPC's default, 20 s, aborted telemetry connections while the client held the
stream back (its buffer full, under CPU saturation: 100 workers on 2 cores, ``bench/scale.exs``
lost 4-14 streams per 45-60 s run, "recvmsg: Connection timed out" in the worker's gRPC
trace); with 5 minutes none broke. A peer that dies closes the socket at once on the same
host; a vanished remote peer is still detected, after 5 minutes."""

DEFAULT_HOST: Final = "127.0.0.1"

STOP_MARGIN_SECONDS: Final = 5.0
"""How much longer than its grace :meth:`BridgeServer.stop` waits for the server to stop."""


class ServerStartError(RuntimeError):
    """The gRPC server could not bind its address."""


class BridgeServer:
    """A ``grpc.aio`` server bound to one address, serving ``BridgeService``.

    ``StreamTelemetry`` and ``StreamTelemetryBatched`` (:class:`TelemetryService`) and
    ``ExecuteTool`` (:class:`ToolService`), all behind the bearer-token check when there
    is a token. Its event loop runs on a thread of its own, started by :meth:`start`.
    """

    def __init__(
        self,
        stream: TelemetryStream,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        honour_control: bool = True,
        max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS,
        tools: ToolRegistry | None = None,
        token: str | BearerToken | TokenSource | None = TokenSource.FROM_ENV,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        min_batch_interval: float = DEFAULT_MIN_BATCH_INTERVAL,
        serve_batched: bool = True,
    ) -> None:
        """Prepare a server for ``stream`` on ``host:port`` (port 0 picks a free one).

        Args:
            stream: the telemetry buffer served by both telemetry RPCs.
            host: address to bind; loopback by default.
            port: port to bind; 0 picks a free one.
            honour_control: see :class:`TelemetryService`.
            max_tool_calls: most ``ExecuteTool`` calls run at a time (the tool threads;
                see :class:`ToolService`).
            tools: the tools ``ExecuteTool`` runs (default: the default registry).
            token: the bearer token every call must carry. By default it is read from
                ``SNAKEPIT_WORKER_TOKEN`` (unset: no check); None turns the check off.
            max_batch_events: see :class:`TelemetryService`.
            max_batch_bytes: see :class:`TelemetryService`.
            min_batch_interval: see :class:`TelemetryService`.
            serve_batched: see :class:`TelemetryService`.

        Raises:
            ValueError: if the token is empty or not visible ASCII (the message never
                includes it), a batch bound is not an integer >= 1, the batch interval
                is not a finite number >= 0, or ``max_tool_calls`` is not an integer >= 1.
        """
        bearer = resolve_token(token)
        self._stream = stream
        self._address = f"{host}:{port}"
        self._service = TelemetryService(
            stream,
            honour_control=honour_control,
            max_batch_events=max_batch_events,
            max_batch_bytes=max_batch_bytes,
            min_batch_interval=min_batch_interval,
            serve_batched=serve_batched,
        )
        self._tool_service = ToolService(
            DEFAULT_REGISTRY if tools is None else tools, max_tool_calls
        )
        self._bearer = bearer
        self._loop_thread = EventLoopThread("snakepit-grpc")
        self._server: grpc.aio.Server | None = None
        self._port: int | None = None
        self._stopped = threading.Event()

    @property
    def service(self) -> TelemetryService:
        """The telemetry handlers (``StreamTelemetry``, ``StreamTelemetryBatched``)."""
        return self._service

    @property
    def tool_service(self) -> ToolService:
        """The ``ExecuteTool`` handler."""
        return self._tool_service

    @property
    def token_required(self) -> bool:
        """True when every call must carry the bearer token."""
        return self._bearer is not None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    def start(self) -> int:
        """Start the event loop's thread, bind and start serving; return the bound port.

        Raises:
            ServerStartError: if the address cannot be bound.
        """
        self._loop_thread.start()
        try:
            port = self._loop_thread.run(self._start())
        except BaseException:
            self._loop_thread.stop()
            raise
        self._port = port
        return port

    async def _start(self) -> int:
        interceptors = [] if self._bearer is None else [BearerTokenInterceptor(self._bearer)]
        # SO_REUSEPORT off: two workers must never share a port by accident.
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ],
            interceptors=interceptors,
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        **self._service.method_handlers(),
                        EXECUTE_TOOL_METHOD: self._tool_service.method_handler(),
                    },
                ),
            )
        )
        try:
            port = server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise ServerStartError(f"cannot bind {self._address}: {exc}") from exc
        if port == 0:
            raise ServerStartError(f"cannot bind {self._address}")
        await server.start()
        self._server = server
        return port

    def stop(self, grace: float | None = 1.0) -> None:
        """Close the stream (the call drains and ends), then stop within ``grace`` seconds.

        Idempotent; also ends a server never started.
        """
        self._stream.close()
        server = self._server
        self._server = None
        if server is not None:
            with contextlib.suppress(RuntimeError, TimeoutError):
                self._loop_thread.run(server.stop(grace), _stop_timeout(grace))
        self._loop_thread.stop()
        self._tool_service.shutdown()
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops or ``timeout`` passes; True if it stopped."""
        return self._stopped.wait(timeout)


def _stop_timeout(grace: float | None) -> float | None:
    """How long :meth:`BridgeServer.stop` waits for the server: its grace and a margin."""
    return None if grace is None else grace + STOP_MARGIN_SECONDS
