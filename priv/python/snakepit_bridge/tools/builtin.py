"""Built-in tools, registered in :data:`~snakepit_bridge.tools.registry.DEFAULT_REGISTRY`.

``telemetry_demo`` shows the catalog's tool events end to end: a ``tool.execution`` span
(``tool.execution.start`` / ``.stop``, or ``.exception``) around a sleep, then a
``tool.result_size`` event, all carrying the call's correlation id.
"""

from __future__ import annotations

import time
from typing import Final

from snakepit_bridge import telemetry
from snakepit_bridge.tools.json_any import encode_json
from snakepit_bridge.tools.registry import DEFAULT_REGISTRY

__all__ = ["MAX_DEMO_DELAY_MS", "TELEMETRY_DEMO", "telemetry_demo"]

TELEMETRY_DEMO: Final = "telemetry_demo"
MAX_DEMO_DELAY_MS: Final = 60_000
"""Longest sleep ``telemetry_demo`` accepts (a call holds a server thread meanwhile)."""


def _sleep_at_least(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(remaining)


def telemetry_demo(operation: str = "demo", delay_ms: int = 0) -> dict[str, object]:
    """Sleep ``delay_ms`` inside a ``tool.execution`` span; emit ``tool.result_size``.

    Span metadata: ``tool`` ("telemetry_demo") and ``operation``. The result-size event
    has the measurement ``bytes`` (length of the result's JSON text) and the metadata
    ``tool``, ``python_type`` ("dict") and ``size`` (number of keys).

    Returns:
        ``{"tool", "operation", "delay_ms", "elapsed_ms", "correlation_id"}``, the last
        one None when the call has no correlation id.

    Raises:
        TypeError: if ``operation`` is not a string or ``delay_ms`` not an integer.
        ValueError: if ``delay_ms`` is outside ``0..MAX_DEMO_DELAY_MS``.
    """
    if not isinstance(operation, str):
        raise TypeError(f"operation must be a string, got {type(operation).__name__}")
    if isinstance(delay_ms, bool) or not isinstance(delay_ms, int):
        raise TypeError(f"delay_ms must be an integer, got {type(delay_ms).__name__}")
    if not 0 <= delay_ms <= MAX_DEMO_DELAY_MS:
        raise ValueError(f"delay_ms must be in 0..{MAX_DEMO_DELAY_MS}, got {delay_ms}")

    started = time.monotonic_ns()
    with telemetry.span("tool.execution", {"tool": TELEMETRY_DEMO, "operation": operation}):
        _sleep_at_least(delay_ms / 1000)
    elapsed_ms = (time.monotonic_ns() - started) // 1_000_000

    result: dict[str, object] = {
        "tool": TELEMETRY_DEMO,
        "operation": operation,
        "delay_ms": delay_ms,
        "elapsed_ms": elapsed_ms,
        "correlation_id": telemetry.get_correlation_id(),
    }
    telemetry.emit(
        "tool.result_size",
        {"bytes": len(encode_json(result))},
        {"tool": TELEMETRY_DEMO, "python_type": type(result).__name__, "size": len(result)},
    )
    return result


DEFAULT_REGISTRY.register(TELEMETRY_DEMO, telemetry_demo)
