"""One tool call without gRPC: run_tool_call, its context, the JSON codec, the error object."""

from __future__ import annotations

import contextvars
import json

import pytest
from google.protobuf import any_pb2
from tool_client import build_request, error_of, raw_any, result_of

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.tools import ToolRegistry, run_tool_call
from snakepit_bridge.tools.errors import error_payload
from snakepit_bridge.tools.execution import correlation_id_of
from snakepit_bridge.tools.json_any import (
    JSON_TYPE_URL,
    JsonDecodeError,
    JsonEncodeError,
    decode_json_any,
    encode_json_any,
)

LEAKY: contextvars.ContextVar[str] = contextvars.ContextVar("leaky", default="unset")


def test_each_call_runs_in_a_fresh_context_and_leaves_the_callers_alone() -> None:
    registry = ToolRegistry()
    seen: list[tuple[str, str | None]] = []

    @registry.tool
    def leak() -> None:
        seen.append((LEAKY.get(), telemetry.get_correlation_id()))
        LEAKY.set("set by the tool")
        telemetry.set_correlation_id("overwritten by the tool")

    with telemetry.correlation("caller-id"):
        LEAKY.set("caller")
        for cid in ("first", None):
            assert run_tool_call(registry, build_request("leak"), cid).success
        assert telemetry.get_correlation_id() == "caller-id"
        assert LEAKY.get() == "caller"
    assert seen == [("unset", "first"), ("unset", None)]


def test_run_tool_call_never_raises_even_for_odd_exceptions() -> None:
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    registry = ToolRegistry()

    @registry.tool
    def odd() -> None:
        raise UnprintableError

    error = error_of(run_tool_call(registry, build_request("odd")))
    assert error["type"] == "UnprintableError"
    assert error["message"] == "<unprintable UnprintableError>"


def test_correlation_id_sources() -> None:
    request = build_request("t", metadata={"correlation_id": "from-request"})
    assert correlation_id_of(request, (("x-snakepit-correlation-id", "h"),)) == "h"
    assert correlation_id_of(request, (("other", "h"),)) == "from-request"
    assert correlation_id_of(request, None) == "from-request"
    assert correlation_id_of(build_request("t"), ()) is None


def test_json_any_round_trip() -> None:
    message = encode_json_any({"k": [1, "✓", None]})
    assert message.type_url == JSON_TYPE_URL
    assert message.value == '{"k":[1,"✓",null]}'.encode()
    assert decode_json_any(message) == {"k": [1, "✓", None]}


def test_json_any_is_not_a_serialized_string_value() -> None:
    # What Snakepit's Elixir client sends for the string "hi": the JSON text "\"hi\"".
    assert decode_json_any(any_pb2.Any(type_url=JSON_TYPE_URL, value=b'"hi"')) == "hi"
    with pytest.raises(JsonDecodeError):
        # A real serialized StringValue("hi") is field 1, length 2: not JSON.
        decode_json_any(any_pb2.Any(type_url=JSON_TYPE_URL, value=b"\n\x02hi"))


@pytest.mark.parametrize("value", [float("inf"), {"a": b"bytes"}, {1j}, "\ud800"])
def test_values_without_json_form(value: object) -> None:
    with pytest.raises(JsonEncodeError):
        encode_json_any(value)


def test_error_payload_shape() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        payload = error_payload(
            exc,
            tool_name="t",
            session_id="s",
            arguments={"library": "lib", "call_type": "fn", "other": 1, "function": b"x"},
        )
    assert set(payload) == {"type", "message", "stacktrace", "traceback", "context"}
    assert payload["type"] == "KeyError"
    assert payload["message"] == "'missing'"
    assert payload["context"] == {
        "tool_name": "t",
        "session_id": "s",
        "library": "lib",
        "call_type": "fn",
    }
    json.dumps(payload)


def test_huge_parameter_integer_is_an_error_not_a_crash() -> None:
    registry = ToolRegistry()
    registry.register("echo", lambda **kw: kw)
    request = build_request("echo", raw_params={"n": raw_any(b"9" * 10_000)})
    error = error_of(run_tool_call(registry, request))
    assert error["type"] == "InvalidParameterError"
    ok = run_tool_call(registry, build_request("echo", {"n": 10**300}))
    assert result_of(ok) == {"n": 10**300}


def test_response_fields_on_success() -> None:
    registry = ToolRegistry()
    registry.register("one", lambda: 1)
    response = run_tool_call(registry, build_request("one"), "cid")
    assert isinstance(response, pb.ExecuteToolResponse)
    assert response.success and response.error_message == ""
    assert dict(response.metadata) == {"correlation_id": "cid"}
    assert result_of(response) == 1
