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

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeAlias, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from snakepit_bridge.auth import BearerToken, BearerTokenInterceptor, TokenSource, resolve_token
from snakepit_bridge.event_loop_thread import EventLoopThread
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.aio import AsyncStreamConsumer
from snakepit_bridge.telemetry.counters import Counter
from snakepit_bridge.telemetry.stream import (
    CAPABILITIES_HEADER,
    CAPABILITY_BATCHED,
    CAPABILITY_RESTATED_DROPS,
    CAPABILITY_SAMPLING_PATTERNS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MIN_BATCH_INTERVAL,
    SENT_HEADER,
    SINGLE_RPC_CAPABILITIES,
    STREAM_ID_HEADER,
    OutgoingMessage,
    TelemetryStream,
    check_batch_bounds,
    check_batch_interval,
)
from snakepit_bridge.tools import DEFAULT_REGISTRY, ToolRegistry
from snakepit_bridge.tools.execution import correlation_id_of, run_tool_call

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

SERVICE_NAME: Final = "snakepit.bridge.BridgeService"
STREAM_TELEMETRY_METHOD: Final = "StreamTelemetry"
STREAM_TELEMETRY_PATH: Final = f"/{SERVICE_NAME}/{STREAM_TELEMETRY_METHOD}"
STREAM_TELEMETRY_BATCHED_METHOD: Final = "StreamTelemetryBatched"
STREAM_TELEMETRY_BATCHED_PATH: Final = f"/{SERVICE_NAME}/{STREAM_TELEMETRY_BATCHED_METHOD}"
EXECUTE_TOOL_METHOD: Final = "ExecuteTool"
EXECUTE_TOOL_PATH: Final = f"/{SERVICE_NAME}/{EXECUTE_TOOL_METHOD}"

CAPABILITIES: Final = (
    f"{CAPABILITY_SAMPLING_PATTERNS},{CAPABILITY_BATCHED},{CAPABILITY_RESTATED_DROPS}"
)
"""The capability header's value: comma-separated tokens."""

MAX_MESSAGE_HEADER: Final = "x-snakepit-max-message-bytes"
"""Request header: the longest response message the client reads (decimal bytes)."""
MIN_CLIENT_MESSAGE_BYTES: Final = 1024
"""A smaller ``MAX_MESSAGE_HEADER`` value is ignored (no client asks for less)."""

KEEPALIVE_TIMEOUT_MS: Final = 300_000
"""The server's keepalive timeout, which gRPC also sets as the sockets' ``TCP_USER_TIMEOUT``
(gRFC A18): how long sent data may stay unacknowledged before the kernel aborts the
connection. gRPC's default, 20 s, aborted telemetry connections while the client held the
stream back (its buffer full, under CPU saturation: 100 workers on 2 cores, ``bench/scale.exs``
lost 4-14 streams per 45-60 s run, "recvmsg: Connection timed out" in the worker's gRPC
trace); with 5 minutes none broke. A peer that dies closes the socket at once on the same
host; a vanished remote peer is still detected, after 5 minutes."""

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_MAX_TOOL_CALLS: Final = 6
"""``ExecuteTool`` calls run at a time, each on a thread of its own; a call beyond that is
refused at once with ``RESOURCE_EXHAUSTED``. Telemetry calls run on the event loop and
never wait for a tool thread."""

STOP_MARGIN_SECONDS: Final = 5.0
"""How much longer than its grace :meth:`BridgeServer.stop` waits for the server to stop."""

Metadata = tuple[tuple[str, str], ...]
_Message = TypeVar("_Message")
TelemetryContext: TypeAlias = "grpc.aio.ServicerContext[pb.TelemetryControl, bytes]"
"""The servicer context of a telemetry call."""
ToolContext: TypeAlias = "grpc.aio.ServicerContext[pb.ExecuteToolRequest, pb.ExecuteToolResponse]"
"""The servicer context of an ``ExecuteTool`` call."""


