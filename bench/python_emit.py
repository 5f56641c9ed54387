"""Worker CPU per telemetry ``emit`` / ``span`` (Python side of snakepit_telemetry).

Run from the repository root, with the package installed (``.venv/bin/pip install -e
'priv/python[dev]'``): ``.venv/bin/python bench/python_emit.py [--runs 7]``.

Cases (each the median over ``--runs`` rounds, in µs of the emitting thread's CPU; a round
runs every case once, so cases and baselines are measured side by side), with two
baselines:

* baseline, ``a bare call and a flag test``: the floor for an event that is removed;
* baseline, ``build and serialize the protobuf``: what ``emit`` cost when it serialized
  each event itself (before the sender thread took that over);
* ``emit, no backend``: the default no-op;
* ``emit, attached (buffered)``: into a GrpcBackend's stream, emptied every 4,096 events
  as a consumer would (only the emits are timed), so this is the emitting thread's cost;
* ``emit, buffer full`` / ``disabled`` / ``sampled out`` / ``filtered out``: the paths
  that remove an event (each counted);
* ``span, no client``: one ``with span(...)`` block (two events);
* ``emit, client draining``: a client in another process drains ``StreamTelemetryBatched``
  over 127.0.0.1 (the server unpaced, ``min_batch_interval=0``: pacing would only hold
  the last partial batch back); the emitting thread's CPU per emit, and the whole worker
  process's CPU per event (emit, and the sender framing and sending the batches).

The ratios printed last divide each case by its baseline within each round, and report the
median of those per-round ratios (the machine's speed drifts by up to 2x over minutes).
With the native extension built, ``emit`` is the native producer (it serializes the event
at once) and the sender only frames bytes; ``SNAKEPIT_BRIDGE_NATIVE_ENCODER=0`` measures the
pure-Python fallback (``emit`` records, the sender serializes with protobuf).
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
from snakepit_bridge.server import STREAM_TELEMETRY_BATCHED_PATH, BridgeServer
from snakepit_bridge.telemetry.encoding import encode_event
from snakepit_bridge.telemetry.stream import TelemetryStream

MEASUREMENTS = {"duration": 123_456, "count": 1}
METADATA = {"tool": "resize", "operation": "run", "result": "ok"}
EVENT = "tool.execution.stop"


def _median_us(samples_ns: list[float]) -> float:
    return statistics.median(samples_ns) / 1000.0


def _emit_loop(n: int) -> None:
    emit = telemetry.emit
    for _ in range(n):
        emit(EVENT, MEASUREMENTS, METADATA)


class _Flag:
    enabled = False


def _bare_call_loop(n: int) -> None:
    """The floor for a removed event: a call that tests a flag and returns."""
    flag = _Flag()

    def gate(event: str, measurements: object, metadata: object) -> None:
        if not flag.enabled:
            return

    for _ in range(n):
        gate(EVENT, MEASUREMENTS, METADATA)


def _protobuf_loop(n: int) -> None:
    """The same event built and serialized as a protobuf message, nothing else."""
    clock = time.time_ns
    for _ in range(n):
        encode_event(EVENT, MEASUREMENTS, METADATA, None, clock()).SerializeToString()


_KEPT = 4096
"""Events an attached stream holds at most in these runs: a consumer keeps it short."""


def _attached_loop(n: int) -> int:
    """Emit into the active stream, emptied every ``_KEPT`` events as a consumer would;
    return the CPU ns the emits took (not the emptying: a consumer frees on its thread).
    """
    stream = telemetry.get_backend().stream  # type: ignore[union-attr]
    buffer = stream.buffer
    emit = telemetry.emit
    spent = 0
    done = 0
    while done < n:
        chunk = min(_KEPT, n - done)
        started = time.thread_time_ns()
        for _ in range(chunk):
            emit(EVENT, MEASUREMENTS, METADATA)
        spent += time.thread_time_ns() - started
        done += chunk
        if len(buffer) != chunk:
            raise AssertionError(f"{chunk - len(buffer)} events were not buffered")
        buffer.clear()
    return spent


def _fresh_stream(
    max_buffer: int, max_buffer_bytes: int = 4 * 1024 * 1024
) -> TelemetryStream:
    stream = telemetry.TelemetryStream(
        max_buffer=max_buffer, max_buffer_bytes=max_buffer_bytes
    )
    telemetry.set_backend(telemetry.GrpcBackend(stream))
    return stream


def _sample(setup: Callable[[], object], body: Callable[[int], None], n: int) -> float:
    """CPU ns per call of one run of ``body(n)`` after ``setup()``."""
    setup()
    started = time.thread_time_ns()
    body(n)
    return (time.thread_time_ns() - started) / n


def _attached_sample(n: int) -> float:
    # The byte total is not given back by buffer.clear(): a bound it never reaches.
    _fresh_stream(_KEPT, 1 << 62)
    return _attached_loop(n) / n


RATIOS = {
    "emit attached / protobuf baseline": (
        "emit, attached (buffered)",
        "baseline: build and serialize the protobuf",
    ),
    **{
        f"emit {case} / bare-call baseline": (
            f"emit, {case}",
            "baseline: a bare call and a flag test",
        )
        for case in (
            "disabled",
            "sampled out (pattern)",
            "filtered out (deny)",
            "buffer full (dropped)",
        )
    },
}
"""Each ratio is taken within a round (both cases measured minutes apart at most), and the
median of the rounds' ratios reported: the machine's speed drifts between rounds."""


def bench_local(n: int, runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """Cases without a gRPC client, interleaved: each round runs every case once.

    Returns the median µs per call of each case, and the median per-round ratios.
    """

    def no_backend() -> None:
        telemetry.set_backend(None)

    def full() -> None:
        stream = _fresh_stream(1)
        stream.emit(EVENT, MEASUREMENTS)

    def disabled() -> None:
        stream = _fresh_stream(n + 1)
        stream.apply_control(
            pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False))
        )

    def sampled_out() -> None:
        stream = _fresh_stream(n + 1)
        update = pb.TelemetrySamplingUpdate(
            sampling_rate=0.0, event_patterns=["tool.*"]
        )
        stream.apply_control(pb.TelemetryControl(sampling=update))

    def filtered_out() -> None:
        stream = _fresh_stream(n + 1)
        event_filter = pb.TelemetryEventFilter(deny=["tool.*"])
        stream.apply_control(pb.TelemetryControl(filter=event_filter))

    def span_loop(count: int) -> None:
        span = telemetry.span
        for _ in range(count):
            with span("tool.execution", METADATA):
                pass

    cases: list[tuple[str, Callable[[], float]]] = [
        (
            "baseline: a bare call and a flag test",
            lambda: _sample(no_backend, _bare_call_loop, n),
        ),
        (
            "baseline: build and serialize the protobuf",
            lambda: _sample(no_backend, _protobuf_loop, n),
        ),
        ("emit, no backend", lambda: _sample(no_backend, _emit_loop, n)),
        ("emit, attached (buffered)", lambda: _attached_sample(n)),
        ("emit, buffer full (dropped)", lambda: _sample(full, _emit_loop, n)),
        ("emit, disabled", lambda: _sample(disabled, _emit_loop, n)),
        ("emit, sampled out (pattern)", lambda: _sample(sampled_out, _emit_loop, n)),
        ("emit, filtered out (deny)", lambda: _sample(filtered_out, _emit_loop, n)),
        (
            "span, no client (2 events)",
            lambda: _sample(lambda: _fresh_stream(2 * n + 1), span_loop, n),
        ),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    ratios: dict[str, list[float]] = {name: [] for name in RATIOS}
    for _ in range(runs):
        this_round = {name: run() for name, run in cases}
        for name, value in this_round.items():
            samples[name].append(value)
        for name, (case, baseline) in RATIOS.items():
            ratios[name].append(this_round[case] / this_round[baseline])
    telemetry.set_backend(None)
    results = {name: _median_us(values) for name, values in samples.items()}
    return results, {name: statistics.median(values) for name, values in ratios.items()}


def bench_draining(n: int, runs: int) -> dict[str, float]:
    """Emit with a client in another process draining the stream over 127.0.0.1."""
    thread_samples: list[float] = []
    process_samples: list[float] = []
    throughput: list[float] = []
    for _ in range(runs):
        stream = _fresh_stream(n + 1)
        # No pacing: it would only hold the last, partial batch back (up to 200 ms).
        server = BridgeServer(stream, port=0, min_batch_interval=0)
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
    """Open StreamTelemetryBatched, read ``expect`` events, print how many arrived."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(
            STREAM_TELEMETRY_BATCHED_PATH,
            request_serializer=pb.TelemetryControl.SerializeToString,
            response_deserializer=pb.TelemetryEventBatch.FromString,
        )
        call = method(iter(()))
        received = 0
        for batch in call:
            received += len(batch.events)
            if received >= expect:
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
    results, ratios = bench_local(args.n, args.runs)
    results.update(bench_draining(args.drain_n, max(3, args.runs // 2)))
    width = max(len(name) for name in results)
    for name, value in results.items():
        unit = "" if "not µs" in name else " µs"
        print(f"{name:<{width}}  {value:10.2f}{unit}")
    print()
    print("ratios (median of the per-round ratios; each round runs every case once):")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
