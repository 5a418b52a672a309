"""OTLP/HTTP receiver against the real OpenTelemetry SDK exporters and a raw aiohttp client."""

from __future__ import annotations

import asyncio
import gzip
import io
import zlib
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_helpers import BrokenConsumer, Consumers, GatedConsumer

from sidecar.config import HttpListenerConfig
from sidecar.errors import StartupError
from sidecar.model import Signal
from sidecar.otlp_json import request_to_json_bytes
from sidecar.receivers.otlp_http import OtlpHttpReceiver

PROTO = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
BAD = "sidecar_receiver_bad_requests_total"
REFUSED = "sidecar_receiver_refused_items_total"
LIMIT = 1024 * 1024  # the http_receiver fixture's max_body_size

TRACE_ID_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_ID_HEX = "eee19b7ec3c1b174"
PARENT_ID_HEX = "eee19b7ec3c1b173"
LINKED_SPAN_HEX = "0102030405060708"
# In the style of opentelemetry-proto's examples/trace.json: hex ids, integer enums,
# int64 as strings, lowerCamelCase keys.
SPEC_STYLE_JSON = {
    "resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
            "scope": {"name": "my.library", "version": "1.0.0",
                      "attributes": [{"key": "my.scope.attribute",
                                      "value": {"stringValue": "some scope attribute"}}]},
            "spans": [{
                "traceId": TRACE_ID_HEX,
                "spanId": SPAN_ID_HEX,
                "parentSpanId": PARENT_ID_HEX,
                "name": "I'm a server span",
                "startTimeUnixNano": "1544712660000000000",
                "endTimeUnixNano": "1544712661000000000",
                "kind": 2,
                "attributes": [
                    {"key": "my.span.attr", "value": {"stringValue": "some value"}},
                    {"key": "count", "value": {"intValue": "42"}},
                    {"key": "ratio", "value": {"doubleValue": 0.5}},
                ],
                "events": [{"timeUnixNano": "1544712660500000000", "name": "checkpoint",
                            "attributes": [{"key": "n", "value": {"intValue": 1}}]}],
                "links": [{"traceId": TRACE_ID_HEX, "spanId": LINKED_SPAN_HEX,
                           "attributes": [{"key": "why", "value": {"stringValue": "retry"}}]}],
                "status": {"code": 2, "message": "boom"},
            }],
        }],
    }]
}


@pytest.fixture
async def client(http_receiver: OtlpHttpReceiver) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{http_receiver.bound_port}",
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        yield session


async def post(
    client: aiohttp.ClientSession, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    # BytesIO: aiohttp warns about large raw bytes bodies; it still sends Content-Length
    async with client.post(path, data=io.BytesIO(body), headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def request(n: int = 1, name: str = "s") -> ExportTraceServiceRequest:
    spans = [Span(name=f"{name}{i}", trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8)
             for i in range(n)]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )


def bad(metric: Callable[..., float], reason: str) -> float:
    return metric(BAD, receiver="otlp", transport="http", reason=reason)


# --- real SDK exporters -------------------------------------------------------------------------


async def test_sdk_spans_over_http_protobuf_gzip(
    http_receiver: OtlpHttpReceiver, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...]
) -> None:
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{http_receiver.bound_port}/v1/traces",
        compression=Compression.Gzip,
        timeout=10,
    )
    try:
        result = await asyncio.to_thread(exporter.export, sdk_spans)
    finally:
        exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    [batch] = consumers[Signal.TRACES].batches
    assert batch.items == 4
    assert batch.message == encode_spans(sdk_spans)
    names = {s.name for rs in batch.message.resource_spans for ss in rs.scope_spans
             for s in ss.spans}
    assert names == {"agent.run", "llm.call", "other.trace", "consumer"}


async def test_sdk_logs_over_http(
    http_receiver: OtlpHttpReceiver, consumers: Consumers, sdk_logs: tuple[ReadableLogRecord, ...]
) -> None:
    exporter = OTLPLogExporter(
        endpoint=f"http://127.0.0.1:{http_receiver.bound_port}/v1/logs", timeout=10
    )
    try:
        result = await asyncio.to_thread(exporter.export, sdk_logs)
    finally:
        exporter.shutdown()
    assert result is LogRecordExportResult.SUCCESS
    [batch] = consumers[Signal.LOGS].batches
    assert batch.message == encode_logs(sdk_logs)
    records = batch.message.resource_logs[0].scope_logs[0].log_records
    assert records[2].body.bytes_value == b"\x00\x01binary"
    assert records[2].event_name == "blob.saved"


