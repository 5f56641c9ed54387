"""Worker entry point: ``python -m snakepit_bridge.worker --port 0``.

Starts the ``BridgeService`` gRPC server (``StreamTelemetry``, ``StreamTelemetryBatched``
and ``ExecuteTool``) on 127.0.0.1 unless ``--host`` says otherwise, installs a
:class:`GrpcBackend` as the telemetry backend, prints exactly one ``GRPC_READY:<port>``
line on stdout once serving, and runs until SIGTERM or SIGINT (or stdin closes, with
``--exit-on-stdin-eof``).

* ``--tools MODULE`` (repeatable): import MODULE (a dotted name found on ``sys.path``:
  ``PYTHONPATH`` or the current directory) before serving, so its ``@tool`` functions
  are served by ``ExecuteTool``; a module that cannot be imported is an error on stderr
  and exit code 1, before any ``GRPC_READY`` line. Tool modules must not write to stdout.
* ``multiprocessing``: unless a tools module has chosen a start method when it is imported,
  the worker makes ``forkserver`` the default (:func:`default_to_forkserver`), so that a
  tool's ``multiprocessing.Pool()`` or ``ProcessPoolExecutor()`` does not fork the process
  that runs the gRPC server (with ``fork``, the worker died or stopped serving after a call
  or two). A tool that asks for ``get_context("fork")`` still forks it.
* ``SNAKEPIT_WORKER_TOKEN``: when set, every call must carry ``authorization: Bearer
  <token>`` (else ``UNAUTHENTICATED``). The worker removes it from its own environment
  once read, so processes its tools start do not inherit it; an empty or invalid value
  is an error and exit code 1.

The bounds of the buffer and of the batches are set on the command line (and as the
keyword arguments of the same names, with ``_`` for ``-``, when calling
:func:`start_worker` from code):

* ``--max-buffer N``: most events buffered (default 8192);
* ``--max-buffer-bytes N``: most bytes buffered, summed over the serialized events
  (default 4194304, 4 MiB);
* ``--max-event-bytes N``: largest serialized event sent (default 262144, 256 KiB, the
  limit the Elixir side gives the NIF); a larger one is dropped and counted ``oversize``;
* ``--max-batch-events N``: most events in one ``StreamTelemetryBatched`` message
  (default 8192);
* ``--max-batch-bytes N``: most bytes of one such message, framing included (default
  1048576, 1 MiB, lowered to what the client says it reads); a single event larger than
  that goes alone.

An event that does not fit is dropped and counted, never waited for. Scripts that build
on :func:`build_arg_parser` pass the parsed bounds on with :func:`stream_bounds`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, TypedDict

from snakepit_bridge import telemetry
from snakepit_bridge.auth import TOKEN_ENV, BearerToken, TokenSource
from snakepit_bridge.server import DEFAULT_HOST, BridgeServer, ServerStartError
from snakepit_bridge.telemetry.stream import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_EVENTS,
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_BUFFER_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MIN_BATCH_INTERVAL,
    TelemetryStream,
)
from snakepit_bridge.tools import ToolImportError, ToolRegistry, import_tool_modules

__all__ = [
    "READY_PREFIX",
    "RunningWorker",
    "ShutdownRequest",
    "StreamBounds",
    "add_tools_argument",
    "announce_ready",
    "build_arg_parser",
    "main",
    "start_worker",
    "stream_bounds",
]

READY_PREFIX: Final = "GRPC_READY:"
STOP_GRACE_SECONDS: Final = 2.0
EXIT_START_FAILED: Final = 1


@dataclass(frozen=True, slots=True)
class RunningWorker:
    """A started worker: its stream, server and bound port."""

    stream: TelemetryStream
    server: BridgeServer
    port: int

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Close the stream, stop the server and remove the telemetry backend."""
        self.server.stop(grace)
        telemetry.set_backend(None)


