"""The telemetry event catalog, parsed from ``catalog.txt`` at import.

``catalog.txt`` is the one source shared with Rust (build.rs) and Elixir
(``Snakepit.Telemetry.Catalog``); its header comment documents the format. This module
only reads it. ``python -m snakepit_bridge.telemetry.catalog --json`` prints this view of
the file so that a test can compare it with the Elixir and Rust views.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

__all__ = [
    "EVENTS",
    "MEASUREMENT_KEYS",
    "MEASUREMENT_UNITS",
    "METADATA_KEYS",
    "NATIVE_TIME_KEYS",
    "WORKER_EVENTS",
    "Catalog",
    "CatalogError",
    "CatalogEvent",
    "load_catalog",
    "parse_catalog",
]

CATALOG_PACKAGE = "snakepit_bridge.telemetry"
CATALOG_RESOURCE = "catalog.txt"
NATIVE_UNIT = "native"
_NONE_MARKER = "-"
_EVENT_FIELD_COUNT = 4
_SECTIONS = ("measurement_keys", "metadata_keys", "events")


class CatalogError(ValueError):
    """Raised when ``catalog.txt`` does not follow its documented format."""


@dataclass(frozen=True, slots=True)
class CatalogEvent:
    """One ``[events]`` line of the catalog."""

    event_parts: tuple[str, ...]
    """The ``:telemetry`` event name split on dots."""
    worker_name: str | None
    """The dotted name a Python worker sends, or None for events only Elixir emits."""
    measurements: tuple[str, ...]
    """Documented measurement keys, in file order."""
    metadata: tuple[str, ...]
    """Documented metadata keys, in file order."""

    @property
    def name(self) -> str:
        """The dotted ``:telemetry`` event name, e.g. ``snakepit.python.call.start``."""
        return ".".join(self.event_parts)

    def to_json(self) -> dict[str, object]:
        """Return the JSON-ready form used by ``--json``."""
        return {
            "event": self.name,
            "worker_name": self.worker_name,
            "measurements": list(self.measurements),
            "metadata": list(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    """The whole parsed catalog."""

    measurement_units: Mapping[str, str | None]
    """Measurement key -> unit (None when the line names no unit), in file order."""
    metadata_keys: tuple[str, ...]
    events: tuple[CatalogEvent, ...]

    @property
    def measurement_keys(self) -> tuple[str, ...]:
        """Measurement keys in file order."""
        return tuple(self.measurement_units)

    @property
    def native_time_keys(self) -> tuple[str, ...]:
        """Measurement keys whose unit is ``native`` (nanoseconds from the worker)."""
        return tuple(key for key, unit in self.measurement_units.items() if unit == NATIVE_UNIT)

    @property
    def worker_events(self) -> Mapping[str, CatalogEvent]:
        """Worker-side dotted name -> event, for events a worker may send."""
        return MappingProxyType(
            {event.worker_name: event for event in self.events if event.worker_name is not None}
        )

    def to_json(self) -> dict[str, object]:
        """Return the JSON-ready view printed by ``--json``, in file order."""
        return {
            "measurement_keys": list(self.measurement_keys),
            "native_time_keys": list(self.native_time_keys),
            "metadata_keys": list(self.metadata_keys),
            "events": [event.to_json() for event in self.events],
        }


def _key_list(field: str, line_number: int) -> tuple[str, ...]:
    """Parse a comma-separated key list, where ``-`` means none."""
    if field == _NONE_MARKER:
        return ()
    keys = tuple(key.strip() for key in field.split(","))
    if any(not key or " " in key for key in keys):
        raise CatalogError(f"line {line_number}: malformed key list {field!r}")
    return keys


def _parse_event(line: str, line_number: int) -> CatalogEvent:
    fields = [field.strip() for field in line.split("|")]
    if len(fields) != _EVENT_FIELD_COUNT:
        raise CatalogError(
            f"line {line_number}: expected 4 '|'-separated fields, got {len(fields)}"
        )
    name, worker_name, measurements, metadata = fields
    parts = tuple(name.split("."))
    if any(not part or " " in part for part in parts):
        raise CatalogError(f"line {line_number}: malformed event name {name!r}")
    if not worker_name or " " in worker_name:
        raise CatalogError(f"line {line_number}: malformed worker name {worker_name!r}")
    return CatalogEvent(
        event_parts=parts,
        worker_name=None if worker_name == _NONE_MARKER else worker_name,
        measurements=_key_list(measurements, line_number),
        metadata=_key_list(metadata, line_number),
    )


def _check_unique(kind: str, keys: Sequence[str]) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise CatalogError(f"duplicate {kind} {key!r}")
        seen.add(key)


def parse_catalog(text: str) -> Catalog:
    """Parse catalog text in the format documented at the top of ``catalog.txt``.

    Raises:
        CatalogError: on a line outside a section, an unknown section, a malformed line
            or a duplicate key, event or worker name.
    """
    units: dict[str, str | None] = {}
    metadata_keys: list[str] = []
    events: list[CatalogEvent] = []
    section: str | None = None

    for line_number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            if section not in _SECTIONS:
                raise CatalogError(f"line {line_number}: unknown section [{section}]")
            continue
        if section is None:
            raise CatalogError(f"line {line_number}: content before the first section")
        if section == "measurement_keys":
            tokens = line.split()
            if len(tokens) > 2:
                raise CatalogError(f"line {line_number}: expected 'key [unit]', got {line!r}")
            if tokens[0] in units:
                raise CatalogError(f"line {line_number}: duplicate measurement key {tokens[0]!r}")
            units[tokens[0]] = tokens[1] if len(tokens) == 2 else None
        elif section == "metadata_keys":
            if len(line.split()) != 1:
                raise CatalogError(f"line {line_number}: expected one metadata key, got {line!r}")
            metadata_keys.append(line)
        else:
            events.append(_parse_event(line, line_number))

    _check_unique("metadata key", metadata_keys)
    _check_unique("event", [event.name for event in events])
    _check_unique("worker name", [e.worker_name for e in events if e.worker_name is not None])
    return Catalog(
        measurement_units=MappingProxyType(units),
        metadata_keys=tuple(metadata_keys),
        events=tuple(events),
    )


def load_catalog() -> Catalog:
    """Read and parse the ``catalog.txt`` shipped inside this package."""
    text = resources.files(CATALOG_PACKAGE).joinpath(CATALOG_RESOURCE).read_text(encoding="utf-8")
    return parse_catalog(text)


_CATALOG = load_catalog()

MEASUREMENT_UNITS: Mapping[str, str | None] = _CATALOG.measurement_units
MEASUREMENT_KEYS: tuple[str, ...] = _CATALOG.measurement_keys
NATIVE_TIME_KEYS: tuple[str, ...] = _CATALOG.native_time_keys
METADATA_KEYS: tuple[str, ...] = _CATALOG.metadata_keys
EVENTS: tuple[CatalogEvent, ...] = _CATALOG.events
WORKER_EVENTS: Mapping[str, CatalogEvent] = _CATALOG.worker_events


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--json`` prints the parsed catalog as one JSON object."""
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_bridge.telemetry.catalog",
        description="Print the telemetry event catalog as Python parses it.",
    )
    parser.add_argument("--json", action="store_true", help="print the catalog as JSON")
    args = parser.parse_args(argv)
    if args.json:
        json.dump(_CATALOG.to_json(), sys.stdout)
        sys.stdout.write("\n")
    else:
        for event in EVENTS:
            print(f"{event.name}\t{event.worker_name or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
