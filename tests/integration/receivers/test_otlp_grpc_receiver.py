"""OTLP/gRPC receiver against the real OpenTelemetry SDK exporters and raw grpc clients."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_helpers import BrokenConsumer, CapturingConsumer, Consumers, GatedConsumer

from sidecar.config import GrpcListenerConfig
from sidecar.errors import StartupError
from sidecar.model import Batch, Signal
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
BAD = "sidecar_receiver_bad_requests_total"
REFUSED = "sidecar_receiver_refused_items_total"
ACCEPTED = "sidecar_receiver_accepted_items_total"


def one_span_request(n: int = 1) -> ExportTraceServiceRequest:
    spans = [
        Span(name=f"s{i}", trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8) for i in range(n)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )


@pytest.fixture
async def channel(grpc_receiver: OtlpGrpcReceiver) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_receiver.bound_port}") as ch:
        yield ch


async def call(channel: grpc.aio.Channel, method: str, body: bytes, **kw: object) -> bytes:
    rpc = channel.unary_unary(method)
    return await rpc(body, timeout=10, **kw)  # type: ignore[no-any-return]


def only_batch(consumer: CapturingConsumer) -> Batch:
    assert len(consumer.batches) == 1
    return consumer.batches[0]


async def test_sdk_spans_arrive_identical(
    grpc_receiver: OtlpGrpcReceiver, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...]
) -> None:
    exporter = OTLPSpanExporter(
        endpoint=f"127.0.0.1:{grpc_receiver.bound_port}",
        insecure=True,
        compression=Compression.Gzip,
        timeout=10,
    )
    try:
        result = await asyncio.to_thread(exporter.export, sdk_spans)
    finally:
        exporter.shutdown()
    assert result is SpanExportResult.SUCCESS

    batch = only_batch(consumers[Signal.TRACES])
    assert batch.items == len(sdk_spans)
    assert batch.message == encode_spans(sdk_spans)

    # and spelled out, so a shared bug in the SDK's encoder and ours cannot hide
    received = {s.name: s for rs in batch.message.resource_spans
                for ss in rs.scope_spans for s in ss.spans}
    resource = {kv.key for kv in batch.message.resource_spans[0].resource.attributes}
    assert {"service.name", "service.version", "host.cpus"} <= resource
    for span in sdk_spans:
        got = received[span.name]
        ctx = span.get_span_context()
        assert ctx is not None
        assert got.trace_id == ctx.trace_id.to_bytes(16, "big")
        assert got.span_id == ctx.span_id.to_bytes(8, "big")
        if span.parent is not None:
            assert got.parent_span_id == span.parent.span_id.to_bytes(8, "big")
        assert {kv.key for kv in got.attributes} == set(span.attributes or {})
        assert [e.name for e in got.events] == [e.name for e in span.events]
        assert len(got.links) == len(span.links)
    root = received["agent.run"]
    attrs = {kv.key: kv.value for kv in root.attributes}
    assert attrs["gen_ai.usage.input_tokens"].int_value == 1234
    assert attrs["temperature"].double_value == 0.25
    assert attrs["stream"].bool_value is True
    assert [v.string_value for v in attrs["tools"].array_value.values] == ["search", "calc"]
    assert root.status.message == "tool failed"
    link = received["consumer"].links[0]
    assert link.trace_id == received["other.trace"].trace_id
    assert link.span_id == received["other.trace"].span_id
    assert link.attributes[0].key == "link.kind"


async def test_sdk_logs_arrive_identical(
    grpc_receiver: OtlpGrpcReceiver, consumers: Consumers, sdk_logs: tuple[ReadableLogRecord, ...]
) -> None:
    exporter = OTLPLogExporter(
        endpoint=f"127.0.0.1:{grpc_receiver.bound_port}", insecure=True, timeout=10
    )
    try:
        result = await asyncio.to_thread(exporter.export, sdk_logs)
    finally:
        exporter.shutdown()
    assert result is LogRecordExportResult.SUCCESS
    batch = only_batch(consumers[Signal.LOGS])
    assert batch.items == 3
    assert batch.message == encode_logs(sdk_logs)
    first = batch.message.resource_logs[0].scope_logs[0].log_records[0]
    ctx = sdk_logs[0].log_record
    assert first.body.string_value == "model call failed"
    assert first.trace_id == (ctx.trace_id or 0).to_bytes(16, "big") != bytes(16)
    assert first.span_id == (ctx.span_id or 0).to_bytes(8, "big")


async def test_gzip_request_and_counters(
    channel: grpc.aio.Channel, consumers: Consumers, metric: Callable[..., float]
) -> None:
    labels = {"receiver": "otlp", "transport": "grpc", "signal": "traces"}
    before = metric(ACCEPTED, **labels)
    reply = await call(channel, TRACES, one_span_request(5).SerializeToString(),
                       compression=grpc.Compression.Gzip)
    assert reply == b""  # an empty ExportTraceServiceResponse
    assert only_batch(consumers[Signal.TRACES]).items == 5
    assert metric(ACCEPTED, **labels) == before + 5


async def test_empty_request_succeeds_without_reaching_the_pipeline(
    channel: grpc.aio.Channel, consumers: Consumers
) -> None:
    assert await call(channel, TRACES, b"") == b""
    assert consumers[Signal.TRACES].batches == []


async def test_malformed_protobuf_is_invalid_argument(
    channel: grpc.aio.Channel, consumers: Consumers, metric: Callable[..., float]
) -> None:
    labels = {"receiver": "otlp", "transport": "grpc", "reason": "malformed"}
    before = metric(BAD, **labels)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, LOGS, b"\x0a\xff\xff\xff")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed OTLP logs protobuf" in (err.value.details() or "")
    assert metric(BAD, **labels) == before + 1
    assert consumers[Signal.LOGS].batches == []
    # still serving
    assert await call(channel, TRACES, one_span_request().SerializeToString()) == b""


async def test_backpressure_is_resource_exhausted_with_retry_info(
    channel: grpc.aio.Channel, consumers: Consumers, metric: Callable[..., float]
) -> None:
    consumers[Signal.TRACES].full_retry_after = 2.5
    labels = {"receiver": "otlp", "transport": "grpc", "signal": "traces",
              "reason": "backpressure"}
    before = metric(REFUSED, **labels)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, TRACES, one_span_request(4).SerializeToString())
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(err.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 3  # rounded up to whole seconds
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == info
    assert metric(REFUSED, **labels) == before + 4


async def test_sdk_exporter_retries_after_backpressure(
    grpc_receiver: OtlpGrpcReceiver, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...]
) -> None:
    consumers[Signal.TRACES].full_retry_after = 0.2  # answered as 1 s, the minimum
    consumers[Signal.TRACES].refusals_left = 1
    exporter = OTLPSpanExporter(
        endpoint=f"127.0.0.1:{grpc_receiver.bound_port}", insecure=True, timeout=10
    )
    try:
        result = await asyncio.to_thread(exporter.export, sdk_spans)
    finally:
        exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    assert consumers[Signal.TRACES].refused == 1
    assert only_batch(consumers[Signal.TRACES]).message == encode_spans(sdk_spans)


async def test_signal_without_pipeline_is_unimplemented(consumers: Consumers) -> None:
    receiver = OtlpGrpcReceiver(
        "otlp",
        GrpcListenerConfig(endpoint="127.0.0.1:0"), {Signal.TRACES: consumers[Signal.TRACES]}
    )
    await receiver.start()
    try:
        assert receiver.describe() == f"otlp/grpc  127.0.0.1:{receiver.bound_port}  traces"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(ch, METRICS, b"")
            assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert "no metrics pipeline" in (err.value.details() or "")
            assert await call(ch, TRACES, b"") == b""
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)


async def test_pipeline_bug_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(endpoint="127.0.0.1:0"),
                                {Signal.TRACES: BrokenConsumer()})
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(ch, TRACES, one_span_request().SerializeToString())
            assert err.value.code() is grpc.StatusCode.INTERNAL
            assert await call(ch, TRACES, b"") == b""  # still serving
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert "pipeline failed on a traces batch" in caplog.text
    assert "processor bug" in caplog.text


async def test_oversize_message_is_refused_by_grpc(
    channel: grpc.aio.Channel, consumers: Consumers
) -> None:
    big = one_span_request(1)
    big.resource_spans[0].scope_spans[0].spans[0].name = "x" * (1024 * 1024 + 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, TRACES, big.SerializeToString())
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # a compressed request that inflates past the limit is refused the same way
    bomb = one_span_request(1)
    bomb.resource_spans[0].scope_spans[0].spans[0].name = "\0" * (8 * 1024 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, TRACES, bomb.SerializeToString(), compression=grpc.Compression.Gzip)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert consumers[Signal.TRACES].batches == []
    assert await call(channel, TRACES, one_span_request().SerializeToString()) == b""


async def test_port_in_use_is_a_startup_error(grpc_receiver: OtlpGrpcReceiver) -> None:
    endpoint = f"127.0.0.1:{grpc_receiver.bound_port}"
    second = OtlpGrpcReceiver("otlp", GrpcListenerConfig(endpoint=endpoint), {})
    with pytest.raises(StartupError) as err:
        await second.start()
    assert str(err.value) == f"receivers.otlp.grpc.endpoint: {endpoint}: address already in use"


async def test_shutdown_finishes_in_flight_rpcs_and_refuses_new_ones() -> None:
    gated = GatedConsumer()
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(endpoint="127.0.0.1:0"),
                                {Signal.TRACES: gated})
    await receiver.start()
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as ch:
        in_flight = asyncio.create_task(call(ch, TRACES, one_span_request().SerializeToString()))
        async with asyncio.timeout(10):
            await gated.entered.wait()
        stopping = asyncio.create_task(receiver.shutdown(loop.time() + 10))
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the RPC in flight
        gated.release.set()
        async with asyncio.timeout(10):
            assert await in_flight == b""
            await stopping
    assert len(gated.batches) == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(ch, TRACES, b"")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_gzip_helper_sanity() -> None:
    # the bomb above relies on zeros compressing ~1000:1 so the wire stays under the limit
    assert len(gzip.compress(b"\0" * (8 * 1024 * 1024))) < 1024 * 1024