def start_worker(
    *,
    host: str = DEFAULT_HOST,
    port: int = 0,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    min_batch_interval: float = DEFAULT_MIN_BATCH_INTERVAL,
    honour_control: bool = True,
    tools: ToolRegistry | None = None,
    token: str | BearerToken | TokenSource | None = TokenSource.FROM_ENV,
    serve_batched: bool = True,
) -> RunningWorker:
    """Create the stream, install it as the telemetry backend and start the server.

    ``tools`` is the registry ``ExecuteTool`` serves (default: the default registry, where
    ``@tool`` registers). ``token`` is the bearer token every call must carry: read from
    ``SNAKEPIT_WORKER_TOKEN`` by default (unset: none), None for no check.
    ``serve_batched=False`` serves ``StreamTelemetry`` only, as Snakepit's own workers do.

    ``min_batch_interval`` paces batch messages (seconds; see
    :mod:`snakepit_bridge.telemetry.stream`).

    Raises:
        ValueError: if a bound is not a positive integer, the batch interval not a finite
            number >= 0, or the token is empty or invalid.
        ServerStartError: if the address cannot be bound.
    """
    stream = TelemetryStream(
        max_buffer=max_buffer,
        max_buffer_bytes=max_buffer_bytes,
        max_event_bytes=max_event_bytes,
    )
    server = BridgeServer(
        stream,
        host=host,
        port=port,
        honour_control=honour_control,
        tools=tools,
        token=token,
        max_batch_events=max_batch_events,
        max_batch_bytes=max_batch_bytes,
        min_batch_interval=min_batch_interval,
        serve_batched=serve_batched,
    )
    bound_port = server.start()
    telemetry.set_backend(telemetry.GrpcBackend(stream))
    return RunningWorker(stream=stream, server=server, port=bound_port)


READY_FILE_ENV: Final = "SNAKEPIT_READY_FILE"


def announce_ready(port: int) -> None:
    """Tell the Elixir side the worker serves on ``port``.

    Prints the ``GRPC_READY:<port>`` line, and, when ``SNAKEPIT_READY_FILE`` names a file
    (Snakepit's convention), writes the port there too, atomically (a temporary file
    renamed over it), so a reader never sees a partial number.
    """
    ready_file = os.environ.get(READY_FILE_ENV)
    if ready_file:
        tmp_path = f"{ready_file}.tmp"
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(str(port))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, ready_file)
    sys.stdout.write(f"{READY_PREFIX}{port}\n")
    sys.stdout.flush()


def build_arg_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the command-line parser shared by the worker and test-support scripts."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: pick a free one)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind ({DEFAULT_HOST})")
    parser.add_argument(
        "--max-buffer",
        type=_positive_int,
        default=DEFAULT_MAX_BUFFER,
        help=f"events buffered before new ones are dropped ({DEFAULT_MAX_BUFFER})",
    )
    parser.add_argument(
        "--max-buffer-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BUFFER_BYTES,
        help=f"bytes buffered before new events are dropped ({DEFAULT_MAX_BUFFER_BYTES})",
    )
    parser.add_argument(
        "--max-event-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_EVENT_BYTES,
        help=f"largest serialized event sent; larger ones are dropped ({DEFAULT_MAX_EVENT_BYTES})",
    )
    parser.add_argument(
        "--max-batch-events",
        type=_positive_int,
        default=DEFAULT_MAX_BATCH_EVENTS,
        help=f"most events in one StreamTelemetryBatched message ({DEFAULT_MAX_BATCH_EVENTS})",
    )
    parser.add_argument(
        "--max-batch-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BATCH_BYTES,
        help="most bytes of one StreamTelemetryBatched message; a larger single event goes "
        f"alone ({DEFAULT_MAX_BATCH_BYTES})",
    )
    parser.add_argument(
        "--min-batch-interval-ms",
        type=_non_negative_float,
        default=DEFAULT_MIN_BATCH_INTERVAL * 1000,
        help="least ms from one StreamTelemetryBatched message to the next unless a full "
        f"batch is buffered; 0: no pacing ({DEFAULT_MIN_BATCH_INTERVAL * 1000:g})",
    )
    return parser


