"""Tools a worker runs for ``BridgeService/ExecuteTool``.

Write plain functions and register them with ``@tool`` (or :func:`register_tool`); the
worker loads modules of them with ``--tools MODULE``. Calling convention (see
:mod:`snakepit_bridge.tools.registry`): ``fn(**params)``, JSON parameters decoded,
binary parameters as ``bytes``; the return value must have a JSON form. Failures come
back as the JSON error object of :mod:`snakepit_bridge.tools.errors`.

* :mod:`~snakepit_bridge.tools.registry`: the registry and ``@tool``;
* :mod:`~snakepit_bridge.tools.json_any`: JSON values in ``google.protobuf.Any``;
* :mod:`~snakepit_bridge.tools.execution`: one call, from request to response;
* :mod:`~snakepit_bridge.tools.errors`: the error object;
* :mod:`~snakepit_bridge.tools.builtin`: ``telemetry_demo``.
"""

from snakepit_bridge.tools.builtin import telemetry_demo
from snakepit_bridge.tools.errors import (
    InvalidParameterError,
    ResultEncodingError,
    ToolCallError,
    UnknownToolError,
)
from snakepit_bridge.tools.execution import run_tool_call
from snakepit_bridge.tools.registry import (
    DEFAULT_REGISTRY,
    ToolFunction,
    ToolImportError,
    ToolRegistry,
    get_tool,
    import_tool_modules,
    register_tool,
    tool,
    tool_names,
    unregister_tool,
)

__all__ = [
    "DEFAULT_REGISTRY",
    "InvalidParameterError",
    "ResultEncodingError",
    "ToolCallError",
    "ToolFunction",
    "ToolImportError",
    "ToolRegistry",
    "UnknownToolError",
    "get_tool",
    "import_tool_modules",
    "register_tool",
    "run_tool_call",
    "telemetry_demo",
    "tool",
    "tool_names",
    "unregister_tool",
]
