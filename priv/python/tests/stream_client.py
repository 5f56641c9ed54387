"""A small Python StreamTelemetry(Batched) client for the tests (the NIF is the real client)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from snakepit_bridge.proto import snakepit_bridge_pb2 as pb
from snakepit_bridge.server import STREAM_TELEMETRY_BATCHED_PATH, STREAM_TELEMETRY_PATH
from snakepit_bridge.telemetry.stream import BufferEntry, serialize_entry

WAIT_SECONDS = 5.0


def _serialize_control(control: pb.TelemetryControl | bytes) -> bytes:
    return control if isinstance(control, bytes) else control.SerializeToString()


def _keep_bytes(raw: bytes) -> bytes:
    return raw


class StreamEnded:
    """Marker put on the message queue when the response stream ends."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        self.code = code


class StreamClient:
    """Opens one StreamTelemetry call (or StreamTelemetryBatched with ``batched``); collects
    raw response messages on a thread."""

    def __init__(
        self,
        port: int,
        metadata: tuple[tuple[str, str], ...] | None = None,
        *,
        batched: bool = False,
    ) -> None:
        self.batched = batched
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        method: grpc.StreamStreamMultiCallable[pb.TelemetryControl | bytes, bytes] = (
            self.channel.stream_stream(
                STREAM_TELEMETRY_BATCHED_PATH if batched else STREAM_TELEMETRY_PATH,
                request_serializer=_serialize_control,
                response_deserializer=_keep_bytes,  # tests decode (or not) themselves
            )
        )
        self._controls: queue.Queue[pb.TelemetryControl | bytes | None] = queue.Queue()
        self.messages: queue.Queue[bytes | StreamEnded] = queue.Queue()
        self.headers: tuple[tuple[str, str], ...] | None = None
        self.headers_received = threading.Event()
        self.error: grpc.RpcError | None = None
        self._pending: list[pb.TelemetryEvent] = []
        self.call = method(self._requests(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[pb.TelemetryControl | bytes]:
        while True:
            control = self._controls.get()
            if control is None:
                return
            yield control

    def _read(self) -> None:
        code: grpc.StatusCode | None = None
        try:
            metadata = self.call.initial_metadata()
            self.headers = tuple((key, str(value)) for key, value in metadata)
            self.headers_received.set()
            for message in self.call:
                self.messages.put(message)
            code = self.call.code()
        except grpc.RpcError as error:
            self.error = error
            code = error.code()
        finally:
            self.headers_received.set()
            self.messages.put(StreamEnded(code))

    def send(self, control: pb.TelemetryControl) -> None:
        """Send one control message."""
        self._controls.put(control)

    def send_raw(self, message: bytes) -> None:
        """Send ``message`` as one request message, whatever its bytes."""
        self._controls.put(message)

    def wait_headers(self, timeout: float = WAIT_SECONDS) -> tuple[tuple[str, str], ...]:
        """Return the response headers, failing if they do not arrive in time."""
        assert self.headers_received.wait(timeout), "no response headers"
        assert self.headers is not None, "stream ended before headers"
        return self.headers

    def next_raw(self, timeout: float = WAIT_SECONDS) -> bytes:
        """Return the next response message as bytes."""
        item = self.messages.get(timeout=timeout)
        assert isinstance(item, bytes), f"stream ended ({item.code}) instead of a message"
        return item

    def next_batch(self, timeout: float = WAIT_SECONDS) -> pb.TelemetryEventBatch:
        """Return the next response message decoded as a TelemetryEventBatch."""
        return pb.TelemetryEventBatch.FromString(self.next_raw(timeout))

    def next_event(self, timeout: float = WAIT_SECONDS) -> pb.TelemetryEvent:
        """Return the next event: the next message, or the next one of a batch.

        On a batched call a batch's events are queued and handed out one by one; use
        :meth:`next_batch` to see the batches themselves.
        """
        if not self.batched:
            return pb.TelemetryEvent.FromString(self.next_raw(timeout))
        if not self._pending:
            self._pending.extend(self.next_batch(timeout).events)
            assert self._pending, "an empty batch"
        return self._pending.pop(0)

    def events(self, count: int, timeout: float = WAIT_SECONDS) -> list[pb.TelemetryEvent]:
        """Return the next ``count`` events."""
        return [self.next_event(timeout) for _ in range(count)]

    def assert_no_message(self, within: float = 0.2) -> None:
        """Fail if a message (or the end of the stream) arrives within ``within`` seconds."""
        try:
            item = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected {item!r}")

    def wait_end(self, timeout: float = WAIT_SECONDS) -> grpc.StatusCode | None:
        """Skip remaining messages until the stream ends; return its status code."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(item, StreamEnded):
                return item.code

    def close(self) -> None:
        """Half-close, cancel and close the channel."""
        self._controls.put(None)
        self.call.cancel()
        self.channel.close()
        self._reader.join(WAIT_SECONDS)


def decode(message: pb.TelemetryEvent | BufferEntry) -> pb.TelemetryEvent:
    """Return a buffered entry or a received message as a TelemetryEvent."""
    if isinstance(message, pb.TelemetryEvent):
        return message
    return pb.TelemetryEvent.FromString(serialize_entry(message))


def toggle(enabled: bool) -> pb.TelemetryControl:
    """Build a toggle control message."""
    return pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=enabled))


def sampling(rate: float, *patterns: str) -> pb.TelemetryControl:
    """Build a sampling control message."""
    return pb.TelemetryControl(
        sampling=pb.TelemetrySamplingUpdate(sampling_rate=rate, event_patterns=patterns)
    )


def event_filter(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> pb.TelemetryControl:
    """Build a filter control message."""
    return pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=allow, deny=deny))


def wait_until(condition: Callable[[], object], timeout: float = WAIT_SECONDS) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)
