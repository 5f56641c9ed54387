"""Control messages are validated at the source: invalid ones are rejected whole and counted."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from conftest import ServedStream
from stream_client import StreamClient, event_filter, sampling, toggle, wait_until

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.policy import (
    ControlPolicy,
    InvalidControlError,
    check_rate,
    valid_rate,
)
from snakepit_bridge.telemetry.stream import TelemetryStream

Serve = Callable[..., ServedStream]
Connect = Callable[[int], StreamClient]

INVALID_RATES = (
    -0.1,
    -1.0,
    1.0000001,
    2.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    -5e-324,
    1e308,
)
VALID_RATES = (0.0, -0.0, 5e-324, 0.25, 0.5, 0.9999999999999999, 1.0)


@pytest.mark.parametrize("rate", INVALID_RATES)
def test_invalid_rate_is_rejected_and_the_policy_stays(rate: float) -> None:
    stream = TelemetryStream()
    assert stream.apply_control(sampling(0.5, "tool.*"))
    before = stream.policy
    assert not stream.apply_control(sampling(rate))
    assert not stream.apply_control(sampling(rate, "python.*"))
    assert stream.policy is before
    assert stream.controls_rejected == 2
    assert stream.stats().controls_rejected == 2
    assert stream.stats().to_dict()["controls_rejected"] == 2
    with pytest.raises(InvalidControlError):
        before.apply(sampling(rate))


@pytest.mark.parametrize("rate", VALID_RATES)
def test_valid_rates_including_the_bounds_are_applied(rate: float) -> None:
    stream = TelemetryStream()
    assert stream.apply_control(sampling(rate))
    assert stream.policy.sampling_rate == rate
    assert stream.controls_rejected == 0


def test_rate_validity_matches_rust_and_elixir() -> None:
    # Rust: (0.0..=1.0).contains(&rate); Elixir: is_number and 0 <= rate <= 1.
    for rate in VALID_RATES:
        assert valid_rate(rate)
        assert check_rate(rate) == rate
    for rate in INVALID_RATES:
        assert not valid_rate(rate)
    assert valid_rate(0)
    assert valid_rate(1)
    assert isinstance(check_rate(1), float)
    for not_a_rate in (True, False, "0.5", None, math):
        assert not valid_rate(not_a_rate)


def test_one_bad_pattern_rejects_the_whole_sampling_update() -> None:
    stream = TelemetryStream()
    before = stream.policy
    assert not stream.apply_control(sampling(0.0, "tool.*", "python call"))
    assert stream.policy is before
    stream.emit("tool.execution.stop", {})
    assert len(stream.buffer) == 1  # the valid pattern's rate was not applied either


def test_one_bad_pattern_rejects_the_whole_filter() -> None:
    stream = TelemetryStream()
    assert stream.apply_control(event_filter(deny=("python.*",)))
    before = stream.policy
    assert not stream.apply_control(event_filter(allow=("tool.*",), deny=("tool.[ab]",)))
    assert stream.policy is before
    stream.emit("python.call.start", {})
    stream.emit("other.event", {})
    assert stream.dropped_counts()["filtered_out"] == 1  # old deny list still in force
    assert len(stream.buffer) == 1  # the new allow list was not applied


def test_policy_methods_raise_on_invalid_input() -> None:
    policy = ControlPolicy()
    with pytest.raises(InvalidControlError, match="pattern"):
        policy.with_sampling(0.5, ["ok.*", ""])
    with pytest.raises(InvalidControlError, match="pattern"):
        policy.with_filter(allow=["a" * 257], deny=[])
    with pytest.raises(InvalidControlError, match="rate"):
        policy.with_sampling(float("nan"))


def test_valid_messages_still_apply_and_empty_message_is_not_rejected() -> None:
    stream = TelemetryStream()
    assert stream.apply_control(toggle(False))
    assert stream.apply_control(toggle(True))
    assert stream.apply_control(pb.TelemetryControl())
    assert stream.apply_control(event_filter(allow=("A-z_0.9?*",)))
    assert stream.controls_rejected == 0


def test_an_unexpected_error_while_applying_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def boom(self: ControlPolicy, control: pb.TelemetryControl) -> ControlPolicy:
        raise RuntimeError("boom")

    stream = TelemetryStream()
    before = stream.policy
    monkeypatch.setattr(ControlPolicy, "apply", boom)
    assert not stream.apply_control(toggle(False))
    assert stream.policy is before
    assert stream.controls_rejected == 1


def test_invalid_control_over_grpc_is_rejected_and_the_call_goes_on(
    serve: Serve, connect: Connect
) -> None:
    served = serve()
    stream = served.stream
    client = connect(served.port)
    client.wait_headers()
    client.send(event_filter(deny=("python.*",)))
    client.send(sampling(float("nan")))
    client.send(sampling(1.5, "tool.*"))
    client.send(event_filter(allow=("tool.*",), deny=("tool.[ab]",)))
    service = served.server.service
    wait_until(lambda: service.controls_received == 4)
    assert service.controls_applied == 1
    assert stream.stats().controls_rejected == 3
    assert stream.policy.deny.patterns == ("python.*",)

    # The control reader is still running and events still flow.
    stream.emit("python.call.start", {})
    stream.emit("tool.execution.stop", {})
    assert [".".join(client.next_event().event_parts)] == ["tool.execution.stop"]
    client.send(toggle(False))
    wait_until(lambda: service.controls_received == 5)
    assert service.controls_applied == 2
    assert not stream.is_enabled()


def test_undecodable_control_bytes_are_rejected_and_the_call_goes_on(
    serve: Serve, connect: Connect
) -> None:
    served = serve()
    stream = served.stream
    client = connect(served.port)
    client.wait_headers()
    client.send_raw(b"\xff\xff\xff")  # not a TelemetryControl: a truncated varint tag
    client.send(toggle(False))
    service = served.server.service
    wait_until(lambda: service.controls_received == 2)
    assert service.controls_applied == 1
    assert stream.stats().controls_rejected == 1
    assert not stream.is_enabled()
    assert client.error is None
