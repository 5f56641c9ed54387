"""The tools of ``bench/tool_throughput.exs``, shared by the test workers.

A tool runs on the calling thread for ``seconds`` and emits as it works:

* ``busy``: ``telemetry.emit`` flat out in pure Python (it holds the GIL but for the
  interpreter's switches);
* ``native``: SHA-256 of ``block_bytes`` (``hashlib`` releases the GIL while it hashes),
  then one ``telemetry.emit``, as a tool doing its work in native code.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any, Final

from snakepit_bridge import telemetry

KINDS: Final = ("busy", "native")


def run_tool(
    kind: str,
    seconds: float,
    *,
    event: str,
    measurements: Mapping[str, Any],
    metadata: Mapping[str, Any] | None,
    block_bytes: int = 16384,
) -> dict[str, object]:
    """Run the tool ``kind`` for ``seconds``, emitting ``event`` as it works.

    Returns its ``kind``, ``iterations`` (= events emitted), ``seconds`` and ``cpu_ns``
    (this thread's CPU time).

    Raises:
        ValueError: for an unknown kind or ``seconds`` <= 0.
    """
    if kind not in KINDS or seconds <= 0:
        raise ValueError("kind must be busy or native and seconds > 0")
    block = os.urandom(block_bytes)
    emit = telemetry.emit
    monotonic = time.monotonic
    sha256 = hashlib.sha256
    iterations = 0
    cpu_before = time.thread_time_ns()
    started = monotonic()
    deadline = started + seconds
    if kind == "busy":
        while monotonic() < deadline:
            for _ in range(100):
                emit(event, measurements, metadata)
            iterations += 100
    else:
        while monotonic() < deadline:
            for _ in range(10):
                sha256(block)
                emit(event, measurements, metadata)
            iterations += 10
    return {
        "kind": kind,
        "iterations": iterations,
        "seconds": monotonic() - started,
        "cpu_ns": time.thread_time_ns() - cpu_before,
    }


def run_tool_command(command: Mapping[str, Any]) -> dict[str, object]:
    """Run the tool a worker's ``tool`` command names; see :func:`run_tool`.

    Fields: ``kind``, ``seconds``, ``event``, ``measurements``, ``metadata``,
    ``block_bytes`` (16384).

    Raises:
        ValueError: as :func:`run_tool`, or for a field of the wrong type.
        KeyError: for a missing ``kind``, ``seconds`` or ``event``.
    """
    return run_tool(
        str(command["kind"]),
        float(command["seconds"]),
        event=str(command["event"]),
        measurements=command.get("measurements") or {},
        metadata=command.get("metadata"),
        block_bytes=int(command.get("block_bytes", 16384)),
    )
