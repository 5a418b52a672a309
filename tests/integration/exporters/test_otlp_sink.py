"""The OtlpSink test peer answers like an OTLP server, checked with a plain aiohttp client
and a generated-stub gRPC client (not with our exporter)."""

from __future__ import annotations

import aiohttp
import grpc
import grpc.aio
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sidecar.exporthelper.compression import gzip_compress
from sidecar.exporthelper.retry import retry_info_delay
from sidecar.model import Signal
from sidecar.testing import OtlpSink, traces_batch

PROTO = {"Content-Type": "application/x-protobuf"}


async def test_http_answers(sink: OtlpSink) -> None:
    body = traces_batch(3).payload
    url = f"{sink.http_endpoint}/v1/traces"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=PROTO) as ok:
            assert ok.status == 200
            assert ExportTraceServiceResponse.FromString(await ok.read()) == \
                ExportTraceServiceResponse()
        async with session.post(url, data=gzip_compress(body),
                                headers={**PROTO, "Content-Encoding": "gzip"}) as zipped:
            assert zipped.status == 200
        async with session.post(url, data=b"\x1f\x8bnot gzip",
                                headers={**PROTO, "Content-Encoding": "gzip"}) as bad:
            assert bad.status == 400
        async with session.post(url, data=b"{}",
                                headers={"Content-Type": "application/json"}) as json_body:
            assert json_body.status == 415
        sink.fail_next(1, http_status=429, retry_after=7)
        async with session.post(url, data=body, headers=PROTO) as throttled:
            assert throttled.status == 429
            assert throttled.headers["Retry-After"] == "7"
        sink.partial_next(1, rejected=2, message="two bad")
        async with session.post(url, data=body, headers=PROTO) as partial:
            response = ExportTraceServiceResponse.FromString(await partial.read())
            assert response.partial_success.rejected_spans == 2
    assert [r.outcome for r in sink.requests] == ["ok", "ok", "failed", "partial"]
    assert [r.compressed for r in sink.requests] == [False, True, False, False]
    assert sink.items(Signal.TRACES) == 9  # partial success still counts as received
    assert len(sink.spans()) == 9


async def test_grpc_answers(sink: OtlpSink) -> None:
    request = ExportTraceServiceRequest.FromString(traces_batch(2).payload)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sink.grpc_port}") as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        assert await stub.Export(request) == ExportTraceServiceResponse()
        sink.fail_next(1, grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=1.5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Export(request)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_info_delay(info.value.trailing_metadata()) == 1.5
    await sink.wait_for_items(Signal.TRACES, 2, timeout=5)
    assert [r.outcome for r in sink.requests] == ["ok", "failed"]
    assert sink.requests[0].message == request
