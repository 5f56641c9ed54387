"""What a worker's telemetry call carries, and the bounds it works within.

The headers of a call (capabilities, the stream's identity and what it handed to earlier
calls), the drop reasons and the drop report event, and the default bounds of the buffer
and of batches, with their validation. Shared by the buffer
(:mod:`snakepit_bridge.telemetry.stream`), its readers
(:mod:`snakepit_bridge.telemetry.consumer`, :mod:`snakepit_bridge.telemetry.aio`) and the
worker's server.
"""

from __future__ import annotations

import math
from typing import Final, TypeAlias

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb

__all__ = [
    "CAPABILITIES_HEADER",
    "CAPABILITY_BATCHED",
    "CAPABILITY_RESTATED_DROPS",
    "CAPABILITY_SAMPLING_PATTERNS",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_BATCH_EVENTS",
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_MIN_BATCH_INTERVAL",
    "DROP_REASONS",
    "DROP_REPORT_EVENT",
    "DROP_REPORT_INTERVAL_SECONDS",
    "SENT_HEADER",
    "SINGLE_RPC_CAPABILITIES",
    "STREAM_ID_HEADER",
    "OutgoingMessage",
    "check_batch_bounds",
    "check_batch_interval",
]

OutgoingMessage: TypeAlias = pb.TelemetryEvent | bytes
"""What the response stream carries: an event, or bytes that are already one serialized
message. ``emit`` buffers serialized ``TelemetryEvent`` bytes."""

DROP_REASONS: Final = (
    "disabled",
    "sampled_out",
    "filtered_out",
    "overflow",
    "oversize",
    "encode_error",
    "closed",
)
"""Why an emitted event was not enqueued."""

DROP_REPORT_EVENT: Final = "telemetry.dropped"
"""The catalog event by which the worker reports its own drops."""

CAPABILITIES_HEADER: Final = "x-snakepit-telemetry-capabilities"
"""Response header of a telemetry call: what the worker honours (comma-separated tokens)."""
CAPABILITY_SAMPLING_PATTERNS: Final = "sampling-patterns"
"""Capability: the worker applies pattern-scoped sampling rules itself."""
CAPABILITY_BATCHED: Final = "batched"
"""Capability: the worker serves ``StreamTelemetryBatched``."""
CAPABILITY_RESTATED_DROPS: Final = "restated-drops"
"""Capability: the first drop report on a call that replaced another restates every reason's
``total`` (``count`` 0 where nothing is new), so the client may count the whole total of a
reason it first hears of on such a call (its earlier reports were all lost)."""
SINGLE_RPC_CAPABILITIES: Final = f"{CAPABILITY_SAMPLING_PATTERNS},{CAPABILITY_RESTATED_DROPS}"
"""The capability header's value of a call on a server without ``StreamTelemetryBatched``
(the ``grpc.aio`` servicer, or a bridge server that does not serve it)."""
STREAM_ID_HEADER: Final = "x-snakepit-telemetry-stream-id"
"""Response header: the stream's identity, random per :class:`TelemetryStream`."""
SENT_HEADER: Final = "x-snakepit-telemetry-sent"
"""Response header: events the stream handed to calls before this one (decimal), drop reports
not included (a lost report is made up by the next one's ``total``)."""

DROP_REPORT_INTERVAL_SECONDS: Final = 0.25
"""Shortest time between two drop reports of a stream."""

DEFAULT_MAX_BUFFER: Final = 8192
"""Default bound on buffered events (records and raw messages): about 4 MiB of Python
objects when full (a typical record takes about 530 bytes)."""
DEFAULT_MAX_BUFFER_BYTES: Final = 4 * 1024 * 1024
"""Default bound on buffered bytes (4 MiB)."""
DEFAULT_MAX_EVENT_BYTES: Final = 256 * 1024
"""Default bound on one serialized event (256 KiB, as the NIF's on the Elixir side)."""

DEFAULT_MAX_BATCH_EVENTS: Final = 8192
"""Default bound on the events packed into one ``TelemetryEventBatch`` message."""
DEFAULT_MAX_BATCH_BYTES: Final = 1024 * 1024
"""Default bound on one serialized ``TelemetryEventBatch`` message (1 MiB, what the NIF
reads by default), framing included; only a batch of a single event may be larger.

Batches this large are what keep a worker's delivery up while a tool thread holds the GIL:
the sender gets the GIL back only every few switch intervals, and sends one message each
time (``bench/python_batched.py``, busy tool: 2048 events / 256 KiB per message delivered
about 106 k events/s, 8192 / 1 MiB about 186 k/s in the same run)."""

DEFAULT_MIN_BATCH_INTERVAL: Final = 0.2
"""Default least time, in seconds, from one batch message to the next unless a full batch
(or half the stream's bound) is buffered (see :mod:`snakepit_bridge.telemetry.consumer`); 0
sends whenever anything is buffered.

Each message costs the worker's gRPC server hundreds of µs to a few ms of its CPU on this
project's 2-core machine whatever it carries (wake-ups, gRPC's Python layer). 100 workers at
500 events/s each (``bench/scale.exs``, 20 s, same session, on the thread-pool server this
package had before its ``grpc.aio`` one): with 50 ms the workers spent 31 µs of CPU per event
above idle and sent 29 events per message; with 200 ms 17.5 µs and 99 events per message,
and the NIF and the schedulers less per event too (16.6 µs on the ``grpc.aio`` server, 60
s). The cost is latency: under steady load an event waits up to this long; the first event
after a quiet spell still leaves at once, and controls are not delayed (the NIF applies
them itself)."""


def check_batch_bounds(max_events: int, max_bytes: int) -> None:
    """Validate batch bounds.

    Raises:
        ValueError: if a bound is not an integer >= 1.
    """
    for name, bound in (("max_batch_events", max_events), ("max_batch_bytes", max_bytes)):
        if type(bound) is not int or bound < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {bound!r}")


def check_batch_interval(min_interval: float) -> None:
    """Validate the least interval between batch messages, in seconds.

    Raises:
        ValueError: if it is not a finite int or float >= 0 (bool is refused).
    """
    if (
        type(min_interval) not in (int, float)
        or not math.isfinite(min_interval)
        or min_interval < 0
    ):
        raise ValueError(
            f"min_batch_interval must be a finite number of seconds >= 0, got {min_interval!r}"
        )
