"""What the client asked the worker to send: toggle, sampling and allow/deny filters.

A :class:`ControlPolicy` is immutable. Applying a ``TelemetryControl`` returns a new
policy, and the stream swaps its reference in one assignment, so an emitting thread
always sees one consistent policy without taking a lock.

Each policy owns a cache of per-event decisions (event name -> sampling rate, or
:data:`FILTERED_OUT`), so glob patterns run once per distinct event name, not once per
event. A new policy starts with an empty cache, which is how settings changes invalidate
it. The cache is bounded (:data:`MAX_CACHED_DECISIONS` names of at most
:data:`MAX_CACHED_NAME_LENGTH` characters) so that a worker emitting unbounded distinct
or huge names cannot grow it without limit.

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

Validation (the same rules as Elixir's ``Snakepit.Telemetry.Control`` and Rust's
``settings::valid_pattern``; ``test/fixtures/pattern_cases.txt`` is the shared table of
cases):

* a rate is a finite number in ``[0.0, 1.0]``;
* a pattern is a non-empty string of at most :data:`MAX_PATTERN_BYTES` bytes made only
  of ``A-Z a-z 0-9 _ . * ? -``.

A control message carrying an invalid rate or pattern makes :meth:`ControlPolicy.apply`
raise :class:`InvalidControlError` and changes nothing: the message is rejected as a whole
(the stream counts it and keeps the policy in force).

Patterns are globs matched against the whole dotted event name the worker emits: ``*``
matches any run of characters, dots included, possibly empty (``"tool.*"`` matches
``"tool.execution.stop"``), ``?`` exactly one character, every other character itself;
matching is case-sensitive; a ``*`` in the pattern is a wildcard even where the name has
a ``*``. :func:`glob_match` (the same algorithm as Rust's ``settings::glob_match``) is
the reference for one pattern; :class:`PatternSet` compiles a set into one regular
expression with the same meaning (``fnmatch.translate`` of a validated pattern: it
contains no ``[``, the only character ``fnmatch`` gives a meaning these globs do not have).
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
    "MAX_CACHED_NAME_LENGTH",
    "MAX_PATTERN_BYTES",
    "ControlPolicy",
    "InvalidControlError",
    "PatternSet",
    "SamplingRule",
    "check_pattern",
    "check_rate",
    "glob_match",
    "valid_pattern",
    "valid_rate",
]

FILTERED_OUT: Final = -1.0
"""Cached decision for an event the allow/deny filter removes (any rate is >= 0)."""

MAX_CACHED_DECISIONS: Final = 4096
"""Decision cache size; the cache is cleared when it would grow past this."""

MAX_CACHED_NAME_LENGTH: Final = 256
"""Longest event name whose decision is cached (longer ones are decided every time), so
that the cache holds at most about ``MAX_CACHED_DECISIONS * MAX_CACHED_NAME_LENGTH``
characters of names whatever the worker emits."""

MAX_PATTERN_BYTES: Final = 256
"""Longest valid pattern, in bytes (as in Elixir and Rust)."""

_VALID_PATTERN: Final = re.compile(rf"[A-Za-z0-9_.*?\-]{{1,{MAX_PATTERN_BYTES}}}")
"""Only ASCII characters are allowed, so characters and bytes count the same."""


class InvalidControlError(ValueError):
    """A control message (or a rate or pattern in it) that validation rejects."""


def valid_pattern(pattern: object) -> bool:
    """Return True if ``pattern`` is a valid event pattern (see the module doc)."""
    return type(pattern) is str and _VALID_PATTERN.fullmatch(pattern) is not None


def valid_rate(rate: object) -> bool:
    """Return True if ``rate`` is a finite number in ``[0.0, 1.0]`` (bools are not rates)."""
    if type(rate) is not float and type(rate) is not int:
        return False
    return math.isfinite(rate) and 0.0 <= rate <= 1.0


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if valid.

    Raises:
        InvalidControlError: if it is not.
    """
    if not valid_pattern(pattern):
        raise InvalidControlError(f"invalid event pattern {pattern!r}")
    return pattern  # type: ignore[return-value]  # valid_pattern checked type(pattern) is str


