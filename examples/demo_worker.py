"""A Python worker for the demo: serves StreamTelemetry and runs a 'predict' tool in a span.

Run by examples/demo.exs; exits when its stdin closes.
"""

from __future__ import annotations

import sys
import time

from snakepit_bridge import telemetry
from snakepit_bridge.worker import announce_ready, start_worker


def predict() -> float:
    """Stand-in for real work: a few milliseconds of computing."""
    deadline = time.monotonic() + 0.005
    total = 0.0
    while time.monotonic() < deadline:
        total += 1.0
    return total


def main() -> int:
    worker = start_worker(port=0)
    announce_ready(worker.port)
    for n in range(3):
        with telemetry.span(
            "tool.execution", {"tool": "predict"}, correlation_id=f"abc-{n}"
        ):
            predict()
    # Stay up until the demo closes our stdin; events buffered before the stream
    # attached are delivered when it does.
    sys.stdin.read()
    worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
