"""Python side of snakepit_telemetry: a worker's telemetry, streamed to Elixir over gRPC.

* :mod:`snakepit_bridge.telemetry`: ``emit``, ``span``, correlation context, backends.
* :mod:`snakepit_bridge.server`: the ``BridgeService/StreamTelemetry`` gRPC server.
* :mod:`snakepit_bridge.worker`: ``python -m snakepit_bridge.worker`` entry point.
"""

__version__ = "0.1.0"
