"""Type stub of the native extension (``native/snakepit_bridge_wire``), present only when built."""

from collections import deque
from collections.abc import Callable, Mapping

from snakepit_bridge.telemetry.consumer import StreamConsumer
from snakepit_bridge.telemetry.policy import ControlPolicy

DROP_REASONS: list[str]

def encode_record(
    measurement_value: Callable[[object], object], record: tuple[object, ...], /
) -> bytes: ...

class StreamProducer:
    def __init__(
        self,
        buffer: deque[object],
        max_buffer: int,
        max_buffer_bytes: int,
        max_event_bytes: int,
        measurement_value: Callable[[object], object],
        current_correlation_id: Callable[[], str | None],
        clock_ns: Callable[[], int] | None = None,
        random: Callable[[], float] | None = None,
    ) -> None: ...
    def emit(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None: ...
    def __call__(
        self,
        event_name: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None: ...
    def set_policy(self, policy: ControlPolicy) -> None: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def set_consumer(self, consumer: StreamConsumer | None) -> None: ...
    def admit(self, message: bytes) -> bool: ...
    def put_back(self, message: bytes) -> None: ...
    def release(self, charge: int) -> None: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def enqueued(self) -> int: ...
    def count(self, reason: str) -> None: ...
    def dropped_counts(self) -> dict[str, int]: ...
    @property
    def dropped_total(self) -> int: ...

class EmitDispatch:
    def __init__(self) -> None: ...
    def set_target(self, emitter: Callable[..., None] | None) -> None: ...
    def emit(
        self,
        event: str,
        measurements: Mapping[str, object],
        metadata: Mapping[str, object] | None = None,
        correlation_id: str | None = None,
    ) -> None: ...
    @property
    def backend_errors(self) -> int: ...
