"""ExecuteTool end to end over a real gRPC channel on 127.0.0.1, server in-process."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from conftest import RecordingBackend, ServedStream
from stream_client import StreamClient, wait_until
from tool_client import ToolClient, build_request, error_of, raw_any, result_of

from snakepit_bridge import telemetry
from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import DEFAULT_MAX_TOOL_CALLS, BridgeServer, ToolService
from snakepit_bridge.telemetry import TelemetryStream
from snakepit_bridge.tools import ToolRegistry, telemetry_demo

Serve = Callable[..., ServedStream]
OpenToolClient = Callable[[int], ToolClient]
Connect = Callable[[int], StreamClient]

CID_HEADER = "x-snakepit-correlation-id"


def _registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool
    def echo(**params: object) -> dict[str, object]:
        return {"params": params}

    @registry.tool("binary.describe")
    def describe(blob: bytes, label: str) -> dict[str, object]:
        assert isinstance(blob, bytes)
        return {"label": label, "length": len(blob), "hex": blob.hex()}

    @registry.tool
    def boom(message: str = "kaboom", **_context: object) -> None:
        raise RuntimeError(message)

    @registry.tool
    def exits() -> None:
        raise SystemExit(3)

    @registry.tool
    def not_json() -> object:
        return {"when": object()}

    @registry.tool
    def nan() -> float:
        return float("nan")

    @registry.tool
    def emits() -> str | None:
        telemetry.emit("tool.result_size", {"bytes": 1}, {"tool": "emits", "from": "tool"})

        def in_thread() -> None:
            telemetry.emit("tool.result_size", {"bytes": 2}, {"from": "copied-thread"})

        copied = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,))
        copied.start()
        copied.join()

        plain = threading.Thread(
            target=telemetry.emit,
            args=("tool.result_size", {"bytes": 3}, {"from": "plain-thread"}),
        )
        plain.start()
        plain.join()

        async def main() -> None:
            async def task() -> None:
                telemetry.emit("tool.result_size", {"bytes": 4}, {"from": "asyncio-task"})

            await asyncio.gather(asyncio.create_task(task()))

        asyncio.run(main())
        return telemetry.get_correlation_id()

    @registry.tool
    async def async_tool(x: int) -> dict[str, object]:
        await asyncio.sleep(0)
        telemetry.emit("tool.result_size", {"bytes": x}, {"from": "async-tool"})
        return {"x": x * 2, "cid": telemetry.get_correlation_id()}

    registry.register("telemetry_demo", telemetry_demo)
    return registry


@pytest.fixture
def client(serve: Serve, tool_client: OpenToolClient) -> ToolClient:
    served = serve(tools=_registry())
    return tool_client(served.port)


PARAMS: dict[str, object] = {
    "text": "héllo wörld ✓ 🐍 日本語",
    "count": 42,
    "big": 2**100 + 7,
    "negative_big": -(3**80),
    "ratio": 0.125,
    "flag": True,
    "nothing": None,
    "items": [1, "two", 3.5, [4, [5, {"six": 6}]], None, False],
    "nested": {"a": {"b": {"c": [1, 2, {"d": "ünïcode"}]}}, "ключ": "значение"},
    "empty_map": {},
    "empty_list": [],
}


def test_json_params_of_every_kind_reach_the_tool_and_come_back(client: ToolClient) -> None:
    response = client.call("echo", PARAMS)
    assert result_of(response) == {"params": PARAMS}
    assert response.execution_time_ms >= 0
    assert response.error_message == ""


def test_big_integers_stay_exact_on_the_wire(client: ToolClient) -> None:
    response = client.call("echo", {"big": 2**100 + 7})
    assert str(2**100 + 7).encode() in response.result.value


def test_result_is_utf8_json_text_in_any_value(client: ToolClient) -> None:
    response = client.call("echo", {"s": "✓"})
    assert response.result.type_url == "type.googleapis.com/google.protobuf.StringValue"
    assert response.result.value.decode("utf-8") == '{"params":{"s":"✓"}}'


def test_any_type_url_is_decoded_as_json(client: ToolClient) -> None:
    response = client.call(
        "echo", raw_params={"n": raw_any(b"[1,2]", "type.googleapis.com/whatever.Else")}
    )
    assert result_of(response) == {"params": {"n": [1, 2]}}


def test_binary_params_are_passed_as_bytes(client: ToolClient) -> None:
    blob = bytes(range(256)) + b"\x00\xff"
    response = client.call("binary.describe", {"label": "raw"}, binary={"blob": blob})
    assert result_of(response) == {"label": "raw", "length": len(blob), "hex": blob.hex()}


def test_async_tool_runs_to_completion(client: ToolClient) -> None:
    response = client.call("async_tool", {"x": 21}, headers=((CID_HEADER, "cid-async"),))
    assert result_of(response) == {"x": 42, "cid": "cid-async"}


@pytest.mark.parametrize(
    ("headers", "metadata", "expected"),
    [
        (((CID_HEADER, "cid-header"),), {}, "cid-header"),
        ((), {"correlation_id": "cid-metadata"}, "cid-metadata"),
        (((CID_HEADER, "cid-header"),), {"correlation_id": "cid-metadata"}, "cid-header"),
        ((), {}, None),
        (((CID_HEADER, ""),), {"correlation_id": ""}, None),
    ],
    ids=["header", "request-metadata", "header-wins", "absent", "empty-is-absent"],
)
def test_correlation_id_reaches_every_event_the_tool_emits(
    client: ToolClient,
    recorder: RecordingBackend,
    headers: tuple[tuple[str, str], ...],
    metadata: dict[str, str],
    expected: str | None,
) -> None:
    response = client.call("emits", headers=headers, metadata=metadata)
    assert result_of(response) == expected
    if expected is None:
        assert "correlation_id" not in response.metadata
    else:
        assert dict(response.metadata) == {"correlation_id": expected}
    by_origin = {
        str(event.metadata["from"]): event.correlation_id
        for event in recorder.events
        if event.metadata
    }
    assert by_origin == {
        "tool": expected,
        "copied-thread": expected,
        "asyncio-task": expected,
        # A thread started without a copied context starts empty (documented in context.py).
        "plain-thread": None,
    }


def test_events_from_the_tool_arrive_on_the_stream_with_the_id(
    serve: Serve, tool_client: OpenToolClient, connect: Connect
) -> None:
    served = serve(tools=_registry())
    telemetry.set_backend(telemetry.GrpcBackend(served.stream))
    stream = connect(served.port)
    stream.wait_headers()
    response = tool_client(served.port).call("emits", headers=((CID_HEADER, "cid-stream"),))
    assert result_of(response) == "cid-stream"
    events = stream.events(4)
    assert {dict(e.metadata)["from"]: e.correlation_id for e in events} == {
        "tool": "cid-stream",
        "copied-thread": "cid-stream",
        "plain-thread": "",
        "asyncio-task": "cid-stream",
    }


def test_raising_tool_gives_an_error_payload_and_the_server_keeps_serving(
    client: ToolClient,
) -> None:
    response = client.call(
        "boom",
        {"message": "it broke", "library": "numpy", "function": "boom"},
        headers=((CID_HEADER, "cid-boom"),),
        session_id="s-9",
    )
    error = error_of(response)
    assert error["type"] == "RuntimeError"
    assert error["message"] == "it broke"
    assert error["context"] == {
        "tool_name": "boom",
        "session_id": "s-9",
        "library": "numpy",
        "function": "boom",
    }
    stacktrace = error["stacktrace"]
    assert isinstance(stacktrace, list)
    assert error["traceback"] == "".join(stacktrace)
    assert "RuntimeError: it broke" in str(error["traceback"])
    assert "in boom" in str(error["traceback"])
    assert dict(response.metadata) == {"correlation_id": "cid-boom"}
    assert response.execution_time_ms >= 0
    # The same server, and the same channel, go on serving.
    assert result_of(client.call("echo", {"n": 1})) == {"params": {"n": 1}}


def test_tool_raising_system_exit_fails_its_call_only(client: ToolClient) -> None:
    error = error_of(client.call("exits"))
    assert error["type"] == "SystemExit"
    assert error["message"] == "3"
    assert result_of(client.call("echo")) == {"params": {}}


def test_unknown_tool(client: ToolClient) -> None:
    error = error_of(client.call("no_such_tool", {"x": 1}))
    assert error["type"] == "UnknownToolError"
    assert error["message"] == "no tool named 'no_such_tool'"
    assert error["context"] == {"tool_name": "no_such_tool", "session_id": "session-1"}


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"NaN", b"[1, Infinity]", b"\xff\xfe", b"1 2", b"[" * 100_000],
    ids=["syntax", "empty", "nan", "infinity", "not-utf8", "two-values", "too-deep"],
)
def test_invalid_json_param_is_an_error_response(client: ToolClient, raw: bytes) -> None:
    response = client.call("echo", {"fine": 1}, raw_params={"bad": raw_any(raw)})
    error = error_of(response)
    assert error["type"] == "InvalidParameterError"
    assert str(error["message"]).startswith("parameter 'bad' is not valid JSON")
    assert result_of(client.call("echo", {"n": 2})) == {"params": {"n": 2}}


def test_a_name_given_as_json_and_binary_is_an_error(client: ToolClient) -> None:
    response = client.call("binary.describe", {"blob": "x", "label": "l"}, binary={"blob": b"y"})
    error = error_of(response)
    assert error["type"] == "InvalidParameterError"
    assert "both as JSON and as binary" in str(error["message"])


@pytest.mark.parametrize(
    ("tool", "fragment"),
    [("not_json", "not JSON serializable"), ("nan", "Out of range float values")],
)
def test_result_without_json_form_is_an_error(client: ToolClient, tool: str, fragment: str) -> None:
    error = error_of(client.call(tool))
    assert error["type"] == "ResultEncodingError"
    assert fragment in str(error["message"])


def test_wrong_arguments_are_the_tools_type_error(client: ToolClient) -> None:
    error = error_of(client.call("binary.describe", {"label": "only"}))
    assert error["type"] == "TypeError"
    assert "blob" in str(error["message"])


def test_telemetry_demo_over_the_stream(
    serve: Serve, tool_client: OpenToolClient, connect: Connect
) -> None:
    served = serve(tools=_registry())
    telemetry.set_backend(telemetry.GrpcBackend(served.stream))
    stream = connect(served.port)
    stream.wait_headers()
    response = tool_client(served.port).call(
        "telemetry_demo",
        {"operation": "resize", "delay_ms": 100},
        headers=((CID_HEADER, "cid-demo"),),
    )
    result = result_of(response)
    assert isinstance(result, dict)
    assert result["operation"] == "resize"
    assert result["delay_ms"] == 100
    assert result["correlation_id"] == "cid-demo"
    assert response.execution_time_ms >= 100

    start, stop, size = stream.events(3)
    assert list(start.event_parts) == ["tool", "execution", "start"]
    assert list(stop.event_parts) == ["tool", "execution", "stop"]
    assert list(size.event_parts) == ["tool", "result_size"]
    for event in (start, stop, size):
        assert event.correlation_id == "cid-demo"
    assert dict(start.metadata) == {"tool": "telemetry_demo", "operation": "resize"}
    assert start.measurements["system_time"].int_value > 0
    assert stop.measurements["duration"].int_value >= 100_000_000
    assert size.measurements["bytes"].int_value == len(response.result.value)
    assert dict(size.metadata) == {"tool": "telemetry_demo", "python_type": "dict", "size": "5"}


def test_telemetry_demo_rejects_a_bad_delay_before_any_event(
    client: ToolClient, recorder: RecordingBackend
) -> None:
    error = error_of(client.call("telemetry_demo", {"delay_ms": -1}))
    assert error["type"] == "ValueError"
    assert recorder.names() == []
    error = error_of(client.call("telemetry_demo", {"delay_ms": "100"}))
    assert error["type"] == "TypeError"


def test_telemetry_demo_is_in_the_default_registry(
    serve: Serve, tool_client: OpenToolClient, recorder: RecordingBackend
) -> None:
    served = serve()  # no tools= : the default registry
    response = tool_client(served.port).call("telemetry_demo")
    result = result_of(response)
    assert isinstance(result, dict)
    elapsed = result.pop("elapsed_ms")
    assert isinstance(elapsed, int) and elapsed >= 0
    assert result == {
        "tool": "telemetry_demo",
        "operation": "demo",
        "delay_ms": 0,
        "correlation_id": None,
    }
    assert recorder.names() == ["tool.execution.start", "tool.execution.stop", "tool.result_size"]


def test_execute_tool_request_round_trips_every_field() -> None:
    request = build_request(
        "t", {"a": 1}, binary={"b": b"\x00"}, metadata={"correlation_id": "c"}, session_id="s"
    )
    request.stream = True
    again = pb.ExecuteToolRequest.FromString(request.SerializeToString())
    assert again == request
    assert json.loads(again.parameters["a"].value) == 1


def test_undecodable_request_bytes_are_a_status_not_a_crash(
    serve: Serve, tool_client: OpenToolClient
) -> None:
    served = serve(tools=_registry())
    client = tool_client(served.port)
    raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = client.channel.unary_unary(
        "/snakepit.bridge.BridgeService/ExecuteTool",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert result_of(client.call("echo")) == {"params": {}}


def test_tools_on_every_tool_thread_leave_the_telemetry_stream_served(serve: Serve) -> None:
    # Tools run on threads of their own, at most DEFAULT_MAX_TOOL_CALLS at a time; the
    # telemetry calls run on the server's event loop, so a stream opened while every tool
    # thread is blocked still gets its events, and a call beyond the bound is refused.
    release = threading.Event()
    started: list[int] = []
    registry = ToolRegistry()

    @registry.tool
    def wait() -> str:
        started.append(1)
        release.wait(30)
        return "done"

    @registry.tool
    def quick() -> str:
        return "quick"

    served = serve(tools=registry)
    tools = ToolClient(served.port)
    slots = DEFAULT_MAX_TOOL_CALLS
    results: list[pb.ExecuteToolResponse] = []
    running = [
        threading.Thread(target=lambda: results.append(tools.call("wait"))) for _ in range(slots)
    ]
    try:
        for thread in running:
            thread.start()
        wait_until(lambda: len(started) == slots)
        # One more is refused at once, not queued behind them.
        with pytest.raises(grpc.RpcError) as refused:
            tools.call("quick")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"runs {slots} tool calls at a time" in (refused.value.details() or "")
        # A stream opens, and its events flow, while the tools run.
        stream = StreamClient(served.port, batched=True)
        try:
            served.stream.emit("tool.execution.stop", {"duration": 1}, {"tool": "t"})
            assert len(stream.next_batch(timeout=5).events) == 1
        finally:
            stream.close()
    finally:
        release.set()
        for thread in running:
            thread.join()
    assert [result_of(response) for response in results] == ["done"] * slots
    # Their slots are free again.
    assert result_of(tools.call("quick")) == "quick"
    tools.close()


def test_max_tool_calls_must_be_a_positive_integer() -> None:
    stream = TelemetryStream()
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_tool_calls"):
            BridgeServer(stream, max_tool_calls=bad, token=None)  # type: ignore[arg-type]
    BridgeServer(stream, max_tool_calls=1, token=None).stop(grace=0)


def test_stop_does_not_wait_for_a_tool_that_runs_on(serve: Serve) -> None:
    # The server stops within its grace (and a margin) while a tool is still blocked; the
    # tool's call ends with a status, and the tool finishes on its thread afterwards.
    release = threading.Event()
    finished = threading.Event()
    registry = ToolRegistry()

    @registry.tool
    def blocked() -> str:
        release.wait(30)
        finished.set()
        return "late"

    served = serve(tools=registry)
    tools = ToolClient(served.port)
    errors: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            tools.call("blocked")
        except grpc.RpcError as error:
            errors.append(error.code())

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: served.server.tool_service.running_calls == 1)
    started = time.monotonic()
    served.server.stop(grace=0.2)
    assert time.monotonic() - started < 3.0
    assert served.server.wait_for_termination(0)
    caller.join(10)
    assert len(errors) == 1
    assert errors[0] in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
    assert not finished.is_set()
    release.set()
    assert finished.wait(10)
    wait_until(lambda: served.server.tool_service.running_calls == 0)
    tools.close()


class _Context:
    """The parts of a ``grpc.aio`` servicer context ``execute_tool`` uses."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def test_a_call_cancelled_before_its_tool_starts_frees_its_slot() -> None:
    # The tool thread is busy (here with something else), so the call waits in the pool's
    # queue; its client goes away then. The tool must not run, and the slot must come back.
    ran = threading.Event()
    registry = ToolRegistry()

    @registry.tool
    def mark() -> str:
        ran.set()
        return "ran"

    service = ToolService(registry, max_tool_calls=1)
    busy = threading.Event()
    service._executor.submit(busy.wait, 10)  # occupy the only thread

    async def cancelled_call() -> None:
        call = asyncio.create_task(
            service.execute_tool(build_request("mark"), _Context())  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.05)
        assert service.running_calls == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    try:
        asyncio.run(cancelled_call())
        wait_until(lambda: service.running_calls == 0)
    finally:
        busy.set()
        service.shutdown()
    time.sleep(0.1)
    assert not ran.is_set()