class ServerStartError(RuntimeError):
    """The gRPC server could not bind its address."""


def serialize_outgoing(message: OutgoingMessage | pb.TelemetryEventBatch) -> bytes:
    """Serialize a response message; bytes pass through unchanged."""
    if type(message) is bytes:
        return message
    return message.SerializeToString()  # type: ignore[union-attr]


def parse_or_none(parse: Callable[[bytes], _Message]) -> Callable[[bytes], _Message | None]:
    """Wrap a request deserializer so that bytes it cannot parse give None, not an exception.

    The handler then answers with a status of its own (or counts a control message as
    rejected) instead of the server logging the exception of every malformed request.
    """

    def parse_request(data: bytes) -> _Message | None:
        try:
            return parse(data)
        except DecodeError:
            return None

    return parse_request


def client_max_message_bytes(
    invocation_metadata: Iterable[tuple[str, str | bytes]] | None, max_batch_bytes: int
) -> int:
    """Return the batch byte bound for a call.

    That is ``max_batch_bytes``, lowered to the client's ``x-snakepit-max-message-bytes``
    when that is smaller; a missing, repeated or malformed header, or one below 1024, is
    ignored.
    """
    values = [value for key, value in invocation_metadata or () if key == MAX_MESSAGE_HEADER]
    if len(values) != 1:
        return max_batch_bytes
    raw = values[0]
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return max_batch_bytes
    limit = int(text)
    if limit < MIN_CLIENT_MESSAGE_BYTES:
        return max_batch_bytes
    return min(max_batch_bytes, limit)


