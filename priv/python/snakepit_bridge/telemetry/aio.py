"""A telemetry stream served from a ``grpc.aio`` servicer.

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
  a ``telemetry.dropped`` event per drop reason as the synchronous server does (see
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
from collections.abc import AsyncIterable, AsyncIterator
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
from snakepit_bridge.telemetry.consumer import IDLE_RECHECK_SECONDS
from snakepit_bridge.telemetry.stream import (
    CAPABILITIES_HEADER,
    CAPABILITY_SAMPLING_PATTERNS,
    DROP_REPORT_INTERVAL_SECONDS,
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

    async def _wait_for_event(self, next_report: float) -> None:
        """Wait until an event arrives, the stream closes or the consumer is detached.

        The same protocol as the threaded consumer (see
        :mod:`snakepit_bridge.telemetry.consumer`): ``waiting`` is set before the buffer is
        re-checked, producers append before reading it.
        """
        stream = self._stream
        self._ready.clear()
        self.waiting = True
        try:
            if not stream.buffer and self.is_current and not stream.closed:
                idle = IDLE_RECHECK_SECONDS
                if stream.has_unreported_drops:
                    idle = min(idle, max(next_report - time.monotonic(), 0.0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), idle)
        finally:
            self.waiting = False

    async def events(self) -> AsyncIterator[pb.TelemetryEvent]:  # type: ignore[override]
        """Yield buffered events as messages until detached, replaced or closed.

        After :meth:`TelemetryStream.close` the buffer is drained and the last drop report
        sent before the iterator ends.
        """
        stream = self._stream
        buffer = stream.buffer
        pop_event = stream.pop_event
        claim_drop_report = stream.claim_drop_report
        monotonic = time.monotonic
        next_report = monotonic() + DROP_REPORT_INTERVAL_SECONDS
        try:
            while self.is_current:
                if stream.has_unreported_drops and monotonic() >= next_report:
                    reports = claim_drop_report(self)
                    if reports is None:
                        return
                    for report in reports:
                        yield pb.TelemetryEvent.FromString(report)
                    next_report = monotonic() + DROP_REPORT_INTERVAL_SECONDS
                try:
                    message = pop_event(self)
                except IndexError:
                    if stream.closed and not buffer:
                        for report in claim_drop_report(self) or ():
                            yield pb.TelemetryEvent.FromString(report)
                        return
                    await self._wait_for_event(next_report)
                    continue
                yield message
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
