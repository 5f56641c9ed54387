"""Why a tool call failed, as the JSON object put in ``ExecuteToolResponse.error_message``.

The object has the keys of Snakepit's own Python server::

    {
      "type": "ValueError",                  # the exception's class name
      "message": "delay_ms must be >= 0",    # str(exception)
      "stacktrace": ["Traceback ...", ...],  # traceback.format_exception lines
      "traceback": "Traceback ...",          # the same lines joined
      "context": {"tool_name": "...", "session_id": "...", ...}
    }

``context`` also carries the request's ``library``, ``python_module``, ``function``,
``call_type`` and ``payload_version`` parameters when they were given (as Snakepit does).
Failures found before the tool runs raise the :class:`ToolCallError` subclasses below, so
``type`` tells them apart: ``UnknownToolError``, ``InvalidParameterError``,
``ResultEncodingError``; anything else is what the tool itself raised.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from typing import Final

__all__ = [
    "CONTEXT_PARAMETER_KEYS",
    "InvalidParameterError",
    "ResultEncodingError",
    "ToolCallError",
    "UnknownToolError",
    "error_payload",
    "error_payload_json",
]

CONTEXT_PARAMETER_KEYS: Final = (
    "library",
    "python_module",
    "function",
    "call_type",
    "payload_version",
)
"""Parameters copied into the payload's ``context`` when present (Snakepit's list)."""


class ToolCallError(Exception):
    """A tool call failed outside the tool (lookup, parameters, result)."""


class UnknownToolError(ToolCallError, LookupError):
    """No tool is registered under the requested name."""


class InvalidParameterError(ToolCallError, ValueError):
    """A parameter could not be decoded, or two parameters share a name."""


class ResultEncodingError(ToolCallError, TypeError):
    """The tool's return value has no JSON form."""


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def error_payload(
    exc: BaseException,
    *,
    tool_name: str,
    session_id: str,
    arguments: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Return the error object for ``exc`` (see the module docstring)."""
    try:
        stacktrace = traceback.format_exception(exc)
    except Exception:
        stacktrace = [f"{type(exc).__name__}: {_safe_str(exc)}\n"]
    context: dict[str, object] = {"tool_name": tool_name, "session_id": session_id}
    if arguments:
        for key in CONTEXT_PARAMETER_KEYS:
            value = arguments.get(key)
            if value is not None and not isinstance(value, bytes):
                context[key] = value
    return {
        "type": type(exc).__name__,
        "message": _safe_str(exc),
        "stacktrace": stacktrace,
        "traceback": "".join(stacktrace),
        "context": context,
    }


def error_payload_json(
    exc: BaseException,
    *,
    tool_name: str,
    session_id: str,
    arguments: Mapping[str, object] | None = None,
) -> str:
    """Return :func:`error_payload` as JSON text (ASCII; never raises)."""
    payload = error_payload(exc, tool_name=tool_name, session_id=session_id, arguments=arguments)
    try:
        return json.dumps(payload)
    except (TypeError, ValueError, RecursionError):
        # A context value from the parameters that json cannot write back (very deep
        # nesting): drop the context rather than the error.
        payload["context"] = {"tool_name": tool_name, "session_id": session_id}
        return json.dumps(payload)
