"""The worker CLI as a subprocess: ``--tools MODULE`` and ``SNAKEPIT_WORKER_TOKEN``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import grpc
import pytest
from stream_client import StreamClient
from tool_client import ToolClient, build_request, error_of, result_of
from worker_process import WorkerProcess

from snakepit_bridge.auth import TOKEN_ENV
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.worker import build_arg_parser

StartWorker = Callable[..., WorkerProcess]

TOOLS_MODULE = """
import os
import subprocess
import sys

from snakepit_bridge import telemetry
from snakepit_bridge.tools import register_tool, tool


@tool
def add(a: int, b: int) -> dict[str, object]:
    with telemetry.span("tool.execution", {"tool": "add"}):
        total = a + b
    return {"sum": total, "cid": telemetry.get_correlation_id()}


@tool("child.sees_token")
def child_sees_token() -> bool:
    code = "import os, sys; sys.exit(0 if os.environ.get('SNAKEPIT_WORKER_TOKEN') else 1)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def fail() -> None:
    raise ValueError("user tool failed")


register_tool("fail", fail)
"""

POOL_MODULE = """
import multiprocessing

from snakepit_bridge import telemetry
from snakepit_bridge.tools import tool


def _square(x: int) -> int:
    return x * x


@tool
def pool_squares(n: int) -> dict[str, object]:
    with multiprocessing.Pool(2) as pool:
        total = sum(pool.map(_square, range(n)))
    telemetry.emit("tool.result_size", {"bytes": total}, {"tool": "pool_squares"})
    return {"total": total, "start_method": multiprocessing.get_start_method()}
"""

SPAWN_MODULE = """
import multiprocessing

from snakepit_bridge.tools import tool

multiprocessing.set_start_method("spawn")


@tool
def start_method() -> str:
    return multiprocessing.get_start_method()
"""

SECOND_MODULE = """
from snakepit_bridge.tools import tool


