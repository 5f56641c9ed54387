from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest
from stream_client import StreamClient
from tool_client import ToolClient

from snakepit_bridge import telemetry
from snakepit_bridge.server import BridgeServer
from snakepit_bridge.telemetry.backends import TelemetryBackend
from snakepit_bridge.telemetry.stream import TelemetryStream
from snakepit_bridge.tools import ToolRegistry


@dataclass(frozen=True)
class RecordedEvent:
    event: str
    measurements: dict[str, object]
    metadata: dict[str, object] | None
    correlation_id: str | None


@dataclass
class RecordingBackend(TelemetryBackend):
    """Records every emit call as given."""

    events: list[RecordedEvent] = field(default_factory=list)

    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None,
        correlation_id: str | None,
    ) -> None:
        self.events.append(
            RecordedEvent(
                event,
                dict(measurements),
                None if metadata is None else dict(metadata),
                correlation_id,
            )
        )

    def names(self) -> list[str]:
        return [recorded.event for recorded in self.events]


@pytest.fixture(autouse=True)
def _no_backend_leaks() -> Iterator[None]:
    previous = telemetry.set_backend(None)
    assert previous is None, "a test left a telemetry backend installed"
    yield
    telemetry.set_backend(None)


@pytest.fixture
def recorder() -> RecordingBackend:
    backend = RecordingBackend()
    telemetry.set_backend(backend)
    return backend


@dataclass
class ServedStream:
    stream: TelemetryStream
    server: BridgeServer
    port: int


@pytest.fixture
def serve() -> Iterator[Callable[..., ServedStream]]:
    """Start in-process servers on 127.0.0.1 (port 0); stop them after the test."""
    servers: list[BridgeServer] = []

    def start(
        max_buffer: int = 1024,
        honour_control: bool = True,
        tools: ToolRegistry | None = None,
        token: str | None = None,
        **bounds: int,
    ) -> ServedStream:
        """``bounds``: the stream's (``max_buffer_bytes``, ``max_event_bytes``) and the
        server's (``max_batch_events``, ``max_batch_bytes``) keyword arguments."""
        stream_bounds = {
            key: bounds.pop(key) for key in ("max_buffer_bytes", "max_event_bytes") if key in bounds
        }
        stream = TelemetryStream(max_buffer=max_buffer, **stream_bounds)
        # token is explicit (None: no check), whatever SNAKEPIT_WORKER_TOKEN says.
        server = BridgeServer(
            stream, port=0, honour_control=honour_control, tools=tools, token=token, **bounds
        )
        port = server.start()
        servers.append(server)
        return ServedStream(stream, server, port)

    yield start
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def connect() -> Iterator[Callable[[int], StreamClient]]:
    """Open StreamTelemetry calls; close them after the test."""
    clients: list[StreamClient] = []

    def open_client(port: int) -> StreamClient:
        client = StreamClient(port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def connect_batched() -> Iterator[Callable[[int], StreamClient]]:
    """Open StreamTelemetryBatched calls; close them after the test."""
    clients: list[StreamClient] = []

    def open_client(port: int) -> StreamClient:
        client = StreamClient(port, batched=True)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def tool_client() -> Iterator[Callable[[int], ToolClient]]:
    """Open ExecuteTool channels; close them after the test."""
    clients: list[ToolClient] = []

    def open_client(port: int) -> ToolClient:
        client = ToolClient(port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()
