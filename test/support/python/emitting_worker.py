"""A worker for the supervised-worker tests that emits events by itself.

It serves like ``python -m snakepit_bridge.worker`` and emits one ``tool.execution.stop``
event (metadata ``tool``: ``"tick"``, ``operation``: a sequence number) every
``--every-ms`` milliseconds until it is stopped. Its stdin is not read (the wrapper gives
it ``/dev/null``). With ``--stderr-lines`` it also prints ``TELEMETRY:`` lines to stderr.
With ``--stop-serving-after-ms N`` it stops its gRPC server after N ms and lives on (as a
worker whose server died while its process did not): it refuses every connection then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from snakepit_bridge import telemetry
from snakepit_bridge.worker import announce_ready, start_worker


def main() -> int:
    """Serve, announce readiness, then emit until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--every-ms", type=int, default=50)
    parser.add_argument("--stderr-lines", action="store_true")
    parser.add_argument("--stop-serving-after-ms", type=int, default=None)
    args = parser.parse_args()
    worker = start_worker(port=args.port)
    announce_ready(worker.port)
    stop_serving_at = (
        None
        if args.stop_serving_after_ms is None
        else time.monotonic() + args.stop_serving_after_ms / 1000
    )
    seq = 0
    while True:
        if stop_serving_at is not None and time.monotonic() >= stop_serving_at:
            worker.server.stop(0)
            stop_serving_at = None
        seq += 1
        telemetry.emit(
            "tool.execution.stop", {"duration": 1}, {"tool": "tick", "operation": str(seq)}
        )
        if args.stderr_lines:
            line = {
                "event": "tool.execution.stop",
                "measurements": {"duration": 2},
                "metadata": {"tool": "stderr"},
                "timestamp_ns": time.time_ns(),
                "correlation_id": None,
            }
            sys.stderr.write("TELEMETRY:" + json.dumps(line) + "\n")
            sys.stderr.flush()
        time.sleep(args.every_ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
