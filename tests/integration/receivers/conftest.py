"""Real receivers on loopback port 0, feeding a capturing consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from receiver_helpers import CapturingConsumer, Consumers

from sidecar.config import GrpcListenerConfig, HttpListenerConfig
from sidecar.model import Signal
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver


@pytest.fixture
def consumers() -> Consumers:
    return {signal: CapturingConsumer() for signal in Signal}


@pytest.fixture
async def grpc_receiver(consumers: Consumers) -> AsyncIterator[OtlpGrpcReceiver]:
    receiver = OtlpGrpcReceiver(
        "otlp",
        GrpcListenerConfig(endpoint="127.0.0.1:0", max_recv_msg_size=1024 * 1024), consumers
    )
    await receiver.start()
    yield receiver
    await receiver.shutdown(asyncio.get_running_loop().time() + 1.0)


@pytest.fixture
async def http_receiver(consumers: Consumers) -> AsyncIterator[OtlpHttpReceiver]:
    receiver = OtlpHttpReceiver(
        "otlp", HttpListenerConfig(endpoint="127.0.0.1:0", max_body_size=1024 * 1024), consumers
    )
    await receiver.start()
    yield receiver
    await receiver.shutdown(asyncio.get_running_loop().time() + 1.0)


def sample_value(name: str, **labels: str) -> float:
    from sidecar.telemetry.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metric() -> Callable[..., float]:
    return sample_value


# --- telemetry made by the real OpenTelemetry SDK ----------------------------------------------

RESOURCE_ATTRS = {"service.name": "checkout", "service.version": "1.2.3", "host.cpus": 8}


@pytest.fixture
def sdk_spans() -> tuple[ReadableSpan, ...]:
    """Three spans: a root with typed attributes, events and an error status; a client
    child; and a span linked (with link attributes) to a span of another trace."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(RESOURCE_ATTRS))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.receivers", "0.1", attributes={"scope.attr": "s"})
    with tracer.start_as_current_span(
        "agent.run",
        kind=SpanKind.SERVER,
        attributes={
            "gen_ai.system": "openai",
            "gen_ai.usage.input_tokens": 1234,
            "temperature": 0.25,
            "stream": True,
            "tools": ["search", "calc"],
        },
    ) as root:
        root.add_event("prompt", {"gen_ai.prompt": "hello", "index": 0})
        root.add_event("retry", {"attempt": 2})
        with tracer.start_as_current_span("llm.call", kind=SpanKind.CLIENT) as child:
            child.set_attribute("gen_ai.request.model", "gpt-4o")
        root.set_status(Status(StatusCode.ERROR, "tool failed"))
    other = tracer.start_span("other.trace")
    other.end()
    with tracer.start_as_current_span(
        "consumer",
        context=otel_trace.set_span_in_context(otel_trace.INVALID_SPAN),
        links=[Link(other.get_span_context(), {"link.kind": "follows"})],
    ):
        pass
    provider.shutdown()
    spans = memory.get_finished_spans()
    assert len(spans) == 4
    return spans


@pytest.fixture
def sdk_logs() -> tuple[ReadableLogRecord, ...]:
    """Log records with bodies of several types, attributes, severities and trace context."""
    memory = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=Resource.create(RESOURCE_ATTRS))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("tests.receivers", "0.1")
    tracer = TracerProvider().get_tracer("tests.receivers")
    with tracer.start_as_current_span("work"):
        logger.emit(
            body="model call failed",
            severity_number=SeverityNumber.ERROR,
            severity_text="ERROR",
            attributes={"gen_ai.request.model": "gpt-4o", "retries": 3},
        )
    logger.emit(body={"event": "tool", "args": [1, 2]}, severity_number=SeverityNumber.INFO)
    logger.emit(body=b"\x00\x01binary", event_name="blob.saved")
    provider.shutdown()
    logs = memory.get_finished_logs()
    assert len(logs) == 3
    return logs
