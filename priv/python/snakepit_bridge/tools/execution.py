"""One ``ExecuteTool`` call: decode the parameters, run the tool, build the response.

:func:`run_tool_call` never raises: every failure (unknown tool, undecodable parameter,
an exception from the tool, a result with no JSON form) becomes a response with
``success: false`` and the JSON error object of :mod:`snakepit_bridge.tools.errors`.

The tool runs in a fresh :class:`contextvars.Context` with the call's correlation id set
(:mod:`snakepit_bridge.telemetry.context`), so every event it emits carries the id, also
from asyncio tasks and from threads started with ``contextvars.copy_context().run``, and
nothing it sets in a context variable outlives the call.

The request's ``stream`` flag is ignored: a tool's result is always one response (there
is no streaming tool RPC here).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Iterable, Mapping
from typing import Final

from google.protobuf import any_pb2

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.context import CORRELATION_HEADER, CORRELATION_ID
from snakepit_bridge.tools.errors import (
    InvalidParameterError,
    ResultEncodingError,
    UnknownToolError,
    error_payload_json,
)
from snakepit_bridge.tools.json_any import JsonDecodeError, JsonEncodeError, encode_json_any
from snakepit_bridge.tools.json_any import decode_json_any as _decode_json_any
from snakepit_bridge.tools.registry import ToolFunction, ToolRegistry

__all__ = [
    "CORRELATION_HEADER",
    "CORRELATION_METADATA_KEY",
    "correlation_id_of",
    "decode_parameters",
    "run_tool_call",
]

CORRELATION_METADATA_KEY: Final = "correlation_id"
"""Key of the correlation id in the request's and the response's ``metadata`` maps."""

_NS_PER_MS: Final = 1_000_000


def correlation_id_of(
    request: pb.ExecuteToolRequest,
    invocation_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> str | None:
    """Return the call's correlation id: the header, else ``metadata["correlation_id"]``.

    An empty value counts as absent; None when neither carries one.
    """
    for key, value in invocation_metadata or ():
        if key == CORRELATION_HEADER and isinstance(value, str) and value:
            return value
    from_request = request.metadata.get(CORRELATION_METADATA_KEY)
    return from_request or None


def decode_parameters(request: pb.ExecuteToolRequest) -> dict[str, object]:
    """Return the tool's keyword arguments: JSON parameters decoded, binary ones as bytes.

    Raises:
        InvalidParameterError: if a parameter is not UTF-8 JSON, or a name is both a
            JSON and a binary parameter.
    """
    arguments: dict[str, object] = {}
    for name, message in request.parameters.items():
        try:
            arguments[name] = _decode_json_any(message)
        except JsonDecodeError as exc:
            raise InvalidParameterError(f"parameter {name!r} is not valid JSON: {exc}") from None
    for name, data in request.binary_parameters.items():
        if name in arguments:
            raise InvalidParameterError(f"parameter {name!r} is given both as JSON and as binary")
        arguments[name] = bytes(data)
    return arguments


def _invoke(
    fn: ToolFunction, arguments: Mapping[str, object], correlation_id: str | None
) -> object:
    CORRELATION_ID.set(correlation_id)
    result = fn(**arguments)
    if inspect.iscoroutine(result):
        # asyncio.run's task copies this context, so the id reaches the coroutine.
        result = asyncio.run(result)
    return result


def run_tool_call(
    registry: ToolRegistry,
    request: pb.ExecuteToolRequest,
    correlation_id: str | None = None,
) -> pb.ExecuteToolResponse:
    """Run the requested tool and return the response (never raises)."""
    started_ns = time.monotonic_ns()
    response = pb.ExecuteToolResponse()
    if correlation_id is not None:
        response.metadata[CORRELATION_METADATA_KEY] = correlation_id
    arguments: dict[str, object] | None = None
    try:
        arguments = decode_parameters(request)
        fn = registry.get(request.tool_name)
        if fn is None:
            raise UnknownToolError(f"no tool named {request.tool_name!r}")
        result = contextvars.Context().run(_invoke, fn, arguments, correlation_id)
        response.result.CopyFrom(_encode_result(result))
        response.success = True
    except BaseException as exc:
        # BaseException too: a tool must never take the server down; one that raises
        # SystemExit or KeyboardInterrupt on a server thread fails its call only.
        response.success = False
        response.ClearField("result")
        response.error_message = error_payload_json(
            exc,
            tool_name=request.tool_name,
            session_id=request.session_id,
            arguments=arguments,
        )
    response.execution_time_ms = (time.monotonic_ns() - started_ns) // _NS_PER_MS
    return response


def _encode_result(result: object) -> any_pb2.Any:
    try:
        return encode_json_any(result)
    except JsonEncodeError as exc:
        raise ResultEncodingError(f"the tool's result: {exc}") from None
