"""StreamTelemetry vs StreamTelemetryBatched from a Python worker, with a busy tool thread.

Run from the repository root, with the package installed (``.venv/bin/pip install -e
'priv/python[dev]'``): ``.venv/bin/python bench/python_batched.py [--runs 3]``.

The worker is this process: a :class:`BridgeServer` on 127.0.0.1 over a
:class:`TelemetryStream` with the worker's default bounds (1024 events, 4 MiB), and
``telemetry.emit`` going to it. The client is a separate process (this script with
``--client``): it opens one RPC, counts the events it receives (drop reports apart) and
prints its counts when the stream ends. Each run starts a fresh server and client; after
the tool ends the stream is closed, so the worker drains its buffer, sends its final
drop report and ends the call.

Tools (each run on its own thread in the worker while the client drains):

* ``busy``: a pure-Python loop calling ``telemetry.emit`` as fast as it can for
  ``--busy-seconds`` (5) seconds: it holds the GIL except when the interpreter hands it
  over, so the sending thread has to win it back (the "GIL convoy").
* ``polite``: 20,000 events (``--polite-events``), sleeping 0.5 ms after every 10.

Per case and RPC, the median over ``--runs`` runs (runs interleave the RPCs, so the
single-event RPC is the baseline measured under the same conditions):

* emitted: ``emit`` calls made by the tool;
* delivered/s: events the client received (drop reports not counted), per second from
  the tool's start to the end of the stream;
* dropped: the worker's drops by reason (every run checks emitted = delivered + dropped,
  and that the drop reports the client received add up to the worker's drops);
* CPU µs/delivered: the worker process's CPU time (all threads) per delivered event, and
  the same without the tool thread's own CPU (the cost of getting the events out);
* events/msg: delivered events per response message.

``--switch-interval S`` calls ``sys.setswitchinterval(S)`` in the worker first;
``--max-batch-events N`` / ``--max-batch-bytes N`` set the server's batch bounds.
``--explore`` adds batched variants to every round (larger count bounds, shorter switch
intervals, set and put back around each run), to see what helps the sender under the
busy tool; they run interleaved with the baseline, under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc
from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import (
    STREAM_TELEMETRY_BATCHED_PATH,
    STREAM_TELEMETRY_PATH,
    BridgeServer,
)
from snakepit_bridge.telemetry.stream import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MAX_BUFFER,
    TelemetryStream,
)

MEASUREMENTS = {"duration": 123_456, "count": 1}
METADATA = {"tool": "resize", "operation": "run", "result": "ok"}
EVENT = "tool.execution.stop"
RPCS = {"single": STREAM_TELEMETRY_PATH, "batched": STREAM_TELEMETRY_BATCHED_PATH}
REPORT_PREFIX = b"\n\ttelemetry\n\x07dropped"
"""How a serialized ``telemetry.dropped`` event starts (event_parts, field 1, first)."""


# -- the client process -------------------------------------------------------------------


def _keep(raw: bytes) -> bytes:
    return raw


def run_client(port: int, rpc: str) -> None:
    """Open ``rpc``, count what arrives until the stream ends, print the counts as JSON."""
    events = 0
    messages = 0
    reports: dict[str, int] = {}

    def count_report(event: pb.TelemetryEvent) -> None:
        reason = event.metadata["reason"]
        reports[reason] = reports.get(reason, 0) + event.measurements["count"].int_value

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            RPCS[rpc],
            request_serializer=pb.TelemetryControl.SerializeToString,
            response_deserializer=_keep,
        )
        call = method(iter(()))
        code = None
        try:
            for raw in call:
                messages += 1
                if rpc == "single":
                    if raw.startswith(REPORT_PREFIX):
                        count_report(pb.TelemetryEvent.FromString(raw))
                    else:
                        events += 1
                    continue
                batch = pb.TelemetryEventBatch.FromString(raw)
                events += len(batch.events)
                if REPORT_PREFIX in raw:  # only then look at each event
                    for event in batch.events:
                        if event.event_parts[0] == "telemetry":
                            count_report(event)
                            events -= 1
            code = call.code()
        except grpc.RpcError as error:
            code = error.code()
    print(
        json.dumps(
            {
                "events": events,
                "messages": messages,
                "reports": reports,
                "code": str(code),
            }
        ),
        flush=True,
    )


# -- the tools ------------------------------------------------------------------------------


def busy_tool(seconds: float) -> Callable[[], int]:
    """A tool that emits flat out, in pure Python, for ``seconds``."""

    def run() -> int:
        emit = telemetry.emit
        monotonic = time.monotonic
        emitted = 0
        deadline = monotonic() + seconds
        while monotonic() < deadline:
            for _ in range(100):
                emit(EVENT, MEASUREMENTS, METADATA)
            emitted += 100
        return emitted

    return run


def polite_tool(events: int) -> Callable[[], int]:
    """A tool that emits ``events`` events, sleeping 0.5 ms after every 10."""

    def run() -> int:
        emit = telemetry.emit
        sleep = time.sleep
        for index in range(events):
            emit(EVENT, MEASUREMENTS, METADATA)
            if index % 10 == 9:
                sleep(0.0005)
        return events

    return run


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One run of one tool against one RPC."""

    emitted: int
    delivered: int
    messages: int
    dropped: dict[str, int]
    seconds: float
    process_cpu_ns: int
    tool_cpu_ns: int

    @property
    def delivered_per_s(self) -> float:
        """Delivered events per second of wall time."""
        return self.delivered / self.seconds

    @property
    def cpu_us_per_delivered(self) -> float:
        """Worker process CPU per delivered event, in µs."""
        return self.process_cpu_ns / max(self.delivered, 1) / 1000

    @property
    def sender_cpu_us_per_delivered(self) -> float:
        """Worker CPU without the tool thread's, per delivered event, in µs."""
        return (self.process_cpu_ns - self.tool_cpu_ns) / max(self.delivered, 1) / 1000

    @property
    def events_per_message(self) -> float:
        """Delivered events per response message."""
        return self.delivered / max(self.messages, 1)