# --- JSON -----------------------------------------------------------------------------------


async def test_json_and_protobuf_bodies_decode_to_equal_messages(
    client: aiohttp.ClientSession, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...]
) -> None:
    sdk_request = encode_spans(sdk_spans)
    for body, headers in [
        (sdk_request.SerializeToString(), PROTO),
        (request_to_json_bytes(Signal.TRACES, sdk_request), JSON),
    ]:
        status, resp_headers, reply = await post(client, "/v1/traces", body, headers)
        assert status == 200
        assert resp_headers["Content-Type"] == headers["Content-Type"]
    via_proto, via_json = consumers[Signal.TRACES].batches
    assert via_json.message == via_proto.message == sdk_request
    assert orjson.loads(reply) == {}  # an empty ExportTraceServiceResponse, as JSON


async def test_spec_style_json_carries_hex_ids(
    client: aiohttp.ClientSession, consumers: Consumers
) -> None:
    status, _, _ = await post(client, "/v1/traces", orjson.dumps(SPEC_STYLE_JSON), JSON)
    assert status == 200
    [batch] = consumers[Signal.TRACES].batches
    span = batch.message.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE_ID_HEX
    assert span.span_id.hex() == SPAN_ID_HEX
    assert span.parent_span_id.hex() == PARENT_ID_HEX
    assert span.links[0].span_id.hex() == LINKED_SPAN_HEX
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.attributes[1].value.int_value == 42
    assert span.events[0].attributes[0].value.int_value == 1
    # the same request as protobuf is the same message
    status, _, _ = await post(client, "/v1/traces", batch.message.SerializeToString(), PROTO)
    assert status == 200
    assert consumers[Signal.TRACES].batches[1].message == batch.message


async def test_json_span_with_bad_id_is_a_partial_success(
    client: aiohttp.ClientSession, consumers: Consumers, metric: Callable[..., float]
) -> None:
    body = orjson.loads(orjson.dumps(SPEC_STYLE_JSON))
    spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append(dict(spans[0], traceId="abc", name="bad length"))
    spans.append(dict(spans[0], name="bad link", links=[{"traceId": "zz" * 16, "spanId": ""}]))
    labels = {"receiver": "otlp", "transport": "http", "signal": "traces", "reason": "bad_input"}
    before = metric(REFUSED, **labels)

    status, _, reply = await post(client, "/v1/traces", orjson.dumps(body), JSON)
    assert status == 200
    partial = orjson.loads(reply)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2
    assert "traceId 'abc' is not 32 hex digits" in partial["errorMessage"]
    [batch] = consumers[Signal.TRACES].batches
    assert batch.items == 1
    assert metric(REFUSED, **labels) == before + 2


# --- compression and limits -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress),
     ("gzip", lambda b: gzip.compress(b[:10]) + gzip.compress(b[10:]))],  # two gzip members
    ids=["gzip", "deflate", "gzip-multi-member"],
)
async def test_compressed_bodies(
    client: aiohttp.ClientSession,
    consumers: Consumers,
    encoding: str,
    compress: Callable[[bytes], bytes],
) -> None:
    body = request(3).SerializeToString()
    headers = {**PROTO, "Content-Encoding": encoding}
    status, _, _ = await post(client, "/v1/traces", compress(body), headers)
    assert status == 200
    assert consumers[Signal.TRACES].batches[0].payload == body