class TelemetryService:
    """The ``StreamTelemetry`` and ``StreamTelemetryBatched`` handlers over one stream."""

    def __init__(
        self,
        stream: TelemetryStream,
        *,
        honour_control: bool = True,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        min_batch_interval: float = DEFAULT_MIN_BATCH_INTERVAL,
        serve_batched: bool = True,
    ) -> None:
        """Serve ``stream``.

        Args:
            stream: the buffer ``emit`` writes to.
            honour_control: apply client control messages and advertise the capability
                header. False reads and discards them (simulates a worker that ignores
                control messages) and sends no capability header (both RPCs are still
                served).
            max_batch_events: most events in one ``TelemetryEventBatch`` (>= 1).
            max_batch_bytes: most bytes of one serialized ``TelemetryEventBatch``,
                framing included (>= 1); a single event larger than that goes alone.
            min_batch_interval: least seconds from one batch message to the next unless
                a full batch (or half the stream's bound) is buffered (>= 0; 0 sends
                whenever anything is buffered; see :mod:`snakepit_bridge.telemetry.stream`).
            serve_batched: serve ``StreamTelemetryBatched`` (False: only
                ``StreamTelemetry``, as Snakepit's own workers; clients fall back to it).

        Raises:
            ValueError: if a batch bound is not an integer >= 1, or the interval is not
                a finite number >= 0.
        """
        check_batch_bounds(max_batch_events, max_batch_bytes)
        check_batch_interval(min_batch_interval)
        self._min_batch_interval = float(min_batch_interval)
        self._serve_batched = serve_batched
        self._stream = stream
        self._honour_control = honour_control
        self._max_batch_events = max_batch_events
        self._max_batch_bytes = max_batch_bytes
        self._controls_received = Counter()
        self._controls_applied = Counter()

    @property
    def stream(self) -> TelemetryStream:
        """The stream being served."""
        return self._stream

    @property
    def max_batch_events(self) -> int:
        """Most events in one ``TelemetryEventBatch``."""
        return self._max_batch_events

    @property
    def max_batch_bytes(self) -> int:
        """Most bytes of one serialized ``TelemetryEventBatch`` (a lone event may exceed it)."""
        return self._max_batch_bytes

    @property
    def min_batch_interval(self) -> float:
        """Least seconds between batch messages unless a full batch is buffered.

        A buffer half the stream's bound also ends the wait, if that comes first.
        """
        return self._min_batch_interval

    @property
    def controls_received(self) -> int:
        """Control messages read from clients (applied or not)."""
        return self._controls_received.value

    @property
    def controls_applied(self) -> int:
        """Control messages applied to the stream (not the rejected or ignored ones)."""
        return self._controls_applied.value

    def initial_metadata(self) -> Metadata:
        """Return the response headers sent when a call opens.

        The capabilities (when control messages are honoured), the stream's identity and
        the events it handed to earlier calls (:meth:`TelemetryStream.handover`; read once
        the new call has attached).
        """
        stream_id, sent = self._stream.handover()
        handover = ((STREAM_ID_HEADER, stream_id), (SENT_HEADER, str(sent)))
        if not self._honour_control:
            return handover
        if self._serve_batched:
            return ((CAPABILITIES_HEADER, CAPABILITIES), *handover)
        return ((CAPABILITIES_HEADER, SINGLE_RPC_CAPABILITIES), *handover)

    async def stream_telemetry(
        self,
        controls: AsyncIterator[pb.TelemetryControl | None],
        context: TelemetryContext,
    ) -> AsyncIterator[bytes]:
        """Handle one ``StreamTelemetry`` call: headers, then one event per message."""
        async with self._call(controls, context) as consumer:
            async for message in consumer.messages():
                yield message

    async def stream_telemetry_batched(
        self,
        controls: AsyncIterator[pb.TelemetryControl | None],
        context: TelemetryContext,
    ) -> AsyncIterator[bytes]:
        """Handle one ``StreamTelemetryBatched`` call: headers, then batches of events.

        A client that sends ``x-snakepit-max-message-bytes`` gets batches of at most that
        many bytes (when it is below ``max_batch_bytes``), so none is too long for it.
        """
        max_bytes = client_max_message_bytes(context.invocation_metadata(), self._max_batch_bytes)
        async with self._call(controls, context) as consumer:
            batches = consumer.batches(self._max_batch_events, max_bytes, self._min_batch_interval)
            async for batch in batches:
                yield batch

    @contextlib.asynccontextmanager
    async def _call(
        self, controls: AsyncIterator[pb.TelemetryControl | None], context: TelemetryContext
    ) -> AsyncIterator[AsyncStreamConsumer]:
        """One telemetry call: a new consumer, headers, the control reader task."""
        consumer = AsyncStreamConsumer(self._stream, asyncio.get_running_loop())
        self._stream.attach(consumer)
        reader: asyncio.Task[None] | None = None
        try:
            await context.send_initial_metadata(self.initial_metadata())
            reader = asyncio.create_task(self._read_controls(controls, consumer))
            yield consumer
        finally:
            if reader is not None:
                reader.cancel()
            consumer.detach()

    async def _read_controls(
        self, controls: AsyncIterator[pb.TelemetryControl | None], consumer: AsyncStreamConsumer
    ) -> None:
        count_received = self._controls_received.increment
        try:
            async for control in controls:
                if self._honour_control and self._stream.apply_control(control, consumer):
                    self._controls_applied.increment()
                count_received()
        except Exception:
            # The call ended (cancelled or closed); nothing more to read.
            return

    def method_handler(
        self,
    ) -> grpc.RpcMethodHandler[pb.TelemetryControl | None, OutgoingMessage]:
        """Return the ``StreamTelemetry`` method handler."""
        return grpc.stream_stream_rpc_method_handler(
            self.stream_telemetry,
            request_deserializer=parse_or_none(pb.TelemetryControl.FromString),
            response_serializer=serialize_outgoing,
        )

    def batched_method_handler(self) -> grpc.RpcMethodHandler[pb.TelemetryControl | None, bytes]:
        """Return the ``StreamTelemetryBatched`` method handler."""
        return grpc.stream_stream_rpc_method_handler(
            self.stream_telemetry_batched,
            request_deserializer=parse_or_none(pb.TelemetryControl.FromString),
            response_serializer=serialize_outgoing,
        )

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler[pb.TelemetryControl | None, Any]]:
        """Return the telemetry method handlers served, by method name."""
        handlers: dict[str, grpc.RpcMethodHandler[pb.TelemetryControl | None, Any]] = {
            STREAM_TELEMETRY_METHOD: self.method_handler()
        }
        if self._serve_batched:
            handlers[STREAM_TELEMETRY_BATCHED_METHOD] = self.batched_method_handler()
        return handlers


