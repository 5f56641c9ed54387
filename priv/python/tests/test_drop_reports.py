"""The worker reports its own drops on the stream (``telemetry.dropped``)."""

from __future__ import annotations

import threading
import time

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.stream import DROP_REPORT_INTERVAL_SECONDS, TelemetryStream


def _reports(messages: list[bytes]) -> list[tuple[str, int]]:
    events = [pb.TelemetryEvent.FromString(message) for message in messages]
    return [
        (e.metadata["reason"], e.measurements["count"].int_value)
        for e in events
        if list(e.event_parts) == ["telemetry", "dropped"]
    ]


def test_a_report_carries_each_reason_s_increase_once() -> None:
    stream = TelemetryStream(max_buffer=1)
    for _ in range(4):
        stream.emit("tool.execution.stop", {"duration": 1})
    assert stream.has_unreported_drops
    assert _reports(stream.take_drop_report()) == [("overflow", 3)]
    assert not stream.has_unreported_drops
    assert stream.take_drop_report() == []
    stream.pop()
    stream.emit("x", None)  # type: ignore[arg-type]  # not a mapping: refused by emit itself
    stream.emit("tool.execution.stop", {"duration": 1})
    stream.emit("tool.execution.stop", {"duration": 1})
    assert sorted(_reports(stream.take_drop_report())) == [("encode_error", 1), ("overflow", 1)]


def _totals(messages: list[bytes]) -> list[tuple[str, int, int]]:
    events = [pb.TelemetryEvent.FromString(message) for message in messages]
    return [
        (e.metadata["reason"], e.measurements["count"].int_value, e.measurements["total"].int_value)
        for e in events
    ]


def test_a_report_carries_its_reasons_running_total() -> None:
    # The total lets the client make up a report lost on a broken call: the next one of its
    # reason is ahead by the lost counts.
    stream = TelemetryStream(max_buffer=1)
    for _ in range(4):
        stream.emit("tool.execution.stop", {"duration": 1})
    assert _totals(stream.take_drop_report()) == [("overflow", 3, 3)]
    for _ in range(2):
        stream.emit("tool.execution.stop", {"duration": 1})
    assert _totals(stream.take_drop_report()) == [("overflow", 2, 5)]


def test_an_idle_consumer_reports_drops_made_while_telemetry_is_off() -> None:
    stream = TelemetryStream()
    consumer = stream.attach()
    toggle_off = pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False))
    assert stream.apply_control(toggle_off)
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.extend(m for m in consumer.events() if isinstance(m, bytes))
    )
    reader.start()
    for _ in range(5):
        stream.emit("tool.execution.stop", {"duration": 1})
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    first = time.monotonic()
    # Nothing new: no second report.
    time.sleep(3 * DROP_REPORT_INTERVAL_SECONDS)
    consumer.detach()
    reader.join(5)
    assert _reports(received) == [("disabled", 5)]
    assert first < deadline


def test_a_new_consumer_restates_every_reason_s_total_once() -> None:
    # Reports the replaced call lost (in transit, or taken and never sent) are then made up
    # by the client from the totals, even when no drop follows.
    stream = TelemetryStream(max_buffer=1)
    first = stream.attach()
    for _ in range(4):
        stream.emit("tool.execution.stop", {"duration": 1})
    assert _totals(stream.take_drop_report(first)) == [("overflow", 3, 3)]
    assert not stream.has_unreported_drops
    second = stream.attach()
    assert stream.has_unreported_drops
    assert _totals(stream.take_drop_report(second)) == [("overflow", 0, 3)]
    assert not stream.has_unreported_drops
    assert stream.take_drop_report(second) == []
    # New drops after the restatement are reported as usual.
    stream.emit("tool.execution.stop", {"duration": 1})
    assert _totals(stream.take_drop_report(second)) == [("overflow", 1, 4)]


def test_a_replaced_consumer_takes_no_report() -> None:
    stream = TelemetryStream(max_buffer=1)
    first = stream.attach()
    for _ in range(3):
        stream.emit("tool.execution.stop", {"duration": 1})
    second = stream.attach()
    assert stream.take_drop_report(first) == []
    assert _totals(stream.take_drop_report(second)) == [("overflow", 2, 2)]


def test_the_first_consumer_restates_nothing() -> None:
    stream = TelemetryStream(max_buffer=1)
    consumer = stream.attach()
    assert not stream.has_unreported_drops
    assert stream.take_drop_report(consumer) == []
