"""The bounded buffer between ``emit`` (any thread) and the gRPC response stream.

Thread-safety without a lock on the emit path
---------------------------------------------
* The buffer is a ``collections.deque``. In CPython ``append`` and ``popleft`` are single
  C calls made under the GIL, so they are atomic; any number of producers and one consumer
  may use it concurrently without a lock.
* The size check before ``append`` is not atomic with it: with N threads emitting at once
  the buffer can exceed ``max_buffer`` by at most N - 1 events. The bound is a memory
  guard, not an exact quota.
* Counters are :class:`~snakepit_bridge.telemetry.counters.Counter` objects (atomic
  ``itertools.count`` increments).
* Control settings live in an immutable :class:`ControlPolicy` that is replaced by one
  reference assignment; an emitting thread reads the reference once per event.
* Wake-up: the consumer sets ``waiting`` *before* re-checking the buffer and sleeping;
  a producer appends *before* reading ``waiting``. Under the GIL these steps are
  sequentially consistent, so either the consumer's re-check sees the new event or the
  producer sees ``waiting`` and sets the consumer's ``threading.Event``. Producers touch
  the Event (which takes a lock) only while the consumer sleeps, never when it is busy.

This argument relies on the GIL (CPython 3.11+, the default build); a free-threaded
build would need it revisited.

Only one consumer (one gRPC call) is attached at a time: :meth:`TelemetryStream.attach`
detaches the previous one, whose :meth:`StreamConsumer.events` iterator then ends.
Delivery is at most once: an event handed to a call that then dies is lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.counters import Counter, CounterSet
from snakepit_bridge.telemetry.encoding import encode_event
from snakepit_bridge.telemetry.policy import ControlPolicy

__all__ = [
    "DROP_REASONS",
    "OutgoingMessage",
    "StreamConsumer",
    "StreamStats",
    "TelemetryStream",
]

OutgoingMessage: TypeAlias = pb.TelemetryEvent | bytes
"""What the response stream carries: an event, or bytes that are already one serialized
message. ``emit`` buffers serialized ``TelemetryEvent`` bytes."""

DROP_REASONS: Final = (
    "disabled",
    "sampled_out",
    "filtered_out",
    "overflow",
    "encode_error",
    "closed",
)
"""Why an emitted event was not enqueued."""

DEFAULT_MAX_BUFFER: Final = 1024

_IDLE_RECHECK_SECONDS: Final = 1.0
"""Longest sleep of an idle consumer; only a safety net, wake-ups are explicit."""


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of a stream's counters."""

    enqueued: int
    """Events (and raw messages) accepted into the buffer."""
    buffered: int
    """Messages waiting in the buffer now."""
    sent: int
    """Messages handed to a gRPC call."""
    dropped: Mapping[str, int]
    """Events not enqueued, by reason (see :data:`DROP_REASONS`)."""

    @property
    def dropped_total(self) -> int:
        """All dropped events."""
        return sum(self.dropped.values())

    @property
    def emitted(self) -> int:
        """Every emit that reached the stream: enqueued plus dropped."""
        return self.enqueued + self.dropped_total

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "emitted": self.emitted,
            "enqueued": self.enqueued,
            "buffered": self.buffered,
            "sent": self.sent,
            "dropped_total": self.dropped_total,
            "dropped": dict(self.dropped),
        }


class StreamConsumer:
    """One attached reader of a :class:`TelemetryStream` (one gRPC call)."""

    __slots__ = ("_detached", "_stream", "_wakeup", "waiting")

    def __init__(self, stream: TelemetryStream) -> None:
        self._stream = stream
        self._wakeup = threading.Event()
        self._detached = False
        self.waiting = False
        """True while the consumer is about to sleep or sleeping; producers then wake it."""

    @property
    def is_current(self) -> bool:
        """True until this consumer is detached or replaced by a newer one."""
        return not self._detached and self._stream.current_consumer is self

    def wake(self) -> None:
        """Wake the consumer if it sleeps (cheap to call when it does not)."""
        self._wakeup.set()

    def detach(self) -> None:
        """Stop consuming; :meth:`events` ends. Idempotent; safe from any thread."""
        self._detached = True
        self._stream.release(self)
        self._wakeup.set()

    def events(self) -> Iterator[OutgoingMessage]:
        """Yield buffered messages until detached, replaced, or the stream is closed.

        After :meth:`TelemetryStream.close` the buffer is drained before the iterator ends.
        """
        stream = self._stream
        buffer = stream.buffer
        popleft = buffer.popleft
        count_sent = stream.sent_counter.increment
        wakeup = self._wakeup
        try:
            while self.is_current:
                try:
                    message = popleft()
                except IndexError:
                    if stream.closed:
                        return
                    wakeup.clear()
                    self.waiting = True
                    if not buffer and self.is_current and not stream.closed:
                        wakeup.wait(_IDLE_RECHECK_SECONDS)
                    self.waiting = False
                    continue
                count_sent()
                yield message
        finally:
            self.detach()