async def test_oversize_bodies_get_413_and_the_server_keeps_serving(
    client: aiohttp.ClientSession, consumers: Consumers, metric: Callable[..., float]
) -> None:
    before = bad(metric, "too_large")
    plain = request(1, name="x" * LIMIT).SerializeToString()
    # a gzip bomb: 64 MiB of zeros in ~64 KiB; refused at the limit, not after inflating it
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // 65536 + 2):
            yield b"\0" * 65536

    for body, headers in [
        (plain, PROTO),
        (bomb, {**PROTO, "Content-Encoding": "gzip"}),
    ]:
        status, _, reply = await post(client, "/v1/traces", body, headers)
        assert status == 413
        assert "exceeds" in status_pb2.Status.FromString(reply).message
    async with client.post("/v1/traces", data=chunked(), headers=JSON) as resp:
        assert resp.status == 413  # no Content-Length: counted while reading
    assert bad(metric, "too_large") == before + 3
    assert consumers[Signal.TRACES].batches == []
    status, _, _ = await post(client, "/v1/traces", request().SerializeToString(), PROTO)
    assert status == 200


async def test_endless_empty_gzip_members_are_cut_off(
    client: aiohttp.ClientSession, metric: Callable[..., float]
) -> None:
    before = bad(metric, "too_large")
    body = gzip.compress(b"") * (LIMIT // 20 + 4096)  # inflates to nothing, never ends
    status, _, _ = await post(client, "/v1/traces", body, {**PROTO, "Content-Encoding": "gzip"})
    assert status == 413
    assert bad(metric, "too_large") == before + 1


async def test_expect_100_continue(client: aiohttp.ClientSession, consumers: Consumers) -> None:
    body = request(2).SerializeToString()
    async with client.post("/v1/traces", data=body, headers=PROTO, expect100=True) as resp:
        assert resp.status == 200
    assert consumers[Signal.TRACES].batches[0].payload == body
    # answered from the headers alone: no 100 Continue, so the body need not be sent
    too_big = io.BytesIO(b"\0" * (LIMIT + 1))
    async with client.post("/v1/traces", data=too_big, headers=PROTO, expect100=True) as resp:
        assert resp.status == 413


async def test_corrupt_gzip_is_400(
    client: aiohttp.ClientSession, metric: Callable[..., float]
) -> None:
    before = bad(metric, "bad_encoding")
    body = gzip.compress(request().SerializeToString())
    for broken in (b"not gzip at all", body[:-6]):
        status, _, reply = await post(client, "/v1/traces", broken,
                                      {**PROTO, "Content-Encoding": "gzip"})
        assert status == 400
        assert status_pb2.Status.FromString(reply).code == 3  # INVALID_ARGUMENT
    assert bad(metric, "bad_encoding") == before + 2


# --- errors -------------------------------------------------------------------------------------


async def test_malformed_bodies_get_400_in_the_request_format(
    client: aiohttp.ClientSession, consumers: Consumers, metric: Callable[..., float]
) -> None:
    before = bad(metric, "malformed")
    status, headers, reply = await post(client, "/v1/logs", b"\x0a\xff\xff", PROTO)
    assert status == 400
    assert headers["Content-Type"] == "application/x-protobuf"
    assert "malformed OTLP logs protobuf" in status_pb2.Status.FromString(reply).message

    for body in (b"{not json", b"[1, 2]", b'{"resourceSpans": [{"scopeSpans": 7}]}'):
        status, headers, reply = await post(client, "/v1/traces", body, JSON)
        assert status == 400, body
        assert headers["Content-Type"] == "application/json"
        assert orjson.loads(reply)["code"] == 3
    assert bad(metric, "malformed") == before + 4
    assert all(not c.batches for c in consumers.values())
    status, _, _ = await post(client, "/v1/logs", b"", PROTO)
    assert status == 200


async def test_routing_errors(
    client: aiohttp.ClientSession, metric: Callable[..., float]
) -> None:
    before_415 = bad(metric, "unsupported_media_type")
    status, _, reply = await post(client, "/v1/traces", b"x", {"Content-Type": "text/plain"})
    assert status == 415
    assert b"application/x-protobuf" in reply
    status, _, _ = await post(client, "/v1/traces", b"x", {**PROTO, "Content-Encoding": "br"})
    assert status == 415
    assert bad(metric, "unsupported_media_type") == before_415 + 1

    status, _, _ = await post(client, "/v1/trace", b"", PROTO)
    assert status == 404
    async with client.get("/v1/traces") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"


async def test_backpressure_is_429_with_retry_after(
    client: aiohttp.ClientSession, consumers: Consumers, metric: Callable[..., float]
) -> None:
    consumers[Signal.TRACES].full_retry_after = 2.2
    labels = {"receiver": "otlp", "transport": "http", "signal": "traces",
              "reason": "backpressure"}
    before = metric(REFUSED, **labels)

    status, headers, reply = await post(client, "/v1/traces", request(2).SerializeToString(),
                                        PROTO)
    assert status == 429
    assert headers["Retry-After"] == "3"
    info = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(reply).details[0].Unpack(info)
    assert info.retry_delay.seconds == 3

    status, headers, reply = await post(client, "/v1/traces", orjson.dumps(SPEC_STYLE_JSON), JSON)
    assert status == 429
    assert headers["Retry-After"] == "3"
    detail = orjson.loads(reply)["details"][0]
    assert detail == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
    assert metric(REFUSED, **labels) == before + 3


async def test_sdk_exporter_retries_after_429(
    http_receiver: OtlpHttpReceiver, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...]
) -> None:
    consumers[Signal.TRACES].full_retry_after = 0.2  # answered as Retry-After: 1
    consumers[Signal.TRACES].refusals_left = 1
    exporter = OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{http_receiver.bound_port}/v1/traces", timeout=10
    )
    try:
        result = await asyncio.to_thread(exporter.export, sdk_spans)
    finally:
        exporter.shutdown()
    assert result is SpanExportResult.SUCCESS
    assert consumers[Signal.TRACES].refused == 1
    [batch] = consumers[Signal.TRACES].batches
    assert batch.message == encode_spans(sdk_spans)


