"""The real OpenTelemetry Python SDK exports to the real daemon (a subprocess) over gRPC and
HTTP; the daemon forwards to a real OTLP server. Everything must arrive identical."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess
from tests.helpers.otlp import py_attrs

SPANS = 30


def make_spans(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("e2e.agents", "2.1.0")
    with tracer.start_as_current_span("invoke_agent triage") as root:
        root.set_attribute("gen_ai.agent.name", "triage")
        linked = root.get_span_context()
        for i in range(SPANS - 1):
            with tracer.start_as_current_span(
                f"chat gpt-4o #{i}", kind=SpanKind.CLIENT,
                links=[Link(linked, {"link.reason": "retry-of", "link.n": i})],
            ) as span:
                span.set_attributes({
                    "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 100 + i,
                    "gen_ai.request.temperature": 0.25, "gen_ai.stream": i % 2 == 0,
                    "tags": ("a", "b", str(i)), "ints": (1, 2, 3),
                })
                span.add_event("gen_ai.choice", {"index": i, "finish_reason": "stop"})
                if i % 7 == 0:
                    span.set_status(Status(StatusCode.ERROR, "upstream 500"))


def index_received(sink: OtlpSink) -> dict[bytes, tuple[Any, dict[str, Any], Any]]:
    out = {}
    for request in (r.message for r in sink.accepted if r.signal is Signal.TRACES):
        for rs in request.resource_spans:
            resource = py_attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out[span.span_id] = (span, resource, ss.scope)
    return out


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_spans_arrive_identical(short_tmp: Path, transport: str) -> None:
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint}},
            # the cost processor adds attributes to the model calls (tests/e2e/
            # test_daemon_llm_cost.py); here the spans must pass through untouched
            extra={"processors": {"cost": {"enabled": False}}})
        await daemon.start()
        try:
            memory = InMemorySpanExporter()
            resource = Resource.create({"service.name": "feedback-app", "tenant.id": "t-7"})
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(SimpleSpanProcessor(memory))
            exporter = (GrpcSpans(endpoint=daemon.grpc_endpoint, insecure=True)
                        if transport == "grpc"
                        else HttpSpans(endpoint=f"{daemon.http_endpoint}/v1/traces"))
            provider.add_span_processor(BatchSpanProcessor(exporter))
            await asyncio.to_thread(make_spans, provider)
            assert await asyncio.to_thread(provider.force_flush, 10_000)
            await asyncio.to_thread(provider.shutdown)

            await sink.wait_for_items(Signal.TRACES, SPANS, timeout=20)
            received = index_received(sink)
            sent = memory.get_finished_spans()
            assert len(sent) == SPANS
            assert len(received) == SPANS
            for span in sent:
                got, got_resource, scope = received[span.context.span_id.to_bytes(8, "big")]
                assert got.trace_id == span.context.trace_id.to_bytes(16, "big")
                assert got.name == span.name
                assert got.kind == span.kind.value + 1  # proto enum has UNSPECIFIED at 0
                assert got.start_time_unix_nano == span.start_time
                assert got.end_time_unix_nano == span.end_time
                assert py_attrs(got.attributes) == dict(span.attributes or {})
                assert got_resource == dict(span.resource.attributes)
                assert (scope.name, scope.version) == ("e2e.agents", "2.1.0")
                assert [(e.name, e.time_unix_nano, py_attrs(e.attributes)) for e in got.events] \
                    == [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events]
                assert [(lk.trace_id, lk.span_id, py_attrs(lk.attributes)) for lk in got.links] \
                    == [(lk.context.trace_id.to_bytes(16, "big"),
                         lk.context.span_id.to_bytes(8, "big"), dict(lk.attributes or {}))
                        for lk in span.links]
                assert got.status.code == span.status.status_code.value
                if span.parent is not None:
                    assert got.parent_span_id == span.parent.span_id.to_bytes(8, "big")

            accepted = await daemon.metric("sidecar_receiver_accepted_items_total",
                                           signal="traces", transport=transport)
            sent_items = await daemon.metric("sidecar_exporter_sent_items_total",
                                             exporter="upstream", signal="traces")
            assert accepted == SPANS
            assert sent_items == SPANS
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_logs_arrive_identical(short_tmp: Path, transport: str) -> None:
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint}})
        await daemon.start()
        try:
            provider = LoggerProvider(resource=Resource.create({"service.name": "agent-logs"}))
            exporter = (GrpcLogs(endpoint=daemon.grpc_endpoint, insecure=True)
                        if transport == "grpc"
                        else HttpLogs(endpoint=f"{daemon.http_endpoint}/v1/logs"))
            provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
            logger = logging.getLogger(f"e2e.{transport}")
            logger.propagate = False
            logger.addHandler(LoggingHandler(logger_provider=provider))
            logger.setLevel(logging.INFO)
            for i in range(25):
                logger.warning("agent %s answered", i, extra={"agent": "triage", "n": i})
            await asyncio.to_thread(provider.force_flush, 10_000)
            await asyncio.to_thread(provider.shutdown)

            await sink.wait_for_items(Signal.LOGS, 25, timeout=20)
            bodies = []
            for request in (r.message for r in sink.accepted if r.signal is Signal.LOGS):
                for rl in request.resource_logs:
                    assert py_attrs(rl.resource.attributes)["service.name"] == "agent-logs"
                    for sl in rl.scope_logs:
                        for record in sl.log_records:
                            bodies.append(record.body.string_value)
                            attrs = py_attrs(record.attributes)
                            assert attrs["agent"] == "triage"
                            assert record.severity_text == "WARN"
                            assert record.severity_number == 13
                            assert bodies[-1] == f"agent {attrs['n']} answered"
            assert sorted(bodies) == sorted(f"agent {i} answered" for i in range(25))
            assert await daemon.metric("sidecar_exporter_sent_items_total",
                                       exporter="upstream", signal="logs") == 25
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err
