"""Telemetry backends: where :func:`snakepit_bridge.telemetry.emit` sends events."""

from __future__ import annotations

import json
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TextIO, TypeAlias

from snakepit_bridge.telemetry.context import CORRELATION_ID
from snakepit_bridge.telemetry.counters import CounterSet
from snakepit_bridge.telemetry.encoding import event_to_json_dict
from snakepit_bridge.telemetry.stream import TelemetryStream

__all__ = ["STDERR_LINE_PREFIX", "Emitter", "GrpcBackend", "StderrBackend", "TelemetryBackend"]

STDERR_LINE_PREFIX = "TELEMETRY:"

Emitter: TypeAlias = Callable[
    [str, Mapping[str, object], Mapping[str, object] | None, str | None], None
]
"""What ``emit`` calls: ``(event, measurements, metadata, correlation_id)``, where a
``correlation_id`` of None means the current context's (see :meth:`TelemetryBackend.emitter`)."""


class TelemetryBackend(ABC):
    """Receives every event emitted while it is the active backend.

    ``emit`` is called on the emitting thread and should neither block nor raise; the
    public ``emit`` still catches and counts anything a backend raises.
    """

    @abstractmethod
    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None,
        correlation_id: str | None,
    ) -> None:
        """Handle one event (dotted name, measurements, metadata, correlation id)."""

    def emitter(self) -> Emitter:
        """Return the callable the public ``emit`` calls while this backend is active.

        It receives ``correlation_id=None`` when the caller passed none, and must then use
        the current context's id. The default resolves it and calls :meth:`emit`; a backend
        may return something faster that resolves it only for events it keeps.
        """
        backend_emit = self.emit
        current_correlation_id = CORRELATION_ID.get

        def emit_with_context(
            event: str,
            measurements: Mapping[str, object],
            metadata: Mapping[str, object] | None,
            correlation_id: str | None,
        ) -> None:
            if correlation_id is None:
                correlation_id = current_correlation_id()
            backend_emit(event, measurements, metadata, correlation_id)

        return emit_with_context

    def is_enabled(self) -> bool:
        """Whether events are currently wanted (lets callers skip expensive measurements)."""
        return True

    def dropped_counts(self) -> Mapping[str, int]:
        """Events this backend dropped, by reason."""
        return {}

    def close(self) -> None:
        """Release resources; called by whoever installed the backend."""
        return None


class GrpcBackend(TelemetryBackend):
    """Sends events over the worker's ``StreamTelemetry`` gRPC stream."""

    def __init__(self, stream: TelemetryStream) -> None:
        self._stream = stream

    @property
    def stream(self) -> TelemetryStream:
        """The buffer the gRPC server drains."""
        return self._stream

    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None,
        correlation_id: str | None,
    ) -> None:
        """Enqueue the event on the stream (drops and counts instead of blocking)."""
        self._stream.emit(event, measurements, metadata, correlation_id)

    def emitter(self) -> Emitter:
        """Return the stream's own ``emit``.

        It resolves the context's correlation id only for events it keeps, so a disabled,
        filtered or sampled-out event costs two calls.
        """
        return self._stream.emit

    def is_enabled(self) -> bool:
        """False while the client has telemetry switched off."""
        return self._stream.is_enabled()

    def dropped_counts(self) -> Mapping[str, int]:
        """The stream's drops, by reason."""
        return self._stream.dropped_counts()

    def close(self) -> None:
        """Close the stream: the attached call drains and ends."""
        self._stream.close()


class StderrBackend(TelemetryBackend):
    """Writes one ``TELEMETRY:{json}`` line per event to stderr.

    The JSON object has the keys ``event`` (dotted name), ``measurements``, ``metadata``
    (string values), ``timestamp_ns`` and ``correlation_id`` (null when unset). A fallback
    and debugging aid: unlike the gRPC backend it writes synchronously, so a reader that
    stops draining the pipe can block the emitting thread.
    """

    def __init__(self, output: TextIO | None = None) -> None:
        """Write to ``output``, or to whatever ``sys.stderr`` is at each emit."""
        self._output = output
        self._lock = threading.Lock()
        self._drops = CounterSet(("encode_error", "write_error"))

    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None,
        correlation_id: str | None,
    ) -> None:
        """Write the event's line; drop and count it if it cannot be encoded or written."""
        try:
            payload = event_to_json_dict(
                event, measurements, metadata, correlation_id, time.time_ns()
            )
            line = (
                STDERR_LINE_PREFIX
                + json.dumps(payload, separators=(",", ":"), allow_nan=False)
                + "\n"
            )
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
