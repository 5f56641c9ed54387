"""Worker telemetry for snakepit_telemetry.

Typical use inside a worker::

    from snakepit_bridge import telemetry

    telemetry.emit("tool.execution.stop", {"duration": ns}, {"tool": "resize"})
    with telemetry.span("tool.execution", {"tool": "resize"}, correlation_id=cid):
        ...

The worker process installs a :class:`GrpcBackend` at startup (see
``snakepit_bridge.worker``); until a backend is set, ``emit`` is a cheap no-op. Event
names are not checked here: the Elixir side checks each event against its catalog.
"""

from snakepit_bridge.telemetry.api import (
    Span,
    dropped_count,
    dropped_counts,
    emit,
    get_backend,
    is_enabled,
    set_backend,
    span,
)
from snakepit_bridge.telemetry.backends import GrpcBackend, StderrBackend, TelemetryBackend
from snakepit_bridge.telemetry.context import (
    correlation,
    get_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)
from snakepit_bridge.telemetry.encoding import MeasurementValue
from snakepit_bridge.telemetry.stream import StreamStats, TelemetryStream

__all__ = [
    "GrpcBackend",
    "MeasurementValue",
    "Span",
    "StderrBackend",
    "StreamStats",
    "TelemetryBackend",
    "TelemetryStream",
    "correlation",
    "dropped_count",
    "dropped_counts",
    "emit",
    "get_backend",
    "get_correlation_id",
    "is_enabled",
    "reset_correlation_id",
    "set_backend",
    "set_correlation_id",
    "span",
]
