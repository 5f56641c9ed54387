from __future__ import annotations

import random

import pytest
from stream_client import decode, event_filter, sampling, toggle

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.policy import (
    FILTERED_OUT,
    MAX_CACHED_DECISIONS,
    MAX_CACHED_NAME_LENGTH,
    ControlPolicy,
    InvalidControlError,
)
from snakepit_bridge.telemetry.stream import TelemetryStream


def _buffered_names(stream: TelemetryStream) -> list[str]:
    return [".".join(decode(message).event_parts) for message in stream.buffer]


def _seeded_stream(max_buffer: int = 100_000) -> TelemetryStream:
    return TelemetryStream(max_buffer=max_buffer, random_source=random.Random(7).random)


class _StrSpy:
    """A metadata value that counts how often it is converted (an event being built)."""

    def __init__(self) -> None:
        self.conversions = 0

    def __str__(self) -> str:
        self.conversions += 1
        return "spy"


def test_toggle_disables_and_reenables_at_the_source() -> None:
    stream = TelemetryStream()
    spy = _StrSpy()
    stream.apply_control(toggle(False))
    assert not stream.is_enabled()
    stream.emit("off.event", {"n": 1}, {"value": spy})
    assert spy.conversions == 0  # the disabled event was never built
    stream.apply_control(toggle(True))
    stream.emit("on.event", {"n": 1}, {"value": spy})
    assert spy.conversions == 1  # converted once, whichever producer builds the message
    event = decode(stream.pop())
    assert ".".join(event.event_parts) == "on.event"
    assert event.metadata["value"] == "spy"
    assert len(stream.buffer) == 0
    assert stream.dropped_counts()["disabled"] == 1


def test_global_sampling_rate_is_statistically_honoured() -> None:
    stream = _seeded_stream()
    stream.apply_control(sampling(0.25))
    for _ in range(20_000):
        stream.emit("python.call.stop", {"duration": 1})
    kept = len(stream.buffer)
    # Binomial(20000, 0.25): mean 5000, sd 61; 5 sd either side.
    assert 4_690 <= kept <= 5_310
    assert stream.dropped_counts()["sampled_out"] == 20_000 - kept


def test_rate_zero_and_one() -> None:
    stream = _seeded_stream()
    stream.apply_control(sampling(0.0))
    for _ in range(100):
        stream.emit("a.b", {})
    assert len(stream.buffer) == 0
    stream.apply_control(sampling(1.0))
    for _ in range(100):
        stream.emit("a.b", {})
    assert len(stream.buffer) == 100


def test_out_of_range_and_non_finite_rates_raise_instead_of_being_clamped() -> None:
    half = ControlPolicy().with_sampling(0.5)
    for rate in (3.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidControlError, match="rate"):
            half.with_sampling(rate)
    assert half.sampling_rate == 0.5


def test_pattern_sampling_applies_to_matching_events_only() -> None:
    stream = _seeded_stream()
    stream.apply_control(sampling(0.0, "python.call.*"))
    for _ in range(50):
        stream.emit("python.call.start", {})
        stream.emit("tool.execution.stop", {})
    assert set(_buffered_names(stream)) == {"tool.execution.stop"}
    assert len(stream.buffer) == 50
    assert stream.dropped_counts()["sampled_out"] == 50


def test_pattern_sampling_rate_is_statistical_and_others_keep_their_rate() -> None:
    stream = _seeded_stream()
    stream.apply_control(sampling(0.5))
    stream.apply_control(sampling(0.1, "tool.*"))
    for _ in range(10_000):
        stream.emit("tool.execution.stop", {})
        stream.emit("python.call.stop", {})
    names = _buffered_names(stream)
    tool = names.count("tool.execution.stop")
    call = names.count("python.call.stop")
    assert 850 <= tool <= 1_150  # Binomial(10000, 0.1): sd 30
    assert 4_750 <= call <= 5_250  # Binomial(10000, 0.5): sd 50


def test_same_pattern_set_overrides_and_newest_overlapping_wins() -> None:
    policy = ControlPolicy().with_sampling(0.2, ("tool.*", "python.*"))
    policy = policy.with_sampling(0.7, ("python.*", "tool.*", "tool.*"))  # same set
    assert len(policy.sampling_rules) == 1
    assert policy.decide("tool.x") == 0.7
    policy = policy.with_sampling(0.3, ("tool.execution.*",))
    assert policy.decide("tool.execution.stop") == 0.3  # newest matching set
    assert policy.decide("tool.result_size") == 0.7
    assert policy.decide("python.call.start") == 0.7
    assert policy.decide("other.event") == 1.0
    policy = policy.with_sampling(0.7, ("tool.*", "python.*"))  # re-updated: newest again
    assert policy.decide("tool.execution.stop") == 0.7


def test_sampling_without_patterns_applies_to_every_event() -> None:
    policy = ControlPolicy().with_sampling(0.1, ("tool.*",)).with_sampling(0.4)
    assert policy.sampling_rules == ()
    assert policy.decide("tool.execution.stop") == 0.4
    assert policy.decide("python.call.stop") == 0.4


