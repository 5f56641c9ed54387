"""Snakepit's tracing helpers: ``setup_tracing``, ``get_tracer``, ``otel_span``.

Without the OpenTelemetry SDK they keep correlation ids and log records working; with it
they make real spans. The SDK's tracer provider can be set once per process, so that case
runs in a child process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakepit_bridge import telemetry
from snakepit_bridge.telemetry import tracing


@pytest.fixture
def fresh_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process whose tracing is not set up yet; restores logging's record factory."""
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(tracing, "_state", tracing._TracingState())
    yield
    logging.setLogRecordFactory(factory)


def test_without_the_sdk_ids_and_log_records_still_work(
    fresh_tracing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_optional_module", lambda name: None)
    assert telemetry.get_tracer() is None
    telemetry.setup_tracing()
    telemetry.setup_tracing()  # once per process
    assert telemetry.get_tracer() is None

    metadata = [("X-Snakepit-Correlation-Id", "cid-1")]  # header names compare case-blind
    with telemetry.otel_span("call", context_metadata=metadata) as span:
        assert span is None
        assert telemetry.get_correlation_id() == "cid-1"
    assert telemetry.get_correlation_id() is None
    with telemetry.otel_span("call") as span:
        generated = telemetry.get_correlation_id()
        assert generated is not None and len(generated) == 32
    token = telemetry.set_correlation_id("outer")
    try:
        with telemetry.otel_span("call"):
            assert telemetry.get_correlation_id() == "outer"
    finally:
        telemetry.reset_correlation_id(token)

    # Every record carries correlation_id, so a %(correlation_id)s format never fails.
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(correlation_id)s %(message)s"))
    logger = logging.getLogger("snakepit_tracing_test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("none")
        with telemetry.otel_span("call", context_metadata=[("x-snakepit-correlation-id", "c9")]):
            logger.warning("inside")
    finally:
        logger.removeHandler(handler)
    assert output.getvalue().splitlines() == ["- none", "c9 inside"]


def test_an_exception_in_the_block_restores_the_correlation_id(fresh_tracing: None) -> None:
    with pytest.raises(ValueError), telemetry.otel_span("call", context_metadata=[]):
        assert telemetry.get_correlation_id() is not None
        raise ValueError("boom")
    assert telemetry.get_correlation_id() is None


CHILD = """
import json, sys
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry import trace
from snakepit_bridge import telemetry

telemetry.setup_tracing()
tracer = telemetry.get_tracer()
assert tracer is not None
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
with telemetry.otel_span(
    "predict",
    context_metadata=[("x-snakepit-correlation-id", "cid-7")],
    attributes={"tool": "predict", "batch": 3},
) as span:
    assert span is not None and telemetry.get_correlation_id() == "cid-7"
(finished,) = exporter.get_finished_spans()
print(json.dumps({
    "name": finished.name,
    "attributes": dict(finished.attributes),
    "resource": {k: v for k, v in finished.resource.attributes.items() if k.startswith("service.")},
}))
"""


def test_with_the_sdk_spans_carry_the_correlation_id_and_the_resource() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(tracing.__file__).resolve().parents[2]),
        "SNAKEPIT_SERVICE_NAME": "adapter-under-test",
        "SNAKEPIT_INSTANCE_ID": "worker-3",
    }
    env.pop("SNAKEPIT_OTEL_CONSOLE", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Nothing but our line on stdout: the console exporter is off unless asked for.
    (line,) = done.stdout.splitlines()
    span = json.loads(line)
    assert span["name"] == "predict"
    assert span["attributes"] == {
        "tool": "predict",
        "batch": 3,
        "snakepit.correlation_id": "cid-7",
    }
    assert span["resource"] == {
        "service.name": "adapter-under-test",
        "service.namespace": "snakepit",
        "service.instance.id": "worker-3",
    }
