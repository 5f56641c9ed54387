"""A scriptable telemetry worker for the Elixir integration tests.

Run as ``.venv/bin/python test/support/python/scripted_worker.py --port 0
[--ignore-control] [--max-buffer N] [--max-buffer-bytes N] [--max-event-bytes N]``
(the bounds as in ``python -m snakepit_bridge.worker``). Starts the same server as
``python -m snakepit_bridge.worker``, prints ``GRPC_READY:<port>``, then runs JSON
commands read from stdin, one per line, in order. After a command with an ``"id"`` it
prints ``ACK <id>`` once the command's events are enqueued. Exits when stdin closes.

Commands (``op``):

* ``emit``: ``event``, ``measurements``, ``metadata``, ``correlation_id``, ``count`` (1),
  ``pad`` (``{key: n}``, none): calls ``telemetry.emit`` ``count`` times; ``pad`` adds a
  metadata string of ``n`` ``"z"`` under ``key``, built here so that a large event does
  not cross the test's stdin (or its JSON encoder) at all; ``wide`` (0) adds that many
  metadata keys ``w0000``, ``w0001``, ... with short string values.
* ``emit_paced``: ``event``, ``measurements``, ``metadata``, ``rate`` (events/s),
  ``seconds``: a background thread calls ``telemetry.emit`` at that pace (in bursts every
  10 ms, against a monotonic schedule, so it does not drift) for that long; acknowledged
  at once. ``paced_done`` in ``stats`` counts the finished ones.
* ``tool``: ``kind`` (``busy`` or ``native``), ``seconds``, ``event``, ``measurements``,
  ``metadata``, ``block_bytes`` (16384): runs a tool (``bench_tools.py``) on the command
  thread for that long and is acknowledged when it is done. ``tool`` in ``stats`` gives the
  last run's ``kind``, ``iterations`` (= events emitted), ``seconds`` and ``cpu_ns`` (the
  tool thread's own CPU time).
* ``close``: ends the stream gracefully (``TelemetryStream.close``): the sender drains
  the buffer, sends the last drop report and ends the call with status OK.
* ``span``: ``operation``, ``metadata``, ``correlation_id``, ``sleep_ms`` (0), ``raise``
  (false): runs ``telemetry.span``; with ``raise`` a ``RuntimeError("boom")`` is raised
  inside and swallowed after the span re-raised it.
* ``raw_hex``: ``hex``: puts those bytes on the response stream as one message.
* ``bad_utf8``: ``event``: one hand-encoded ``TelemetryEvent`` whose metadata value
  ``tool`` is invalid UTF-8.
* ``random``: ``count``, ``seed``: events with never-seen names, measurement keys and
  metadata keys.
* ``stats``: prints ``STATS {json}``: the stream's counters (``emitted``, ``enqueued``,
  ``buffered``, ``sent``, ``dropped_total``, ``dropped`` by reason), the control settings
  in force (``policy``), ``controls_received``/``controls_applied`` and ``api_dropped``.
* ``wait_sent``: ``timeout_ms`` (5000): waits until the buffer is empty (every enqueued
  message handed to the gRPC call) or the timeout passes.
* ``exit``: ``code``: ``os._exit(code)`` at once (a crash mid-stream).

A command that fails prints ``ERROR <id or -> <message>`` on stdout.
``--no-batched`` serves ``StreamTelemetry`` only (as Snakepit's workers), so clients fall
back to it. ``--ignore-control`` makes the server read and discard control messages and
leave out the capability header.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final


def _ensure_package_importable() -> None:
    """Fall back to the source tree when snakepit_bridge is not installed."""
    try:
        import snakepit_bridge  # noqa: F401, PLC0415
    except ImportError:
        repo_root = Path(__file__).resolve().parents[3]
        sys.path.insert(0, str(repo_root / "priv" / "python"))


_ensure_package_importable()

from snakepit_bridge import telemetry  # noqa: E402
from snakepit_bridge.telemetry.stream import TelemetryStream  # noqa: E402
from snakepit_bridge.worker import (  # noqa: E402
    RunningWorker,
    announce_ready,
    build_arg_parser,
    start_worker,
    stream_bounds,
)

from bench_tools import run_tool_command  # noqa: E402 - beside this script

Command = Mapping[str, Any]

_EVENT_PARTS_FIELD: Final = 1
_METADATA_FIELD: Final = 3
_TIMESTAMP_FIELD: Final = 4
_MAP_KEY_FIELD: Final = 1
_MAP_VALUE_FIELD: Final = 2
_WIRE_VARINT: Final = 0
_WIRE_LENGTH_DELIMITED: Final = 2
_INVALID_UTF8: Final = b"bad\xff\xfe\xc3("
_POLL_SECONDS: Final = 0.001


class CommandError(Exception):
    """A command that cannot be run as given."""


# -- hand-made protobuf encoding (for bytes protobuf itself refuses to produce) ----------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(field_number: int, wire_type: int) -> bytes:
    return _varint((field_number << 3) | wire_type)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _tag(field_number, _WIRE_LENGTH_DELIMITED) + _varint(len(payload)) + payload


def bad_utf8_event(event: str) -> bytes:
    """Encode a TelemetryEvent with valid event parts and one invalid-UTF-8 metadata value."""
    parts = b"".join(
        _length_delimited(_EVENT_PARTS_FIELD, part.encode()) for part in event.split(".")
    )
    entry = _length_delimited(_MAP_KEY_FIELD, b"tool") + _length_delimited(
        _MAP_VALUE_FIELD, _INVALID_UTF8
    )
    metadata = _length_delimited(_METADATA_FIELD, entry)
    timestamp = _tag(_TIMESTAMP_FIELD, _WIRE_VARINT) + _varint(time.time_ns())
    return parts + metadata + timestamp


# -- commands ---------------------------------------------------------------------------


class ScriptRunner:
    """Runs commands against a started worker and writes replies to stdout."""

    def __init__(self, worker: RunningWorker) -> None:
        self._worker = worker
        self._paced_lock = threading.Lock()
        self._paced_done = 0
        self._last_tool: dict[str, object] | None = None
        self._handlers: dict[str, Callable[[Command], None]] = {
            "emit": self._emit,
            "emit_paced": self._emit_paced,
            "tool": self._tool,
            "close": self._close,
            "span": self._span,
            "raw_hex": self._raw_hex,
            "bad_utf8": self._bad_utf8,
            "random": self._random,
            "stats": self._stats,
            "wait_sent": self._wait_sent,
            "exit": self._exit,
        }

    @property
    def stream(self) -> TelemetryStream:
        """The worker's telemetry stream."""
        return self._worker.stream

    def run_line(self, line: str) -> None:
        """Run one JSON command line; reply ``ACK``/``ERROR`` as documented."""
        command_id: object = None
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise CommandError("a command must be a JSON object")
            command_id = command.get("id")
            handler = self._handlers.get(command.get("op", ""))
            if handler is None:
                raise CommandError(f"unknown op {command.get('op')!r}")
            handler(command)
        except Exception as exc:
            label = "-" if command_id is None else command_id
            reply(f"ERROR {label} {type(exc).__name__}: {exc}")
            return
        if command_id is not None:
            reply(f"ACK {command_id}")

    def _emit(self, command: Command) -> None:
        event = command["event"]
        measurements = command.get("measurements") or {}
        metadata = command.get("metadata")
        pad = command.get("pad") or {}
        if pad:
            metadata = dict(metadata or {})
            metadata.update({key: "z" * int(size) for key, size in pad.items()})
        wide = int(command.get("wide", 0))
        if wide:
            metadata = dict(metadata or {})
            metadata.update({f"w{i:04d}": f"v{i}" for i in range(wide)})
        correlation_id = command.get("correlation_id")
        for _ in range(int(command.get("count", 1))):
            telemetry.emit(event, measurements, metadata, correlation_id)

    def _emit_paced(self, command: Command) -> None:
        event = str(command["event"])
        measurements = command.get("measurements") or {}
        metadata = command.get("metadata")
        rate = float(command["rate"])
        seconds = float(command["seconds"])
        if rate <= 0 or seconds <= 0:
            raise CommandError("rate and seconds must be > 0")

        def run() -> None:
            total = int(rate * seconds)
            start = time.monotonic()
            sent = 0
            while sent < total:
                due = min(total, int(rate * (time.monotonic() - start)) + 1)
                for _ in range(due - sent):
                    telemetry.emit(event, measurements, metadata)
                sent = due
                time.sleep(0.01)
            with self._paced_lock:
                self._paced_done += 1

        threading.Thread(target=run, name="emit-paced", daemon=True).start()

    def _tool(self, command: Command) -> None:
        try:
            self._last_tool = run_tool_command(command)
        except ValueError as error:
            raise CommandError(str(error)) from error

    def _close(self, command: Command) -> None:
        self.stream.close()

    def _span(self, command: Command) -> None:
        sleep_seconds = float(command.get("sleep_ms", 0)) / 1000.0
        should_raise = bool(command.get("raise", False))
        try:
            with telemetry.span(
                command["operation"], command.get("metadata"), command.get("correlation_id")
            ):
                if sleep_seconds > 0:
                    time.sleep(sleep_seconds)
                if should_raise:
                    raise RuntimeError("boom")
        except RuntimeError:
            if not should_raise:
                raise

    def _raw_hex(self, command: Command) -> None:
        if not self.stream.enqueue_raw(bytes.fromhex(command["hex"])):
            raise CommandError("buffer full or stream closed")

    def _bad_utf8(self, command: Command) -> None:
        event = command.get("event", "tool.execution.stop")
        if not self.stream.enqueue_raw(bad_utf8_event(event)):
            raise CommandError("buffer full or stream closed")

    def _random(self, command: Command) -> None:
        rng = random.Random(command.get("seed"))
        for _ in range(int(command.get("count", 1))):
            telemetry.emit(
                f"rnd_{rng.getrandbits(64):016x}.x",
                {f"rnd_m_{rng.getrandbits(48):012x}": rng.randrange(1 << 32)},
                {f"rnd_k_{rng.getrandbits(48):012x}": f"{rng.getrandbits(32):08x}"},
            )

    def _stats(self, command: Command) -> None:
        stats: dict[str, object] = self.stream.stats().to_dict()
        policy = self.stream.policy
        stats["policy"] = {
            "enabled": policy.enabled,
            "sampling_rate": policy.sampling_rate,
            "sampling_rules": [
                {"patterns": list(rule.patterns.patterns), "rate": rule.rate}
                for rule in policy.sampling_rules
            ],
            "allow": list(policy.allow.patterns),
            "deny": list(policy.deny.patterns),
        }
        with self._paced_lock:
            stats["paced_done"] = self._paced_done
        service = self._worker.server.service
        stats["controls_received"] = service.controls_received
        stats["controls_applied"] = service.controls_applied
        stats["api_dropped"] = telemetry.dropped_counts()
        stats["tool"] = self._last_tool
        reply(f"STATS {json.dumps(stats, separators=(',', ':'))}")

    def _wait_sent(self, command: Command) -> None:
        deadline = time.monotonic() + float(command.get("timeout_ms", 5000)) / 1000.0
        while self.stream.stats().buffered:
            if time.monotonic() >= deadline:
                raise CommandError(f"{len(self.stream.buffer)} messages still buffered")
            time.sleep(_POLL_SECONDS)

    def _exit(self, command: Command) -> None:
        os._exit(int(command.get("code", 0)))


def reply(line: str) -> None:
    """Write one line to stdout and flush it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    """Start the worker, run stdin commands until EOF, then stop."""
    parser = build_arg_parser(prog="scripted_worker.py")
    parser.add_argument(
        "--ignore-control",
        action="store_true",
        help="read but ignore control messages and advertise no capabilities",
    )
    parser.add_argument(
        "--no-batched",
        action="store_true",
        help="serve StreamTelemetry only, as Snakepit's own workers do",
    )
    args = parser.parse_args()
    worker = start_worker(
        host=args.host,
        port=args.port,
        honour_control=not args.ignore_control,
        serve_batched=not args.no_batched,
        **stream_bounds(args),
    )
    announce_ready(worker.port)
    runner = ScriptRunner(worker)
    try:
        while line := sys.stdin.readline():
            if line.strip():
                runner.run_line(line)
    finally:
        worker.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
