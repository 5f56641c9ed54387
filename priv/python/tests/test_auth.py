"""The bearer token: every RPC without ``authorization: Bearer <token>`` is UNAUTHENTICATED."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import grpc
import pytest
from conftest import ServedStream
from stream_client import StreamClient
from tool_client import ToolClient, build_request, result_of

from snakepit_bridge.auth import TOKEN_ENV, BearerToken, BearerTokenInterceptor, resolve_token
from snakepit_bridge.server import SERVICE_NAME, BridgeServer
from snakepit_bridge.telemetry.stream import TelemetryStream

Serve = Callable[..., ServedStream]
OpenToolClient = Callable[[int], ToolClient]

TOKEN = "tok-Zq8vXw3-secret-4f1c9e"
WRONG = "tok-Zq8vXw3-secret-4f1c9f"

NO_TOKEN: tuple[tuple[str, str], ...] = ()
CASES = {
    "none": NO_TOKEN,
    "wrong": (("authorization", f"Bearer {WRONG}"),),
    "no-scheme": (("authorization", TOKEN),),
    "basic-scheme": (("authorization", f"Basic {TOKEN}"),),
    "prefix": (("authorization", f"Bearer {TOKEN[:-1]}"),),
    "suffix": (("authorization", f"Bearer {TOKEN}x"),),
    "twice": (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
    "other-header": (("x-token", f"Bearer {TOKEN}"),),
}
RIGHT = (("authorization", f"Bearer {TOKEN}"),)


def _assert_token_not_in(error: grpc.RpcError) -> None:
    texts = [
        str(error),
        repr(error),
        str(error.details()),
        str(error.debug_error_string()),  # type: ignore[attr-defined]
        repr(error.trailing_metadata()),
        repr(error.initial_metadata()),  # type: ignore[attr-defined]
    ]
    for text in texts:
        assert TOKEN not in text
        assert TOKEN[4:16] not in text


@pytest.mark.parametrize("headers", CASES.values(), ids=CASES.keys())
def test_execute_tool_without_the_right_token_is_unauthenticated(
    serve: Serve, tool_client: OpenToolClient, headers: tuple[tuple[str, str], ...]
) -> None:
    served = serve(token=TOKEN)
    client = tool_client(served.port)
    with pytest.raises(grpc.RpcError) as caught:
        client.send(build_request("telemetry_demo"), headers)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing or invalid bearer token"
    _assert_token_not_in(error)


def test_execute_tool_with_the_right_token_runs(serve: Serve, tool_client: OpenToolClient) -> None:
    served = serve(token=TOKEN)
    response = tool_client(served.port).send(build_request("telemetry_demo"), RIGHT)
    assert result_of(response) is not None
    lower_scheme = (("authorization", f"bearer {TOKEN}"),)
    assert tool_client(served.port).send(build_request("telemetry_demo"), lower_scheme).success


@pytest.mark.parametrize("headers", CASES.values(), ids=CASES.keys())
def test_stream_telemetry_without_the_right_token_is_unauthenticated(
    serve: Serve, headers: tuple[tuple[str, str], ...]
) -> None:
    served = serve(token=TOKEN)
    served.stream.emit("tool.result_size", {"bytes": 1})
    client = StreamClient(served.port, metadata=headers)
    try:
        assert client.wait_end() == grpc.StatusCode.UNAUTHENTICATED
        assert client.error is not None
        assert client.error.details() == "missing or invalid bearer token"
        _assert_token_not_in(client.error)
        assert served.stream.stats().sent == 0  # nothing was streamed to it
        assert served.server.service.controls_received == 0
    finally:
        client.close()


def test_stream_telemetry_with_the_right_token_streams(serve: Serve) -> None:
    served = serve(token=TOKEN)
    served.stream.emit("tool.result_size", {"bytes": 1})
    client = StreamClient(served.port, metadata=RIGHT)
    try:
        client.wait_headers()
        assert list(client.next_event().event_parts) == ["tool", "result_size"]
    finally:
        client.close()


def test_unknown_methods_are_unauthenticated_too(serve: Serve, tool_client: OpenToolClient) -> None:
    served = serve(token=TOKEN)
    channel = tool_client(served.port).channel
    future_method: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{SERVICE_NAME}/SomeFutureMethod"
    )
    with pytest.raises(grpc.RpcError) as caught:
        future_method(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        future_method(b"", timeout=10, metadata=RIGHT)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_without_a_token_every_caller_is_served(serve: Serve, tool_client: OpenToolClient) -> None:
    served = serve(token=None)
    assert not served.server.token_required
    response = tool_client(served.port).send(build_request("telemetry_demo"), CASES["wrong"])
    assert response.success


def test_the_environment_variable_turns_the_check_on(
    monkeypatch: pytest.MonkeyPatch, tool_client: OpenToolClient
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    server = BridgeServer(TelemetryStream(), port=0)  # token not given: read from env
    port = server.start()
    try:
        assert server.token_required
        client = tool_client(port)
        with pytest.raises(grpc.RpcError) as caught:
            client.send(build_request("telemetry_demo"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert client.send(build_request("telemetry_demo"), RIGHT).success
    finally:
        server.stop(grace=0)


def test_an_explicit_none_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert resolve_token(None) is None
    monkeypatch.delenv(TOKEN_ENV)
    assert BridgeServer(TelemetryStream(), port=0).token_required is False


@pytest.mark.parametrize(
    "bad", ["", "has space", "tab\there", "ünïcode", "x" * 4097, "line\nbreak"]
)
def test_invalid_tokens_are_refused_without_showing_them(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError) as caught:
        BearerToken(bad)
    if bad:
        assert bad not in str(caught.value)
    monkeypatch.setenv(TOKEN_ENV, bad)
    with pytest.raises(ValueError, match=TOKEN_ENV) as caught:
        BridgeServer(TelemetryStream(), port=0)
    if bad:
        assert bad not in str(caught.value)


def test_the_token_never_shows_in_reprs() -> None:
    token = BearerToken(TOKEN)
    interceptor = BearerTokenInterceptor(token)
    server = BridgeServer(TelemetryStream(), port=0, token=token)
    for text in (repr(token), str(token), repr(interceptor), repr(server), repr(vars(server))):
        assert TOKEN not in text
    with pytest.raises(TypeError):
        pickle.dumps(token)


def test_accepts_checks_exactly_one_header() -> None:
    token = BearerToken(TOKEN)
    assert token.accepts(RIGHT)
    assert token.accepts((("authorization", f"BEARER {TOKEN}"),))
    assert token.accepts((("authorization", f"Bearer {TOKEN}".encode()),))
    for headers in CASES.values():
        assert not token.accepts(headers)
    assert not token.accepts(None)
