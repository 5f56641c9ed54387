"""EventLoopThread: a loop on its own thread, driven from synchronous code."""

from __future__ import annotations

import asyncio
import threading

import pytest

from snakepit_bridge.event_loop_thread import EventLoopThread


async def _thread_name() -> str:
    await asyncio.sleep(0)
    return threading.current_thread().name


async def _fail() -> None:
    raise ValueError("from the loop")


def test_run_returns_the_result_from_the_loops_thread() -> None:
    loop_thread = EventLoopThread("test-loop")
    loop_thread.start()
    try:
        assert loop_thread.run(_thread_name(), timeout=5) == "test-loop"
        with pytest.raises(ValueError, match="from the loop"):
            loop_thread.run(_fail(), timeout=5)
    finally:
        loop_thread.stop()
    assert loop_thread.loop.is_closed()


def test_stop_cancels_what_still_runs_and_later_runs_are_refused() -> None:
    loop_thread = EventLoopThread("test-loop")
    loop_thread.start()
    started = threading.Event()
    cancelled = threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.run_coroutine_threadsafe(forever(), loop_thread.loop)
    assert started.wait(5)
    loop_thread.stop()
    loop_thread.stop()  # idempotent
    assert cancelled.is_set()
    coroutine = _thread_name()
    with pytest.raises(RuntimeError, match="not running"):
        loop_thread.run(coroutine)


def test_stop_lets_a_task_that_is_ending_end_before_it_cancels() -> None:
    # As grpc.aio's per-call task awaits the call's handler: cancelled while the handler
    # is still finishing, it would take the CancelledError for the handler's failure.
    loop_thread = EventLoopThread("test-loop")
    loop_thread.start()
    outcome: list[str] = []
    waiting = threading.Event()

    async def finishing() -> None:
        await asyncio.sleep(0.05)

    async def awaiting_it() -> None:
        try:
            await asyncio.create_task(finishing())
            outcome.append("ended")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async def start_it() -> None:
        asyncio.get_running_loop().create_task(awaiting_it())
        await asyncio.sleep(0)
        waiting.set()

    asyncio.run_coroutine_threadsafe(start_it(), loop_thread.loop)
    assert waiting.wait(5)
    loop_thread.stop()
    assert outcome == ["ended"]


def test_a_loop_never_started_is_just_closed() -> None:
    loop_thread = EventLoopThread("test-loop")
    loop_thread.stop()
    assert loop_thread.loop.is_closed()
