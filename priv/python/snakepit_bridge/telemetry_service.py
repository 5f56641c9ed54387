"""The telemetry handlers of the worker's server: ``StreamTelemetry`` and its batched twin.

``StreamTelemetryBatched`` carries many events per message.

Both serve one :class:`~snakepit_bridge.telemetry.stream.TelemetryStream` on the server's
event loop, each call through an
:class:`~snakepit_bridge.telemetry.aio.AsyncStreamConsumer` (see
:mod:`snakepit_bridge.server` for what a call does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final, TypeAlias

import grpc
import grpc.aio

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.rpc import (
    STREAM_TELEMETRY_BATCHED_METHOD,
    STREAM_TELEMETRY_METHOD,
    parse_or_none,
    serialize_outgoing,
)
from snakepit_bridge.telemetry.aio import AsyncStreamConsumer
from snakepit_bridge.telemetry.counters import Counter
from snakepit_bridge.telemetry.protocol import (
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
    check_batch_bounds,
    check_batch_interval,
)
from snakepit_bridge.telemetry.stream import TelemetryStream

__all__ = [
    "CAPABILITIES",
    "MAX_MESSAGE_HEADER",
    "MIN_CLIENT_MESSAGE_BYTES",
    "TelemetryContext",
    "TelemetryService",
    "client_max_message_bytes",
]

CAPABILITIES: Final = (
    f"{CAPABILITY_SAMPLING_PATTERNS},{CAPABILITY_BATCHED},{CAPABILITY_RESTATED_DROPS}"
)
"""The capability header's value: comma-separated tokens."""

MAX_MESSAGE_HEADER: Final = "x-snakepit-max-message-bytes"
"""Request header: the longest response message the client reads (decimal bytes)."""
MIN_CLIENT_MESSAGE_BYTES: Final = 1024
"""A smaller ``MAX_MESSAGE_HEADER`` value is ignored (no client asks for less)."""

Metadata = tuple[tuple[str, str], ...]
TelemetryContext: TypeAlias = "grpc.aio.ServicerContext[pb.TelemetryControl, bytes]"
"""The servicer context of a telemetry call."""


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
