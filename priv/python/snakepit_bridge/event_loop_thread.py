"""An asyncio event loop on a thread of its own, for code that is not async itself.

The worker's gRPC server (:class:`~snakepit_bridge.server.BridgeServer`) is a ``grpc.aio``
server: its calls run as coroutines on one event loop, so streaming an event costs the
worker far fewer thread hand-offs (each one a trip through the GIL) than a thread-pool
server's. The worker's own code (its main thread, its tools) is synchronous; it starts the
loop here, runs coroutines on it and waits for their results.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

__all__ = ["EventLoopThread"]

_T = TypeVar("_T")

STOP_TIMEOUT_SECONDS: Final = 5.0
"""Longest :meth:`EventLoopThread.stop` waits for the loop's thread to end."""

SETTLE_SECONDS: Final = 0.25
"""Longest a stopped loop lets its remaining tasks end by themselves before it cancels them."""


class EventLoopThread:
    """One event loop running on one daemon thread, started and stopped from other threads."""

    def __init__(self, name: str) -> None:
        """Prepare a loop and its thread (named ``name``); :meth:`start` runs it."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop."""
        return self._loop

    def start(self) -> None:
        """Start the thread; the loop runs until :meth:`stop`."""
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coroutine`` on the loop and return its result (or raise its exception).

        Raises:
            TimeoutError: if it has not finished within ``timeout`` seconds (it goes on).
            RuntimeError: if the loop is stopped.
        """
        with self._lock:
            if self._stopped or not self._thread.is_alive():
                coroutine.close()
                raise RuntimeError("the event loop is not running")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop the loop, cancel what still runs on it, close it and join the thread.

        Tasks still on the loop get up to :data:`SETTLE_SECONDS` to end by themselves
        first; only those still running then are cancelled. (A task cancelled while it
        waits for another that is about to end can take that for a failure: ``grpc.aio``'s
        per-call task then prints a ``CancelledError`` traceback on the worker's stderr.)
        After a server's ``stop`` there are normally none, and this costs nothing.

        Idempotent; a loop never started is just closed.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            started = self._thread.is_alive()
            if started:
                self._loop.call_soon_threadsafe(self._loop.stop)
        if started:
            self._thread.join(timeout)
        else:
            self._loop.close()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=SETTLE_SECONDS))
                pending = {task for task in pending if not task.done()}
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
