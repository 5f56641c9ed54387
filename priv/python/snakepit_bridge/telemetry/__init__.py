"""Worker telemetry for snakepit_telemetry.

Typical use inside a worker::

    from snakepit_bridge import telemetry

    telemetry.emit("tool.execution.stop", {"duration": ns}, {"tool": "resize"})
    with telemetry.span("tool.execution", {"tool": "resize"}, correlation_id=cid):
        ...

The worker process installs a :class:`GrpcBackend` at startup (see
``snakepit_bridge.worker``); until a backend is set, ``emit`` is a cheap no-op. Event
names are not checked here: the Elixir side checks each event against its catalog.

Snakepit's ``snakepit_bridge.telemetry`` API is here under the same names: ``emit``,
``span``, ``set_backend``, ``get_backend``, ``is_enabled``, the correlation helpers
(``CORRELATION_HEADER``, ``get_correlation_id(default)``, ``set_correlation_id``,
``reset_correlation_id``, ``new_correlation_id``, ``outgoing_metadata``,
``correlation_filter``) and the modules ``telemetry.manager``,
``telemetry.backends.{base,grpc,stderr}`` and ``telemetry.stream`` (whose
``TelemetryStream.stream`` serves a ``grpc.aio`` servicer), and Snakepit's OpenTelemetry
helpers ``setup_tracing``, ``get_tracer`` and ``otel_span`` (OpenTelemetry itself is
optional: see :mod:`snakepit_bridge.telemetry.tracing`).
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
    CORRELATION_HEADER,
    correlation,
    correlation_filter,
    get_correlation_id,
    new_correlation_id,
    outgoing_metadata,
    reset_correlation_id,
    set_correlation_id,
)
from snakepit_bridge.telemetry.encoding import MeasurementValue
from snakepit_bridge.telemetry.stream import StreamStats, TelemetryStream
from snakepit_bridge.telemetry.tracing import get_tracer, otel_span, setup_tracing

__all__ = [
    "CORRELATION_HEADER",
    "GrpcBackend",
    "MeasurementValue",
    "Span",
    "StderrBackend",
    "StreamStats",
    "TelemetryBackend",
    "TelemetryStream",
    "correlation",
    "correlation_filter",
    "dropped_count",
    "dropped_counts",
    "emit",
    "get_backend",
    "get_correlation_id",
    "get_tracer",
    "is_enabled",
    "new_correlation_id",
    "otel_span",
    "outgoing_metadata",
    "reset_correlation_id",
    "set_backend",
    "set_correlation_id",
    "setup_tracing",
    "span",
]
