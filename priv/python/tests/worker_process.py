"""Run a worker script as a subprocess and read its stdout line by line (for the tests)."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
from collections.abc import Mapping, Sequence

READY_TIMEOUT = 20.0
LINE_TIMEOUT = 10.0


class WorkerProcess:
    """A worker subprocess with piped stdin/stdout and a readiness handshake."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            list(argv),
            env=None if env is None else dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        ready = self.next_line(READY_TIMEOUT)
        assert ready.startswith("GRPC_READY:"), ready
        self.port = int(ready.removeprefix("GRPC_READY:"))

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next_line(self, timeout: float = LINE_TIMEOUT) -> str:
        """Return the next stdout line; fail on EOF or timeout."""
        line = self._lines.get(timeout=timeout)
        if line is None:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(f"worker stdout closed; stderr:\n{stderr}")
        return line

    def remaining_lines(self, timeout: float = LINE_TIMEOUT) -> list[str]:
        """Return every line until stdout closes."""
        lines = []
        while (line := self._lines.get(timeout=timeout)) is not None:
            lines.append(line)
        return lines

    def send(self, line: str) -> None:
        """Write one line to the worker's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        """Close the worker's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def wait(self, timeout: float = LINE_TIMEOUT) -> int:
        """Wait for the process to exit; return its exit code."""
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill the process if it is still running and release its pipes."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(LINE_TIMEOUT)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):
                    pipe.close()