def check_rate(rate: object) -> float:
    """Return ``rate`` as a float if valid.

    Raises:
        InvalidControlError: if it is not.
    """
    if not valid_rate(rate):
        raise InvalidControlError(f"invalid sampling rate {rate!r}")
    return float(rate)  # type: ignore[arg-type]  # valid_rate checked it is an int or float


def glob_match(pattern: str, name: str) -> bool:
    """Return True if the whole ``name`` matches the glob ``pattern``.

    The same algorithm as Rust's ``settings::glob_match``: greedy, backtracking to the
    last ``*`` seen. A ``*`` in the pattern is always a wildcard, also where the name has
    a ``*``. Does not validate ``pattern``.
    """
    p_len, n_len = len(pattern), len(name)
    pi = ni = 0
    star_pi = -1  # pattern index after the last `*` seen, or -1
    star_ni = 0  # name index that `*` currently extends to
    while ni < n_len:
        if pi < p_len and pattern[pi] == "*":
            pi += 1
            star_pi, star_ni = pi, ni
        elif pi < p_len and (pattern[pi] == "?" or pattern[pi] == name[ni]):
            pi += 1
            ni += 1
        elif star_pi >= 0:
            star_ni += 1
            pi, ni = star_pi, star_ni
        else:
            return False
    return all(char == "*" for char in pattern[pi:])


@dataclass(frozen=True, slots=True)
class PatternSet:
    """A set of glob patterns compiled into one regular expression."""

    patterns: tuple[str, ...]
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, patterns: Iterable[str]) -> PatternSet:
        """Build a set from patterns; order and duplicates do not matter.

        Raises:
            InvalidControlError: if any pattern is invalid.
        """
        unique = tuple(sorted({check_pattern(pattern) for pattern in patterns}))
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


@dataclass(frozen=True, slots=True)
class ControlPolicy:
    """Immutable telemetry settings plus a per-event decision cache."""

    enabled: bool = True
    sampling_rate: float = 1.0
    sampling_rules: tuple[SamplingRule, ...] = ()
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
        """Compute the event's decision without the cache, then cache it (short names only)."""
        rate = self._compute(event)
        if len(event) <= MAX_CACHED_NAME_LENGTH:
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
        for rule in reversed(self.sampling_rules):
            if rule.patterns.matches(event):
                return rule.rate
        return self.sampling_rate

    def with_enabled(self, enabled: bool) -> ControlPolicy:
        """Return a policy with telemetry switched on or off."""
        return replace(self, enabled=enabled, decisions={})

    def with_sampling(self, rate: float, patterns: Iterable[str] = ()) -> ControlPolicy:
        """Return a policy with a sampling rate for every event, or for matching ones.

        Raises:
            InvalidControlError: on an invalid rate or pattern (nothing is changed).
        """
        checked = check_rate(rate)
        pattern_set = PatternSet.of(patterns)
        if not pattern_set:
            return replace(self, sampling_rate=checked, sampling_rules=(), decisions={})
        kept = tuple(rule for rule in self.sampling_rules if rule.patterns != pattern_set)
        return replace(
            self, sampling_rules=(*kept, SamplingRule(pattern_set, checked)), decisions={}
        )

    def with_filter(self, allow: Iterable[str], deny: Iterable[str]) -> ControlPolicy:
        """Return a policy with new allow and deny lists (both replaced).

        Raises:
            InvalidControlError: on an invalid pattern in either list (nothing is changed).
        """
        return replace(self, allow=PatternSet.of(allow), deny=PatternSet.of(deny), decisions={})

    def apply(self, control: pb.TelemetryControl) -> ControlPolicy:
        """Return the policy after one control message (unchanged for an empty message).

        Raises:
            InvalidControlError: if the message carries an invalid rate or pattern; it is then
                rejected as a whole and this policy stays as it is.
        """
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