def test_filter_allow_list() -> None:
    stream = TelemetryStream()
    stream.apply_control(event_filter(allow=("tool.*", "python.call.start")))
    for name in ("tool.execution.stop", "python.call.start", "python.call.stop", "x"):
        stream.emit(name, {})
    assert _buffered_names(stream) == ["tool.execution.stop", "python.call.start"]
    assert stream.dropped_counts()["filtered_out"] == 2


def test_filter_deny_wins_over_allow() -> None:
    stream = TelemetryStream()
    stream.apply_control(event_filter(allow=("tool.*",), deny=("tool.execution.*",)))
    for name in ("tool.execution.stop", "tool.result_size", "python.call.stop"):
        stream.emit(name, {})
    assert _buffered_names(stream) == ["tool.result_size"]


def test_empty_allow_list_allows_everything_and_filter_replaces_lists() -> None:
    stream = TelemetryStream()
    stream.apply_control(event_filter(deny=("python.*",)))
    stream.emit("python.call.stop", {})
    stream.emit("tool.execution.stop", {})
    stream.apply_control(event_filter())  # both lists replaced by empty ones
    stream.emit("python.call.stop", {})
    assert _buffered_names(stream) == ["tool.execution.stop", "python.call.stop"]


def test_filtered_events_are_not_sampled_or_counted_as_sampled() -> None:
    stream = _seeded_stream()
    stream.apply_control(sampling(0.0))
    stream.apply_control(event_filter(deny=("a.*",)))
    stream.emit("a.b", {})
    stream.emit("c.d", {})
    counts = stream.dropped_counts()
    assert counts["filtered_out"] == 1
    assert counts["sampled_out"] == 1


def test_decisions_are_cached_per_event_name(monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    real_compute = ControlPolicy._compute

    def counting(self: ControlPolicy, event: str) -> float:
        computed.append(event)
        return real_compute(self, event)

    monkeypatch.setattr(ControlPolicy, "_compute", counting)
    stream = TelemetryStream()
    stream.apply_control(event_filter(deny=("x.*",)))
    for _ in range(100):
        stream.emit("tool.execution.stop", {})
        stream.emit("x.y", {})
    assert computed == ["tool.execution.stop", "x.y"]
    assert stream.policy.decisions == {"tool.execution.stop": 1.0, "x.y": FILTERED_OUT}


def test_settings_change_invalidates_the_cache() -> None:
    stream = TelemetryStream()
    stream.emit("tool.execution.stop", {})
    assert stream.policy.decisions == {"tool.execution.stop": 1.0}
    stream.apply_control(event_filter(deny=("tool.*",)))
    assert stream.policy.decisions == {}
    stream.emit("tool.execution.stop", {})
    assert stream.dropped_counts()["filtered_out"] == 1
    stream.apply_control(sampling(1.0, "tool.*"))
    stream.apply_control(event_filter())
    stream.emit("tool.execution.stop", {})
    assert len(stream.buffer) == 2


def test_cache_is_bounded() -> None:
    policy = ControlPolicy()
    for index in range(MAX_CACHED_DECISIONS + 10):
        policy.decide(f"rnd_{index}.x")
    assert len(policy.decisions) <= MAX_CACHED_DECISIONS


def test_long_names_are_decided_but_not_cached() -> None:
    policy = ControlPolicy().with_filter(allow=("a*",), deny=())
    long_name = "a" * (MAX_CACHED_NAME_LENGTH + 1)
    assert policy.decide(long_name) == 1.0
    assert policy.decide("b" * (MAX_CACHED_NAME_LENGTH + 1)) == FILTERED_OUT
    assert policy.decisions == {}
    short_name = "a" * MAX_CACHED_NAME_LENGTH
    assert policy.decide(short_name) == 1.0
    assert policy.decisions == {short_name: 1.0}


def test_glob_star_matches_across_dots_and_is_case_sensitive() -> None:
    policy = ControlPolicy().with_filter(allow=("tool.*", "a?c"), deny=())
    assert policy.decide("tool.execution.stop") == 1.0
    assert policy.decide("abc") == 1.0
    assert policy.decide("Tool.execution.stop") == FILTERED_OUT
    assert policy.decide("toolbox") == FILTERED_OUT


def test_empty_control_message_changes_nothing() -> None:
    policy = ControlPolicy().with_sampling(0.5)
    assert policy.apply(pb.TelemetryControl()) is policy


def test_attach_resets_settings_to_defaults() -> None:
    stream = TelemetryStream()
    stream.apply_control(toggle(False))
    stream.attach()
    assert stream.policy == ControlPolicy()


def test_control_from_a_replaced_consumer_is_ignored() -> None:
    stream = TelemetryStream()
    old = stream.attach()
    stream.attach()
    assert not stream.apply_control(toggle(False), old)
    assert stream.is_enabled()
