"""Turning an ``emit`` call into a wire message.

Measurement values keep their type: ``int`` (and ``bool``, and other ``numbers.Integral``)
become ``int_value``, ``float`` (and other ``numbers.Real``) ``float_value``, ``str``
``string_value``. Anything else is an error. Metadata values are converted with ``str()``.
Keys must be ``str``. Errors (a wrong type, an int outside int64, a string protobuf cannot
encode) raise; callers count the event as dropped.

Serializing a buffered record (:func:`encode_record`) is done by the native encoder
``snakepit_bridge.telemetry._wire`` when it is built (``native/snakepit_bridge_wire``, a
Rust extension that ``mix compile`` and ``scripts/setup`` build; about 7x faster than
protobuf in Python, ``bench/python_emit.py``), else by protobuf. Both give the same message
and raise for the same records (``tests/test_wire.py`` checks them against each other).
Setting ``SNAKEPIT_BRIDGE_NATIVE_ENCODER=0`` in the environment uses protobuf even when
the extension is there.
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb

__all__ = [
    "NATIVE_ENCODER",
    "NATIVE_ENCODER_ENV",
    "EventRecord",
    "MeasurementValue",
    "RecordEncoder",
    "encode_event",
    "encode_record",
    "encode_record_with_protobuf",
    "measurement_value",
    "native_record_encoder",
]

MeasurementValue: TypeAlias = int | float | str
"""The value types a measurement may have on the wire."""

EventRecord: TypeAlias = tuple[
    str, dict[str, object], dict[str, object] | None, str | None, int, int
]
"""What ``emit`` buffers: the event name, copies of the measurements and metadata (metadata
values already ``str``), the correlation id, ``timestamp_ns`` and the record's charge
against ``max_buffer_bytes``."""

RecordEncoder: TypeAlias = Callable[[EventRecord], bytes]
"""Serializes a record into ``TelemetryEvent`` bytes; raises where protobuf would."""

NATIVE_ENCODER_ENV: Final = "SNAKEPIT_BRIDGE_NATIVE_ENCODER"
"""Set to ``0`` to serialize with protobuf even when the native encoder is built."""

_TelemetryEvent = pb.TelemetryEvent


def measurement_value(value: object) -> MeasurementValue:
    """Return the wire value for a measurement, or raise TypeError for unsupported types."""
    kind = type(value)
    if kind is int or kind is float or kind is str:
        return value  # type: ignore[return-value]  # narrowed by the exact type check
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"unsupported measurement type {kind.__name__}")


def _set_value(target: pb.TelemetryValue, value: object) -> None:
    plain = measurement_value(value)
    if isinstance(plain, int):
        target.int_value = plain
    elif isinstance(plain, float):
        target.float_value = plain
    else:
        target.string_value = plain


def encode_event(
    event: str,
    measurements: Mapping[str, object],
    metadata: Mapping[str, object] | None,
    correlation_id: str | None,
    timestamp_ns: int,
) -> pb.TelemetryEvent:
    """Build the ``TelemetryEvent`` for one emit call (by field assignment: the fast way).

    Raises:
        TypeError, ValueError, AttributeError, UnicodeError: on input protobuf cannot hold.
    """
    message = _TelemetryEvent()
    message.event_parts.extend(event.split("."))
    message.timestamp_ns = timestamp_ns
    if correlation_id:
        message.correlation_id = correlation_id
    values = message.measurements
    for key, value in measurements.items():
        kind = type(value)
        # Exact-type checks first: this loop runs for every measurement of every event.
        if kind is int:
            values[key].int_value = value  # type: ignore[assignment]
        elif kind is float:
            values[key].float_value = value  # type: ignore[assignment]
        elif kind is str:
            values[key].string_value = value  # type: ignore[assignment]
        else:
            _set_value(values[key], value)
    if metadata:
        fields = message.metadata
        for key, value in metadata.items():
            fields[key] = value if type(value) is str else str(value)
    return message


def encode_record_with_protobuf(record: EventRecord) -> bytes:
    """Serialize a buffered record by building its protobuf message (the fallback)."""
    event, measurements, metadata, correlation_id, timestamp_ns, _ = record
    return encode_event(
        event, measurements, metadata, correlation_id, timestamp_ns
    ).SerializeToString()


def native_record_encoder() -> RecordEncoder | None:
    """Return the native encoder, or None when ``_wire`` is not built (or cannot load)."""
    try:
        from snakepit_bridge.telemetry import _wire  # noqa: PLC0415 - optional extension
    except ImportError:
        return None
    # A partial, not a closure: the sender calls it once per event, without a Python frame.
    return functools.partial(_wire.encode_record, measurement_value)


def _select_record_encoder() -> tuple[RecordEncoder, bool]:
    if os.environ.get(NATIVE_ENCODER_ENV, "1") != "0":
        native = native_record_encoder()
        if native is not None:
            return native, True
    return encode_record_with_protobuf, False


encode_record, NATIVE_ENCODER = _select_record_encoder()
"""The record encoder in use, and whether it is the native one."""
