"""A small ExecuteTool client for the tests (the NIF is the real client)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import EXECUTE_TOOL_PATH
from snakepit_bridge.tools.json_any import JSON_TYPE_URL

CALL_TIMEOUT = 10.0

Headers = tuple[tuple[str, str], ...]


def json_any(value: object) -> any_pb2.Any:
    """Encode ``value`` as Snakepit's Elixir client does: JSON text in ``Any.value``."""
    return any_pb2.Any(type_url=JSON_TYPE_URL, value=json.dumps(value).encode("utf-8"))


def raw_any(data: bytes, type_url: str = JSON_TYPE_URL) -> any_pb2.Any:
    """An ``Any`` with arbitrary ``value`` bytes."""
    return any_pb2.Any(type_url=type_url, value=data)


def build_request(
    tool_name: str,
    params: Mapping[str, object] | None = None,
    *,
    raw_params: Mapping[str, any_pb2.Any] | None = None,
    binary: Mapping[str, bytes] | None = None,
    metadata: Mapping[str, str] | None = None,
    session_id: str = "session-1",
) -> pb.ExecuteToolRequest:
    """Build a request; ``params`` are JSON-encoded, ``raw_params`` go as given."""
    request = pb.ExecuteToolRequest(session_id=session_id, tool_name=tool_name)
    for name, value in (params or {}).items():
        request.parameters[name].CopyFrom(json_any(value))
    for name, message in (raw_params or {}).items():
        request.parameters[name].CopyFrom(message)
    for name, data in (binary or {}).items():
        request.binary_parameters[name] = data
    for key, value in (metadata or {}).items():
        request.metadata[key] = value
    return request


class ToolClient:
    """One channel to a worker; :meth:`call` runs ExecuteTool."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._execute: grpc.UnaryUnaryMultiCallable[pb.ExecuteToolRequest, pb.ExecuteToolResponse]
        self._execute = self.channel.unary_unary(
            EXECUTE_TOOL_PATH,
            request_serializer=pb.ExecuteToolRequest.SerializeToString,
            response_deserializer=pb.ExecuteToolResponse.FromString,
        )

    def send(
        self, request: pb.ExecuteToolRequest, headers: Headers | None = None
    ) -> pb.ExecuteToolResponse:
        """Send a built request; raises grpc.RpcError on a non-OK status."""
        return self._execute(request, timeout=CALL_TIMEOUT, metadata=headers)

    def call(
        self,
        tool_name: str,
        params: Mapping[str, object] | None = None,
        *,
        headers: Headers | None = None,
        **request_options: object,
    ) -> pb.ExecuteToolResponse:
        """Build and send a request (see :func:`build_request` for the options)."""
        request = build_request(tool_name, params, **request_options)  # type: ignore[arg-type]
        return self.send(request, headers)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


def result_of(response: pb.ExecuteToolResponse) -> object:
    """Decode a successful response's JSON result (fails on an error response)."""
    assert response.success, response.error_message
    assert response.result.type_url == JSON_TYPE_URL
    return json.loads(response.result.value.decode("utf-8"))


def error_of(response: pb.ExecuteToolResponse) -> dict[str, object]:
    """Decode a failed response's JSON error object."""
    assert not response.success
    assert not response.HasField("result")
    payload = json.loads(response.error_message)
    assert isinstance(payload, dict)
    return payload
