"""The backend that writes one JSON line per event to stderr (Snakepit's ``backends.stderr``).

A fallback for workers that cannot serve gRPC, and a debugging aid. The line is
Snakepit's, byte for byte (one line, folded here)::

    TELEMETRY:{"event": "tool.execution.stop", "measurements": {"duration": 1500},
    "metadata": {"tool": "predict"}, "timestamp_ns": 1700000000000000000,
    "correlation_id": "abc-123"}

that is ``"TELEMETRY:"``, ``json.dumps(payload)`` and a newline, with Python's default separators,
the keys in that order, the caller's measurement and metadata values as they are (numbers
stay numbers, non-finite floats are written ``NaN``/``Infinity``) and ``correlation_id``
``""`` when there is none. The Elixir side reads these lines (``stderr_line.rs``) and
gives a handler the same event the gRPC path would.

Where Snakepit's differs: an event ``json.dumps`` cannot encode (a value that is not JSON
data, a key that is not a str, int, float, bool or None) is dropped and counted as
``encode_error`` instead of writing a ``TELEMETRY_ERROR:`` line; a failed write is
counted as ``write_error``; lines from several threads never interleave; and ``emit``
called through :func:`snakepit_bridge.telemetry.emit` without an id writes the context's
correlation id (Snakepit writes ``""``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from typing import Final, TextIO

from snakepit_bridge.telemetry.backends.base import TelemetryBackend
from snakepit_bridge.telemetry.counters import CounterSet

__all__ = ["STDERR_LINE_PREFIX", "StderrBackend", "format_line"]

STDERR_LINE_PREFIX: Final = "TELEMETRY:"


def format_line(
    event_name: str,
    measurements: Mapping[str, object],
    metadata: Mapping[str, object] | None,
    correlation_id: str | None,
    timestamp_ns: int,
) -> str:
    """Return the event's line, newline included.

    Raises:
        TypeError, ValueError: if ``json.dumps`` cannot encode the payload.
    """
    payload = {
        "event": event_name,
        "measurements": measurements,
        "metadata": metadata or {},
        "timestamp_ns": timestamp_ns,
        "correlation_id": correlation_id or "",
    }
    return STDERR_LINE_PREFIX + json.dumps(payload) + "\n"


class StderrBackend(TelemetryBackend):
    """Writes one ``TELEMETRY:{json}`` line per event (see the module doc for the format).

    Unlike the gRPC backend it writes synchronously, so a reader that stops draining the
    pipe can block the emitting thread.
    """

    def __init__(self, output: TextIO | None = None) -> None:
        """Write to ``output``, or to whatever ``sys.stderr`` is at each emit."""
        self._output = output
        self._lock = threading.Lock()
        self._drops = CounterSet(("encode_error", "write_error"))

    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Write the event's line; drop and count it if it cannot be encoded or written."""
        try:
            line = format_line(event_name, measurements, metadata, correlation_id, time.time_ns())
        except Exception:
            self._drops["encode_error"].increment()
            return
        try:
            output = self._output if self._output is not None else sys.stderr
            with self._lock:
                output.write(line)
                output.flush()
        except Exception:
            self._drops["write_error"].increment()

    def dropped_counts(self) -> Mapping[str, int]:
        """Events not written, by reason (``encode_error``, ``write_error``)."""
        return self._drops.snapshot()