@dataclass(frozen=True)
class Config:
    """What one row measures: the RPC, the batch bounds and the switch interval."""

    rpc: str
    max_buffer: int
    max_batch_events: int
    max_batch_bytes: int
    switch_interval: float

    def label(self, base: Config) -> str:
        """The RPC, with what differs from ``base``."""
        notes = []
        if self.max_buffer != base.max_buffer:
            notes.append(f"buffer {self.max_buffer}")
        if self.rpc == "batched" and self.max_batch_events != base.max_batch_events:
            notes.append(f"{self.max_batch_events} events")
        if self.rpc == "batched" and self.max_batch_bytes != base.max_batch_bytes:
            notes.append(f"{self.max_batch_bytes} bytes")
        if self.switch_interval != base.switch_interval:
            notes.append(f"switch {self.switch_interval * 1000:g} ms")
        return self.rpc + (f" ({', '.join(notes)})" if notes else "")


def run_once(config: Config, tool: Callable[[], int]) -> Result:
    """Serve a fresh stream, start a client process on the RPC, run ``tool``, drain."""
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(config.switch_interval)
    try:
        return _run_once(config, tool)
    finally:
        sys.setswitchinterval(previous_interval)


def _run_once(config: Config, tool: Callable[[], int]) -> Result:
    rpc = config.rpc
    stream = TelemetryStream(config.max_buffer)
    server = BridgeServer(
        stream,
        port=0,
        token=None,
        max_batch_events=config.max_batch_events,
        max_batch_bytes=config.max_batch_bytes,
    )
    port = server.start()
    telemetry.set_backend(telemetry.GrpcBackend(stream))
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", str(port), "--rpc", rpc],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while stream.current_consumer is None:
            if time.monotonic() > deadline or client.poll() is not None:
                raise RuntimeError("the client did not connect")
            time.sleep(0.001)
        emitted = 0
        tool_cpu = 0

        def run_tool() -> None:
            nonlocal emitted, tool_cpu
            started = time.thread_time_ns()
            emitted = tool()
            tool_cpu = time.thread_time_ns() - started

        cpu_started = time.process_time_ns()
        wall_started = time.monotonic()
        thread = threading.Thread(target=run_tool, name="busy-tool")
        thread.start()
        thread.join()
        stream.close()  # drain, send the final drop report, end the call
        assert client.stdout is not None
        line = client.stdout.readline()
        seconds = time.monotonic() - wall_started
        process_cpu = time.process_time_ns() - cpu_started
        client.wait(30)
    finally:
        telemetry.set_backend(None)
        if client.poll() is None:
            client.kill()
            client.wait()
        server.stop(grace=0)
    counts = json.loads(line)
    dropped = {reason: n for reason, n in stream.dropped_counts().items() if n}
    stats = stream.stats()
    if counts["events"] + sum(dropped.values()) != emitted:
        raise AssertionError(
            f"emitted {emitted} != delivered {counts} + dropped {dropped}"
        )
    if counts["reports"] != dropped:
        raise AssertionError(f"reports {counts['reports']} != worker drops {dropped}")
    if rpc == "batched" and stats.sent_batches != counts["messages"]:
        raise AssertionError(
            f"sent_batches {stats.sent_batches} != {counts['messages']}"
        )
    return Result(
        emitted=emitted,
        delivered=counts["events"],
        messages=counts["messages"],
        dropped=dropped,
        seconds=seconds,
        process_cpu_ns=process_cpu,
        tool_cpu_ns=tool_cpu,
    )


