"""A telemetry stream read on an asyncio event loop, and served from a ``grpc.aio`` servicer.

:class:`AsyncStreamConsumer` is the reader of one call on an event loop: one event per
message (:meth:`~AsyncStreamConsumer.messages`, :meth:`~AsyncStreamConsumer.events`) or
batches (:meth:`~AsyncStreamConsumer.batches`), with the same steps as the threaded reader
(:mod:`snakepit_bridge.telemetry.consumer`). This package's own server
(:class:`~snakepit_bridge.server.BridgeServer`) uses it, and so does :func:`serve_telemetry`.

This is how Snakepit's ``grpc_server.py`` serves a
:class:`~snakepit_bridge.telemetry.stream.TelemetryStream`::

    class BridgeServicer:
        def __init__(self) -> None:
            self.telemetry_stream = TelemetryStream(max_buffer=1024)
            telemetry.set_backend(GrpcBackend(self.telemetry_stream))

        async def StreamTelemetry(self, request_iterator, context):
            async for event in self.telemetry_stream.stream(request_iterator, context):
                yield event

:meth:`TelemetryStream.stream <snakepit_bridge.telemetry.stream.TelemetryStream.stream>`
calls :func:`serve_telemetry`. One call of it:

* checks the caller's bearer token when the worker has one (``SNAKEPIT_WORKER_TOKEN``, set
  by the Elixir ``Worker`` that started it): only the BEAM that started the worker reads
  or steers it, as on this package's own server;
* attaches an :class:`AsyncStreamConsumer`, replacing the stream's current consumer (whose
  call then ends), and resets the control settings, as a call on this package's own server
  does;
* sends the response headers at once: ``x-snakepit-telemetry-capabilities:
  sampling-patterns``, and the stream's identity and the events it has handed to calls so
  far (``x-snakepit-telemetry-stream-id``, ``x-snakepit-telemetry-sent``, see
  :meth:`TelemetryStream.handover`), with which the client counts what a broken call lost;
  ``sampling-patterns`` (the stream applies pattern-scoped sampling, so the client sends its
  rules instead of sampling again on its side); if the servicer already sent headers, the
  call goes on without the capability;
* applies each ``TelemetryControl`` from ``request_iterator`` as it arrives, in a task of
  the call's event loop (an invalid one is rejected whole and counted in
  ``controls_rejected``; nothing the client sends raises out of the call);
* yields one ``TelemetryEvent`` per buffered event, built on the event loop's thread, and
  a ``telemetry.dropped`` event per drop reason as this package's own server does (see
  :mod:`snakepit_bridge.telemetry.stream`);
* ends when the stream is closed (after draining it), when a newer call replaces it, or
  when the client goes away.

Events may be emitted from any thread, the event loop's included: an emitting thread wakes
a waiting call with ``loop.call_soon_threadsafe``, at most once per wait, and never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import TypeAlias

import grpc
import grpc.aio

from snakepit_bridge.auth import (
    UNAUTHENTICATED_DETAILS,
    BearerToken,
    TokenSource,
    resolve_token,
)
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.consumer import Wait
from snakepit_bridge.telemetry.stream import (
    CAPABILITIES_HEADER,
    CAPABILITY_SAMPLING_PATTERNS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MIN_BATCH_INTERVAL,
    SENT_HEADER,
    SINGLE_RPC_CAPABILITIES,
    STREAM_ID_HEADER,
    StreamConsumer,
    TelemetryStream,
)

__all__ = [
    "CAPABILITIES_HEADER",
    "CAPABILITY_SAMPLING_PATTERNS",
    "AsyncStreamConsumer",
    "TelemetryContext",
    "serve_telemetry",
]

TelemetryContext: TypeAlias = "grpc.aio.ServicerContext[pb.TelemetryControl, pb.TelemetryEvent]"
"""The servicer context of a ``StreamTelemetry`` call on a ``grpc.aio`` server."""


class AsyncStreamConsumer(StreamConsumer):
    """A :class:`StreamConsumer` whose reader is a coroutine on an asyncio event loop."""

    __slots__ = ("_loop", "_ready", "_wake_pending")

    def __init__(self, stream: TelemetryStream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(stream)
        self._loop = loop
        self._ready = asyncio.Event()
        self._wake_pending = False

    def wake(self) -> None:
        """Wake the reader if it waits; safe and cheap from any thread."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # the loop is closed: its call is over, nobody to wake
            self._wake_pending = False

    def _on_wake(self) -> None:
        self._wake_pending = False
        self._ready.set()

    def detach(self) -> None:
        """Stop consuming; :meth:`events` ends. Idempotent; safe from any thread."""
        super().detach()
        self.wake()

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)

    async def _pause_async(self, wait: Wait) -> None:
        """Make one :class:`~snakepit_bridge.telemetry.consumer.Wait` on the event loop.

        The same protocol as the threaded consumer (see
        :mod:`snakepit_bridge.telemetry.consumer`): ``waiting`` (or ``lingering``) is set
        before the buffer is re-checked, producers append before reading it.
        """
        self._ready.clear()
        if wait.linger:
            self.lingering = True
            try:
                if self._should_linger():
                    await self._wait(max(wait.deadline - time.monotonic(), 0.0))
            finally:
                self.lingering = False
        else:
            self.waiting = True
            try:
                if self._should_sleep():
                    await self._wait(self._sleep_timeout(wait.deadline))
            finally:
                self.waiting = False

    def messages(self) -> AsyncIterator[bytes]:
        """Yield buffered events as serialized messages until detached, replaced or closed.

        As :meth:`StreamConsumer.events`, on the event loop: for a servicer whose response
        serializer passes bytes through.
        """
        return self._drive_async(self.event_steps(self._stream.pop))

    async def events(self) -> AsyncIterator[pb.TelemetryEvent]:  # type: ignore[override]
        """Yield buffered events as messages until detached, replaced or closed.

        After :meth:`TelemetryStream.close` the buffer is drained and the last drop report
        sent before the iterator ends.
        """
        from_string = pb.TelemetryEvent.FromString
        try:
            for step in self.event_steps(self._stream.pop_event):
                kind = type(step)
                if kind is Wait:
                    await self._pause_async(step)  # type: ignore[arg-type]
                elif kind is bytes:  # a drop report
                    yield from_string(step)  # type: ignore[arg-type]
                else:
                    yield step  # type: ignore[misc]
        finally:
            self.detach()

    def batches(  # type: ignore[override]
        self,
        max_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        min_interval: float = DEFAULT_MIN_BATCH_INTERVAL,
    ) -> AsyncIterator[bytes]:
        """Yield serialized ``TelemetryEventBatch`` messages, as :meth:`StreamConsumer.batches`.

        Raises:
            ValueError: as :meth:`StreamConsumer.batches` (at the call).
        """
        return self._drive_async(self.batch_steps(max_events, max_bytes, min_interval))

    async def _drive_async(self, steps: Iterator[bytes | Wait]) -> AsyncIterator[bytes]:
        """Yield the messages of ``steps``, making its waits; detach when stopped."""
        try:
            for step in steps:
                if type(step) is Wait:
                    await self._pause_async(step)
                else:
                    yield step  # type: ignore[misc]
        finally:
            self.detach()


