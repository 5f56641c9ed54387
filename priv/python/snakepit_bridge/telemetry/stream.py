"""The bounded buffer between ``emit`` (any thread) and the gRPC response stream.

Who serializes
--------------
``emit`` is the stream's producer (:mod:`snakepit_bridge.telemetry.producer`):

* the native producer (the ``_wire`` extension, used whenever it is built) serializes the
  event into ``TelemetryEvent`` bytes at once, in Rust (about 0.3 µs), and buffers the
  bytes: what protobuf would refuse is dropped as ``encode_error`` and an event over
  ``max_event_bytes`` as ``oversize``, both at ``emit``;
* the pure-Python fallback records the event (a tuple of the name, copies of the dicts,
  the correlation id, the timestamp and its charge: :data:`EventRecord`), and the consumer
  (the gRPC sender thread) serializes records when it packs them (:meth:`TelemetryStream.
  pop_batch`, :meth:`TelemetryStream.pop`); a record protobuf refuses is dropped there as
  ``encode_error``, one whose bytes exceed ``max_event_bytes`` as ``oversize``. Such late
  drops are counted like any other and taken off ``enqueued`` (:meth:`TelemetryStream.
  stats`), so ``emitted == enqueued + dropped`` holds at any moment.

Bounds
------
* ``max_buffer`` (default 8192): most events buffered.
* ``max_buffer_bytes`` (default 4 MiB): most bytes buffered, summed over each entry's
  charge (:func:`entry_charge`): for bytes their length; for a record a lower bound of its
  serialized size fixed at ``emit`` (str measurement values and long keys are not counted
  there).
* ``max_event_bytes`` (default 256 KiB, the limit the Elixir side gives the NIF): the
  largest serialized event accepted; a larger one is dropped as ``oversize`` (an event
  larger than ``max_buffer_bytes`` is oversize too, since it could never fit).

An event that would take the buffer past ``max_buffer`` or ``max_buffer_bytes`` is
dropped as ``overflow``. When the buffer is already full the event is dropped as
``overflow`` before it is serialized or recorded, so the drop path stays cheap.

Thread-safety
-------------
* The buffer is a ``collections.deque`` of entries. In CPython ``append``, ``appendleft``
  and ``popleft`` are single C calls made under the GIL, so they are atomic. A serialized
  event that does not fit the batch being packed goes back to the front (the producer's
  ``put_back``, charged as its bytes: see :meth:`TelemetryStream.pop_batch`).
* Bytes are counted by the producer's two monotonic counters: bytes ever appended and
  bytes ever taken; what is buffered is their difference. Producers admit an entry
  atomically (both bounds checked, the counter raised, the entry appended: under a lock in
  the Python producer; in one stretch that runs no Python code in the native one); the
  consumer pops entries, counts them sent and releases their bytes under ``_pop_lock``,
  where a replaced consumer is refused, so that :meth:`TelemetryStream.handover` (under
  the same lock) counts exactly what earlier calls took.
  Producers never wait for the consumer and the consumer never waits for producers.
* The counters never drift, whatever the number of threads, and the buffer never holds
  more than ``max_buffer`` entries or ``max_buffer_bytes`` bytes (an event put back by
  the consumer may add the difference between its bytes and its charge).
* Counters never lose an update: the native producer keeps them in cells only the thread
  holding the GIL touches, the Python producer in :class:`~snakepit_bridge.telemetry.
  counters.Counter` objects (atomic ``itertools.count`` increments).
* Control settings live in an immutable :class:`ControlPolicy` that is replaced as a whole
  and handed to the producer; an emitting thread reads it once per event. A control
  message with an invalid rate or pattern is rejected as a whole and counted
  (:attr:`StreamStats.controls_rejected`); the policy in force stays.
* Wake-up: a producer appends *before* it reads the consumer's ``waiting`` flag, and wakes
  the consumer only while it sleeps (the ordering argument, which relies on the GIL, is in
  :mod:`snakepit_bridge.telemetry.consumer`).

How buffered events leave (one consumer per gRPC call, wake-ups, drop reports, batches and
their pacing): :mod:`snakepit_bridge.telemetry.consumer`. Limits, defaults and the headers
of a call: :mod:`snakepit_bridge.telemetry.protocol`.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from snakepit_bridge.auth import BearerToken, TokenSource
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.consumer import StreamConsumer
from snakepit_bridge.telemetry.counters import Counter, CounterSet
from snakepit_bridge.telemetry.encoding import EventRecord, encode_event, encode_record
from snakepit_bridge.telemetry.policy import ControlPolicy
from snakepit_bridge.telemetry.producer import (
    NATIVE_PRODUCER,
    BufferEntry,
    entry_charge,
    make_producer,
)
from snakepit_bridge.telemetry.protocol import (
    CAPABILITIES_HEADER,
    CAPABILITY_BATCHED,
    CAPABILITY_RESTATED_DROPS,
    CAPABILITY_SAMPLING_PATTERNS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MIN_BATCH_INTERVAL,
    DROP_REASONS,
    DROP_REPORT_EVENT,
    DROP_REPORT_INTERVAL_SECONDS,
    SENT_HEADER,
    SINGLE_RPC_CAPABILITIES,
    STREAM_ID_HEADER,
    OutgoingMessage,
    check_batch_bounds,
    check_batch_interval,
)

if TYPE_CHECKING:
    from snakepit_bridge.telemetry.aio import TelemetryContext

__all__ = [
    "CAPABILITIES_HEADER",
    "CAPABILITY_BATCHED",
    "CAPABILITY_RESTATED_DROPS",
    "CAPABILITY_SAMPLING_PATTERNS",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_BATCH_EVENTS",
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MIN_BATCH_INTERVAL",
    "DROP_REASONS",
    "DROP_REPORT_EVENT",
    "DROP_REPORT_INTERVAL_SECONDS",
    "NATIVE_PRODUCER",
    "SENT_HEADER",
    "SINGLE_RPC_CAPABILITIES",
    "STREAM_ID_HEADER",
    "BufferEntry",
    "EventRecord",
    "OutgoingMessage",
    "StreamConsumer",
    "StreamStats",
    "TelemetryStream",
    "batch_entry_size",
    "check_batch_bounds",
    "check_batch_interval",
    "entry_charge",
    "serialize_entry",
]

_BATCH_TAG: Final = 0x0A
"""``TelemetryEventBatch.events``: field 1, wire type 2 (length-delimited)."""
_ONE_BYTE_ENTRY_PREFIX: Final = tuple(bytes((_BATCH_TAG, size)) for size in range(128))
"""Entry prefixes (tag and one-byte varint length) of events under 128 bytes."""

_Out = TypeVar("_Out")

_PackBytes = Callable[[deque[BufferEntry], int, int, int, int], tuple[bytes, int, int, int, bool]]


def _native_pack_bytes() -> _PackBytes | None:
    """``_wire.pack_bytes`` when streams use the native producer (whose entries are bytes)."""
    if not NATIVE_PRODUCER:
        return None
    from snakepit_bridge.telemetry import _wire  # noqa: PLC0415 - optional extension

    return getattr(_wire, "pack_bytes", None)  # None in an extension built from older sources


_PACK_BYTES: Final = _native_pack_bytes()
"""The native inner loop of batch packing, or None (see ``TelemetryStream._pack_buffered``)."""


def serialize_entry(entry: BufferEntry) -> bytes:
    """The wire bytes of a buffered entry.

    A record is serialized as a ``TelemetryEvent`` (by
    :data:`~snakepit_bridge.telemetry.encoding.encode_record`: the native encoder when it
    is built), raw bytes pass as they are. Counts nothing (the consumer's drops are
    counted by the stream).

    Raises:
        Exception: on a record protobuf cannot hold (``TypeError``, ``ValueError``,
            ``OverflowError``, ``UnicodeError``, ...).
    """
    if isinstance(entry, bytes):
        return entry
    return encode_record(entry)


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of a stream's counters."""

    enqueued: int
    """Events (and raw messages) accepted into the buffer."""
    buffered: int
    """Messages waiting in the buffer now."""
    buffered_bytes: int
    """Bytes waiting in the buffer now (sum of the serialized messages' lengths)."""
    sent: int
    """Events (including drop reports and raw messages) handed to a gRPC call, one per
    ``StreamTelemetry`` message or many per ``StreamTelemetryBatched`` message."""
    sent_batches: int
    """``TelemetryEventBatch`` messages handed to a ``StreamTelemetryBatched`` call."""
    sent_reports: int
    """Drop reports (``telemetry.dropped`` events) among ``sent``."""
    dropped: Mapping[str, int]
    """Events not enqueued, by reason (see :data:`DROP_REASONS`)."""
    controls_rejected: int
    """Control messages rejected (invalid rate or pattern); the policy stayed as it was."""

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
            "buffered_bytes": self.buffered_bytes,
            "sent": self.sent,
            "sent_batches": self.sent_batches,
            "sent_reports": self.sent_reports,
            "dropped_total": self.dropped_total,
            "dropped": dict(self.dropped),
            "controls_rejected": self.controls_rejected,
        }


