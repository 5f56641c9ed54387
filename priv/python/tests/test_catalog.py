from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest

from snakepit_bridge.telemetry import catalog
from snakepit_bridge.telemetry.catalog import CatalogError, parse_catalog


def test_catalog_file_ships_as_package_data() -> None:
    text = resources.files("snakepit_bridge.telemetry").joinpath("catalog.txt").read_text()
    assert "[events]" in text


def test_measurement_keys_and_native_units() -> None:
    assert catalog.MEASUREMENT_KEYS[:4] == ("duration", "duration_ms", "bytes", "system_time")
    assert catalog.NATIVE_TIME_KEYS == ("duration", "system_time")
    assert catalog.MEASUREMENT_UNITS["duration"] == "native"
    assert catalog.MEASUREMENT_UNITS["duration_ms"] is None
    assert "python_pid" in catalog.MEASUREMENT_KEYS
    assert len(set(catalog.MEASUREMENT_KEYS)) == len(catalog.MEASUREMENT_KEYS)


def test_metadata_keys() -> None:
    assert catalog.METADATA_KEYS[0] == "node"
    assert "correlation_id" in catalog.METADATA_KEYS
    assert catalog.METADATA_KEYS[-1] == "retry"


def test_events_in_file_order_with_worker_names() -> None:
    first = catalog.EVENTS[0]
    assert first.event_parts == ("snakepit", "pool", "initialized")
    assert first.worker_name is None
    assert first.measurements == ("duration", "worker_count")
    assert first.metadata == ("node", "pool_name")

    stop = catalog.WORKER_EVENTS["tool.execution.stop"]
    assert stop.name == "snakepit.python.tool.execution.stop"
    assert stop.measurements == ("duration", "count")
    assert stop.metadata[:5] == ("tool", "library", "function", "operation", "result")

    assert set(catalog.WORKER_EVENTS) == {
        event.worker_name for event in catalog.EVENTS if event.worker_name is not None
    }
    assert len(catalog.WORKER_EVENTS) == 11
    assert catalog.EVENTS[-1].name == "snakepit.grpc.connection.reconnected"


def test_every_worker_event_is_a_snakepit_python_event_named_after_it() -> None:
    for worker_name, event in catalog.WORKER_EVENTS.items():
        assert event.event_parts[:2] == ("snakepit", "python")
        assert event.name.endswith("." + worker_name)


def test_parse_comments_blank_lines_and_none_markers() -> None:
    parsed = parse_catalog(
        """
        # header
        [measurement_keys]
        duration native   # trailing comment
        count

        [metadata_keys]
        node
        [events]
        a.b | - | - | -
        a.c | c | duration, count | node
        """
    )
    assert parsed.measurement_keys == ("duration", "count")
    assert parsed.native_time_keys == ("duration",)
    assert parsed.metadata_keys == ("node",)
    assert parsed.events[0].measurements == ()
    assert parsed.events[0].worker_name is None
    assert parsed.events[1].measurements == ("duration", "count")
    assert parsed.worker_events["c"].name == "a.c"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("duration", "before the first section"),
        ("[nope]", "unknown section"),
        ("[measurement_keys]\nduration native extra", r"expected 'key \[unit\]'"),
        ("[measurement_keys]\nd\nd", "duplicate measurement key"),
        ("[metadata_keys]\na b", "one metadata key"),
        ("[events]\na.b | - | -", "4 '|'-separated fields"),
        ("[events]\na..b | - | - | -", "malformed event name"),
        ("[events]\na.b | - | x,,y | -", "malformed key list"),
        ("[events]\na.b | w | - | -\na.c | w | - | -", "duplicate worker name"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text)


def test_json_command_prints_file_order_view() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakepit_bridge.telemetry.catalog", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stderr == ""
    view = json.loads(result.stdout)
    assert list(view) == ["measurement_keys", "native_time_keys", "metadata_keys", "events"]
    assert view["measurement_keys"] == list(catalog.MEASUREMENT_KEYS)
    assert view["native_time_keys"] == ["duration", "system_time"]
    assert view["metadata_keys"] == list(catalog.METADATA_KEYS)
    assert len(view["events"]) == len(catalog.EVENTS)
    assert view["events"][0] == {
        "event": "snakepit.pool.initialized",
        "worker_name": None,
        "measurements": ["duration", "worker_count"],
        "metadata": ["node", "pool_name"],
    }
    call_start = next(e for e in view["events"] if e["event"] == "snakepit.python.call.start")
    assert call_start["worker_name"] == "python.call.start"
    assert call_start["measurements"] == ["system_time", "count"]
