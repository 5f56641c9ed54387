"""Each call's response headers say what the stream handed to earlier calls, exactly.

The client compares ``x-snakepit-telemetry-sent`` at each reopen with what it read, and
counts the difference as lost in transit; so the count must cover every event any
replaced call took, and a replaced call must take nothing afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import ServedStream
from stream_client import StreamClient, wait_until

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import TelemetryService
from snakepit_bridge.telemetry.stream import SENT_HEADER, STREAM_ID_HEADER, TelemetryStream


def test_a_replaced_consumer_takes_nothing_after_the_handover() -> None:
    stream = TelemetryStream()
    for n in range(10):
        stream.emit("a.b", {"n": n})
    first = stream.attach()
    stream.pop(first)
    assert stream.pop_batch(3, 1 << 20, None, first)[1] == 3
    second = stream.attach()
    stream_id, sent = stream.handover()
    assert sent == 4
    assert len(stream_id) == 16
    with pytest.raises(IndexError):
        stream.pop(first)
    with pytest.raises(IndexError):
        stream.pop_event(first)
    assert stream.pop_batch(100, 1 << 20, [b"report"], first) == (b"", 0)
    stream.enabled = False
    stream.emit("a.b", {"n": 10})  # one drop (disabled), for a report to claim
    stream.enabled = True
    assert stream.claim_drop_report(first) is None  # and the drop stays unreported
    assert stream.has_unreported_drops
    assert stream.handover() == (stream_id, 4)
    # The current consumer goes on.
    assert stream.pop_batch(100, 1 << 20, None, second)[1] == 6
    assert [len(report) > 0 for report in stream.claim_drop_report(second) or []] == [True]
    # Drop reports are not counted there (each carries its reason's running total instead).
    assert stream.handover() == (stream_id, 10)
    assert stream.stats().sent == 11
    # Nor when they go in a batch.
    stream.emit("a.b", {"n": 11})
    assert stream.pop_batch(100, 1 << 20, [b"report"], second)[1] == 2
    assert stream.handover() == (stream_id, 11)
    assert TelemetryStream().handover()[0] != stream_id


def _headers(client: StreamClient) -> dict[str, str]:
    return dict(client.wait_headers())


@pytest.mark.parametrize("batched", [False, True])
def test_every_call_says_what_earlier_calls_were_handed(
    serve: Callable[..., ServedStream], batched: bool
) -> None:
    served = serve()
    first = StreamClient(served.port, batched=batched)
    try:
        headers = _headers(first)
        stream_id = headers[STREAM_ID_HEADER]
        assert headers[SENT_HEADER] == "0"
        for n in range(50):
            served.stream.emit("tool.result_size", {"bytes": n})
        wait_until(lambda: served.stream.stats().sent == 50)
    finally:
        first.close()
    second = StreamClient(served.port, batched=batched)
    try:
        headers = _headers(second)
        assert (headers[STREAM_ID_HEADER], headers[SENT_HEADER]) == (stream_id, "50")
    finally:
        second.close()


class _GoneContext:
    """A call that ended before its headers could be sent."""

    async def send_initial_metadata(self, metadata: object) -> None:
        raise RuntimeError("the call is gone")

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def _no_controls() -> AsyncIterator[pb.TelemetryControl]:
    return
    yield


def test_a_call_that_fails_to_send_its_headers_leaves_no_consumer_attached() -> None:
    stream = TelemetryStream()
    service = TelemetryService(stream)

    async def first_message() -> None:
        calls = service.stream_telemetry(_no_controls(), _GoneContext())  # type: ignore[arg-type]
        await calls.__anext__()

    with pytest.raises(RuntimeError, match="gone"):
        asyncio.run(first_message())
    assert stream.current_consumer is None