class TelemetryStream:
    """A bounded, lock-free-on-emit buffer of telemetry events for one worker.

    ``emit`` never raises and never blocks: when the buffer is full the new event is
    dropped and counted. Events emitted before a consumer attaches stay buffered. Control
    messages are applied at the source, so a disabled, filtered-out or sampled-out event
    is never built into a protobuf.
    """

    def __init__(
        self,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        *,
        random_source: Callable[[], float] = random.random,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """Create a stream.

        Args:
            max_buffer: most messages held while no consumer keeps up (>= 1).
            random_source: returns floats in [0, 1); used for sampling (inject for tests).
            clock_ns: wall clock for ``timestamp_ns`` (inject for tests).
        """
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        self._max_buffer = max_buffer
        self._random = random_source
        self._clock_ns = clock_ns
        self._buffer: deque[OutgoingMessage] = deque()
        self._policy = ControlPolicy()
        self._consumer: StreamConsumer | None = None
        self._closed = False
        self._lock = threading.Lock()  # guards attach/release/control/close, never emit

        self._enqueued = Counter()
        self._sent = Counter()
        self._drops = CounterSet(DROP_REASONS)
        self._count_enqueued = self._enqueued.increment
        self._count_disabled = self._drops["disabled"].increment
        self._count_closed = self._drops["closed"].increment
        self._count_sampled_out = self._drops["sampled_out"].increment
        self._count_filtered_out = self._drops["filtered_out"].increment
        self._count_overflow = self._drops["overflow"].increment
        self._count_encode_error = self._drops["encode_error"].increment

    # -- producer side (any thread) -------------------------------------------------

    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Enqueue one event, or drop and count it. Never raises, never blocks."""
        try:
            policy = self._policy
            if not policy.enabled:
                if self._closed:
                    self._count_closed()
                else:
                    self._count_disabled()
                return
            rate = policy.decisions.get(event)
            if rate is None:
                rate = policy.resolve(event)
            if rate < 1.0:
                if rate < 0.0:  # FILTERED_OUT
                    self._count_filtered_out()
                    return
                if self._random() >= rate:
                    self._count_sampled_out()
                    return
            if len(self._buffer) >= self._max_buffer:
                self._count_overflow()
                return
            # Serialized at once: a bytes object is one compact allocation, while keeping
            # the protobuf object alive in the buffer costs about 1 µs more per event.
            message = encode_event(
                event, measurements, metadata, correlation_id, self._clock_ns()
            ).SerializeToString()
        except Exception:
            self._count_encode_error()
            return
        # Same as _push, inlined: this is the hot path.
        self._buffer.append(message)
        self._count_enqueued()
        consumer = self._consumer
        if consumer is not None and consumer.waiting:
            consumer.wake()

    def enqueue_raw(self, data: bytes) -> bool:
        """Enqueue bytes that go on the wire as one message, bypassing the policy.

        For tests of undecodable input. Returns False (and counts an overflow) when full.
        """
        if self._closed:
            self._count_closed()
            return False
        if len(self._buffer) >= self._max_buffer:
            self._count_overflow()
            return False
        self._push(bytes(data))
        return True

    def _push(self, message: OutgoingMessage) -> None:
        self._buffer.append(message)
        self._count_enqueued()
        consumer = self._consumer
        if consumer is not None and consumer.waiting:
            consumer.wake()

    # -- consumer side ----------------------------------------------------------------

    def attach(self) -> StreamConsumer:
        """Attach a new consumer, replacing (detaching) the current one.

        Control settings are per call: attaching resets them to the defaults (enabled,
        rate 1.0, no filters) so that a new client does not inherit an old one's choices.
        Buffered events stay and go to the new consumer.
        """
        consumer = StreamConsumer(self)
        with self._lock:
            previous = self._consumer
            self._consumer = consumer
            if not self._closed:
                self._policy = ControlPolicy()
        if previous is not None:
            previous.detach()
        return consumer

    def release(self, consumer: StreamConsumer) -> None:
        """Forget ``consumer`` if it is the current one (called by its ``detach``)."""
        with self._lock:
            if self._consumer is consumer:
                self._consumer = None

    @property
    def current_consumer(self) -> StreamConsumer | None:
        """The attached consumer, if any."""
        return self._consumer

    @property
    def buffer(self) -> deque[OutgoingMessage]:
        """The underlying buffer (for the consumer)."""
        return self._buffer

    @property
    def sent_counter(self) -> Counter:
        """Counter of messages handed to a consumer."""
        return self._sent

    # -- control ------------------------------------------------------------------------

    def apply_control(
        self, control: pb.TelemetryControl, consumer: StreamConsumer | None = None
    ) -> bool:
        """Apply a control message from the client.

        When ``consumer`` is given, the message is ignored unless that consumer is still the
        current one (a replaced call must not change the new call's settings). Returns True
        if the message was applied.
        """
        with self._lock:
            if self._closed:
                return False
            if consumer is not None and self._consumer is not consumer:
                return False
            self._policy = self._policy.apply(control)
            return True

    @property
    def policy(self) -> ControlPolicy:
        """The settings in force."""
        return self._policy

    def is_enabled(self) -> bool:
        """True unless the client switched telemetry off or the stream is closed."""
        return self._policy.enabled

    # -- lifecycle and stats --------------------------------------------------------------

    def close(self) -> None:
        """End the stream gracefully: the consumer drains the buffer, then its iterator ends.

        Later emits are dropped (reason ``closed``). Idempotent.
        """
        with self._lock:
            self._closed = True
            self._policy = ControlPolicy(enabled=False)
            consumer = self._consumer
        if consumer is not None:
            consumer.wake()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def max_buffer(self) -> int:
        """The buffer bound."""
        return self._max_buffer

    @property
    def dropped_count(self) -> int:
        """Events dropped for any reason."""
        return self._drops.total()

    def dropped_counts(self) -> Mapping[str, int]:
        """Events dropped, by reason."""
        return self._drops.snapshot()

    def stats(self) -> StreamStats:
        """Return a snapshot of the counters."""
        return StreamStats(
            enqueued=self._enqueued.value,
            buffered=len(self._buffer),
            sent=self._sent.value,
            dropped=self._drops.snapshot(),
        )
