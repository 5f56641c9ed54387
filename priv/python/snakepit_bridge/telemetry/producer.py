"""The producer side of a :class:`~snakepit_bridge.telemetry.stream.TelemetryStream`.

What ``emit`` does on the caller's thread: apply the policy (toggle, per-name decisions,
sampling), check both bounds, append to the stream's deque, count every drop, and wake the
consumer when it waits. Two implementations with the same methods and counters:

* the native ``StreamProducer`` (``snakepit_bridge.telemetry._wire``, built from
  ``native/snakepit_bridge_wire``): serializes the event into ``TelemetryEvent`` bytes at
  once, in Rust, and buffers the bytes; ``telemetry.emit`` reaches it without a Python
  frame (``_wire.EmitDispatch``). Used whenever the extension is built, unless
  ``SNAKEPIT_BRIDGE_NATIVE_ENCODER=0``.
* :class:`PythonProducer`, the fallback: records the event (a tuple with copies of the
  dicts, :data:`~snakepit_bridge.telemetry.encoding.EventRecord`) and leaves serializing to
  the consumer, since protobuf in Python costs several µs per event; what protobuf then
  refuses is dropped late (counted by the stream).

Both are thread-safe under the GIL; see :mod:`snakepit_bridge.telemetry.stream`.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from snakepit_bridge.telemetry.context import CORRELATION_ID
from snakepit_bridge.telemetry.counters import Counter, CounterSet
from snakepit_bridge.telemetry.encoding import NATIVE_ENCODER, EventRecord, measurement_value
from snakepit_bridge.telemetry.protocol import DROP_REASONS

if TYPE_CHECKING:
    from snakepit_bridge.telemetry.consumer import StreamConsumer
    from snakepit_bridge.telemetry.policy import ControlPolicy

__all__ = [
    "NATIVE_PRODUCER",
    "BufferEntry",
    "Producer",
    "PythonProducer",
    "entry_charge",
    "make_producer",
]

BufferEntry = EventRecord | bytes
"""A buffered entry: an event record (Python producer), or serialized bytes."""

_RECORD_OVERHEAD: Final = 16
"""Bytes charged per record beyond its name: the timestamp and field framing."""
_MEASUREMENT_OVERHEAD: Final = 24
"""Bytes charged per measurement: a short key, the value (a number) and framing."""
_METADATA_OVERHEAD: Final = 16
"""Bytes charged per metadata pair beyond its value: a short key and framing."""

_join: Final = "".join
_current_correlation_id: Final = CORRELATION_ID.get


class Producer(Protocol):
    """What a stream needs of its producer (both implementations provide it)."""

    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Enqueue one event, or drop and count it. Never raises, never blocks."""

    def set_policy(self, policy: ControlPolicy) -> None:
        """Apply ``policy`` to later emits."""

    def close(self) -> None:
        """Drop later emits as ``closed``."""

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""

    def set_consumer(self, consumer: StreamConsumer | None) -> None:
        """The consumer to wake after an append."""

    def admit(self, message: bytes) -> bool:
        """Append bytes within both bounds (counted enqueued, consumer woken)."""

    def put_back(self, message: bytes) -> None:
        """Return bytes to the front of the buffer, charged as their length."""

    def release(self, charge: int) -> None:
        """The consumer took entries charged ``charge`` bytes in all."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes charged for what is buffered now."""

    @property
    def enqueued(self) -> int:
        """Entries ever appended."""

    def count(self, reason: str) -> None:
        """Count one drop for ``reason``."""

    def dropped_counts(self) -> dict[str, int]:
        """Drops so far, by reason (every reason present)."""

    @property
    def dropped_total(self) -> int:
        """All drops so far."""


def entry_charge(entry: BufferEntry) -> int:
    """What a buffered ``entry`` counts against ``max_buffer_bytes``.

    The length of bytes, or the charge an event record was given when it was emitted.
    """
    return len(entry) if isinstance(entry, bytes) else entry[5]