def _entry_prefix(size: int) -> bytes:
    """The tag and varint length that frame a ``size``-byte event inside a batch."""
    if size < 128:
        return _ONE_BYTE_ENTRY_PREFIX[size]
    if size < 16384:
        return bytes((_BATCH_TAG, (size & 0x7F) | 0x80, size >> 7))
    prefix = bytearray((_BATCH_TAG,))
    while size >= 128:
        prefix.append((size & 0x7F) | 0x80)
        size >>= 7
    prefix.append(size)
    return bytes(prefix)


def batch_entry_size(event_size: int) -> int:
    """Bytes a ``event_size``-byte serialized event takes inside a batch (framing included)."""
    return len(_entry_prefix(event_size)) + event_size


def _pack_reports(
    first: list[bytes], parts: list[bytes], max_events: int, max_bytes: int
) -> tuple[int, int]:
    """Frame drop reports from ``first`` into ``parts`` while they fit a batch.

    Those packed are removed from ``first`` (what is left did not fit). Returns their
    count and bytes.
    """
    total = 0
    count = 0
    for message in first:
        size = len(message)
        prefix = _entry_prefix(size)
        entry = len(prefix) + size
        if count and (count >= max_events or total + entry > max_bytes):
            break
        parts.append(prefix)
        parts.append(message)
        total += entry
        count += 1
    del first[:count]
    return count, total


