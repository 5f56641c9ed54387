"""``python -m snakepit_bridge.worker`` as a real subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from stream_client import StreamClient
from worker_process import WorkerProcess

from snakepit_bridge.server import CAPABILITIES, CAPABILITIES_HEADER
from snakepit_bridge.worker import EXIT_START_FAILED, build_arg_parser, stream_bounds
from snakepit_bridge.worker import main as worker_main
from snakepit_bridge.worker import start_worker as start_worker_in_process

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    processes: list[WorkerProcess] = []

    def start(*extra: str) -> WorkerProcess:
        process = WorkerProcess(
            [sys.executable, "-m", "snakepit_bridge.worker", "--port", "0", *extra]
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


def test_prints_one_ready_line_and_serves(start_worker: StartWorker) -> None:
    worker = start_worker("--max-buffer", "8")
    assert worker.port > 0
    client = StreamClient(worker.port)
    try:
        headers = client.wait_headers()
        assert (CAPABILITIES_HEADER, CAPABILITIES) in headers
    finally:
        client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exits_cleanly_on_signal_and_ends_the_call(
    start_worker: StartWorker, signum: signal.Signals
) -> None:
    worker = start_worker()
    client = StreamClient(worker.port)
    try:
        client.wait_headers()
        worker.process.send_signal(signum)
        assert worker.wait() == 0
        assert client.wait_end() == grpc.StatusCode.OK
        assert worker.remaining_lines() == []  # nothing after the one readiness line
    finally:
        client.close()


def test_writes_the_port_to_snakepit_ready_file_when_set(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    worker = WorkerProcess(
        [sys.executable, "-m", "snakepit_bridge.worker", "--port", "0"],
        env={**os.environ, "SNAKEPIT_READY_FILE": str(ready_file)},
    )
    try:
        assert ready_file.read_text(encoding="utf-8") == str(worker.port)
        assert not (tmp_path / "ready.tmp").exists()
    finally:
        worker.kill()


def test_exits_when_stdin_closes_if_asked(start_worker: StartWorker) -> None:
    worker = start_worker("--exit-on-stdin-eof")
    worker.close_stdin()
    assert worker.wait() == 0


def test_port_in_use_exits_nonzero_without_ready_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "snakepit_bridge.worker", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot bind" in result.stderr
    assert "GRPC_READY" not in result.stdout


def test_main_that_cannot_bind_puts_back_signal_handlers_and_wakeup_fd() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = worker_main(["--port", str(taken.getsockname()[1])])
    assert code == EXIT_START_FAILED
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert signal.set_wakeup_fd(-1) == -1  # no wake-up fd left pointing at a closed pipe


def test_byte_bound_flags_reach_the_stream() -> None:
    parser = build_arg_parser()
    buffer_flags = ["--max-buffer", "7", "--max-buffer-bytes", "5000", "--max-event-bytes", "300"]
    batch_flags = ["--max-batch-events", "9", "--max-batch-bytes", "4000"]
    args = parser.parse_args([*buffer_flags, *batch_flags, "--min-batch-interval-ms", "7.5"])
    worker = start_worker_in_process(port=0, **stream_bounds(args))
    try:
        assert worker.stream.max_buffer == 7
        assert worker.stream.max_buffer_bytes == 5000
        assert worker.stream.max_event_bytes == 300
        assert worker.server.service.max_batch_events == 9
        assert worker.server.service.max_batch_bytes == 4000
        assert worker.server.service.min_batch_interval == 0.0075
    finally:
        worker.stop(grace=0)
    defaults = stream_bounds(parser.parse_args([]))
    assert defaults == {
        "max_buffer": 8192,
        "max_buffer_bytes": 4_194_304,
        "max_event_bytes": 262_144,
        "max_batch_events": 8192,
        "max_batch_bytes": 1_048_576,
        "min_batch_interval": 0.2,
    }
    for bad in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--min-batch-interval-ms", bad])


def test_worker_accepts_the_byte_bound_flags(start_worker: StartWorker) -> None:
    worker = start_worker("--max-buffer-bytes", "65536", "--max-event-bytes", "1024")
    assert worker.port > 0


def test_worker_serves_batches_within_its_batch_bound_flags(start_worker: StartWorker) -> None:
    worker = start_worker("--max-batch-events", "3", "--max-batch-bytes", "100000")
    client = StreamClient(worker.port, batched=True)
    try:
        client.wait_headers()
    finally:
        client.close()


@pytest.mark.parametrize(
    "flag",
    [
        "--max-buffer",
        "--max-buffer-bytes",
        "--max-event-bytes",
        "--max-batch-events",
        "--max-batch-bytes",
    ],
)
@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots"])
def test_invalid_bound_flags_exit_with_a_usage_error(flag: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakepit_bridge.worker", "--port", "0", flag, value],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert flag in result.stderr
    assert "GRPC_READY" not in result.stdout
