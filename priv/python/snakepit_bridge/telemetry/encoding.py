"""Turning an ``emit`` call into a wire message (protobuf) or a JSON-ready dict.

Measurement values keep their type: ``int`` (and ``bool``, and other ``numbers.Integral``)
become ``int_value``, ``float`` (and other ``numbers.Real``) ``float_value``, ``str``
``string_value``. Anything else is an error. Metadata values are converted with ``str()``.
Keys must be ``str``. Errors (a wrong type, an int outside int64, a string protobuf cannot
encode) raise; callers count the event as dropped.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TypeAlias

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb

__all__ = [
    "MeasurementValue",
    "encode_event",
    "measurement_value",
]

MeasurementValue: TypeAlias = int | float | str
"""The value types a measurement may have on the wire."""

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