class TelemetryStream:
    """A buffer of telemetry events for one worker, bounded in messages and in bytes.

    ``emit`` never raises and never blocks: when the buffer is full, or the event too
    large, the new event is dropped and counted. Events emitted before a consumer
    attaches stay buffered. Control messages are applied at the source, so a disabled,
    filtered-out or sampled-out event is never built into a protobuf.
    """

    def __init__(
        self,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        *,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        random_source: Callable[[], float] = random.random,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        """Create a stream.

        Args:
            max_buffer: most events held while no consumer keeps up (>= 1).
            max_buffer_bytes: most bytes held, summed over the serialized messages (>= 1).
            max_event_bytes: largest serialized event accepted (>= 1); the bound used is
                at most ``max_buffer_bytes``.
            random_source: returns floats in [0, 1); used for sampling (inject for tests).
            clock_ns: wall clock for ``timestamp_ns`` (inject for tests).

        Raises:
            ValueError: if a bound is not a positive integer.
        """
        for name, bound in (
            ("max_buffer", max_buffer),
            ("max_buffer_bytes", max_buffer_bytes),
            ("max_event_bytes", max_event_bytes),
        ):
            if type(bound) is not int or bound < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {bound!r}")
        self._max_buffer = max_buffer
        self._max_buffer_bytes = max_buffer_bytes
        self._max_event_bytes = min(max_event_bytes, max_buffer_bytes)
        self._clock_ns = clock_ns  # for drop reports
        self._buffer: deque[BufferEntry] = deque()
        self._pop_lock = threading.Lock()  # consumers: popleft + the producer's release
        self._producer = make_producer(
            self._buffer,
            max_buffer,
            max_buffer_bytes,
            self._max_event_bytes,
            clock_ns=clock_ns,
            random_source=random_source,
        )
        if type(self).emit is TelemetryStream.emit:
            # Calls to stream.emit go straight to the producer, without this class's frame,
            # and telemetry.emit recognizes a native producer's emit and calls it directly.
            self.emit = self._producer.emit  # type: ignore[method-assign]
        self._policy = ControlPolicy()
        self._producer.set_policy(self._policy)
        self._consumer: StreamConsumer | None = None
        self._closed = False
        self._lock = threading.Lock()  # guards attach/release/control/close, never emit

        # Events enqueued, then dropped when the consumer serialized them (encode_error,
        # oversize): counted under their reason, and taken off `enqueued` in stats().
        self._late_drops = Counter()
        self._count_late_drop = self._late_drops.increment
        # Events and batch messages sent, in one attribute: keep the instance's attributes
        # few. On CPython 3.11 a 30th one made emit's drop paths about 10% slower
        # (bench/python_emit.py: 0.28 -> 0.31 µs with the buffer full).
        self._sent = CounterSet(("events", "batches", "reports"))
        self._count_sent = self._sent["events"].increment
        self._stream_id = secrets.token_hex(8)  # this stream's identity (see handover())
        self._controls_rejected = Counter()
        self._reported: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._reported_total = 0
        # True when a consumer followed another: the next report restates every reason's
        # total (see take_drop_report), so that reports the earlier call lost are made up.
        # None until the first consumer attaches (one attribute for both: see _sent).
        self._restate: bool | None = None
        self._report_lock = threading.Lock()

    # -- producer side (any thread) -------------------------------------------------

    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Enqueue one event, or drop and count it. Never raises, never blocks.

        ``correlation_id`` None means the current context's id (read only for an event
        that is kept). An instance calls its producer's ``emit`` directly (see
        :mod:`.producer`) unless a subclass overrides this method.
        """
        self._producer.emit(event_name, measurements, metadata, correlation_id)

    def enqueue_raw(self, data: bytes) -> bool:
        """Enqueue bytes that go on the wire as one message, bypassing the policy.

        For tests of undecodable input. Both bounds apply: returns False (and counts
        ``closed``, ``oversize`` or ``overflow``) when the bytes are not enqueued.
        """
        producer = self._producer
        if producer.closed:
            producer.count("closed")
            return False
        message = bytes(data)
        if len(message) > self._max_event_bytes:
            producer.count("oversize")
            return False
        if not producer.admit(message):
            producer.count("overflow")
            return False
        return True

    # -- consumer side ----------------------------------------------------------------

    def attach(self, consumer: StreamConsumer | None = None) -> StreamConsumer:
        """Attach a new consumer, replacing (detaching) the current one; return it.

        ``consumer`` is a fresh one made for this stream (for example an
        :class:`~snakepit_bridge.telemetry.aio.AsyncStreamConsumer`); by default a
        :class:`StreamConsumer` is made. Control settings are per call: attaching resets
        them to the defaults (enabled, rate 1.0, no filters) so that a new client does not
        inherit an old one's choices. Buffered events stay and go to the new consumer.
        """
        if consumer is None:
            consumer = StreamConsumer(self)
        with self._lock:
            previous = self._consumer
            self._consumer = consumer
            self._producer.set_consumer(consumer)
            if not self._closed:
                self._set_policy(ControlPolicy())
            again = self._restate is not None
            if not again:
                self._restate = False
        if again:
            # After the swap: a replaced consumer takes no report from here on, so the
            # restated totals cover every report it took and never handed over.
            with self._report_lock:
                self._restate = True
        if previous is not None:
            previous.detach()
        return consumer

    def release(self, consumer: StreamConsumer) -> None:
        """Forget ``consumer`` if it is the current one (called by its ``detach``)."""
        with self._lock:
            if self._consumer is consumer:
                self._consumer = None
                self._producer.set_consumer(None)

    @property
    def current_consumer(self) -> StreamConsumer | None:
        """The attached consumer, if any."""
        return self._consumer

    def _encode(self, entry: BufferEntry) -> bytes | None:
        """The wire bytes of a buffered entry, or None if it is dropped (and counted).

        Raw bytes pass as they are. A record is serialized here, on the consumer's thread;
        one that protobuf refuses is dropped as ``encode_error``, and one whose bytes come
        out over ``max_event_bytes`` (its charge at ``emit`` was a lower bound) as
        ``oversize``.
        """
        if isinstance(entry, bytes):
            return entry
        try:
            message = encode_record(entry)
        except Exception:
            self._count_late_drop()
            self._producer.count("encode_error")
            return None
        if len(message) > self._max_event_bytes:
            self._count_late_drop()
            self._producer.count("oversize")
            return None
        return message

    def pop(self, consumer: StreamConsumer | None = None) -> bytes:
        """Remove the oldest buffered event and return its wire bytes (for the consumer).

        Counted as sent. Events dropped while being serialized (see :meth:`_encode`) are
        skipped. With ``consumer``, nothing is taken unless it is the current consumer (so
        that a replaced call cannot take events after :meth:`handover` counted them).

        Raises:
            IndexError: if the buffer is empty, or ``consumer`` is no longer current.
        """
        return self._pop_one(consumer, self._encode)

    def pop_event(self, consumer: StreamConsumer | None = None) -> pb.TelemetryEvent:
        """Remove the oldest buffered event and return it as a ``TelemetryEvent`` message.

        The message form of :meth:`pop`, for a servicer whose response serializer is
        ``TelemetryEvent.SerializeToString`` (a ``grpc.aio`` servicer, see :meth:`stream`).
        Counted as sent. Events dropped on the way (``encode_error``, ``oversize``) are
        skipped and counted.

        Raises:
            IndexError: if the buffer is empty, or ``consumer`` is no longer current.
        """
        return self._pop_one(consumer, self._to_message)

    def _pop_one(
        self, consumer: StreamConsumer | None, convert: Callable[[BufferEntry], _Out | None]
    ) -> _Out:
        with self._pop_lock:
            if consumer is not None and not consumer.is_current:
                raise IndexError("the consumer was replaced")
            while True:
                entry = self._buffer.popleft()
                self._producer.release(entry_charge(entry))
                converted = convert(entry)
                if converted is not None:
                    self._count_sent()
                    return converted

    def claim_drop_report(self, consumer: StreamConsumer) -> list[bytes] | None:
        """Take the drop report due now (:meth:`take_drop_report`) for ``consumer`` to send.

        Its messages are counted as sent, under the lock :meth:`handover` reads the count
        with. Returns None, taking nothing, when ``consumer`` was replaced: it must not
        send, and the drops stay for the current consumer to report.
        """
        with self._pop_lock:
            if not consumer.is_current:
                return None
            reports = self.take_drop_report(consumer)
            self._sent["events"].add(len(reports))
            self._sent["reports"].add(len(reports))
            return reports

    def handover(self) -> tuple[str, int]:
        """Return this stream's identity and the events it has handed to calls so far.

        Sent in a new call's response headers (``x-snakepit-telemetry-stream-id``,
        ``x-snakepit-telemetry-sent``) after it attached, so that the client can count what
        the previous call lost in transit. Drop reports are not in that count: each carries
        its reason's running ``total``, so a report that is lost is made up by the next one.
        Taken under the lock every pop holds, after :meth:`attach` replaced the consumer: a
        replaced consumer takes nothing afterwards, so the count covers every event any
        earlier call was given.
        """
        with self._pop_lock:
            return self._stream_id, self._sent["events"].value - self._sent["reports"].value

    def _to_message(self, entry: BufferEntry) -> pb.TelemetryEvent | None:
        """The ``TelemetryEvent`` of a buffered entry, or None if it is dropped (and counted).

        The entry's wire bytes (:meth:`_encode`, with its drops), parsed; raw bytes that do
        not parse are dropped as ``encode_error``.
        """
        data = self._encode(entry)
        if data is None:
            return None
        try:
            return pb.TelemetryEvent.FromString(data)
        except Exception:
            self._count_late_drop()
            self._producer.count("encode_error")
            return None

    def pop_batch(
        self,
        max_events: int,
        max_bytes: int,
        first: list[bytes] | None = None,
        consumer: StreamConsumer | None = None,
    ) -> tuple[bytes, int]:
        """Remove the oldest buffered events that fit one batch; return it and its size.

        The batch is a serialized ``TelemetryEventBatch``: each event's bytes framed as
        field 1 (tag ``0x0A``, varint length, the event). Messages of ``first`` (drop
        reports) go before buffered ones, and those packed are removed from the list. At
        most ``max_events`` events and ``max_bytes`` bytes (framing included), except
        that the first event always goes, alone if it does not fit. Records are
        serialized here (see :meth:`_encode`); one that does not fit the batch goes back
        to the front of the buffer as bytes. Returns ``(b"", 0)`` when there is nothing
        to send. Bounds are not checked here (see :func:`check_batch_bounds`). The events
        packed count as sent, and the message as a sent batch. With ``consumer``, nothing is
        taken unless it is the current consumer (see :meth:`handover`).
        """
        with self._pop_lock:
            # Only consumers pop, under this lock; producers only append, so a non-empty
            # buffer stays non-empty and its front entry stays until popped here.
            if consumer is not None and not consumer.is_current:
                return b"", 0
            batch, count, reports = self._pack_batch(max_events, max_bytes, first)
            if count:
                self._sent["events"].add(count)
                self._sent["reports"].add(reports)
                self._sent["batches"].increment()
            return batch, count

    def _pack_batch(
        self, max_events: int, max_bytes: int, first: list[bytes] | None
    ) -> tuple[bytes, int, int]:
        """:meth:`pop_batch`'s packing: the batch, its events, and how many are drop reports.

        The caller holds ``_pop_lock``.
        """
        parts: list[bytes] = []
        reports, total = _pack_reports(first, parts, max_events, max_bytes) if first else (0, 0)
        if first or not self._buffer:  # full with reports, or nothing else to send
            return b"".join(parts), reports, reports
        count = self._pack_buffered(parts, reports, total, max_events, max_bytes)
        return b"".join(parts), count, reports

    def _pack_buffered(
        self, parts: list[bytes], count: int, total: int, max_events: int, max_bytes: int
    ) -> int:
        """Append buffered events to ``parts`` (framed) while they fit; return the count.

        Runs of entries that are bytes (all of them, with the native producer) are framed
        by ``_wire.pack_bytes`` when it is built, into one part, by the same rules as the
        loop below, which handles records (and everything without the extension).
        """
        append = parts.append
        buffer = self._buffer
        one_byte = _ONE_BYTE_ENTRY_PREFIX
        popleft = buffer.popleft
        encode = self._encode
        pack_bytes = _PACK_BYTES
        charged = 0
        while count < max_events and buffer:
            if pack_bytes is not None:
                packed, count, total, taken, full = pack_bytes(
                    buffer, count, total, max_events, max_bytes
                )
                if packed:
                    append(packed)
                    charged += taken
                if full or not buffer:
                    break
                # The front entry is a record: serialized below.
            item = popleft()
            charged += entry_charge(item)
            message = encode(item)
            if message is None:
                continue
            size = len(message)
            prefix = one_byte[size] if size < 128 else _entry_prefix(size)
            entry = len(prefix) + size
            if count and total + entry > max_bytes:
                # Back to the front, now charged as the bytes it is.
                self._producer.put_back(message)
                break
            append(prefix)
            append(message)
            total += entry
            count += 1
        self._producer.release(charged)
        return count

    @property
    def buffer(self) -> deque[BufferEntry]:
        """The underlying buffer, for reading only (take messages with :meth:`pop`)."""
        return self._buffer

    @property
    def sent_counter(self) -> Counter:
        """Counter of events (messages of ``StreamTelemetry``) handed to a consumer."""
        return self._sent["events"]

    @property
    def sent_batches_counter(self) -> Counter:
        """Counter of ``TelemetryEventBatch`` messages handed to a consumer."""
        return self._sent["batches"]

    def stream(
        self,
        request_iterator: AsyncIterable[pb.TelemetryControl],
        context: TelemetryContext,
        *,
        token: str | BearerToken | TokenSource | None = TokenSource.FROM_ENV,
    ) -> AsyncIterator[pb.TelemetryEvent]:
        """Serve this stream on a ``grpc.aio`` ``StreamTelemetry`` call (Snakepit's method).

        For a servicer written as Snakepit's is::

            async def StreamTelemetry(self, request_iterator, context):
                async for event in self.telemetry_stream.stream(request_iterator, context):
                    yield event

        Sends the capability header, applies control messages as they arrive and yields
        one ``TelemetryEvent`` per event until the stream is closed (and drained), a newer
        call replaces this one, or the client goes away. When the worker has a token
        (``token``; by default ``SNAKEPIT_WORKER_TOKEN``, set by the Elixir ``Worker``), a
        call without it is aborted with ``UNAUTHENTICATED`` and changes nothing. See
        :mod:`snakepit_bridge.telemetry.aio`.
        """
        from snakepit_bridge.telemetry.aio import (  # noqa: PLC0415 - aio builds on this module
            serve_telemetry,
        )

        return serve_telemetry(self, request_iterator, context, token)

    # -- control ------------------------------------------------------------------------

    def apply_control(
        self, control: pb.TelemetryControl | None, consumer: StreamConsumer | None = None
    ) -> bool:
        """Apply a control message from the client. Never raises.

        None stands for a message that could not be parsed: it is rejected as below.

        When ``consumer`` is given, the message is ignored unless that consumer is still the
        current one (a replaced call must not change the new call's settings). A message
        with an invalid rate or pattern (or one that cannot be applied at all) is rejected
        as a whole: the settings in force stay and :attr:`controls_rejected` goes up.
        Returns True if the message was applied.
        """
        with self._lock:
            if self._closed:
                return False
            if consumer is not None and self._consumer is not consumer:
                return False
            try:
                if control is None:
                    raise ValueError("not a TelemetryControl message")
                self._set_policy(self._policy.apply(control))
            except Exception:
                self._controls_rejected.increment()
                return False
            current = self._consumer
        # What was emitted before the control goes now, not at the end of a pacing interval.
        if current is not None:
            current.flush_soon()
        return True

    @property
    def controls_rejected(self) -> int:
        """Control messages rejected because of an invalid rate or pattern."""
        return self._controls_rejected.value

    @property
    def policy(self) -> ControlPolicy:
        """The settings in force."""
        return self._policy

    def is_enabled(self) -> bool:
        """True unless the client switched telemetry off or the stream is closed."""
        return self._policy.enabled

    @property
    def enabled(self) -> bool:
        """Whether events are kept (Snakepit's attribute); False after :meth:`close`.

        Setting it is what a ``toggle`` control message does (ignored after :meth:`close`).
        """
        return self._policy.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        enabled = bool(value)
        self._change_policy(lambda policy: policy.with_enabled(enabled))

    @property
    def sampling_rate(self) -> float:
        """The rate of events that no pattern-scoped rule matches (Snakepit's attribute).

        Setting it is what a pattern-less ``sampling`` control message does (it also ends
        pattern-scoped rules); the value is clamped to [0.0, 1.0] as Snakepit clamps
        control messages. A value ``float()`` refuses raises ``TypeError`` or
        ``ValueError``, and NaN ``ValueError``; nothing is changed then.
        """
        return self._policy.sampling_rate

    @sampling_rate.setter
    def sampling_rate(self, value: float) -> None:
        rate = float(value)
        if math.isnan(rate):
            raise ValueError("sampling_rate must be a number in [0.0, 1.0], got nan")
        clamped = min(max(rate, 0.0), 1.0)
        self._change_policy(lambda policy: policy.with_sampling(clamped))

    def _change_policy(self, change: Callable[[ControlPolicy], ControlPolicy]) -> None:
        """Replace the policy in force by ``change(policy)``, unless the stream is closed."""
        with self._lock:
            if not self._closed:
                self._set_policy(change(self._policy))

    def _set_policy(self, policy: ControlPolicy) -> None:
        """Put ``policy`` in force (the caller holds ``_lock``)."""
        self._policy = policy
        self._producer.set_policy(policy)

    # -- lifecycle and stats --------------------------------------------------------------

    def close(self) -> None:
        """End the stream gracefully: the consumer drains the buffer, then its iterator ends.

        Later emits are dropped (reason ``closed``). Idempotent.
        """
        with self._lock:
            self._closed = True
            self._producer.close()
            self._set_policy(ControlPolicy(enabled=False))
            consumer = self._consumer
        if consumer is not None:
            consumer.wake()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def max_buffer(self) -> int:
        """The bound on buffered events."""
        return self._max_buffer

    @property
    def max_buffer_bytes(self) -> int:
        """The bound on buffered bytes (sum of the serialized messages' lengths)."""
        return self._max_buffer_bytes

    @property
    def max_event_bytes(self) -> int:
        """The largest serialized event accepted (never above :attr:`max_buffer_bytes`)."""
        return self._max_event_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes buffered now."""
        return self._producer.buffered_bytes

    @property
    def has_unreported_drops(self) -> bool:
        """True if there are drops not yet reported, or a new consumer is to restate them."""
        return bool(self._restate) or self._producer.dropped_total != self._reported_total

    def take_drop_report(self, consumer: StreamConsumer | None = None) -> list[bytes]:
        """Return the drop report due now, and mark those drops reported.

        One serialized ``telemetry.dropped`` event per reason whose count rose since the
        last report (``count`` = that increase, ``total`` = every drop for that reason in
        this stream's life, ``reason`` = the reason). With ``total`` the client makes up the
        counts of a report that was lost on a broken call (see :meth:`handover`).

        The first report after a consumer replaced another restates every reason that has
        drops, with a ``count`` of 0 where nothing is new: reports the old call lost in
        transit, or took and never sent, are then made up even if no drop follows. With
        ``consumer``, nothing is taken unless it is the current consumer (a replaced one
        would take reports it can no longer send).
        """
        with self._report_lock:
            if consumer is not None and not consumer.is_current:
                return []
            resync = self._restate is True
            if resync:
                self._restate = False
            now = self._producer.dropped_counts()
            reports = []
            for reason, count in now.items():
                delta = count - self._reported[reason]
                if delta > 0 or (resync and count > 0):
                    message = encode_event(
                        DROP_REPORT_EVENT,
                        {"count": delta, "total": count},
                        {"reason": reason},
                        None,
                        self._clock_ns(),
                    )
                    reports.append(message.SerializeToString())
            self._reported = dict(now)
            self._reported_total = sum(now.values())
        return reports

    @property
    def dropped_count(self) -> int:
        """Events dropped for any reason."""
        return self._producer.dropped_total

    def dropped_counts(self) -> Mapping[str, int]:
        """Events dropped, by reason."""
        return self._producer.dropped_counts()

    def stats(self) -> StreamStats:
        """Return a snapshot of the counters.

        Taken under the lock consumers pop with, so that no batch is half taken in it
        (gone from ``buffered`` but not yet in ``sent``): once a snapshot shows an empty
        buffer, its ``sent`` counts every event enqueued before it.
        """
        with self._pop_lock:
            return StreamStats(
                enqueued=self._producer.enqueued - self._late_drops.value,
                buffered=len(self._buffer),
                buffered_bytes=self.buffered_bytes,
                sent=self._sent["events"].value,
                sent_batches=self._sent["batches"].value,
                sent_reports=self._sent["reports"].value,
                dropped=self._producer.dropped_counts(),
                controls_rejected=self._controls_rejected.value,
            )
