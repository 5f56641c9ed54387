"""The ``ExecuteTool`` handler of the worker's server.

Tools run on a pool of threads of their own, never on the server's event loop, so the
telemetry calls go on while they run; at most ``max_tool_calls`` run at a time.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeAlias

import grpc
import grpc.aio

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.rpc import parse_or_none
from snakepit_bridge.tools.execution import correlation_id_of, run_tool_call
from snakepit_bridge.tools.registry import ToolRegistry

__all__ = ["DEFAULT_MAX_TOOL_CALLS", "ToolContext", "ToolService"]

DEFAULT_MAX_TOOL_CALLS: Final = 6
"""``ExecuteTool`` calls run at a time, each on a thread of its own; a call beyond that is
refused at once with ``RESOURCE_EXHAUSTED``. Telemetry calls run on the event loop and
never wait for a tool thread."""

ToolContext: TypeAlias = "grpc.aio.ServicerContext[pb.ExecuteToolRequest, pb.ExecuteToolResponse]"
"""The servicer context of an ``ExecuteTool`` call."""


class ToolService:
    """The ``ExecuteTool`` handler over one :class:`ToolRegistry`.

    Tools run on a pool of ``max_tool_calls`` threads, never on the event loop, so the
    telemetry calls go on while they run. At most ``max_tool_calls`` calls run at a time; the
    rest are refused with ``RESOURCE_EXHAUSTED``. A call whose client goes away frees its
    slot only when its tool returns.
    """

    def __init__(self, registry: ToolRegistry, max_tool_calls: int) -> None:
        """Serve the tools of ``registry`` (looked up at each call).

        Raises:
            ValueError: if ``max_tool_calls`` is not an integer >= 1.
        """
        max_calls = max_tool_calls
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
            raise ValueError(f"max_tool_calls must be an integer >= 1, got {max_calls!r}")
        self._registry = registry
        self._max_calls = max_calls
        self._running = 0
        self._running_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=max_calls, thread_name_prefix="snakepit-tool"
        )

    @property
    def registry(self) -> ToolRegistry:
        """The tools served."""
        return self._registry

    @property
    def max_calls(self) -> int:
        """Most tool calls run at a time."""
        return self._max_calls

    @property
    def running_calls(self) -> int:
        """Tool calls whose tool has not returned yet (their clients may be gone)."""
        return self._running

    def _take_slot(self) -> bool:
        with self._running_lock:
            if self._running >= self._max_calls:
                return False
            self._running += 1
            return True

    def _free_slot(self) -> None:
        with self._running_lock:
            self._running -= 1

    async def execute_tool(
        self, request: pb.ExecuteToolRequest | None, context: ToolContext
    ) -> pb.ExecuteToolResponse:
        """Run one tool call; failures are responses with ``success: false``, never raised.

        A call beyond the bound ends with ``RESOURCE_EXHAUSTED`` before it runs; a request
        that is not an ``ExecuteToolRequest`` ends with ``INTERNAL``, as gRPC ends a call
        whose request it cannot parse.
        """
        if request is None:
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "the request could not be parsed as snakepit.bridge.ExecuteToolRequest",
            )
        if not self._take_slot():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the worker runs {self._max_calls} tool calls at a time; try again later",
            )
        correlation_id = correlation_id_of(request, context.invocation_metadata())
        try:
            running = self._executor.submit(run_tool_call, self._registry, request, correlation_id)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._free_slot()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the worker is stopping")
        # Freed when the tool returns, or when the call is cancelled before a thread took it
        # (then the tool never runs).
        running.add_done_callback(self._free_slot_when_done)
        return await asyncio.wrap_future(running)

    def _free_slot_when_done(self, _running: Future[pb.ExecuteToolResponse]) -> None:
        self._free_slot()

    def shutdown(self) -> None:
        """Refuse new calls; running tools finish on their threads."""
        self._executor.shutdown(wait=False)

    def method_handler(
        self,
    ) -> grpc.RpcMethodHandler[pb.ExecuteToolRequest | None, pb.ExecuteToolResponse]:
        """Return the ``ExecuteTool`` method handler."""
        return grpc.unary_unary_rpc_method_handler(
            self.execute_tool,
            request_deserializer=parse_or_none(pb.ExecuteToolRequest.FromString),
            response_serializer=pb.ExecuteToolResponse.SerializeToString,
        )
