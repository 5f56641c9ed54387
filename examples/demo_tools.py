"""Tools for the demo: ``predict`` does a few milliseconds of work inside a span.

Loaded by the worker with ``--tools demo_tools`` (``examples/`` on ``PYTHONPATH``); see
``examples/demo.exs``. Every event a tool emits carries the call's correlation id.
"""

from __future__ import annotations

import time

from snakepit_bridge import telemetry
from snakepit_bridge.tools import tool


@tool
def predict(features: list[float]) -> dict[str, float]:
    """Stand-in for real work: about 5 ms of computing, in a ``tool.execution`` span."""
    with telemetry.span("tool.execution", {"tool": "predict", "operation": "score"}):
        deadline = time.monotonic() + 0.005
        total = 0.0
        while time.monotonic() < deadline:
            total += sum(features)
        return {"score": total}