def add_tools_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--tools MODULE`` option (``args.tools``: list of names).

    Pass ``args.tools`` to :func:`snakepit_bridge.tools.import_tool_modules`.
    """
    parser.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE so its @tool functions are served (repeatable)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


class StreamBounds(TypedDict):
    """The buffer and batch bounds, as keyword arguments of :func:`start_worker`."""

    max_buffer: int
    max_buffer_bytes: int
    max_event_bytes: int
    max_batch_events: int
    max_batch_bytes: int
    min_batch_interval: float


def stream_bounds(args: argparse.Namespace) -> StreamBounds:
    """Return the bounds parsed by :func:`build_arg_parser` (``start_worker(**bounds)``)."""
    return StreamBounds(
        max_buffer=args.max_buffer,
        max_buffer_bytes=args.max_buffer_bytes,
        max_event_bytes=args.max_event_bytes,
        max_batch_events=args.max_batch_events,
        max_batch_bytes=args.max_batch_bytes,
        min_batch_interval=args.min_batch_interval_ms / 1000,
    )


class ShutdownRequest:
    """A one-shot 'please stop' that signals and threads can both raise.

    A pipe: :meth:`request` writes a byte and :meth:`wait` blocks reading one. A Python
    signal handler must not take locks (it may interrupt the main thread while that
    thread holds one), and it only runs once the main thread wakes up, while the kernel
    may deliver the signal to any thread (gRPC has several). So :meth:`install_signals`
    also makes the pipe CPython's signal wake-up fd: the C-level handler writes to it
    from whichever thread receives the signal, which wakes :meth:`wait`.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_handlers: dict[signal.Signals, Any] = {}

    def install_signals(self, *signals: signal.Signals) -> None:
        """Make each of ``signals`` request shutdown (call from the main thread)."""

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.request()

        for signum in signals:
            self._previous_handlers[signum] = signal.signal(signum, on_signal)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def request(self) -> None:
        """Ask the waiting thread to stop (safe from signal handlers and any thread)."""
        with contextlib.suppress(OSError):  # pipe full: a request is already pending
            os.write(self._write_fd, b"x")

    def wait(self) -> None:
        """Block until :meth:`request` has been called."""
        os.read(self._read_fd, 1)

    def close(self) -> None:
        """Close the pipe; put back the signal handlers and wake-up fd it replaced."""
        if self._previous_handlers:
            signal.set_wakeup_fd(-1)
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers.clear()
        os.close(self._read_fd)
        os.close(self._write_fd)


def _watch_stdin_eof(shutdown: ShutdownRequest) -> None:
    stdin_fd = sys.stdin.fileno()
    while os.read(stdin_fd, 65536):
        pass
    shutdown.request()


SAFE_START_METHOD: Final = "forkserver"
"""The ``multiprocessing`` start method the worker makes the default (Python 3.14's default
on Linux too)."""


def default_to_forkserver() -> str | None:
    """Make ``forkserver`` the ``multiprocessing`` start method unless one is chosen already.

    Forking a process that runs a gRPC server is not supported by gRPC: measured with
    grpcio 1.85 and this worker, after one to three calls of a tool that ran a ``fork`` pool
    the worker had died (a segfault in gRPC's ``event_engine`` thread among them) or lived on
    refusing every new connection, with ``GRPC_ENABLE_FORK_SUPPORT`` 0 or 1, so that its
    telemetry stream could not come back. ``forkserver`` starts a clean process once
    (fork and exec) and forks pool processes from it. Returns the start method in force,
    or None where ``forkserver`` does not exist (and nothing was chosen).
    """
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is not None:
        return chosen
    if SAFE_START_METHOD not in multiprocessing.get_all_start_methods():
        return None
    multiprocessing.set_start_method(SAFE_START_METHOD)
    return SAFE_START_METHOD


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until it is told to stop; return the exit code."""
    parser = build_arg_parser(prog="python -m snakepit_bridge.worker")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin is closed"
    )
    add_tools_argument(parser)
    args = parser.parse_args(argv)
    # Read once and removed, so that processes started by tools don't inherit it.
    token_text = os.environ.pop(TOKEN_ENV, None)
    try:
        token = None if token_text is None else BearerToken(token_text)
    except ValueError as exc:  # the message never includes the token
        print(f"snakepit_bridge.worker: {TOKEN_ENV}: {exc}", file=sys.stderr)
        return EXIT_START_FAILED

    shutdown = ShutdownRequest()
    shutdown.install_signals(signal.SIGTERM, signal.SIGINT)
    try:
        try:
            import_tool_modules(args.tools)
            default_to_forkserver()  # after the tools: a module's own choice stays
            worker = start_worker(
                host=args.host, port=args.port, token=token, **stream_bounds(args)
            )
        except ToolImportError as exc:
            print(f"snakepit_bridge.worker: {exc}", file=sys.stderr)
            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
            return EXIT_START_FAILED
        except ServerStartError as exc:
            print(f"snakepit_bridge.worker: {exc}", file=sys.stderr)
            return EXIT_START_FAILED
        announce_ready(worker.port)

        if args.exit_on_stdin_eof:
            threading.Thread(
                target=_watch_stdin_eof, args=(shutdown,), name="stdin-eof", daemon=True
            ).start()

        shutdown.wait()
        worker.stop()
        return 0
    finally:
        shutdown.close()


if __name__ == "__main__":
    sys.exit(main())
