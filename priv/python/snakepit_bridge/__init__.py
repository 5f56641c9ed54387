"""Python side of snakepit_telemetry: a worker's telemetry, streamed to Elixir over gRPC.

* :mod:`snakepit_bridge.telemetry`: ``emit``, ``span``, correlation context, backends.
* :mod:`snakepit_bridge.tools`: ``@tool`` functions the worker runs for ``ExecuteTool``.
* :mod:`snakepit_bridge.auth`: the bearer token every call must carry when one is set.
* :mod:`snakepit_bridge.server`: the ``BridgeService`` gRPC server (``StreamTelemetry``,
  ``ExecuteTool``).
* :mod:`snakepit_bridge.worker`: ``python -m snakepit_bridge.worker`` entry point.
"""

__version__ = "0.1.0"
