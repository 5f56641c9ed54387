"""AsyncStreamConsumer: the asyncio reader the worker's server uses, on its own."""

from __future__ import annotations

import asyncio

import pytest

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.aio import AsyncStreamConsumer
from snakepit_bridge.telemetry.stream import TelemetryStream


def test_messages_yields_serialized_events_and_leaving_early_detaches_at_once() -> None:
    stream = TelemetryStream()
    for n in range(3):
        stream.emit("tool.execution.stop", {"duration": n}, {"tool": "t"})

    async def first_two() -> list[bytes]:
        consumer = AsyncStreamConsumer(stream, asyncio.get_running_loop())
        stream.attach(consumer)
        taken: list[bytes] = []
        messages = consumer.messages()
        async for message in messages:
            taken.append(message)
            if len(taken) == 2:
                break
        await messages.aclose()  # type: ignore[attr-defined]
        assert stream.current_consumer is None  # detached, not left for the GC
        return taken

    taken = asyncio.run(first_two())
    events = [pb.TelemetryEvent.FromString(message) for message in taken]
    assert [event.measurements["duration"].int_value for event in events] == [0, 1]
    assert stream.stats().buffered == 1


def test_batches_checks_its_bounds_at_the_call() -> None:
    stream = TelemetryStream()

    async def ask(bad: int) -> None:
        consumer = AsyncStreamConsumer(stream, asyncio.get_running_loop())
        consumer.batches(max_events=bad)

    with pytest.raises(ValueError, match="max_batch_events"):
        asyncio.run(ask(0))


def test_batches_packs_what_is_buffered_and_ends_after_close() -> None:
    stream = TelemetryStream()
    for n in range(5):
        stream.emit("tool.execution.stop", {"duration": n}, {"tool": "t"})
    stream.close()

    async def read_all() -> list[bytes]:
        consumer = AsyncStreamConsumer(stream, asyncio.get_running_loop())
        stream.attach(consumer)
        return [batch async for batch in consumer.batches(min_interval=0)]

    batches = [pb.TelemetryEventBatch.FromString(raw) for raw in asyncio.run(read_all())]
    assert sum(len(batch.events) for batch in batches) == 5
