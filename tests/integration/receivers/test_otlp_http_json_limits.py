"""One hostile OTLP/JSON request must not cost other clients their data.

The real daemon (a subprocess) batches everything that arrives within `max_delay` into one
request by concatenating serialized bytes. A JSON request whose attributes nest deeper than
protobuf decoding allows used to be accepted, and the merged request it ended up in was then
unreadable upstream, so the spans of every other client in that batch were lost although
they had been acknowledged. The receiver must refuse such a request (400) instead."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.errors import BadInputError
from sidecar.model import Signal, parse_request
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess

SPANS_PER_CLIENT = 10
ROUNDS = 3
# protobuf decoding (upb) refuses messages nested more than 100 levels below the request;
# the span attribute value starts at level 6, each arrayValue adds two levels
NESTING = 60


def sdk_spans(service: str, count: int) -> tuple[ReadableSpan, ...]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.json-limits")
    for i in range(count):
        with tracer.start_as_current_span(f"chat #{i}", attributes={"n": i, "m": "gpt-4o"}):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def nested_value(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "bottom"}
    for _ in range(levels):
        value = {"arrayValue": {"values": [value]}}
    return value


HOSTILE = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
    "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
    "name": "hostile", "attributes": [{"key": "deep", "value": nested_value(NESTING)}],
}]}]}]})


def delivered_span_ids(sink: OtlpSink) -> set[int]:
    """Span ids in the requests upstream could read (an unreadable one is lost to it)."""
    ids = set()
    for request in sink.requests:
        try:
            message = parse_request(Signal.TRACES, request.body)
        except BadInputError:
            continue
        assert isinstance(message, ExportTraceServiceRequest)
        ids.update(int.from_bytes(span.span_id, "big") for rs in message.resource_spans
                   for ss in rs.scope_spans for span in ss.spans)
    return ids


async def export(exporter: SpanExporter, spans: tuple[ReadableSpan, ...]) -> SpanExportResult:
    return await asyncio.to_thread(exporter.export, spans)


async def test_hostile_nested_json_is_refused_and_other_clients_spans_arrive(
    short_tmp: Path,
) -> None:
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={"upstream": {
            "type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
            # one window wide enough that everything sent below lands in one merged request
            "batch": {"max_delay": "2s"}}})
        await daemon.start()
        grpc_client = GrpcSpans(endpoint=daemon.grpc_endpoint, insecure=True)
        http_client = HttpSpans(endpoint=f"{daemon.http_endpoint}/v1/traces")
        try:
            acknowledged: set[int] = set()
            statuses: list[int] = []
            async with aiohttp.ClientSession() as session:
                for round_ in range(ROUNDS):
                    from_grpc = sdk_spans(f"grpc-client-{round_}", SPANS_PER_CLIENT)
                    from_http = sdk_spans(f"http-client-{round_}", SPANS_PER_CLIENT)

                    async def hostile() -> int:
                        async with session.post(
                            f"{daemon.http_endpoint}/v1/traces", data=HOSTILE,
                            headers={"Content-Type": "application/json"},
                        ) as response:
                            await response.read()
                            return response.status

                    grpc_result, status, http_result = await asyncio.gather(
                        export(grpc_client, from_grpc), hostile(), export(http_client, from_http))
                    statuses.append(status)
                    for result, spans in ((grpc_result, from_grpc), (http_result, from_http)):
                        if result is SpanExportResult.SUCCESS:
                            acknowledged.update(s.context.span_id for s in spans)

            assert len(acknowledged) == 2 * ROUNDS * SPANS_PER_CLIENT
            with contextlib.suppress(TimeoutError):
                await sink.wait_for_items(Signal.TRACES, len(acknowledged), timeout=15)
            received = delivered_span_ids(sink)
            lost = len(acknowledged - received)
            assert received == acknowledged, f"{lost} acknowledged spans did not arrive"
            assert statuses == [400] * ROUNDS
            assert await daemon.metric("sidecar_receiver_bad_requests_total",
                                       transport="http", reason="malformed") == ROUNDS
        finally:
            grpc_client.shutdown()
            http_client.shutdown()
            code, _, err = await daemon.stop()
        assert code == 0, err