class PythonProducer:
    """The pure-Python producer: records events, the consumer serializes them.

    A record's charge against ``max_buffer_bytes`` is a lower bound of its serialized size
    fixed at ``emit`` (the name, the metadata values, the correlation id, and a fixed
    allowance per measurement and per metadata pair).
    """

    def __init__(
        self,
        buffer: deque[BufferEntry],
        max_buffer: int,
        max_buffer_bytes: int,
        max_event_bytes: int,
        *,
        clock_ns: Callable[[], int],
        random_source: Callable[[], float],
    ) -> None:
        self._buffer = buffer
        self._max_buffer = max_buffer
        self._max_buffer_bytes = max_buffer_bytes
        self._max_event_bytes = max_event_bytes
        self._clock_ns = clock_ns
        self._random = random_source
        self._bytes_in = 0  # bytes ever appended; written under _admit_lock only
        self._bytes_out = 0  # bytes ever taken; written by the stream's one consumer
        self._admit_lock = threading.Lock()
        self._policy: ControlPolicy | None = None
        self._consumer: StreamConsumer | None = None
        self._closed = False
        self._enqueued = Counter()
        self._drops = CounterSet(DROP_REASONS)
        self._count_enqueued = self._enqueued.increment
        self._count_disabled = self._drops["disabled"].increment
        self._count_closed = self._drops["closed"].increment
        self._count_sampled_out = self._drops["sampled_out"].increment
        self._count_filtered_out = self._drops["filtered_out"].increment
        self._count_overflow = self._drops["overflow"].increment
        self._count_oversize = self._drops["oversize"].increment
        self._count_encode_error = self._drops["encode_error"].increment

    def emit(  # noqa: PLR0911, PLR0912 - the hot path, kept in one function on purpose
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Record one event, or drop and count it. Never raises, never blocks."""
        try:
            policy = self._policy
            if policy is None or not policy.enabled:
                if self._closed:
                    self._count_closed()
                else:
                    self._count_disabled()
                return
            rate = policy.decisions.get(event_name)
            if rate is None:
                if len(event_name) > self._max_event_bytes:
                    # The name alone is too large to send; dropped before patterns run.
                    self._count_oversize()
                    return
                rate = policy.resolve(event_name)
            if rate < 1.0:
                if rate < 0.0:  # FILTERED_OUT
                    self._count_filtered_out()
                    return
                if self._random() >= rate:
                    self._count_sampled_out()
                    return
            buffer = self._buffer
            if (
                len(buffer) >= self._max_buffer
                or self._bytes_in - self._bytes_out >= self._max_buffer_bytes
            ):
                self._count_overflow()
                return
            # Copied so that later changes by the caller do not show. Joining the metadata
            # values both checks that they are str and sizes them.
            measurements = dict(measurements)
            size = _RECORD_OVERHEAD + len(event_name) + _MEASUREMENT_OVERHEAD * len(measurements)
            if metadata:
                metadata = dict(metadata)
                try:
                    size += len(_join(metadata.values()))  # type: ignore[arg-type]
                except TypeError:  # a value that is not a str: converted now, as sent
                    metadata = {
                        key: value if type(value) is str else str(value)
                        for key, value in metadata.items()
                    }
                    size += len(_join(metadata.values()))  # type: ignore[arg-type]
                size += _METADATA_OVERHEAD * len(metadata)
            else:
                metadata = None
            if correlation_id is None:
                correlation_id = _current_correlation_id()
            if correlation_id:
                size += len(correlation_id)
            record = (event_name, measurements, metadata, correlation_id, self._clock_ns(), size)
        except Exception:
            self._count_encode_error()
            return
        if size > self._max_event_bytes:
            self._count_oversize()
            return
        if not self._append(record, size):
            self._count_overflow()
            return
        self._wake_consumer()

    def _append(self, entry: BufferEntry, size: int) -> bool:
        """Append ``entry`` if both bounds allow it; return whether it was appended."""
        buffer = self._buffer
        with self._admit_lock:
            bytes_in = self._bytes_in + size
            if (
                bytes_in - self._bytes_out > self._max_buffer_bytes
                or len(buffer) >= self._max_buffer
            ):
                return False
            self._bytes_in = bytes_in
            buffer.append(entry)
        self._count_enqueued()
        return True

    def _wake_consumer(self) -> None:
        consumer = self._consumer
        if consumer is not None and (
            consumer.waiting
            or (
                consumer.lingering
                and (
                    len(self._buffer) >= consumer.full_batch
                    or self._bytes_in - self._bytes_out >= consumer.full_batch_bytes
                )
            )
        ):
            consumer.wake()

    def set_policy(self, policy: ControlPolicy) -> None:
        """Apply ``policy`` to later emits (one reference assignment)."""
        self._policy = policy

    def close(self) -> None:
        """Drop later emits as ``closed``."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def set_consumer(self, consumer: StreamConsumer | None) -> None:
        """The consumer to wake after an append."""
        self._consumer = consumer

    def admit(self, message: bytes) -> bool:
        """Append bytes within both bounds (counted enqueued, consumer woken)."""
        if not self._append(message, len(message)):
            return False
        self._wake_consumer()
        return True

    def put_back(self, message: bytes) -> None:
        """Return bytes to the front, charged as their length.

        ``bytes_in`` goes up (rather than ``bytes_out`` down) so that both byte counters
        stay monotonic.
        """
        with self._admit_lock:
            self._bytes_in += len(message)
            self._buffer.appendleft(message)

    def release(self, charge: int) -> None:
        """The consumer took entries charged ``charge`` bytes in all.

        Called by one consumer at a time, under the stream's pop lock.
        """
        self._bytes_out += charge

    @property
    def buffered_bytes(self) -> int:
        """Bytes charged for what is buffered now."""
        bytes_out = self._bytes_out  # first: _bytes_in only grows, so the result is >= 0
        return self._bytes_in - bytes_out

    @property
    def enqueued(self) -> int:
        """Entries ever appended."""
        return self._enqueued.value

    def count(self, reason: str) -> None:
        """Count one drop for ``reason`` (one of ``DROP_REASONS``)."""
        self._drops[reason].increment()

    def dropped_counts(self) -> dict[str, int]:
        """Drops so far, by reason (every reason present)."""
        return dict(self._drops.snapshot())

    @property
    def dropped_total(self) -> int:
        """All drops so far."""
        return self._drops.total()


def _native_producer_class() -> type | None:
    """``_wire.StreamProducer`` when the extension is built, current and not switched off."""
    if not NATIVE_ENCODER:
        return None
    # Its state relies on the GIL (native/snakepit_bridge_wire/src/gil.rs).
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    try:
        from snakepit_bridge.telemetry import _wire  # noqa: PLC0415 - optional extension
    except ImportError:
        return None
    producer = getattr(_wire, "StreamProducer", None)
    if producer is None or tuple(getattr(_wire, "DROP_REASONS", ())) != DROP_REASONS:
        return None  # an extension built from older sources
    return producer  # type: ignore[no-any-return]


_NATIVE_PRODUCER: Final = _native_producer_class()
NATIVE_PRODUCER: Final = _NATIVE_PRODUCER is not None
"""Whether streams use the native producer."""


def make_producer(
    buffer: deque[BufferEntry],
    max_buffer: int,
    max_buffer_bytes: int,
    max_event_bytes: int,
    *,
    clock_ns: Callable[[], int] = time.time_ns,
    random_source: Callable[[], float] = random.random,
) -> Producer:
    """The producer for a stream's ``buffer``: native when available (see the module doc).

    ``clock_ns`` and ``random_source`` are called only when they are not the defaults
    (``time.time_ns``, ``random.random``); the native producer has its own then.
    """
    if _NATIVE_PRODUCER is not None:
        producer: Producer = _NATIVE_PRODUCER(
            buffer,
            max_buffer,
            max_buffer_bytes,
            max_event_bytes,
            measurement_value,
            _current_correlation_id,
            None if clock_ns is time.time_ns else clock_ns,
            None if random_source is random.random else random_source,
        )
        return producer
    return PythonProducer(
        buffer,
        max_buffer,
        max_buffer_bytes,
        max_event_bytes,
        clock_ns=clock_ns,
        random_source=random_source,
    )