async def serve_telemetry(
    stream: TelemetryStream,
    request_iterator: AsyncIterable[pb.TelemetryControl],
    context: TelemetryContext,
    token: str | BearerToken | TokenSource | None = TokenSource.FROM_ENV,
) -> AsyncIterator[pb.TelemetryEvent]:
    """Serve ``stream`` on one ``grpc.aio`` ``StreamTelemetry`` call (see the module doc).

    With a token (by default ``SNAKEPIT_WORKER_TOKEN``, which the Elixir ``Worker`` sets
    and whose value the NIF sends), a call without exactly one ``authorization: Bearer
    <token>`` header is aborted with ``UNAUTHENTICATED`` before it touches the stream: it
    neither replaces the current call nor changes the settings. A token that is set but
    invalid aborts every call the same way (never served unauthenticated by mistake).
    """
    try:
        expected = resolve_token(token)
    except (TypeError, ValueError):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
        return
    if expected is not None and not expected.accepts(context.invocation_metadata()):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
        return
    consumer = AsyncStreamConsumer(stream, asyncio.get_running_loop())
    stream.attach(consumer)
    stream_id, sent = stream.handover()
    try:
        with contextlib.suppress(Exception):
            await context.send_initial_metadata(
                (
                    (CAPABILITIES_HEADER, SINGLE_RPC_CAPABILITIES),
                    (STREAM_ID_HEADER, stream_id),
                    (SENT_HEADER, str(sent)),
                )
            )
        reader = asyncio.create_task(_apply_controls(stream, request_iterator, consumer))
        try:
            async for event in consumer.events():
                yield event
        finally:
            reader.cancel()
            await asyncio.wait([reader])  # never raises the reader's CancelledError
    finally:
        consumer.detach()


async def _apply_controls(
    stream: TelemetryStream,
    request_iterator: AsyncIterable[pb.TelemetryControl],
    consumer: AsyncStreamConsumer,
) -> None:
    """Apply the call's control messages until the client half-closes or the call ends."""
    try:
        async for control in request_iterator:
            stream.apply_control(control, consumer)
    except Exception:
        return  # the call ended (cancelled or closed); nothing more to read
