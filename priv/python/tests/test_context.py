from __future__ import annotations

import asyncio
import contextvars
import threading

from conftest import RecordingBackend

from snakepit_bridge import telemetry


def test_no_correlation_id_by_default(recorder: RecordingBackend) -> None:
    assert telemetry.get_correlation_id() is None
    telemetry.emit("a.b", {})
    assert recorder.events[0].correlation_id is None


def test_correlation_block_sets_and_restores(recorder: RecordingBackend) -> None:
    with telemetry.correlation("outer"):
        telemetry.emit("a.one", {})
        with telemetry.correlation("inner"):
            telemetry.emit("a.two", {})
        telemetry.emit("a.three", {})
    telemetry.emit("a.four", {})
    assert [e.correlation_id for e in recorder.events] == ["outer", "inner", "outer", None]


def test_explicit_correlation_id_wins_over_context(recorder: RecordingBackend) -> None:
    with telemetry.correlation("context"):
        telemetry.emit("a.b", {}, correlation_id="explicit")
    assert recorder.events[0].correlation_id == "explicit"


def test_set_and_reset_by_hand(recorder: RecordingBackend) -> None:
    token = telemetry.set_correlation_id("manual")
    try:
        assert telemetry.get_correlation_id() == "manual"
        telemetry.emit("a.b", {})
    finally:
        telemetry.reset_correlation_id(token)
    assert telemetry.get_correlation_id() is None
    assert recorder.events[0].correlation_id == "manual"


def test_span_correlation_id_covers_events_inside(recorder: RecordingBackend) -> None:
    with telemetry.span("tool.execution", correlation_id="abc-123"):
        assert telemetry.get_correlation_id() == "abc-123"
        telemetry.emit("tool.result_size", {"bytes": 10})
    assert telemetry.get_correlation_id() is None
    assert recorder.names() == [
        "tool.execution.start",
        "tool.result_size",
        "tool.execution.stop",
    ]
    assert [e.correlation_id for e in recorder.events] == ["abc-123"] * 3


def test_span_without_id_inherits_context_and_exception_restores(
    recorder: RecordingBackend,
) -> None:
    with telemetry.correlation("ctx"):
        try:
            with telemetry.span("op", correlation_id="inner"):
                raise KeyError("k")
        except KeyError:
            pass
        assert telemetry.get_correlation_id() == "ctx"
        with telemetry.span("op2"):
            pass
    assert [e.correlation_id for e in recorder.events] == ["inner", "inner", "ctx", "ctx"]


def test_new_thread_starts_without_the_id_unless_context_is_copied(
    recorder: RecordingBackend,
) -> None:
    seen: dict[str, str | None] = {}

    def record(label: str) -> None:
        seen[label] = telemetry.get_correlation_id()
        telemetry.emit(f"thread.{label}", {})

    with telemetry.correlation("main"):
        plain = threading.Thread(target=record, args=("plain",))
        plain.start()
        plain.join()
        context = contextvars.copy_context()
        copied = threading.Thread(target=context.run, args=(record, "copied"))
        copied.start()
        copied.join()
    assert seen == {"plain": None, "copied": "main"}
    by_name = {e.event: e.correlation_id for e in recorder.events}
    assert by_name == {"thread.plain": None, "thread.copied": "main"}


def test_asyncio_tasks_inherit_and_isolate(recorder: RecordingBackend) -> None:
    async def task(label: str, correlation_id: str) -> None:
        assert telemetry.get_correlation_id() == "parent"
        with telemetry.span(f"task.{label}", correlation_id=correlation_id):
            await asyncio.sleep(0.001)
            telemetry.emit(f"task.{label}.inside", {})
            await asyncio.sleep(0.001)

    async def main() -> str | None:
        with telemetry.correlation("parent"):
            await asyncio.gather(task("a", "id-a"), task("b", "id-b"))
            return telemetry.get_correlation_id()

    assert asyncio.run(main()) == "parent"
    for recorded in recorder.events:
        label = recorded.event.split(".")[1]
        assert recorded.correlation_id == f"id-{label}"
    assert len(recorder.events) == 6
