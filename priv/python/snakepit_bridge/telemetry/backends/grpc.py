"""The backend that sends events over the worker's gRPC stream (Snakepit's ``backends.grpc``)."""

from __future__ import annotations

from collections.abc import Mapping

from snakepit_bridge.telemetry.backends.base import Emitter, TelemetryBackend
from snakepit_bridge.telemetry.stream import TelemetryStream

__all__ = ["GrpcBackend"]


class GrpcBackend(TelemetryBackend):
    """Sends events through a :class:`~snakepit_bridge.telemetry.stream.TelemetryStream`.

    Whatever serves the stream — this package's
    :class:`~snakepit_bridge.server.BridgeServer`, or a ``grpc.aio`` servicer calling
    :meth:`TelemetryStream.stream <snakepit_bridge.telemetry.stream.TelemetryStream.stream>`
    — delivers the events to the client.
    """

    def __init__(self, stream: TelemetryStream) -> None:
        self._stream = stream

    @property
    def stream(self) -> TelemetryStream:
        """The buffer the gRPC call drains."""
        return self._stream

    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Buffer the event on the stream (drops and counts instead of blocking).

        Called directly, a ``correlation_id`` of None means the current context's id.
        """
        self._stream.emit(event_name, measurements, metadata, correlation_id)

    def emitter(self) -> Emitter:
        """Return the stream's own ``emit``.

        It resolves the context's correlation id only for events it keeps; a native
        producer's ``emit`` is called by ``telemetry.emit`` without a Python frame.
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
