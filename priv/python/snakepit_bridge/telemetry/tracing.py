"""OpenTelemetry tracing in a worker, as Snakepit's ``setup_tracing`` and friends.

``setup_tracing``, ``get_tracer`` and ``otel_span`` have Snakepit's names, signatures and
environment variables.

OpenTelemetry is optional. Without its SDK (``pip install 'snakepit-bridge[tracing]'``),
:func:`setup_tracing` only makes every log record carry ``correlation_id``,
:func:`get_tracer` returns None, and :func:`otel_span` sets the correlation id for its block
and yields None. With the SDK, :func:`setup_tracing` installs a tracer provider whose
resource has ``service.name`` (``SNAKEPIT_SERVICE_NAME``, default
``snakepit.python.bridge``), ``service.namespace`` ``snakepit`` and ``service.instance.id``
(``SNAKEPIT_INSTANCE_ID``, default a random hex id), exporting spans over OTLP/HTTP to
``SNAKEPIT_OTEL_ENDPOINT`` when it is set (and the OTLP exporter package is installed).

One difference from Snakepit: spans are printed to stdout (the console exporter) only when
``SNAKEPIT_OTEL_CONSOLE`` is ``1``, ``true`` or ``yes``; Snakepit prints them unless it is
set to something else. A worker's stdout carries its readiness line and is logged by the
Elixir ``Worker``, so it stays quiet unless asked.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from snakepit_bridge.telemetry.context import (
    CORRELATION_HEADER,
    NO_CORRELATION_ID_IN_LOGS,
    get_correlation_id,
    new_correlation_id,
    reset_correlation_id,
    set_correlation_id,
)

__all__ = [
    "CONSOLE_ENV",
    "INSTANCE_ID_ENV",
    "OTLP_ENDPOINT_ENV",
    "SERVICE_NAME_ENV",
    "TRACER_NAME",
    "get_tracer",
    "otel_span",
    "setup_tracing",
]

SERVICE_NAME_ENV: Final = "SNAKEPIT_SERVICE_NAME"
DEFAULT_SERVICE_NAME: Final = "snakepit.python.bridge"
INSTANCE_ID_ENV: Final = "SNAKEPIT_INSTANCE_ID"
OTLP_ENDPOINT_ENV: Final = "SNAKEPIT_OTEL_ENDPOINT"
CONSOLE_ENV: Final = "SNAKEPIT_OTEL_CONSOLE"
TRACER_NAME: Final = "snakepit.bridge"
CORRELATION_ATTRIBUTE: Final = "snakepit.correlation_id"

_TRUE: Final = frozenset({"1", "true", "yes"})


class _TracingState:
    """What :func:`setup_tracing` set up, once per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = False
        self.tracer: Any = None
        self.log_records_annotated = False


_state = _TracingState()


def setup_tracing() -> None:
    """Set up tracing once per process (later calls do nothing); never raises for a missing SDK.

    Every log record created afterwards carries ``correlation_id`` (the current one, or
    ``"-"``), and with the OpenTelemetry SDK installed a tracer provider is installed (see
    the module doc).
    """
    with _state.lock:
        if _state.ready:
            return
        _state.tracer = _install_tracer_provider()
        _state.ready = True
        _annotate_log_records()


def get_tracer() -> Any | None:
    """Return the worker's tracer, or None before :func:`setup_tracing` or without the SDK."""
    return _state.tracer if _state.ready else None


@contextmanager
def otel_span(
    name: str,
    *,
    context_metadata: Iterable[tuple[str, str]] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Run a block under one correlation id, in an OpenTelemetry span when tracing is set up.

    The id is the ``x-snakepit-correlation-id`` entry of ``context_metadata`` (a gRPC call's
    invocation metadata), else the current one, else a new one; it is the context's
    correlation id inside the block (events emitted there carry it) and the span's
    ``snakepit.correlation_id`` attribute, beside ``attributes``. Yields the span, or None
    without a tracer.
    """
    correlation_id = (
        _correlation_id_in(context_metadata) or get_correlation_id() or new_correlation_id()
    )
    token = set_correlation_id(correlation_id)
    try:
        tracer = get_tracer()
        if tracer is None:
            yield None
            return
        with tracer.start_as_current_span(name) as span:
            for key, value in (attributes or {}).items():
                span.set_attribute(key, value)
            span.set_attribute(CORRELATION_ATTRIBUTE, correlation_id)
            yield span
    finally:
        reset_correlation_id(token)


def _correlation_id_in(metadata: Iterable[tuple[str, str]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == CORRELATION_HEADER:
            return value
    return None


def _optional_module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _install_tracer_provider() -> Any | None:
    """Install an SDK tracer provider and return its tracer; None without the SDK."""
    trace = _optional_module("opentelemetry.trace")
    sdk_trace = _optional_module("opentelemetry.sdk.trace")
    resources = _optional_module("opentelemetry.sdk.resources")
    export = _optional_module("opentelemetry.sdk.trace.export")
    if trace is None or sdk_trace is None or resources is None or export is None:
        return None
    resource = resources.Resource.create(
        {
            "service.name": os.environ.get(SERVICE_NAME_ENV, DEFAULT_SERVICE_NAME),
            "service.namespace": "snakepit",
            "service.instance.id": os.environ.get(INSTANCE_ID_ENV, uuid.uuid4().hex),
        }
    )
    provider = sdk_trace.TracerProvider(resource=resource)
    exporter = _exporter(export)
    if exporter is not None:
        provider.add_span_processor(export.BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(TRACER_NAME)


def _exporter(export: Any) -> Any | None:
    endpoint = os.environ.get(OTLP_ENDPOINT_ENV)
    if endpoint:
        otlp = _optional_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        if otlp is not None:
            return otlp.OTLPSpanExporter(endpoint=endpoint)
    if os.environ.get(CONSOLE_ENV, "").strip().lower() in _TRUE:
        return export.ConsoleSpanExporter()
    return None


def _annotate_log_records() -> None:
    """Make every new log record carry ``correlation_id`` (kept when it already has one).

    As with Snakepit's, a logging call that passes ``extra={"correlation_id": ...}`` then
    raises ``KeyError`` (``logging`` refuses to overwrite an attribute the record factory
    set): set the id with ``set_correlation_id`` instead, or use
    :func:`~snakepit_bridge.telemetry.correlation_filter` on a handler rather than
    :func:`setup_tracing`.
    """
    if _state.log_records_annotated:
        return
    previous = logging.getLogRecordFactory()

    def record_with_correlation_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not getattr(record, "correlation_id", None):
            record.correlation_id = get_correlation_id(NO_CORRELATION_ID_IN_LOGS)
        return record

    logging.setLogRecordFactory(record_with_correlation_id)
    _state.log_records_annotated = True
