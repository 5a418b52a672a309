"""The same OTLP request through rotel's Datadog exporter (PyPI `rotel`, binary
`rotel-agent`) and through ours, both into the strict fake intake: the decoded
AgentPayloads agree span by span except where docs/vendors.md says rotel deviates from
the Datadog Agent (and we follow the Agent). Each deviation is asserted, so a change on
either side shows up here."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import rotel
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from sidecar._proto.datadog_trace_pb2 import AgentPayload
from sidecar._proto.datadog_trace_pb2 import Span as DDSpan
from sidecar.exporters.datadog import DatadogConfig, NativeTracesSender
from sidecar.model import Batch, Signal
from tests.helpers.intakes import DatadogIntake

ROTEL_AGENT = Path(rotel.__file__).parent / "rotel-agent"
TRACE = bytes.fromhex("5e39606e3e0f98ce8dc40caa5ac79e2f")
KEY = "rotel-compare"


def _kv(key: str, v: Any) -> KeyValue:
    if isinstance(v, bool):
        value = AnyValue(bool_value=v)
    elif isinstance(v, int):
        value = AnyValue(int_value=v)
    elif isinstance(v, float):
        value = AnyValue(double_value=v)
    elif isinstance(v, list):
        value = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=x) for x in v]))
    else:
        value = AnyValue(string_value=v)
    return KeyValue(key=key, value=value)


def _span(span_id: int, parent: int, kind: int, name: str, **attrs: Any) -> Span:
    span = Span(trace_id=TRACE, span_id=span_id.to_bytes(8, "big"),
                parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name,
                kind=kind, start_time_unix_nano=1_764_000_000_000_000_000 + span_id,
                end_time_unix_nano=1_764_000_000_400_000_000 + 7 * span_id)
    span.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return span


def request() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([
        _kv("service.name", "chat-api"), _kv("service.version", "2.1.0"),
        _kv("deployment.environment.name", "staging"), _kv("host.name", "web-1"),
        _kv("telemetry.sdk.language", "python"), _kv("telemetry.sdk.version", "1.38.0")])
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "opentelemetry.instrumentation.fastapi", "0.59b0"
    server = _span(1, 0, Span.SPAN_KIND_SERVER, "POST /chat", **{
        "http.request.method": "POST", "http.route": "/chat",
        "http.response.status_code": 500, "url.full": "https://chat.example/chat"})
    server.status.code, server.status.message = Status.STATUS_CODE_ERROR, "boom"
    llm = _span(2, 1, Span.SPAN_KIND_CLIENT, "chat gpt-4o", **{
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 42, "gen_ai.usage.output_tokens": 7,
        "gen_ai.request.temperature": 0.2, "gen_ai.response.finish_reasons": ["stop"],
        "server.address": "api.openai.com"})
    llm.status.code = Status.STATUS_CODE_ERROR
    event = llm.events.add(name="exception", time_unix_nano=1_764_000_000_100_000_000)
    event.attributes.extend([_kv("exception.type", "RateLimitError"),
                             _kv("exception.message", "429 Too Many Requests"),
                             _kv("exception.stacktrace", "Traceback (most recent call)")])
    llm.events.add(name="gen_ai.content.prompt", time_unix_nano=1_764_000_000_050_000_000)
    db = _span(3, 1, Span.SPAN_KIND_CLIENT, "SELECT messages", **{
        "db.system": "postgresql", "db.statement": "SELECT * FROM messages WHERE id = $1"})
    tool = _span(4, 1, Span.SPAN_KIND_INTERNAL, "tool search", **{
        "service.name": "tool-runner", "gen_ai.tool.name": "search"})
    tool.links.add(trace_id=bytes(range(16)), span_id=bytes(range(8)))
    grpc_call = _span(5, 1, Span.SPAN_KIND_CLIENT, "Greeter/Hello", **{
        "rpc.system": "grpc", "rpc.service": "Greeter", "rpc.method": "Hello"})
    ss.spans.extend([server, llm, db, tool, grpc_call])
    return req


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _through_rotel(body: bytes, tmp_path: Path) -> AgentPayload:
    assert ROTEL_AGENT.exists(), f"rotel-agent missing at {ROTEL_AGENT} (dev extra)"
    async with DatadogIntake(KEY) as intake:
        grpc_port, http_port = _free_port(), _free_port()
        log = (tmp_path / "rotel.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            str(ROTEL_AGENT), "start", "--exporter", "datadog",
            "--datadog-exporter-custom-endpoint", intake.endpoint,
            "--datadog-exporter-api-key", KEY, "--environment", "test",
            "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
            "--pid-file", str(tmp_path / "rotel.pid"), "--batch-timeout", "50ms",
            stdout=log, stderr=subprocess.STDOUT)
        try:
            async with aiohttp.ClientSession() as session, asyncio.timeout(20):
                while True:
                    try:
                        async with session.post(
                                f"http://127.0.0.1:{http_port}/v1/traces", data=body,
                                headers={"Content-Type": "application/x-protobuf"}) as answer:
                            assert answer.status == 200
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)  # rotel is still starting
                await intake.wait_for_spans(5)
        finally:
            proc.terminate()
            async with asyncio.timeout(10):
                await proc.wait()
            log.close()
        (payload,) = intake.accepted
        return payload


def _spans(payload: AgentPayload) -> dict[int, DDSpan]:
    return {s.spanID: s for tp in payload.tracerPayloads for c in tp.chunks for s in c.spans}


async def test_same_request_through_rotel_and_ours(tmp_path: Path) -> None:
    body = request().SerializeToString()
    theirs = _spans(await _through_rotel(body, tmp_path))
    cfg = DatadogConfig.model_validate({"type": "datadog", "api_key": KEY, "env": "test"})
    sender = NativeTracesSender(cfg)
    encoded = sender.encode(Batch.from_bytes(Signal.TRACES, body), sender.limits(Signal.TRACES))
    assert (encoded.items, encoded.skipped) == (5, 0)
    ours = _spans(AgentPayload.FromString(encoded.data))
    assert set(ours) == set(theirs) == {1, 2, 3, 4, 5}

    for span_id in ours:
        a, b = ours[span_id], theirs[span_id]
        for name in ("traceID", "parentID", "start", "duration", "error", "resource",
                     "type"):
            assert getattr(a, name) == getattr(b, name), (span_id, name)
    # names: equal except the span-kind fallback, where rotel writes the enum name
    assert {i: s.name for i, s in ours.items()} == {
        1: "http.server.request", 2: "client.request", 3: "postgresql.query",
        4: "Internal", 5: "grpc.client.request"}
    assert theirs[4].name == "SPAN_KIND_INTERNAL"
    assert all(ours[i].name == theirs[i].name for i in (1, 2, 3, 5))
    # rotel ignores a span-level service.name
    assert (ours[4].service, theirs[4].service) == ("tool-runner", "chat-api")
    assert all(ours[i].service == theirs[i].service == "chat-api" for i in (1, 2, 3, 5))

    deviations: dict[str, set[int]] = {}
    for span_id in ours:
        a, b = ours[span_id], theirs[span_id]
        for key in set(a.meta) | set(b.meta):
            if a.meta.get(key) != b.meta.get(key):
                deviations.setdefault(f"meta {key}", set()).add(span_id)
        for key in set(a.metrics) | set(b.metrics):
            if a.metrics.get(key) != b.metrics.get(key):
                deviations.setdefault(f"metrics {key}", set()).add(span_id)
    documented = {
        # the Agent's _top_level is a metric; rotel sends the string "1" in meta
        "metrics _top_level": {1}, "meta _top_level": {1},
        # the high half of the trace id (Datadog tracers' convention); rotel sends none
        "meta _dd.p.tid": {1},
        # the Agent writes Unset/Ok/Error, rotel 0/1/2
        "meta otel.status_code": {1, 2, 3, 4, 5},
        # rotel drops span events other than exceptions, and links
        "meta events": {2}, "meta _dd.span_links": {4},
        # the Agent writes otel.scope.* besides the legacy otel.library.*
        "meta otel.scope.name": {1, 2, 3, 4, 5}, "meta otel.scope.version": {1, 2, 3, 4, 5},
        # arrays: the Agent's compact JSON; rotel the OTLP-JSON AnyValue form
        "meta gen_ai.response.finish_reasons": {2},
        # the Agent's SQL obfuscation writes sql.query (the statement has no literal, so
        # the resource is equal); rotel does not obfuscate
        "meta sql.query": {3},
    }
    assert deviations == documented
    assert ours[1].metrics["_top_level"] == 1.0
    assert ours[3].meta["sql.query"] == ours[3].resource == theirs[3].resource
    assert theirs[1].meta["_top_level"] == "1"
    assert ours[2].meta["otel.status_code"] == "Error"
    assert theirs[2].meta[
        "otel.status_code"] == "2"
    assert ours[2].meta["gen_ai.response.finish_reasons"] == '["stop"]'
    assert "stringValue" in theirs[2].meta["gen_ai.response.finish_reasons"]
    assert [e["name"] for e in orjson.loads(ours[2].meta["events"])] == [
        "exception", "gen_ai.content.prompt"]
    # both map the exception event and the HTTP keys the same way
    for key in ("error.type", "error.msg", "error.stack", "_dd.span_events.has_exception"):
        assert ours[2].meta[key] == theirs[2].meta[key]
    assert ours[1].meta["http.method"] == theirs[1].meta["http.method"] == "POST"
    assert ours[2].meta["http.server_name"] == theirs[2].meta["http.server_name"]
