"""Telemetry backends: where :func:`snakepit_bridge.telemetry.emit` sends events.

The modules are Snakepit's: :mod:`.base` (:class:`TelemetryBackend`, the interface a
custom backend subclasses), :mod:`.grpc` (:class:`GrpcBackend`, over the worker's
``StreamTelemetry`` call) and :mod:`.stderr` (:class:`StderrBackend`, one
``TELEMETRY:{json}`` line per event).
"""

from snakepit_bridge.telemetry.backends.base import Emitter, TelemetryBackend
from snakepit_bridge.telemetry.backends.grpc import GrpcBackend
from snakepit_bridge.telemetry.backends.stderr import STDERR_LINE_PREFIX, StderrBackend

__all__ = ["STDERR_LINE_PREFIX", "Emitter", "GrpcBackend", "StderrBackend", "TelemetryBackend"]
