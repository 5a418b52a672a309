"""The real OpenTelemetry SDK -> the real daemon -> the Datadog, Honeycomb and Jaeger fake
intakes at once: every span reaches each vendor, mapped (Datadog) or as sent (OTLP), and
Datadog's logs carry the trace and span ids of the spans they were written in."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from sidecar.model import Signal
from tests.helpers.daemon import DaemonProcess
from tests.helpers.intakes import DatadogIntake, honeycomb_sink, jaeger_sink

SPANS = 12
HONEYCOMB_KEY = "hcaik_e2e"


def make_spans(provider: TracerProvider, logger: logging.Logger) -> None:
    tracer = provider.get_tracer("e2e.vendors", "1.0")
    with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as root:
        root.set_attributes({"http.request.method": "POST", "http.route": "/chat"})
        for i in range(SPANS - 1):
            with tracer.start_as_current_span(f"chat gpt-4o #{i}", kind=SpanKind.CLIENT) as s:
                s.set_attributes({"gen_ai.request.model": "gpt-4o",
                                  "gen_ai.usage.input_tokens": 10 + i})
                logger.warning("model call %d", i)
                if i == 3:
                    s.set_status(Status(StatusCode.ERROR, "provider 503"))


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
async def test_sdk_spans_reach_every_vendor(short_tmp: Path) -> None:
    async with (DatadogIntake("dd-e2e") as datadog, honeycomb_sink(HONEYCOMB_KEY) as honeycomb,
                jaeger_sink() as jaeger):
        daemon = DaemonProcess(short_tmp, exporters={
            "dd": {"type": "datadog", "api_key": "dd-e2e", "endpoint": datadog.endpoint,
                   "env": "e2e"},
            "hc": {"type": "honeycomb", "api_key": HONEYCOMB_KEY, "protocol": "http",
                   "endpoint": honeycomb.http_endpoint},
            "jaeger": {"type": "jaeger", "endpoint": jaeger.grpc_endpoint},
        }, pipelines={"traces": ["dd", "hc", "jaeger"], "logs": ["dd"], "metrics": []})
        await daemon.start()
        try:
            memory = InMemorySpanExporter()
            resource = Resource.create({
                "service.name": "feedback-app", "deployment.environment.name": "prod"})
            provider = TracerProvider(resource=resource)
            log_provider = LoggerProvider(resource=resource)
            log_provider.add_log_record_processor(BatchLogRecordProcessor(
                OTLPLogExporter(endpoint=daemon.grpc_endpoint, insecure=True)))
            logger = logging.getLogger("e2e.vendors")
            logger.propagate = False
            logger.addHandler(LoggingHandler(logger_provider=log_provider))
            provider.add_span_processor(SimpleSpanProcessor(memory))
            provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=True)))
            await asyncio.to_thread(make_spans, provider, logger)
            assert await asyncio.to_thread(provider.force_flush, 10_000)
            await asyncio.to_thread(provider.shutdown)
            await asyncio.to_thread(log_provider.force_flush, 10_000)
            await asyncio.to_thread(log_provider.shutdown)
            await datadog.wait_for_spans(SPANS, timeout=20)
            await honeycomb.wait_for_items(Signal.TRACES, SPANS, timeout=20)
            await jaeger.wait_for_items(Signal.TRACES, SPANS, timeout=20)
            await datadog.wait_for_logs(SPANS - 1, timeout=20)
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err

    sent = {s.context.span_id: s for s in memory.get_finished_spans()}
    dd = {s.spanID: s for s in datadog.spans()}
    assert set(dd) == set(sent)
    for span_id, span in sent.items():
        got = dd[span_id]
        assert got.traceID == span.context.trace_id & (2**64 - 1)
        assert got.meta["otel.trace_id"] == f"{span.context.trace_id:032x}"
        assert got.service == "feedback-app"
        assert got.meta["env"] == "prod"
        assert got.start == span.start_time
        assert got.error == (1 if span.status.status_code is StatusCode.ERROR else 0)
    root = next(s for s in dd.values() if s.parentID == 0)
    assert (root.name, root.resource, root.type) == ("http.server.request", "POST /chat", "web")
    assert root.metrics["_top_level"] == 1.0
    assert {r.headers["x-honeycomb-team"] for r in honeycomb.accepted} == {HONEYCOMB_KEY}
    assert {s.span_id for s in jaeger.spans()} == {i.to_bytes(8, "big") for i in sent}
    logs = datadog.logs()
    assert sorted(e["message"] for e in logs) == sorted(f"model call {i}"
                                                         for i in range(SPANS - 1))
    for entry in logs:
        span = dd[int(entry["dd.span_id"])]
        assert int(entry["dd.trace_id"]) == span.traceID
        assert entry["service"] == span.service == "feedback-app"
        assert entry["status"] == "warning"
        assert entry["ddtags"] == "env:prod"
        assert sent[span.spanID].name == f"chat gpt-4o #{entry['message'].split()[-1]}"