# -- the table --------------------------------------------------------------------------------


def _median_result(results: list[Result]) -> dict[str, str]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    reasons = sorted({reason for r in results for reason in r.dropped})
    dropped = (
        ", ".join(
            f"{reason} {med([r.dropped.get(reason, 0) for r in results]):,.0f}"
            for reason in reasons
        )
        or "0"
    )
    return {
        "emitted": f"{med([r.emitted for r in results]):,.0f}",
        "delivered": f"{med([r.delivered for r in results]):,.0f}",
        "delivered/s": f"{med([r.delivered_per_s for r in results]):,.0f}",
        "dropped": dropped,
        "CPU µs/delivered (process)": f"{med([r.cpu_us_per_delivered for r in results]):,.2f}",
        "CPU µs/delivered (w/o tool)": (
            f"{med([r.sender_cpu_us_per_delivered for r in results]):,.2f}"
        ),
        "events/msg": f"{med([r.events_per_message for r in results]):,.1f}",
    }


def main() -> int:
    """Run the cases and print a markdown table of medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--busy-seconds", type=float, default=5.0)
    parser.add_argument("--polite-events", type=int, default=20_000)
    parser.add_argument(
        "--tools", default="busy,polite", help="comma-separated: busy, polite"
    )
    parser.add_argument("--rpcs", default="single,batched", help="comma-separated")
    parser.add_argument("--switch-interval", type=float, default=None)
    parser.add_argument("--max-buffer", type=int, default=DEFAULT_MAX_BUFFER)
    parser.add_argument(
        "--max-batch-events", type=int, default=DEFAULT_MAX_BATCH_EVENTS
    )
    parser.add_argument("--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES)
    parser.add_argument("--explore", action="store_true", help="add batched variants")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rpc", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        run_client(args.client, args.rpc)
        return 0
    base = Config(
        rpc="single",
        max_buffer=args.max_buffer,
        max_batch_events=args.max_batch_events,
        max_batch_bytes=args.max_batch_bytes,
        switch_interval=(
            sys.getswitchinterval()
            if args.switch_interval is None
            else args.switch_interval
        ),
    )
    configs = [replace(base, rpc=rpc) for rpc in args.rpcs.split(",")]
    if args.explore:
        batched = replace(base, rpc="batched")
        configs += [
            replace(batched, max_batch_events=1024),
            replace(batched, max_buffer=4096, max_batch_events=2048),
            replace(batched, max_buffer=8192, max_batch_events=4096),
            replace(batched, switch_interval=0.001),
        ]

    tools = {
        "busy": busy_tool(args.busy_seconds),
        "polite": polite_tool(args.polite_events),
    }
    tool_names = args.tools.split(",")
    results: dict[tuple[str, Config], list[Result]] = {
        (t, c): [] for t in tool_names for c in configs
    }
    for _ in range(args.runs):
        for tool_name in tool_names:
            for config in configs:
                results[tool_name, config].append(run_once(config, tools[tool_name]))

    print(
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}; "
        f"switch interval {base.switch_interval * 1000:g} ms; "
        f"buffer {base.max_buffer} events; batch bounds {base.max_batch_events} events, {base.max_batch_bytes} bytes; "
        f"medians of {args.runs} runs"
    )
    print()
    columns = list(_median_result(next(iter(results.values()))))
    print("| tool | RPC | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for (tool_name, config), runs in results.items():
        row = _median_result(runs)
        label = config.label(base)
        print(
            f"| {tool_name} | {label} | " + " | ".join(row[c] for c in columns) + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
