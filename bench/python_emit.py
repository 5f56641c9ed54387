"""Worker CPU per telemetry ``emit`` / ``span`` (Python side of snakepit_telemetry).

Run from the repository root, with the package installed (``.venv/bin/pip install -e
'priv/python[dev]'``): ``.venv/bin/python bench/python_emit.py [--runs 7]``.

Cases (each the median over ``--runs`` runs, in µs of CPU):

* ``emit, no backend``: the default no-op.
* ``emit, no client``: into a TelemetryStream nobody drains (buffer large enough that
  nothing is dropped), so this is the emitting thread's whole cost.
* ``emit, buffer full`` / ``emit, disabled`` / ``emit, sampled out``: the drop paths.
* ``span, no client``: one ``with span(...)`` block (two events).
* ``emit, client draining``: a gRPC client in another process drains the stream over
  127.0.0.1; the emitting thread's CPU per emit, and the whole worker process's CPU per
  event (emit plus the gRPC server sending one event per message).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import grpc
from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import STREAM_TELEMETRY_PATH, BridgeServer

MEASUREMENTS = {"duration": 123_456, "count": 1}
METADATA = {"tool": "resize", "operation": "run", "result": "ok"}
EVENT = "tool.execution.stop"


def _median_us(samples_ns: list[float]) -> float:
    return statistics.median(samples_ns) / 1000.0


def _cpu_per_call(
    setup: Callable[[], object], body: Callable[[int], None], n: int, runs: int
) -> float:
    samples = []
    for _ in range(runs):
        setup()
        started = time.thread_time_ns()
        body(n)
        samples.append((time.thread_time_ns() - started) / n)
    return _median_us(samples)


def _emit_loop(n: int) -> None:
    emit = telemetry.emit
    for _ in range(n):
        emit(EVENT, MEASUREMENTS, METADATA)


def _span_loop(n: int) -> None:
    span = telemetry.span
    for _ in range(n):
        with span("tool.execution", METADATA):
            pass


def _fresh_stream(max_buffer: int) -> telemetry.TelemetryStream:
    stream = telemetry.TelemetryStream(max_buffer=max_buffer)
    telemetry.set_backend(telemetry.GrpcBackend(stream))
    return stream


def bench_local(n: int, runs: int) -> dict[str, float]:
    """Cases without a gRPC client."""
    results: dict[str, float] = {}
    telemetry.set_backend(None)
    results["emit, no backend"] = _cpu_per_call(lambda: None, _emit_loop, n, runs)
    results["emit, no client"] = _cpu_per_call(
        lambda: _fresh_stream(n + 1), _emit_loop, n, runs
    )

    def full() -> None:
        stream = _fresh_stream(1)
        stream.emit(EVENT, MEASUREMENTS)

    results["emit, buffer full (dropped)"] = _cpu_per_call(full, _emit_loop, n, runs)

    def disabled() -> None:
        stream = _fresh_stream(n + 1)
        stream.apply_control(
            pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False))
        )

    results["emit, disabled"] = _cpu_per_call(disabled, _emit_loop, n, runs)

    def sampled_out() -> None:
        stream = _fresh_stream(n + 1)
        update = pb.TelemetrySamplingUpdate(
            sampling_rate=0.0, event_patterns=["tool.*"]
        )
        stream.apply_control(pb.TelemetryControl(sampling=update))

    results["emit, sampled out (pattern)"] = _cpu_per_call(
        sampled_out, _emit_loop, n, runs
    )
    results["span, no client (2 events)"] = _cpu_per_call(
        lambda: _fresh_stream(2 * n + 1), _span_loop, n, runs
    )
    telemetry.set_backend(None)
    return results


def bench_draining(n: int, runs: int) -> dict[str, float]:
    """Emit with a client in another process draining the stream over 127.0.0.1."""
    thread_samples: list[float] = []
    process_samples: list[float] = []
    throughput: list[float] = []
    for _ in range(runs):
        stream = _fresh_stream(n + 1)
        server = BridgeServer(stream, port=0)
        port = server.start()
        client = subprocess.Popen(
            [sys.executable, __file__, "--drain-client", str(port), "--expect", str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        while stream.current_consumer is None:
            time.sleep(0.001)
        process_started = time.process_time_ns()
        wall_started = time.monotonic()
        thread_started = time.thread_time_ns()
        _emit_loop(n)
        thread_samples.append((time.thread_time_ns() - thread_started) / n)
        while stream.stats().sent < n:
            time.sleep(0.001)
        process_samples.append((time.process_time_ns() - process_started) / n)
        throughput.append(n / (time.monotonic() - wall_started))
        assert client.stdout is not None
        received = int(client.stdout.readline())
        client.wait(30)
        server.stop(grace=0)
        assert received == n, f"client received {received} of {n}"
        assert stream.dropped_count == 0
    telemetry.set_backend(None)
    return {
        "emit, client draining: emitting thread": _median_us(thread_samples),
        "emit, client draining: whole worker process per event": _median_us(
            process_samples
        ),
        "events/s delivered (not µs)": statistics.median(throughput),
    }


def drain_client(port: int, expect: int) -> None:
    """Open StreamTelemetry, read ``expect`` events, print how many arrived."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            STREAM_TELEMETRY_PATH,
            request_serializer=pb.TelemetryControl.SerializeToString,
            response_deserializer=pb.TelemetryEvent.FromString,
        )
        call = method(iter(()))
        received = 0
        for _ in call:
            received += 1
            if received == expect:
                break
        call.cancel()
    print(received, flush=True)


def main() -> int:
    """Run the benchmark and print a table of medians."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--n", type=int, default=50_000, help="emits per run (local cases)"
    )
    parser.add_argument(
        "--drain-n", type=int, default=20_000, help="emits per draining run"
    )
    parser.add_argument("--drain-client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_client is not None:
        drain_client(args.drain_client, args.expect)
        return 0

    print(
        f"python {sys.version.split()[0]}, grpcio {grpc.__version__}; medians of {args.runs} runs"
    )
    results = bench_local(args.n, args.runs)
    results.update(bench_draining(args.drain_n, max(3, args.runs // 2)))
    width = max(len(name) for name in results)
    for name, value in results.items():
        unit = "" if "not µs" in name else " µs"
        print(f"{name:<{width}}  {value:10.2f}{unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
