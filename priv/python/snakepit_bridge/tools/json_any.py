"""JSON in ``google.protobuf.Any``: how tool parameters and results travel.

Snakepit's convention, followed here: each value is an ``Any`` whose ``type_url`` is
``type.googleapis.com/google.protobuf.StringValue`` and whose ``value`` bytes are the
UTF-8 JSON text of the value itself (not a serialized ``StringValue``). Decoding reads
``value`` that way whatever the ``type_url`` says.
"""

from __future__ import annotations

import json
from typing import Final, NoReturn

from google.protobuf import any_pb2

__all__ = [
    "JSON_TYPE_URL",
    "JsonDecodeError",
    "JsonEncodeError",
    "decode_json_any",
    "encode_json",
    "encode_json_any",
]

JSON_TYPE_URL: Final = "type.googleapis.com/google.protobuf.StringValue"


class JsonDecodeError(ValueError):
    """An ``Any``'s ``value`` is not UTF-8 JSON."""


class JsonEncodeError(TypeError):
    """A value has no JSON form."""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def decode_json_any(message: any_pb2.Any) -> object:
    """Return the Python value of the JSON text in ``message.value``.

    Strict JSON: ``NaN`` and ``Infinity`` are rejected; integers of any size are kept
    exact.

    Raises:
        JsonDecodeError: if the bytes are not UTF-8 or not one JSON value.
    """
    try:
        text = message.value.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise JsonDecodeError(str(exc)) from None


def encode_json(value: object) -> bytes:
    """Return the compact UTF-8 JSON text of ``value``.

    Raises:
        JsonEncodeError: if ``value`` has no JSON form (an object ``json`` does not
            know, NaN or infinity, a circular reference, a lone surrogate, ...).
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise JsonEncodeError(f"{type(value).__name__} has no JSON form: {exc}") from None


def encode_json_any(value: object) -> any_pb2.Any:
    """Return an ``Any`` carrying the JSON text of ``value`` (see :func:`encode_json`)."""
    return any_pb2.Any(type_url=JSON_TYPE_URL, value=encode_json(value))