@tool
def shout(text: str) -> str:
    return text.upper()
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    (tmp_path / "wt_user_tools.py").write_text(TOOLS_MODULE)
    (tmp_path / "wt_second.py").write_text(SECOND_MODULE)
    (tmp_path / "wt_pool.py").write_text(POOL_MODULE)
    (tmp_path / "wt_spawn.py").write_text(SPAWN_MODULE)
    (tmp_path / "wt_broken.py").write_text("import json\nraise RuntimeError('broken tools')\n")
    return tmp_path


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    processes: list[WorkerProcess] = []

    def start(*extra: str, env: Mapping[str, str]) -> WorkerProcess:
        process = WorkerProcess(
            [sys.executable, "-m", "snakepit_bridge.worker", "--port", "0", *extra], env=env
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture
def clients() -> Iterator[list[ToolClient]]:
    opened: list[ToolClient] = []
    yield opened
    for client in opened:
        client.close()


def test_tools_modules_are_served(
    start_worker: StartWorker, tools_dir: Path, clients: list[ToolClient]
) -> None:
    worker = start_worker("--tools", "wt_user_tools", "--tools", "wt_second", env=_env(tools_dir))
    client = ToolClient(worker.port)
    clients.append(client)
    response = client.call(
        "add", {"a": 2**70, "b": 1}, headers=(("x-snakepit-correlation-id", "cid-sub"),)
    )
    assert result_of(response) == {"sum": 2**70 + 1, "cid": "cid-sub"}
    assert dict(response.metadata) == {"correlation_id": "cid-sub"}
    assert result_of(client.call("shout", {"text": "héllo"})) == "HÉLLO"
    assert result_of(client.call("telemetry_demo", {"operation": "sub"}))
    error = error_of(client.call("fail"))
    assert error["type"] == "ValueError"
    assert "user tool failed" in str(error["traceback"])
    assert result_of(client.call("shout", {"text": "still up"})) == "STILL UP"
    assert worker.process.poll() is None


def test_tools_with_a_process_pool_leave_the_server_serving(
    start_worker: StartWorker, tools_dir: Path, clients: list[ToolClient]
) -> None:
    # With fork as the start method, after a call or two of this tool the worker had died
    # or refused every new connection (its stream could not come back); the worker defaults
    # to forkserver, so a pool never forks the process that runs the gRPC server.
    worker = start_worker("--tools", "wt_pool", env=_env(tools_dir))
    stream = StreamClient(worker.port, batched=True)
    try:
        stream.wait_headers()
        for _ in range(5):
            client = ToolClient(worker.port)  # a new connection each time
            clients.append(client)
            result = result_of(client.call("pool_squares", {"n": 10}))
            assert result == {"total": 285, "start_method": "forkserver"}
        events: list[pb.TelemetryEvent] = []
        while len(events) < 5:
            events.extend(stream.next_batch().events)
        assert [dict(event.metadata)["tool"] for event in events] == ["pool_squares"] * 5
    finally:
        stream.close()
    assert worker.process.poll() is None


def test_a_start_method_a_tools_module_chose_stays(
    start_worker: StartWorker, tools_dir: Path, clients: list[ToolClient]
) -> None:
    worker = start_worker("--tools", "wt_spawn", env=_env(tools_dir))
    client = ToolClient(worker.port)
    clients.append(client)
    assert result_of(client.call("start_method")) == "spawn"


def test_a_tools_module_that_fails_to_import_stops_startup(tools_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakepit_bridge.worker",
            "--port",
            "0",
            "--tools",
            "wt_user_tools",
            "--tools",
            "wt_broken",
        ],
        env=_env(tools_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "GRPC_READY" not in result.stdout
    first_line = result.stderr.splitlines()[0]
    assert first_line == (
        "snakepit_bridge.worker: cannot import tools module 'wt_broken': RuntimeError: broken tools"
    )
    assert "wt_broken.py" in result.stderr  # the traceback follows


def test_a_missing_tools_module_stops_startup(tools_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakepit_bridge.worker", "--tools", "wt_does_not_exist"],
        env=_env(tools_dir),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "GRPC_READY" not in result.stdout
    assert (
        "cannot import tools module 'wt_does_not_exist': "
        "ModuleNotFoundError: No module named 'wt_does_not_exist'"
    ) in result.stderr


TOKEN = "sub-Tk7-0b5e2a9c4d"


def test_worker_token_from_the_environment(
    start_worker: StartWorker, tools_dir: Path, clients: list[ToolClient]
) -> None:
    worker = start_worker("--tools", "wt_user_tools", env=_env(tools_dir, **{TOKEN_ENV: TOKEN}))
    client = ToolClient(worker.port)
    clients.append(client)
    with pytest.raises(grpc.RpcError) as caught:
        client.send(build_request("add", {"a": 1, "b": 2}))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in str(caught.value.debug_error_string())  # type: ignore[attr-defined]
    right = (("authorization", f"Bearer {TOKEN}"),)
    assert result_of(client.send(build_request("add", {"a": 1, "b": 2}), right))["sum"] == 3  # type: ignore[index]
    # The worker took the token out of its environment: its tools' children don't get it.
    assert result_of(client.send(build_request("child.sees_token"), right)) is False

    stream = StreamClient(worker.port)
    try:
        assert stream.wait_end() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stream.close()
    authorized = StreamClient(worker.port, metadata=right)
    try:
        authorized.wait_headers()
        start, stop = authorized.events(2)
        assert list(start.event_parts) == ["tool", "execution", "start"]
        assert list(stop.event_parts) == ["tool", "execution", "stop"]
    finally:
        authorized.close()
    worker.process.terminate()
    assert worker.wait() == 0
    assert TOKEN not in "".join(worker.remaining_lines())
    assert worker.process.stderr is not None
    assert TOKEN not in worker.process.stderr.read()


@pytest.mark.parametrize("bad", ["", "two words"])
def test_an_invalid_worker_token_stops_startup(tools_dir: Path, bad: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakepit_bridge.worker", "--port", "0"],
        env=_env(tools_dir, **{TOKEN_ENV: bad}),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "GRPC_READY" not in result.stdout
    assert result.stderr.startswith(f"snakepit_bridge.worker: {TOKEN_ENV}: the worker token ")
    if bad:
        assert bad not in result.stderr


def _non_loopback_address() -> str | None:
    """An address of this host other than loopback (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only, no packet
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_the_worker_binds_loopback_by_default(start_worker: StartWorker, tools_dir: Path) -> None:
    assert build_arg_parser().parse_args([]).host == "127.0.0.1"
    worker = start_worker(env=_env(tools_dir))
    with socket.create_connection(("127.0.0.1", worker.port), timeout=5):
        pass
    other = _non_loopback_address()
    if other is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((other, worker.port), timeout=5).close()
