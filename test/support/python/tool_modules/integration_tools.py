"""Tools for the Elixir tool-call tests (imported with ``--tools integration_tools``)."""

from __future__ import annotations

import threading
import time

from snakepit_bridge import telemetry
from snakepit_bridge.tools import tool


@tool
def echo(**params: object) -> dict[str, object]:
    """Return the parameters as they arrived, and the call's correlation id."""
    return {"params": params, "correlation_id": telemetry.get_correlation_id()}


@tool
def boom(message: str = "nope") -> None:
    """Raise ``ValueError(message)``."""
    raise ValueError(message)


@tool
def slow(delay_ms: int) -> str:
    """Sleep ``delay_ms`` and return "done"."""
    time.sleep(delay_ms / 1000)
    return "done"


@tool
def emit_from_thread() -> str:
    """Emit one event from a thread started with the call's context copied."""
    import contextvars  # noqa: PLC0415

    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run,
        args=(telemetry.emit, "tool.execution.stop", {"duration": 1}, {"tool": "threaded"}),
    )
    thread.start()
    thread.join()
    return "emitted"