class ToolService:
    """The ``ExecuteTool`` handler over one :class:`ToolRegistry`.

    Tools run on a pool of ``max_tool_calls`` threads, never on the event loop, so the
    telemetry calls go on while they run. At most ``max_tool_calls`` calls run at a time; the
    rest are refused with ``RESOURCE_EXHAUSTED``. A call whose client goes away frees its
    slot only when its tool returns.
    """

    def __init__(self, registry: ToolRegistry, max_tool_calls: int) -> None:
        """Serve the tools of ``registry`` (looked up at each call).

        Raises:
            ValueError: if ``max_tool_calls`` is not an integer >= 1.
        """
        max_calls = max_tool_calls
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
            raise ValueError(f"max_tool_calls must be an integer >= 1, got {max_calls!r}")
        self._registry = registry
        self._max_calls = max_calls
        self._running = 0
        self._running_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=max_calls, thread_name_prefix="snakepit-tool"
        )

    @property
    def registry(self) -> ToolRegistry:
        """The tools served."""
        return self._registry

    @property
    def max_calls(self) -> int:
        """Most tool calls run at a time."""
        return self._max_calls

    @property
    def running_calls(self) -> int:
        """Tool calls whose tool has not returned yet (their clients may be gone)."""
        return self._running

    def _take_slot(self) -> bool:
        with self._running_lock:
            if self._running >= self._max_calls:
                return False
            self._running += 1
            return True

    def _free_slot(self) -> None:
        with self._running_lock:
            self._running -= 1

    async def execute_tool(
        self, request: pb.ExecuteToolRequest | None, context: ToolContext
    ) -> pb.ExecuteToolResponse:
        """Run one tool call; failures are responses with ``success: false``, never raised.

        A call beyond the bound ends with ``RESOURCE_EXHAUSTED`` before it runs; a request
        that is not an ``ExecuteToolRequest`` ends with ``INTERNAL``, as gRPC ends a call
        whose request it cannot parse.
        """
        if request is None:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "the request could not be parsed as snakepit.bridge.ExecuteToolRequest",
            )
        if not self._take_slot():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the worker runs {self._max_calls} tool calls at a time; try again later",
            )
        correlation_id = correlation_id_of(request, context.invocation_metadata())
        try:
            running = self._executor.submit(self._run, request, correlation_id)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._free_slot()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the worker is stopping")
        return await asyncio.wrap_future(running)

    def _run(
        self, request: pb.ExecuteToolRequest, correlation_id: str | None
    ) -> pb.ExecuteToolResponse:
        try:
            return run_tool_call(self._registry, request, correlation_id)
        finally:
            self._free_slot()

    def shutdown(self) -> None:
        """Refuse new calls; running tools finish on their threads."""
        self._executor.shutdown(wait=False)

    def method_handler(
        self,
    ) -> grpc.RpcMethodHandler[pb.ExecuteToolRequest | None, pb.ExecuteToolResponse]:
        """Return the ``ExecuteTool`` method handler."""
        return grpc.unary_unary_rpc_method_handler(
            self.execute_tool,
            request_deserializer=parse_or_none(pb.ExecuteToolRequest.FromString),
            response_serializer=pb.ExecuteToolResponse.SerializeToString,
        )


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
