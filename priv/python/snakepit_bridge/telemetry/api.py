"""The public telemetry API: ``emit``, ``span`` and the active backend.

Until a worker installs a backend with :func:`set_backend`, :func:`emit` returns at once
and :func:`is_enabled` is False.

When the native extension is built (see :mod:`snakepit_bridge.telemetry.producer`),
``emit`` is ``_wire.EmitDispatch.emit``: it forwards each call to the active backend's
emitter, straight into a stream's native producer with no Python frame in between (a
removed event then costs about a bare Python call), or by calling a custom backend's
emitter. Otherwise it is :func:`python_emit`, which does the same in Python.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Final

from snakepit_bridge.telemetry.backends.base import Emitter, TelemetryBackend
from snakepit_bridge.telemetry.context import CORRELATION_ID
from snakepit_bridge.telemetry.counters import CounterSet
from snakepit_bridge.telemetry.encoding import MeasurementValue
from snakepit_bridge.telemetry.producer import NATIVE_PRODUCER

if TYPE_CHECKING:
    from snakepit_bridge.telemetry import _wire

__all__ = [
    "Span",
    "dropped_count",
    "dropped_counts",
    "emit",
    "get_backend",
    "is_enabled",
    "python_emit",
    "set_backend",
    "span",
]

BACKEND_ERROR: Final = "backend_error"

_backend: TelemetryBackend | None = None
_emit: Emitter | None = None  # _backend.emitter(): what emit calls
_api_drops = CounterSet((BACKEND_ERROR,))
_count_backend_error = _api_drops[BACKEND_ERROR].increment
_time_ns = time.time_ns
_monotonic_ns = time.monotonic_ns


def _native_dispatch() -> _wire.EmitDispatch | None:
    if not NATIVE_PRODUCER:
        return None
    from snakepit_bridge.telemetry import _wire  # noqa: PLC0415 - optional extension

    return _wire.EmitDispatch()


_dispatch: Final = _native_dispatch()


def set_backend(backend: TelemetryBackend | None) -> TelemetryBackend | None:
    """Install the backend that receives events (None disables telemetry).

    Returns the previous backend; closing it is up to the caller. The drop counters of
    :func:`dropped_counts` start again from zero for the new backend.
    """
    global _backend, _emit, _api_drops, _count_backend_error
    previous = _backend
    backend_emit = backend.emitter() if backend is not None else None
    drops = CounterSet((BACKEND_ERROR,))
    _api_drops, _count_backend_error = drops, drops[BACKEND_ERROR].increment
    _backend, _emit = backend, backend_emit
    if _dispatch is not None:
        _dispatch.set_target(backend_emit)
    return previous


def get_backend() -> TelemetryBackend | None:
    """Return the active backend, or None."""
    return _backend


def is_enabled() -> bool:
    """True when a backend is installed and currently wants events."""
    backend = _backend
    if backend is None:
        return False
    try:
        return backend.is_enabled()
    except Exception:
        return False


def python_emit(
    event: str,
    measurements: Mapping[str, MeasurementValue],
    metadata: Mapping[str, object] | None = None,
    correlation_id: str | None = None,
) -> None:
    """Emit one telemetry event. Never raises and never blocks.

    Args:
        event: dotted worker event name, e.g. ``"tool.execution.stop"``; it goes on the
            wire as ``event_parts=["tool", "execution", "stop"]``.
        measurements: int, float or str values.
        metadata: values are converted with ``str()``.
        correlation_id: defaults to the current context's id (see :func:`correlation`).

    An event that cannot be sent (bad value, full buffer, backend error, ...) is dropped
    and counted; see :func:`dropped_counts`.
    """
    # The fewest steps on purpose: one call into the backend's emitter, which resolves the
    # context's correlation id itself, and only for an event it keeps.
    backend_emit = _emit
    if backend_emit is None:
        return
    try:
        backend_emit(event, measurements, metadata, correlation_id)
    except Exception:
        _count_backend_error()


def dropped_counts() -> dict[str, int]:
    """Return events dropped since the active backend was installed, by reason.

    The backend's own counts (e.g. ``overflow``, ``sampled_out``) plus ``backend_error``
    for exceptions the backend raised.
    """
    counts = dict(_api_drops.snapshot())
    if _dispatch is not None:
        counts[BACKEND_ERROR] += _dispatch.backend_errors
    backend = _backend
    if backend is not None:
        try:
            for reason, count in backend.dropped_counts().items():
                counts[reason] = counts.get(reason, 0) + count
        except Exception:
            pass
    return counts


def dropped_count() -> int:
    """Return the total number of dropped events (see :func:`dropped_counts`)."""
    return sum(dropped_counts().values())


emit: Final = _dispatch.emit if _dispatch is not None else python_emit
"""Emit one telemetry event; never raises and never blocks (see :func:`python_emit`, the
same function in Python, for the arguments)."""


class Span:
    """Times a block and emits ``<operation>.start`` / ``.stop`` / ``.exception`` events.

    Use :func:`span` to create one. Works with ``with`` and ``async with``; one instance
    times one block.
    """

    __slots__ = ("_correlation_id", "_metadata", "_operation", "_start_ns", "_token")

    def __init__(
        self,
        operation: str,
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None:
        self._operation = operation
        self._metadata = metadata
        self._correlation_id = correlation_id
        self._token: Token[str | None] | None = None
        self._start_ns = 0

    def __enter__(self) -> Span:
        if self._correlation_id is not None:
            self._token = CORRELATION_ID.set(self._correlation_id)
        emit(
            f"{self._operation}.start",
            {"system_time": _time_ns()},
            self._metadata,
            CORRELATION_ID.get(),
        )
        self._start_ns = _monotonic_ns()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration = _monotonic_ns() - self._start_ns
        try:
            correlation_id = CORRELATION_ID.get()
            if exc is None:
                emit(
                    f"{self._operation}.stop",
                    {"duration": duration},
                    self._metadata,
                    correlation_id,
                )
            else:
                emit(
                    f"{self._operation}.exception",
                    {"duration": duration},
                    _exception_metadata(self._metadata, exc),
                    correlation_id,
                )
        finally:
            token = self._token
            if token is not None:
                self._token = None
                CORRELATION_ID.reset(token)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)


def _exception_metadata(
    metadata: Mapping[str, object] | None, exc: BaseException
) -> dict[str, object]:
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        combined: dict[str, object] = dict(metadata) if metadata else {}
    except Exception:
        combined = {}
    combined["error_type"] = type(exc).__name__
    combined["error_message"] = message
    return combined


def span(
    operation: str,
    metadata: Mapping[str, object] | None = None,
    correlation_id: str | None = None,
) -> Span:
    """Time a block: emits ``f"{operation}.start"`` then ``.stop`` or ``.exception``.

    * start: measurements ``{"system_time": time.time_ns()}``;
    * stop: ``{"duration": ns}`` measured with ``time.monotonic_ns()``;
    * exception: ``{"duration": ns}``, metadata plus ``error_type`` (the exception's class
      name) and ``error_message`` (``str(exc)``); the exception is re-raised.

    With ``correlation_id`` the block runs with that id as the context's correlation id,
    so events emitted inside carry it. Usable as ``with span(...)`` and
    ``async with span(...)``.
    """
    return Span(operation, metadata, correlation_id)
