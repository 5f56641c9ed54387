"""The names of ``snakepit.bridge.BridgeService`` and what its handlers share.

The service, its methods and their paths; the response serializer that lets bytes pass
through (events are buffered already serialized); the request deserializer wrapper that
turns bytes which are not the expected message into None, so that a handler answers with a
status of its own instead of the server logging an exception for every malformed request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from google.protobuf.message import DecodeError

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.telemetry.protocol import OutgoingMessage

__all__ = [
    "EXECUTE_TOOL_METHOD",
    "EXECUTE_TOOL_PATH",
    "SERVICE_NAME",
    "STREAM_TELEMETRY_BATCHED_METHOD",
    "STREAM_TELEMETRY_BATCHED_PATH",
    "STREAM_TELEMETRY_METHOD",
    "STREAM_TELEMETRY_PATH",
    "parse_or_none",
    "serialize_outgoing",
]

SERVICE_NAME: Final = "snakepit.bridge.BridgeService"
STREAM_TELEMETRY_METHOD: Final = "StreamTelemetry"
STREAM_TELEMETRY_PATH: Final = f"/{SERVICE_NAME}/{STREAM_TELEMETRY_METHOD}"
STREAM_TELEMETRY_BATCHED_METHOD: Final = "StreamTelemetryBatched"
STREAM_TELEMETRY_BATCHED_PATH: Final = f"/{SERVICE_NAME}/{STREAM_TELEMETRY_BATCHED_METHOD}"
EXECUTE_TOOL_METHOD: Final = "ExecuteTool"
EXECUTE_TOOL_PATH: Final = f"/{SERVICE_NAME}/{EXECUTE_TOOL_METHOD}"

_Message = TypeVar("_Message")


def serialize_outgoing(message: OutgoingMessage | pb.TelemetryEventBatch) -> bytes:
    """Serialize a response message; bytes pass through unchanged."""
    if type(message) is bytes:
        return message
    return message.SerializeToString()  # type: ignore[union-attr]


def parse_or_none(parse: Callable[[bytes], _Message]) -> Callable[[bytes], _Message | None]:
    """Wrap a request deserializer so that bytes it cannot parse give None, not an exception.

    The handler then answers with a status of its own (or counts a control message as
    rejected) instead of the server logging the exception of every malformed request.
    """

    def parse_request(data: bytes) -> _Message | None:
        try:
            return parse(data)
        except DecodeError:
            return None

    return parse_request
