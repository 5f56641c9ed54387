"""The native encoder (``snakepit_bridge.telemetry._wire``) against protobuf.

For every record, both encoders must agree: either both raise (the event is dropped as
``encode_error``) or both give bytes that decode to the same ``TelemetryEvent``. Records
are generated at random (seeded), with the values that are hard to get right: int64
bounds, non-finite floats, bools and other numbers, str subclasses, lone surrogates,
non-ASCII and empty strings, wide maps, and wrong types.
"""

from __future__ import annotations

import fractions
import math
import numbers
import os
import random
from collections import deque
from collections.abc import Callable

import pytest

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry import encoding
from snakepit_bridge.telemetry.context import CORRELATION_ID
from snakepit_bridge.telemetry.encoding import EventRecord, encode_record_with_protobuf
from snakepit_bridge.telemetry.policy import ControlPolicy
from snakepit_bridge.telemetry.producer import PythonProducer


class Label(str):
    """A str subclass (protobuf accepts them as strings)."""


class Count:
    """An integral type that is not int (numpy-like): converted with int()."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__


numbers.Integral.register(Count)


@pytest.fixture(scope="module")
def native() -> Callable[[EventRecord], bytes]:
    encoder = encoding.native_record_encoder()
    assert encoder is not None, (
        "the native encoder is not built: run scripts/setup (or mix compile), "
        "which builds native/snakepit_bridge_wire into snakepit_bridge/telemetry/"
    )
    return encoder


def _outcome(encode: Callable[[EventRecord], bytes], record: EventRecord) -> bytes | None:
    try:
        data = encode(record)
    except Exception:
        return None
    # Deterministic re-serialization: map entries sorted, so the two orders compare equal.
    return pb.TelemetryEvent.FromString(data).SerializeToString(deterministic=True)


INTS = [0, 1, -1, 127, 128, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30]
FLOATS = [0.0, -0.0, 1.5, -2.25e300, 5e-324, math.inf, -math.inf, math.nan, 1e308]
STRINGS = ["", "x", "tool.execution", "été", "😀" * 3, "a\x00b", "\ud800", Label("sub"), "k" * 300]
OTHERS: list[object] = [
    True,
    False,
    Count(7),
    Count(2**64),
    fractions.Fraction(1, 3),
    None,
    b"bytes",
    [1],
    object(),
]


def _value(rng: random.Random) -> object:
    pool = rng.choice((INTS, FLOATS, STRINGS, OTHERS))
    return rng.choice(pool)


def _key(rng: random.Random) -> object:
    if rng.random() < 0.03:
        return rng.choice([1, None, b"k", b"\xff", ("t",)])
    return rng.choice(STRINGS) + str(rng.randrange(1000))


def _record(rng: random.Random) -> EventRecord:
    name: object = rng.choice(["tool.execution.stop", "a", "", "a..b", "é.ü", "\ud800.x"])
    if rng.random() < 0.02:
        name = rng.choice([None, 5, b"a.b"])
    width = rng.choice([0, 1, 3, 300])
    measurements = {_key(rng): _value(rng) for _ in range(width)}
    metadata: dict[object, object] | None = None
    if rng.random() < 0.8:
        metadata = {_key(rng): rng.choice(STRINGS) for _ in range(rng.choice([0, 2, 300]))}
        if rng.random() < 0.05:
            metadata["n"] = rng.choice([3, None, 1.5])  # not str: converted with str()
    correlation: object = rng.choice([None, "", "cid-1", Label("c"), "\ud800"])
    if rng.random() < 0.03:
        correlation = rng.choice([0, 7, [], b"cid", b"\xff"])
    timestamp: object = rng.choice([0, 1, 1_700_000_000_000_000_000, -5, 2**63])
    return (name, measurements, metadata, correlation, timestamp, 0)  # type: ignore[return-value]


def test_native_and_protobuf_agree_on_random_records(
    native: Callable[[EventRecord], bytes],
) -> None:
    rng = random.Random(20261125)
    failures = 0
    for _ in range(4000):
        record = _record(rng)
        expected = _outcome(encode_record_with_protobuf, record)
        got = _outcome(native, record)
        if expected is None:
            failures += 1
        assert got == expected, record
    # The generator must exercise both outcomes, not just one.
    assert 200 < failures < 3800


def test_native_bytes_for_a_plain_event_are_protobufs(
    native: Callable[[EventRecord], bytes],
) -> None:
    record: EventRecord = (
        "tool.execution.stop",
        {"duration": 1500, "count": 2.5, "unit": "ms"},
        {"tool": "resize"},
        "abc-123",
        1_700_000_000_000_000_000,
        0,
    )
    # One entry per map: protobuf's byte order is then fixed too.
    single: EventRecord = ("a.b", {"n": -1}, {"k": "v"}, "c", 5, 0)
    assert native(single) == encode_record_with_protobuf(single)
    event = pb.TelemetryEvent.FromString(native(record))
    assert list(event.event_parts) == ["tool", "execution", "stop"]
    assert event.measurements["duration"].int_value == 1500
    assert event.measurements["count"].float_value == 2.5
    assert event.measurements["unit"].string_value == "ms"
    assert dict(event.metadata) == {"tool": "resize"}
    assert event.correlation_id == "abc-123"
    assert event.timestamp_ns == 1_700_000_000_000_000_000


def test_the_native_encoder_is_the_one_in_use_unless_disabled() -> None:
    disabled = os.environ.get(encoding.NATIVE_ENCODER_ENV) == "0"
    assert encoding.NATIVE_ENCODER is (not disabled)


def _producers() -> tuple[object, PythonProducer, deque[object], deque[object]]:
    from snakepit_bridge.telemetry import _wire

    def clock() -> int:
        return 1_700_000_000_000_000_000

    native_buffer: deque[object] = deque()
    python_buffer: deque[object] = deque()
    bounds = (100_000, 1 << 30, 64 * 1024)
    native = _wire.StreamProducer(
        native_buffer,
        *bounds,
        encoding.measurement_value,
        CORRELATION_ID.get,
        clock,
        random.Random(1).random,
    )
    python = PythonProducer(
        python_buffer,  # type: ignore[arg-type]
        *bounds,
        clock_ns=clock,
        random_source=random.Random(1).random,
    )
    policy = ControlPolicy()
    native.set_policy(policy)
    python.set_policy(ControlPolicy())
    return native, python, native_buffer, python_buffer


def test_the_native_producer_agrees_with_the_python_producer_on_random_emits() -> None:
    # The same emits into both producers: the native one serializes at emit, the Python one
    # records and leaves protobuf to the sender, so what protobuf refuses (or finds over
    # max_event_bytes) is dropped late there. Per emit, both must keep the same message or
    # drop it for the same reason.
    native, python, native_buffer, python_buffer = _producers()
    rng = random.Random(20261203)
    kept = 0
    for _ in range(3000):
        name, measurements, metadata, correlation, _, _ = _record(rng)
        native_drops = native.dropped_counts()  # type: ignore[attr-defined]
        python_drops = python.dropped_counts()
        native.emit(name, measurements, metadata, correlation)  # type: ignore[attr-defined]
        python.emit(name, measurements, metadata, correlation)  # type: ignore[arg-type]
        native_reason = _new_reason(native_drops, native.dropped_counts())  # type: ignore[attr-defined]
        python_reason = _new_reason(python_drops, python.dropped_counts())
        if python_reason is None:
            entry = python_buffer.pop()
            data = _outcome(encode_record_with_protobuf, entry)  # type: ignore[arg-type]
            if data is None:
                python_reason = "encode_error"
            elif len(encode_record_with_protobuf(entry)) > 64 * 1024:  # type: ignore[arg-type]
                python_reason = "oversize"
        if native_reason is None:
            native_data = native_buffer.pop()
            assert isinstance(native_data, bytes)
        assert native_reason == python_reason, (name, measurements, metadata, correlation)
        if native_reason is None:
            assert _outcome(lambda b: b, native_data) == data  # type: ignore[arg-type]
            kept += 1
    assert 500 < kept < 2900  # both outcomes exercised


def _new_reason(before: dict[str, int], after: dict[str, int]) -> str | None:
    changed = [reason for reason, count in after.items() if count != before[reason]]
    assert len(changed) <= 1
    return changed[0] if changed else None
