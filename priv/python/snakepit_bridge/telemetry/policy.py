"""What the client asked the worker to send: toggle, sampling and allow/deny filters.

A :class:`ControlPolicy` is immutable. Applying a ``TelemetryControl`` returns a new
policy, and the stream swaps its reference in one assignment, so an emitting thread
always sees one consistent policy without taking a lock.

Each policy owns a cache of per-event decisions (event name -> sampling rate, or
:data:`FILTERED_OUT`), so glob patterns run once per distinct event name, not once per
event. A new policy starts with an empty cache, which is how settings changes invalidate
it. The cache is bounded (:data:`MAX_CACHED_DECISIONS`) so that a worker emitting
unbounded distinct names cannot grow it without limit.

Semantics of the control messages:

* ``toggle.enabled``: on/off for every event.
* ``sampling`` with no ``event_patterns``: the rate for every event. It replaces the
  default rate and clears any pattern-scoped rates.
* ``sampling`` with ``event_patterns``: the rate for events matching any of the patterns
  only; other events keep their rate. An update for the same set of patterns (order and
  duplicates ignored) replaces the earlier one. When an event matches several pattern
  sets, the most recently updated set wins.
* ``filter``: replaces both lists. An event matching a ``deny`` pattern is dropped; with a
  non-empty ``allow`` list an event must match one of its patterns; deny wins over allow.

Rates are clamped to ``[0, 1]``; a NaN rate is ignored. Patterns are shell-style globs
(``fnmatch.fnmatchcase``) matched against the dotted event name the worker emits, e.g.
``"tool.*"`` matches ``"tool.execution.stop"`` (``*`` also matches dots).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb

__all__ = [
    "FILTERED_OUT",
    "MAX_CACHED_DECISIONS",
    "ControlPolicy",
    "PatternSet",
    "SamplingRule",
]

FILTERED_OUT: Final = -1.0
"""Cached decision for an event the allow/deny filter removes (any rate is >= 0)."""

MAX_CACHED_DECISIONS: Final = 4096
"""Decision cache size; the cache is cleared when it would grow past this."""


@dataclass(frozen=True, slots=True)
class PatternSet:
    """A set of glob patterns compiled into one regular expression."""

    patterns: tuple[str, ...]
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, patterns: Iterable[str]) -> PatternSet:
        """Build a set from patterns; order and duplicates do not matter."""
        unique = tuple(sorted(set(patterns)))
        if not unique:
            return cls(())
        alternatives = "|".join(f"(?:{fnmatch.translate(p)})" for p in unique)
        return cls(unique, re.compile(alternatives))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, event: str) -> bool:
        """Return True if the event name matches any pattern (never for an empty set)."""
        return self._regex is not None and self._regex.match(event) is not None


@dataclass(frozen=True, slots=True)
class SamplingRule:
    """A sampling rate scoped to the events matching a pattern set."""

    patterns: PatternSet
    rate: float


def _clamp_rate(rate: float) -> float:
    return min(1.0, max(0.0, rate))


@dataclass(frozen=True, slots=True)
class ControlPolicy:
    """Immutable telemetry settings plus a per-event decision cache."""

    enabled: bool = True
    default_rate: float = 1.0
    scoped_rates: tuple[SamplingRule, ...] = ()
    """Pattern-scoped rates, oldest first; the last matching rule wins."""
    allow: PatternSet = field(default_factory=lambda: PatternSet(()))
    deny: PatternSet = field(default_factory=lambda: PatternSet(()))
    decisions: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    """Event name -> sampling rate in [0, 1], or FILTERED_OUT. Read on the hot path."""

    def decide(self, event: str) -> float:
        """Return the event's sampling rate, or :data:`FILTERED_OUT`, using the cache."""
        rate = self.decisions.get(event)
        if rate is None:
            rate = self.resolve(event)
        return rate

    def resolve(self, event: str) -> float:
        """Compute the event's decision without the cache, then cache it."""
        rate = self._compute(event)
        decisions = self.decisions
        if len(decisions) >= MAX_CACHED_DECISIONS:
            decisions.clear()
        decisions[event] = rate
        return rate

    def _compute(self, event: str) -> float:
        if self.deny.matches(event):
            return FILTERED_OUT
        if self.allow and not self.allow.matches(event):
            return FILTERED_OUT
        for rule in reversed(self.scoped_rates):
            if rule.patterns.matches(event):
                return rule.rate
        return self.default_rate

    def with_enabled(self, enabled: bool) -> ControlPolicy:
        """Return a policy with telemetry switched on or off."""
        return replace(self, enabled=enabled, decisions={})

    def with_sampling(self, rate: float, patterns: Iterable[str] = ()) -> ControlPolicy:
        """Return a policy with a sampling rate for every event, or for matching ones."""
        if math.isnan(rate):
            return self
        clamped = _clamp_rate(rate)
        pattern_set = PatternSet.of(patterns)
        if not pattern_set:
            return replace(self, default_rate=clamped, scoped_rates=(), decisions={})
        kept = tuple(rule for rule in self.scoped_rates if rule.patterns != pattern_set)
        return replace(self, scoped_rates=(*kept, SamplingRule(pattern_set, clamped)), decisions={})

    def with_filter(self, allow: Iterable[str], deny: Iterable[str]) -> ControlPolicy:
        """Return a policy with new allow and deny lists (both replaced)."""
        return replace(self, allow=PatternSet.of(allow), deny=PatternSet.of(deny), decisions={})

    def apply(self, control: pb.TelemetryControl) -> ControlPolicy:
        """Return the policy after one control message (unchanged for an empty message)."""
        kind = control.WhichOneof("control")
        if kind == "toggle":
            return self.with_enabled(control.toggle.enabled)
        if kind == "sampling":
            return self.with_sampling(
                control.sampling.sampling_rate, control.sampling.event_patterns
            )
        if kind == "filter":
            return self.with_filter(control.filter.allow, control.filter.deny)
        return self
