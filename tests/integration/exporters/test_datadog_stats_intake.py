"""APM stats through the whole chain to the strict fake intake (which decodes the gzipped
msgpack StatsPayload and checks path, headers and encoding), and against Datadog's own
concentrator: ddtrace's native exporter (libdatadog) computing stats on the same Datadog
spans and sending them to a local stats intake."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgpack
import pytest
import zstandard
from export_helpers import metric
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from sidecar._proto.datadog_trace_pb2 import Span as DDSpan
from sidecar.exporters.datadog import DatadogConfig, NativeTracesSender
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Batch, Signal
from tests.helpers.intakes import DatadogIntake
from tests.helpers.sketch import decode_sketch, exact_quantile, quantile

KEY = "dd-stats-key"
SERVER, CLIENT, INTERNAL = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def request(traces: int, seed: int = 1) -> ExportTraceServiceRequest:
    """One service's traces: a server root (GET /cart, 200 or 500 with ERROR status), a
    postgresql client child, an HTTP client child and an internal child; lognormal
    durations, all ending in the last few seconds."""
    rng = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "checkout"),
                                   kv("deployment.environment.name", "prod"),
                                   kv("service.version", "2.1"), kv("host.name", "web-1")])
    ss = rs.scope_spans.add()
    now = time.time_ns()
    for t in range(traces):
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        root_id = rng.getrandbits(64).to_bytes(8, "big")
        end = now - rng.randrange(0, 2 * 10**9)

        def add(kind: int, name: str, attrs: list[KeyValue], *, parent: bytes = b"",
                error: bool = False, span_id: bytes | None = None,
                end_ns: int = end, trace: bytes = trace_id) -> None:
            duration = int(rng.lognormvariate(15, 1.5)) + 1
            ss.spans.add(trace_id=trace,
                         span_id=span_id or rng.getrandbits(64).to_bytes(8, "big"),
                         parent_span_id=parent, name=name, kind=kind,
                         start_time_unix_nano=end_ns - duration, end_time_unix_nano=end_ns,
                         attributes=attrs,
                         status=Status(code=Status.STATUS_CODE_ERROR if error else 0))

        failed = t % 5 == 0
        add(SERVER, "GET /cart", [kv("http.request.method", "GET"), kv("http.route", "/cart"),
                                  kv("http.response.status_code", 500 if failed else 200)],
            error=failed, span_id=root_id)
        add(CLIENT, "SELECT", [kv("db.system", "postgresql"), kv("db.namespace", "shop"),
                               kv("db.statement", "SELECT * FROM carts WHERE id = ?"),
                               kv("server.address", "db.internal")],
            parent=root_id, error=t % 7 == 0, end_ns=end - 10)
        add(CLIENT, "POST", [kv("http.request.method", "POST"),
                             kv("http.response.status_code", 201),
                             kv("server.address", "payments.internal")],
            parent=root_id, end_ns=end - 20)
        add(INTERNAL, "render", [], parent=root_id, end_ns=end - 30)
    return req


def config(intake: DatadogIntake, **raw: Any) -> DatadogConfig:
    return DatadogConfig.model_validate({
        "type": "datadog", "api_key": KEY, "endpoint": intake.endpoint, "env": "test",
        "hostname": "sidecar-host", "timeout": 5, "batch": {"max_delay": 0},
        "retry": {"initial_interval": 0.01, "jitter": 0}, **raw})


async def run(intake: DatadogIntake, name: str, *batches: Batch, **raw: Any) -> None:
    cfg = config(intake, **raw)
    exporter = ExportChain(name, cfg, NativeTracesSender(cfg, name))
    await exporter.start()
    for batch in batches:
        await exporter.consume(batch)
    await exporter.shutdown(asyncio.get_running_loop().time() + 20)


def group_key(g: dict[str, Any]) -> tuple[Any, ...]:
    return (g["Service"], g["Name"], g["Resource"], g["Type"], g["HTTPStatusCode"],
            g["SpanKind"], g["IsTraceRoot"], g["Synthetics"], tuple(g["PeerTags"]))


def expected_from_otlp(req: ExportTraceServiceRequest) -> dict[tuple[str, int], Counter[str]]:
    """hits/errors/duration per (span name, status code) straight from the OTLP input:
    every span but the internal ones is eligible (server top-level, clients measured)."""
    out: dict[tuple[str, int], Counter[str]] = {}
    for span in req.resource_spans[0].scope_spans[0].spans:
        if span.kind == INTERNAL:
            continue
        code = next((a.value.int_value for a in span.attributes
                     if a.key == "http.response.status_code"), 0)
        c = out.setdefault((span.name, code), Counter())
        c["hits"] += 1
        c["errors"] += span.status.code == Status.STATUS_CODE_ERROR
        c["duration"] += span.end_time_unix_nano - span.start_time_unix_nano
        c["top"] += span.kind == SERVER
    return out


async def test_stats_reach_the_intake_and_match_the_spans() -> None:
    req = request(60)
    async with DatadogIntake(KEY) as intake:
        await run(intake, "dd-stats", Batch.from_message(Signal.TRACES, req))
        (sreq,) = intake.stats_requests
        assert sreq.status == 202  # the strict intake decoded it: path, headers, gzip
        assert sreq.headers["content-type"] == "application/msgpack"
        assert sreq.headers["content-encoding"] == "gzip"
        assert sreq.headers["dd-api-key"] == KEY
        (doc,) = intake.stats()
        assert (doc["AgentHostname"], doc["AgentEnv"], doc["ClientComputed"]) == (
            "sidecar-host", "test", False)
        groups = intake.stats_groups()
        assert {(g["_env"], g["_hostname"], g["_version"]) for g in groups} == {
            ("prod", "web-1", "2.1")}
        got: dict[tuple[str, int], Counter[str]] = {}
        for g in groups:
            assert g["Service"] == "checkout"
            c = got.setdefault(({"http.server.request": "GET /cart",
                                 "postgresql.query": "SELECT",
                                 "http.client.request": "POST"}[g["Name"]],
                                g["HTTPStatusCode"]), Counter())
            c["hits"] += g["Hits"]
            c["errors"] += g["Errors"]
            c["duration"] += g["Duration"]
            c["top"] += g["TopLevelHits"]
            ok, _ = decode_sketch(g["OkSummary"])
            err, _ = decode_sketch(g["ErrorSummary"])
            assert sum(n for _, n in ok) == g["Hits"] - g["Errors"]
            assert sum(n for _, n in err) == g["Errors"]
        assert got == expected_from_otlp(req)
        db = [g for g in groups if g["Name"] == "postgresql.query"]
        assert {tuple(g["PeerTags"]) for g in db} == {
            ("db.name:shop", "db.namespace:shop", "db.system:postgresql",
             "http.server_name:db.internal")}
        assert {g["SpanKind"] for g in groups} == {"server", "client"}
        assert {g["IsTraceRoot"] for g in groups if g["SpanKind"] == "server"} == {1}
        assert metric("sidecar_datadog_stats_payloads_total", exporter="dd-stats",
                      outcome="sent") == 1


async def test_a_retried_request_is_counted_once_and_a_refused_one_not_at_all() -> None:
    async with DatadogIntake(KEY) as intake:
        intake.answer_next(2, status=503)
        await run(intake, "dd-stats-retry", Batch.from_message(Signal.TRACES, request(10)))
        assert sum(g["Hits"] for g in intake.stats_groups()
                   if g["SpanKind"] == "server") == 10
    async with DatadogIntake(KEY) as intake:
        intake.answer_next(1, status=403, body=b'{"errors":["Forbidden"]}')
        await run(intake, "dd-stats-403", Batch.from_message(Signal.TRACES, request(10)))
        assert intake.stats_requests == []  # nothing delivered, nothing to count


async def test_stats_intake_errors_are_retried_then_dropped_and_counted() -> None:
    async with DatadogIntake(KEY) as intake:
        intake.stats_script.append(_answer(503))
        await run(intake, "dd-stats-503", Batch.from_message(Signal.TRACES, request(5)))
        assert [r.status for r in intake.stats_requests] == [503, 202]
    async with DatadogIntake(KEY) as intake:
        intake.stats_script.append(_answer(400))
        await run(intake, "dd-stats-400", Batch.from_message(Signal.TRACES, request(5)))
        assert [r.status for r in intake.stats_requests] == [400]  # permanent: once
        assert metric("sidecar_datadog_stats_payloads_total", exporter="dd-stats-400",
                      outcome="dropped") == 1


def _answer(status: int) -> Any:
    from tests.helpers.intakes import Answer

    return Answer(status=status)


async def test_key_limit_refuses_and_counts() -> None:
    async with DatadogIntake(KEY) as intake:
        await run(intake, "dd-stats-keys", Batch.from_message(Signal.TRACES, request(30)),
                  stats={"max_keys": 2})
        groups = intake.stats_groups()
        assert len(groups) == 2
        refused = metric("sidecar_datadog_stats_refused_spans_total", exporter="dd-stats-keys")
        assert refused == 30 * 3 - sum(g["Hits"] for g in groups)  # internal spans: none
        assert refused > 0


async def test_stats_disabled_sends_none() -> None:
    async with DatadogIntake(KEY) as intake:
        await run(intake, "dd-stats-off", Batch.from_message(Signal.TRACES, request(5)),
                  stats={"enabled": False})
        assert intake.stats_requests == []
        assert intake.spans()


# --- against ddtrace's native concentrator --------------------------------------------

@contextlib.contextmanager
def capture_server() -> Iterator[tuple[int, list[tuple[str, dict[str, str], bytes]]]]:
    got: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(202)
            self.send_header("Content-Length", "2")
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, got
    finally:
        server.shutdown()
        server.server_close()


def v04(span: DDSpan) -> dict[str, Any]:
    return {"trace_id": span.traceID, "span_id": span.spanID, "parent_id": span.parentID,
            "service": span.service, "name": span.name, "resource": span.resource,
            "type": span.type, "start": span.start, "duration": span.duration,
            "error": span.error, "meta": dict(span.meta), "metrics": dict(span.metrics)}


def ddtrace_stats(spans: list[DDSpan]) -> list[dict[str, Any]]:
    """The ClientGroupedStats ddtrace's native exporter computes for `spans` (v0.4 input,
    agentless, stats sent to a local intake on shutdown)."""
    from ddtrace.internal.native._native import SharedRuntime, TraceExporterBuilder

    traces: dict[int, list[dict[str, Any]]] = {}
    for span in spans:
        traces.setdefault(span.traceID, []).append(v04(span))
    with capture_server() as (port, got):
        builder = TraceExporterBuilder()
        builder.set_agentless_endpoint(f"http://127.0.0.1:{port}/api/v0.2/traces", "k" * 32)
        builder.enable_stats(10 * 10**9)
        builder.set_agentless_stats_endpoint(f"http://127.0.0.1:{port}/api/v0.2/stats")
        builder.set_client_computed_top_level()
        builder.set_hostname("web-1")
        builder.set_env("prod")
        builder.set_app_version("2.1")
        builder.set_language("python")
        builder.set_input_format("v0.4")
        exporter = builder.build(SharedRuntime())
        exporter.send(msgpack.packb(list(traces.values())))
        with contextlib.suppress(Exception):  # it may time out closing its trace sender
            exporter.shutdown(5 * 10**9)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("stats" in p for p, _, _ in got):
            time.sleep(0.05)
    groups = []
    for path, headers, body in got:
        if path != "/api/v0.2/stats":
            continue
        raw = body
        if headers.get("content-encoding") == "zstd":
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        doc = msgpack.unpackb(raw)
        groups += [g for c in doc["Stats"] for b in c["Stats"] for g in b["Stats"]]
    return groups


@pytest.mark.timeout(60)
async def test_same_spans_same_stats_as_ddtrace() -> None:
    req = request(200, seed=7)
    async with DatadogIntake(KEY) as intake:
        await run(intake, "dd-stats-ref", Batch.from_message(Signal.TRACES, req),
                  stats={"peer_tags": False})  # ddtrace agentless has no peer tag list
        ours = intake.stats_groups()
        spans = intake.spans()
    theirs = await asyncio.to_thread(ddtrace_stats, spans)
    assert theirs, "ddtrace sent no stats"

    def merge(groups: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
        out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for g in groups:  # a key may sit in two buckets
            out.setdefault(group_key(g), []).append(g)
        return out

    a, b = merge(ours), merge(theirs)
    compared = 0
    assert set(a) == set(b)
    for key in a:
        for field in ("Hits", "Errors", "Duration", "TopLevelHits"):
            assert sum(g[field] for g in a[key]) == sum(g[field] for g in b[key]), (key, field)
        # the latency distributions agree within the sketches' accuracy (1 % ours,
        # ddtrace's mapping its own), checked on each side's decoded quantiles
        for summary in ("OkSummary", "ErrorSummary"):
            raws_a = [g[summary] for g in a[key] if decode_sketch(g[summary])[0]]
            raws_b = [g[summary] for g in b[key] if decode_sketch(g[summary])[0]]
            assert bool(raws_a) == bool(raws_b), (key, summary)
            if not raws_a:
                continue
            for q in (0.5, 0.9, 0.99):
                qa, qb = quantile(raws_a, q), quantile(raws_b, q)
                assert abs(qa - qb) / qb <= 0.025, (key, summary, q, qa, qb)
                compared += 1
    assert compared >= 3 * 5  # 4 keys with ok durations, 2 with errors
    # and ours against the exact quantiles of the input durations
    server = [s.duration for s in spans if s.meta["span.kind"] == "server" and not s.error]
    roots = [g["OkSummary"] for gs in a.values() for g in gs
             if g["SpanKind"] == "server" and g["HTTPStatusCode"] == 200]
    for q in (0.5, 0.9):
        exact = exact_quantile([float(d) for d in server], q)
        assert abs(quantile(roots, q) - exact) / exact <= 0.0125
