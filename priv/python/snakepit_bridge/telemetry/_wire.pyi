"""Type stub of the native encoder (``native/snakepit_bridge_wire``), present only when built."""

from collections.abc import Callable

def encode_record(
    measurement_value: Callable[[object], object], record: tuple[object, ...], /
) -> bytes: ...
