"""The reader of a telemetry stream: one per gRPC call.

A :class:`StreamConsumer` takes the events buffered in a
:class:`~snakepit_bridge.telemetry.stream.TelemetryStream` and yields them one per message
(:meth:`StreamConsumer.events`) or packed in batches (:meth:`StreamConsumer.batches`).

Wake-up: the consumer sets ``waiting`` *before* re-checking the buffer and sleeping; a
producer appends *before* reading ``waiting``. Under the GIL these steps are sequentially
consistent, so either the consumer's re-check sees the new event or the producer sees
``waiting`` and wakes the consumer. Producers touch the consumer's ``threading.Event``
(which takes a lock) only while the consumer sleeps, never when it is busy. The argument
relies on the GIL (CPython 3.11+, the default build); a free-threaded build would need it
revisited.

Drop reports: the worker tells the Elixir side what it dropped. While there are drops not
yet reported, the consumer sends, at most every ``DROP_REPORT_INTERVAL_SECONDS``, one
``telemetry.dropped`` event per reason (measurements ``count``: events dropped for that
reason since the previous report, and ``total``: all of them in the stream's life; metadata
``reason``), and once more before the iterator ends after :meth:`TelemetryStream.close`.
Reports go straight to the call, never through the buffer, so no bound, toggle, filter or
sampling drops them; drops after the last report of a call that then dies are reported on
the next call, and a report lost with a broken call is made up by the next one of its
reason (the client compares totals); the first report on a call that replaced another
restates every reason with drops (``count`` 0 where nothing is new), so there always is a
next one. (Drops as ``closed``, after
``close``, have no stream left to be reported on.)

Batches (``StreamTelemetryBatched``): :meth:`StreamConsumer.batches` yields serialized
``TelemetryEventBatch`` messages. Each packs whatever is buffered at that moment, oldest
first, up to ``max_batch_events`` events (default 8192) and ``max_batch_bytes`` bytes
(default 1 MiB, the whole serialized batch, lowered to what the client says it reads:
``x-snakepit-max-message-bytes``); an event whose own entry is larger than
``max_batch_bytes`` goes alone. The consumer never waits to fill a batch: a lone event
leaves at once. It does pace messages: after one is sent, the next one waits until
``min_batch_interval`` (default 200 ms) has passed since, unless a full batch (by count
or by bytes) or half the stream's bound (``max_buffer`` events or ``max_buffer_bytes``,
so that the buffer never fills while the consumer wakes up) is buffered (or drop
reports, or :meth:`TelemetryStream.close`, are waiting, or a control message changed the
settings: :meth:`StreamConsumer.flush_soon`).
Each message costs the gRPC server hundreds of µs of the worker's CPU whatever it carries,
so a worker emitting 500 events/s in small bursts would otherwise spend tens of µs per
event; paced, it sends at most 5 messages/s until it has full batches to send
(``bench/RESULTS.md``). The first
event after a quiet spell goes at once; an event during a busy spell waits at most the
interval. While the consumer lingers like that, producers wake it only when a full batch (or
half the bound) is buffered (``lingering``, with the same ordering argument as ``waiting`` above).

A batch is the concatenation of the events' serialized bytes, each framed as field 1,
length-delimited (``0x0A``, varint length, the event's bytes), so no batch message
object is built. Drop reports go first in the next batch (within the same
bounds). ``sent`` counts events either way; ``sent_batches`` counts batch messages.

Only one consumer (one gRPC call) is attached at a time: :meth:`TelemetryStream.attach`
detaches the previous one, whose :meth:`StreamConsumer.events` iterator then ends.
Delivery is at most once: an event (or a whole batch) handed to a call that then dies is
lost. Messages leave the buffer only through a consumer (:meth:`TelemetryStream.pop`,
:meth:`TelemetryStream.pop_batch`), never by popping :attr:`TelemetryStream.buffer`
directly, or the byte total would not go down.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, NamedTuple, TypeVar

from snakepit_bridge.telemetry.protocol import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MIN_BATCH_INTERVAL,
    DROP_REPORT_INTERVAL_SECONDS,
    OutgoingMessage,
    check_batch_bounds,
    check_batch_interval,
)

if TYPE_CHECKING:
    from snakepit_bridge.telemetry.stream import TelemetryStream

__all__ = ["IDLE_RECHECK_SECONDS", "StreamConsumer", "Wait"]

IDLE_RECHECK_SECONDS: Final = 1.0
"""Longest sleep of an idle consumer; only a safety net, wake-ups are explicit."""

_Event = TypeVar("_Event")
_Sent = TypeVar("_Sent")


class Wait(NamedTuple):
    """A pause a reader makes before it asks for its next step.

    See :meth:`StreamConsumer.event_steps` and :meth:`StreamConsumer.batch_steps`.

    The sync reader sleeps on a ``threading.Event``, the asyncio one awaits an
    ``asyncio.Event``; both end the pause early when a producer wakes them.
    """

    linger: bool
    """True: pace the next batch until ``deadline``, unless a full batch is buffered first.
    False: sleep until an event arrives (or the next drop report is due at ``deadline``)."""
    deadline: float
    """``time.monotonic()`` value the pause is measured against."""


class StreamConsumer:
    """One attached reader of a :class:`TelemetryStream` (one gRPC call)."""

    __slots__ = (
        "_detached",
        "_stream",
        "_wakeup",
        "flush_requested",
        "full_batch",
        "full_batch_bytes",
        "lingering",
        "waiting",
    )

    def __init__(self, stream: TelemetryStream) -> None:
        self._stream = stream
        self._wakeup = threading.Event()
        self._detached = False
        self.waiting = False
        """True while the consumer is about to sleep or sleeping; producers then wake it."""
        self.lingering = False
        """True while the consumer paces its next batch; producers wake it at a full batch."""
        self.full_batch = DEFAULT_MAX_BATCH_EVENTS
        """Buffered events that end a linger (the count bound of :meth:`batches`, or half
        the stream's ``max_buffer`` if lower)."""
        self.full_batch_bytes = DEFAULT_MAX_BATCH_BYTES
        """Buffered bytes that end a linger (the byte bound of :meth:`batches`, or half the
        stream's ``max_buffer_bytes`` if lower)."""
        self.flush_requested = False
        """Set by :meth:`flush_soon`: the next batch goes without waiting out the interval."""

    @property
    def is_current(self) -> bool:
        """True until this consumer is detached or replaced by a newer one."""
        return not self._detached and self._stream.current_consumer is self

    def wake(self) -> None:
        """Wake the consumer if it sleeps (cheap to call when it does not)."""
        self._wakeup.set()

    def flush_soon(self) -> None:
        """Send what is buffered now rather than at the end of the pacing interval.

        Called when a control message changed the settings: events emitted before it then
        reach the client right after it, as the client expects of a control, instead of up to
        ``min_batch_interval`` later (when a quick second control could have undone the first).
        """
        if self._stream.buffer:  # nothing buffered: nothing to hurry (later events are paced)
            self.flush_requested = True
            self.wake()

    def detach(self) -> None:
        """Stop consuming; :meth:`events` ends. Idempotent; safe from any thread."""
        self._detached = True
        self._stream.release(self)
        self._wakeup.set()

    def _should_sleep(self) -> bool:
        """True when there is nothing to send and nothing that would end a sleep."""
        stream = self._stream
        return not stream.buffer and self.is_current and not stream.closed

    def _should_linger(self) -> bool:
        """True when pacing may go on: no full batch, flush, replacement or close."""
        return (
            not self._has_full_batch()
            and not self.flush_requested
            and self.is_current
            and not self._stream.closed
        )

    def _sleep_timeout(self, next_report: float) -> float:
        """How long a sleep may last: until the next drop report is due, if any."""
        if self._stream.has_unreported_drops:
            return min(IDLE_RECHECK_SECONDS, max(next_report - time.monotonic(), 0.0))
        return IDLE_RECHECK_SECONDS

    def _sleep_until_event(self, next_report: float) -> None:
        """Sleep until an event arrives, the stream closes or the consumer is detached.

        Producers wake it (see the module doc); with drops not yet reported it wakes by
        ``next_report`` (monotonic) at the latest, else after ``IDLE_RECHECK_SECONDS``.
        """
        wakeup = self._wakeup
        wakeup.clear()
        self.waiting = True
        if self._should_sleep():
            wakeup.wait(self._sleep_timeout(next_report))
        self.waiting = False

    def _linger(self, until: float) -> None:
        """Sleep until ``until`` (monotonic) unless a full batch, close or detach comes first."""
        wakeup = self._wakeup
        wakeup.clear()
        self.lingering = True
        if self._should_linger():
            wakeup.wait(max(until - time.monotonic(), 0.0))
        self.lingering = False

    def _pause(self, wait: Wait) -> None:
        if wait.linger:
            self._linger(wait.deadline)
        else:
            self._sleep_until_event(wait.deadline)

    def events(self) -> Iterator[OutgoingMessage]:
        """Yield buffered messages until detached, replaced, or the stream is closed.

        After :meth:`TelemetryStream.close` the buffer is drained before the iterator ends.
        """
        return self._drive(self.event_steps(self._stream.pop))

    def batches(
        self,
        max_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        min_interval: float = DEFAULT_MIN_BATCH_INTERVAL,
    ) -> Iterator[bytes]:
        """Yield serialized ``TelemetryEventBatch`` messages until detached, replaced or closed.

        Each batch packs what is buffered when it is built (see the module doc for the
        bounds); with nothing buffered the consumer sleeps until an event arrives, and
        never waits to fill a batch. After a batch, the next one waits until
        ``min_interval`` seconds have passed unless a full batch is buffered (see the
        module doc). Drop reports go first in a batch, at the same rate as :meth:`events`
        sends them. After :meth:`TelemetryStream.close` the buffer is drained, the final
        drop report sent, then the iterator ends.

        Raises:
            ValueError: if a bound is not an integer >= 1, or ``min_interval`` is not a
                finite number >= 0 (before anything is consumed).
        """
        return self._drive(self.batch_steps(max_events, max_bytes, min_interval))

    def _drive(self, steps: Iterator[_Sent | Wait]) -> Iterator[_Sent]:
        """Yield the messages of ``steps``, making its waits; detach when stopped."""
        try:
            for step in steps:
                if type(step) is Wait:
                    self._pause(step)
                else:
                    yield step  # type: ignore[misc]
        finally:
            self.detach()

    def _has_full_batch(self) -> bool:
        """True when what is buffered fills a batch, by count or by bytes."""
        stream = self._stream
        return (
            len(stream.buffer) >= self.full_batch or stream.buffered_bytes >= self.full_batch_bytes
        )

    # -- what to send and when to wait, shared by the sync and the asyncio readers --------

    def event_steps(
        self, pop: Callable[[StreamConsumer], _Event]
    ) -> Iterator[_Event | bytes | Wait]:
        """The one-event-per-message reader's steps: a message to send, or a :class:`Wait`.

        ``pop`` takes the next event (:meth:`TelemetryStream.pop` for bytes,
        :meth:`TelemetryStream.pop_event` for messages); drop reports come as bytes. The
        driver sends each message and makes each wait before asking for the next step, and
        detaches the consumer when it stops.
        """
        stream = self._stream
        buffer = stream.buffer
        claim_drop_report = stream.claim_drop_report
        monotonic = time.monotonic
        next_report = monotonic() + DROP_REPORT_INTERVAL_SECONDS
        while self.is_current:
            if stream.has_unreported_drops and monotonic() >= next_report:
                reports = claim_drop_report(self)
                if reports is None:
                    return
                yield from reports
                next_report = monotonic() + DROP_REPORT_INTERVAL_SECONDS
            try:
                message = pop(self)
            except IndexError:
                # Re-checked after `closed`: events appended between the failed pop and
                # close() (the thread can be preempted right there) are drained first.
                if stream.closed and not buffer:
                    yield from claim_drop_report(self) or ()
                    return
                yield Wait(linger=False, deadline=next_report)
                continue
            yield message

    def batch_steps(
        self,
        max_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        min_interval: float = DEFAULT_MIN_BATCH_INTERVAL,
    ) -> Iterator[bytes | Wait]:
        """The batch reader's steps: a serialized batch to send, or a :class:`Wait`.

        See :meth:`batches`; the driver sends each batch and makes each wait before asking
        for the next step.

        Raises:
            ValueError: as :meth:`batches` (at the call, before anything is consumed).
        """
        check_batch_bounds(max_events, max_bytes)
        check_batch_interval(min_interval)
        return self._batch_steps(max_events, max_bytes, float(min_interval))

    def _batch_steps(
        self, max_events: int, max_bytes: int, min_interval: float
    ) -> Iterator[bytes | Wait]:
        stream = self._stream
        buffer = stream.buffer
        pop_batch = stream.pop_batch
        monotonic = time.monotonic
        next_report = monotonic() + DROP_REPORT_INTERVAL_SECONDS
        reports: list[bytes] = []  # drop reports taken, not yet in a batch
        # The wait ends at a full batch, or at half the buffer's bounds if that comes first:
        # a wait that ended only with the buffer full (the default batch holds as many
        # events as the default buffer) dropped what came while the consumer woke up.
        self.full_batch = min(max_events, max(1, stream.max_buffer // 2))
        self.full_batch_bytes = min(max_bytes, max(1, stream.max_buffer_bytes // 2))
        sent_at = -math.inf  # when the last batch went out
        while self.is_current:
            if stream.has_unreported_drops and monotonic() >= next_report:
                reports.extend(stream.take_drop_report(self))
                next_report = monotonic() + DROP_REPORT_INTERVAL_SECONDS
            if (
                min_interval > 0.0
                and buffer
                and not reports
                and not stream.closed
                and monotonic() < sent_at + min_interval
                and not self._has_full_batch()
                and not self.flush_requested
            ):
                yield Wait(linger=True, deadline=sent_at + min_interval)
                continue
            self.flush_requested = False
            batch, count = pop_batch(max_events, max_bytes, reports, self)
            if count:
                sent_at = monotonic()
                yield batch
                continue
            # As in event_steps(): re-checked, so nothing appended before close() is left.
            if stream.closed and not buffer:
                reports.extend(stream.take_drop_report(self))
                while reports:
                    batch, count = pop_batch(max_events, max_bytes, reports, self)
                    if not count:  # replaced meanwhile
                        return
                    yield batch
                return
            yield Wait(linger=False, deadline=next_report)