async def test_pipeline_bug_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    receiver = OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint="127.0.0.1:0"),
                                {Signal.LOGS: BrokenConsumer()})
    await receiver.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{receiver.bound_port}") as client:
            body = b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {}}]}]}]}'
            status, _, reply = await post(client, "/v1/logs", body, JSON)
            assert status == 500
            assert orjson.loads(reply)["code"] == 13  # INTERNAL
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert "pipeline failed on a logs batch" in caplog.text


async def test_signal_without_pipeline_is_404(consumers: Consumers) -> None:
    receiver = OtlpHttpReceiver(
        "otlp", HttpListenerConfig(endpoint="127.0.0.1:0"), {Signal.LOGS: consumers[Signal.LOGS]}
    )
    await receiver.start()
    try:
        assert receiver.describe() == f"otlp/http  127.0.0.1:{receiver.bound_port}  logs"
        async with aiohttp.ClientSession(f"http://127.0.0.1:{receiver.bound_port}") as client:
            status, _, reply = await post(client, "/v1/traces", b"", PROTO)
            assert status == 404
            assert "no traces pipeline" in status_pb2.Status.FromString(reply).message
            status, _, reply = await post(client, "/v1/logs", b"", PROTO)
            assert status == 200
            assert ExportTraceServiceResponse.FromString(reply) == ExportTraceServiceResponse()
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)


async def test_port_in_use_is_a_startup_error(http_receiver: OtlpHttpReceiver) -> None:
    endpoint = f"127.0.0.1:{http_receiver.bound_port}"
    with pytest.raises(StartupError) as err:
        await OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint=endpoint), {}).start()
    assert str(err.value) == f"receivers.otlp.http.endpoint: {endpoint}: address already in use"


async def test_shutdown_finishes_in_flight_requests_and_stops_listening() -> None:
    gated = GatedConsumer()
    receiver = OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint="127.0.0.1:0"),
                                {Signal.TRACES: gated})
    await receiver.start()
    port = receiver.bound_port
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
        in_flight = asyncio.create_task(post(client, "/v1/traces", request().SerializeToString(),
                                             PROTO))
        async with asyncio.timeout(10):
            await gated.entered.wait()
        stopping = asyncio.create_task(receiver.shutdown(loop.time() + 10))
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the request in flight
        gated.release.set()
        async with asyncio.timeout(10):
            status, _, _ = await in_flight
            await stopping
        assert status == 200
    assert len(gated.batches) == 1
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(client, "/v1/traces", b"", PROTO)
