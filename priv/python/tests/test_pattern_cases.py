"""The shared table of glob cases (test/fixtures/pattern_cases.txt) against the Python policy.

The same file is read by the Rust and Elixir tests; its header documents the format.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from stream_client import event_filter, sampling

from snakepit_bridge.telemetry.policy import (
    FILTERED_OUT,
    MAX_PATTERN_BYTES,
    ControlPolicy,
    InvalidControlError,
    PatternSet,
    glob_match,
    valid_pattern,
)
from snakepit_bridge.telemetry.stream import TelemetryStream

# tests/ -> python/ -> priv/ -> repository root
REPO_ROOT = Path(__file__).resolve().parents[3]
CASES_PATH = REPO_ROOT / "test" / "fixtures" / "pattern_cases.txt"
SEPARATOR = " | "
RESULTS = ("match", "nomatch", "invalid")
MIN_CASES = 40


@dataclass(frozen=True)
class Case:
    line: int
    pattern: str
    name: str
    result: str


def load_cases() -> list[Case]:
    """Parse the table; raise (failing collection loudly) if it is missing or malformed."""
    if not (REPO_ROOT / "priv" / "python" / "tests").is_dir():
        raise RuntimeError(f"REPO_ROOT {REPO_ROOT} is not the repository root")
    if not CASES_PATH.is_file():
        raise FileNotFoundError(f"the shared glob case table is missing: {CASES_PATH}")
    cases = []
    text = CASES_PATH.read_text(encoding="utf-8")
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")  # noqa: PLW2901 - the documented line ending
        if line == "" or line.startswith("#"):
            continue
        fields = line.split(SEPARATOR)
        if len(fields) != 3:
            raise ValueError(f"{CASES_PATH}:{number}: expected 3 fields, got {fields!r}")
        pattern, name, result = fields
        if result not in RESULTS:
            raise ValueError(f"{CASES_PATH}:{number}: unknown result {result!r}")
        if result == "invalid" and name != "-":
            raise ValueError(f"{CASES_PATH}:{number}: an invalid row's name must be '-'")
        cases.append(Case(number, pattern, name, result))
    return cases


CASES = load_cases()


def test_the_table_is_there_and_covers_every_result() -> None:
    assert len(CASES) >= MIN_CASES
    assert {case.result for case in CASES} == set(RESULTS)
    lengths = {len(case.pattern.encode()) for case in CASES}
    assert MAX_PATTERN_BYTES in lengths
    assert MAX_PATTERN_BYTES + 1 in lengths
    assert any(case.pattern == "" and case.result == "invalid" for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"line{case.line}")
def test_case(case: Case) -> None:
    if case.result == "invalid":
        assert not valid_pattern(case.pattern)
        with pytest.raises(InvalidControlError):
            PatternSet.of([case.pattern])
        return
    assert valid_pattern(case.pattern)
    expected = case.result == "match"
    assert glob_match(case.pattern, case.name) is expected
    assert PatternSet.of([case.pattern]).matches(case.name) is expected
    policy = ControlPolicy().with_filter(allow=[case.pattern], deny=[])
    assert policy.decide(case.name) == (1.0 if expected else FILTERED_OUT)


@pytest.mark.parametrize(
    "case", [case for case in CASES if case.result == "invalid"], ids=lambda c: f"line{c.line}"
)
def test_invalid_pattern_rejects_the_whole_control_message(case: Case) -> None:
    stream = TelemetryStream()
    stream.apply_control(sampling(0.5))
    before = stream.policy
    for control in (
        sampling(0.1, "tool.*", case.pattern),
        event_filter(allow=("tool.*", case.pattern)),
        event_filter(deny=(case.pattern,)),
    ):
        assert not stream.apply_control(control)
        assert stream.policy is before
    assert stream.stats().controls_rejected == 3


def test_pattern_sets_agree_with_the_reference_matcher_on_random_input() -> None:
    """The compiled regex (fnmatch.translate) against glob_match, '*' and '?' in names too."""
    rng = random.Random(1234)
    pattern_alphabet = "ab.*?"
    name_alphabet = "ab.*?"
    for _ in range(20_000):
        pattern = "".join(rng.choice(pattern_alphabet) for _ in range(rng.randint(1, 7)))
        name = "".join(rng.choice(name_alphabet) for _ in range(rng.randint(0, 9)))
        expected = glob_match(pattern, name)
        assert PatternSet.of([pattern]).matches(name) is expected, (pattern, name)


def test_a_set_matches_when_any_of_its_patterns_does() -> None:
    patterns = ["python.call.*", "tool.?", "*.sampled"]
    pattern_set = PatternSet.of(patterns)
    for name in ("python.call.start", "tool.x", "python.cpu.sampled", "tool.xy", "x"):
        assert pattern_set.matches(name) is any(glob_match(p, name) for p in patterns)
