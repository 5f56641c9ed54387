"""The interface every telemetry backend implements (Snakepit's ``backends.base``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TypeAlias

from snakepit_bridge.telemetry.context import CORRELATION_ID

__all__ = ["Emitter", "TelemetryBackend"]

Emitter: TypeAlias = Callable[
    [str, Mapping[str, object], Mapping[str, object] | None, str | None], None
]
"""What ``emit`` calls: ``(event_name, measurements, metadata, correlation_id)``, where a
``correlation_id`` of None means the current context's (see :meth:`TelemetryBackend.emitter`)."""


class TelemetryBackend(ABC):
    """Receives every event emitted while it is the active backend.

    A subclass implements :meth:`emit` with Snakepit's signature. ``emit`` is called on the
    emitting thread and should neither block nor raise; the public
    :func:`~snakepit_bridge.telemetry.emit` still catches and counts (as
    ``backend_error``) anything a backend raises, so a faulty backend never breaks the
    code that emits.

    Beyond Snakepit's interface (``emit``, ``close``), a backend may override
    :meth:`is_enabled`, :meth:`dropped_counts` and :meth:`emitter`; the defaults suit a
    backend that keeps every event.
    """

    @abstractmethod
    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Handle one event: dotted name, measurements, metadata and correlation id.

        Called through the public ``emit``, ``correlation_id`` is the caller's or, when the
        caller passed none, the current context's (None when neither has one).
        """

    def emitter(self) -> Emitter:
        """Return the callable the public ``emit`` calls while this backend is active.

        It receives ``correlation_id=None`` when the caller passed none, and must then use
        the current context's id. The default resolves it and calls :meth:`emit`; a backend
        may return something faster that resolves it only for events it keeps.
        """
        backend_emit = self.emit
        current_correlation_id = CORRELATION_ID.get

        def emit_with_context(
            event_name: str,
            measurements: Mapping[str, object],
            metadata: Mapping[str, object] | None,
            correlation_id: str | None,
        ) -> None:
            if correlation_id is None:
                correlation_id = current_correlation_id()
            backend_emit(event_name, measurements, metadata, correlation_id)

        return emit_with_context

    def is_enabled(self) -> bool:
        """Whether events are currently wanted (lets callers skip expensive measurements)."""
        return True

    def dropped_counts(self) -> Mapping[str, int]:
        """Events this backend dropped, by reason."""
        return {}

    def close(self) -> None:
        """Release resources; called by whoever installed the backend (at worker shutdown)."""
        return None
