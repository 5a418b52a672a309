"""OTLP/gRPC load generator: realistic LLM-agent spans, pre-encoded, sent as raw bytes.

Runs as its own process (so its CPU is never charged to the target). It builds a pool of
`ExportTraceServiceRequest`s once (100 spans each, ~750 bytes and ~15 attributes per span,
gen_ai usage on about a third of them), then sends them with `grpc.aio` without any
per-request encoding, either paced at `--rate` spans/s or as fast as `--concurrency`
in-flight requests allow (`--rate 0`). Backpressure (`RESOURCE_EXHAUSTED`) is retried after
a short wait and counted. Every phase is bounded in time and in count.

Protocol on stdout (one JSON object per line), read by `otlp_bench.py`:
  {"event": "ready", ...}            pool built, channel connected
  {"event": "measure_start", ...}    warm-up over, the measured window begins
  {"event": "measure_end", ...}      window over, no new requests are started
  {"event": "done", ...}             in-flight requests finished; totals
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS_PER_REQUEST = 100
RETRY_WAIT_S = 0.05

MODELS = (
    ("openai", "gpt-4o-2024-08-06"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("aws.bedrock", "meta.llama3-1-70b-instruct-v1:0"),
)
AGENTS = ("triage", "categorizer", "sentiment", "summarizer", "prioritizer", "researcher")
TOOLS = ("search_docs", "fetch_ticket", "lookup_customer", "run_sql", "send_email")
SERVICES = ("feedback-app", "support-agent", "research-worker", "billing-bot")


def _kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _attrs(values: dict[str, str | int | float | bool]) -> list[KeyValue]:
    return [_kv(k, v) for k, v in values.items()]


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _span(rng: random.Random, i: int, trace_id: bytes, parent: bytes, now: int,
          agent: str, tenant: str) -> Span:
    """One span of an agent run; the mix repeats every 3 spans: LLM call, tool, HTTP/DB."""
    start = now + i * 7_000_000
    common: dict[str, str | int | float | bool] = {
        "gen_ai.agent.name": agent,
        "tenant.id": tenant,
        "app.request_id": _uuid(rng),
        "session.id": _uuid(rng),
        "user.id": f"user-{rng.randint(1, 50_000):06d}@{tenant}.customers.example.com",
        "thread.id": rng.randint(1, 64),
        "code.function": f"app.agents.{agent}.pipeline.steps.run_step_{i % 7}",
    }
    kind = i % 3
    events: list[Span.Event] = []
    status = Status(code=Status.STATUS_CODE_OK)
    if kind == 0:  # model call with gen_ai usage
        provider, model = MODELS[rng.randrange(len(MODELS))]
        name = f"chat {model}"
        span_kind = Span.SPAN_KIND_CLIENT
        values = {
            **common,
            "gen_ai.operation.name": "chat",
            "gen_ai.system": provider,
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.response.id": f"chatcmpl-{rng.getrandbits(128):032x}",
            "gen_ai.usage.input_tokens": rng.randint(200, 8000),
            "gen_ai.usage.output_tokens": rng.randint(20, 1200),
            "gen_ai.response.finish_reasons": "stop",
            "server.address": f"api.{provider}.com",
        }
        events.append(Span.Event(
            name="gen_ai.content.prompt", time_unix_nano=start + 1000,
            attributes=[_kv("gen_ai.prompt.length", rng.randint(100, 20_000))]))
        duration = rng.randint(300_000_000, 4_000_000_000)
    elif kind == 1:  # tool call
        tool = TOOLS[rng.randrange(len(TOOLS))]
        name = f"execute_tool {tool}"
        span_kind = Span.SPAN_KIND_INTERNAL
        values = {
            **common,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": f"call_{rng.getrandbits(96):024x}",
            "gen_ai.tool.type": "function",
            "tool.result.items": rng.randint(0, 50),
            "tool.cached": rng.random() < 0.3,
            "db.system": "postgresql" if tool == "run_sql" else "none",
            "db.operation.name": "SELECT",
        }
        duration = rng.randint(2_000_000, 200_000_000)
        if rng.random() < 0.05:
            status = Status(code=Status.STATUS_CODE_ERROR, message="tool timed out")
            events.append(Span.Event(
                name="exception", time_unix_nano=start + duration,
                attributes=_attrs({"exception.type": "TimeoutError",
                                   "exception.message": f"{tool} did not answer in 30s"})))
    else:  # outgoing HTTP call
        name = "POST"
        span_kind = Span.SPAN_KIND_CLIENT
        code = 200 if rng.random() < 0.95 else 503
        values = {
            **common,
            "http.request.method": "POST",
            "url.full": f"https://hooks.example.com/v1/notify/{rng.getrandbits(32):08x}",
            "server.address": "hooks.example.com",
            "server.port": 443,
            "http.response.status_code": code,
            "network.protocol.version": "1.1",
            "http.request.body.size": rng.randint(200, 5000),
            "user_agent.original": "python-httpx/0.27.0",
        }
        duration = rng.randint(5_000_000, 400_000_000)
        if code != 200:
            status = Status(code=Status.STATUS_CODE_ERROR)
    return Span(
        trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=parent, name=name,
        kind=span_kind, start_time_unix_nano=start, end_time_unix_nano=start + duration,
        attributes=_attrs(values), events=events, status=status,
    )


def build_request(rng: random.Random, spans: int = SPANS_PER_REQUEST) -> bytes:
    """One export request as an SDK batch processor sends it: one resource, two scopes,
    `spans` spans from several agent runs (a root span per run, then its children)."""
    now = time.time_ns()
    service = SERVICES[rng.randrange(len(SERVICES))]
    resource = Resource(attributes=_attrs({
        "service.name": service,
        "service.version": "1.4.2",
        "service.instance.id": f"{rng.getrandbits(128):032x}",
        "deployment.environment.name": "production",
        "host.name": f"ip-10-0-{rng.randint(0, 255)}-{rng.randint(0, 255)}",
        "k8s.pod.name": f"{service}-{rng.getrandbits(40):010x}",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": "1.27.0",
    }))
    agent_spans: list[Span] = []
    other_spans: list[Span] = []
    while len(agent_spans) + len(other_spans) < spans:
        trace_id = rng.randbytes(16)
        root_id = rng.randbytes(8)
        agent = AGENTS[rng.randrange(len(AGENTS))]
        tenant = f"tenant-{rng.randint(1, 40):03d}"
        agent_spans.append(Span(
            trace_id=trace_id, span_id=root_id, name=f"invoke_agent {agent}",
            kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=now,
            end_time_unix_nano=now + 2_400_000_000,
            attributes=_attrs({
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
                "gen_ai.agent.id": f"asst_{rng.getrandbits(64):016x}", "tenant.id": tenant,
                "app.request_id": _uuid(rng), "session.id": _uuid(rng),
                "user.id": f"user-{rng.randint(1, 50_000):06d}@{tenant}.customers.example.com",
                "app.feature": "ticket-triage", "app.plan": "enterprise",
                "gen_ai.conversation.id": f"conv-{rng.getrandbits(64):016x}",
                "app.steps": 9, "app.retry_count": 0,
                "code.function": f"app.agents.{agent}.runner.run", "thread.id": rng.randint(1, 64),
            }),
            status=Status(code=Status.STATUS_CODE_OK),
        ))
        for i in range(9):
            if len(agent_spans) + len(other_spans) >= spans:
                break
            span = _span(rng, i, trace_id, root_id, now, agent, tenant)
            (agent_spans if i % 3 != 2 else other_spans).append(span)
    scopes = [
        ScopeSpans(scope=InstrumentationScope(name="opentelemetry.instrumentation.openai_v2",
                                              version="2.0b0"), spans=agent_spans),
        ScopeSpans(scope=InstrumentationScope(name="opentelemetry.instrumentation.httpx",
                                              version="0.48b0"), spans=other_spans),
    ]
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=scopes)])
    return request.SerializeToString()


# Workloads for the redaction benchmarks (`--workload`): `agent` as above; `secrets`, the
# same with a GitHub token in a `tool.note` attribute of 10 % of the spans; `large`, the
# OTel testbed's large-attribute shape, 20 attributes x 5 KB strings per span (20 spans a
# request: 2 MB, under gRPC's default 4 MiB message limit).
WORKLOADS = ("agent", "secrets", "large")
LARGE_SPANS_PER_REQUEST = 20


def with_secrets(payload: bytes, rng: random.Random, share: float = 0.1) -> bytes:
    req = ExportTraceServiceRequest.FromString(payload)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if rng.random() < share:
                    token = "ghp_" + "".join(
                        rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
                        for _ in range(36))
                    span.attributes.add(key="tool.note",
                                        value=AnyValue(string_value=f"pushed with {token}"))
    return req.SerializeToString()


def large_request(rng: random.Random, spans: int = LARGE_SPANS_PER_REQUEST) -> bytes:
    req = ExportTraceServiceRequest.FromString(build_request(rng, spans))
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "agent", "tool", "result", "42"]
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                for i in range(20):
                    text = " ".join(rng.choice(words) for _ in range(900))[:5000]
                    span.attributes.add(key=f"large.{i}", value=AnyValue(string_value=text))
    return req.SerializeToString()


def build_workload(rng: random.Random, workload: str = "agent") -> bytes:
    if workload == "secrets":
        return with_secrets(build_request(rng), rng)
    if workload == "large":
        return large_request(rng)
    return build_request(rng)


def spans_per_request(workload: str) -> int:
    return LARGE_SPANS_PER_REQUEST if workload == "large" else SPANS_PER_REQUEST


def build_pool(size: int, seed: int = 1, workload: str = "agent") -> list[bytes]:
    rng = random.Random(seed)
    return [build_workload(rng, workload) for _ in range(size)]


@dataclass
class Stats:
    started: int = 0
    ok: int = 0
    exhausted: int = 0          # RESOURCE_EXHAUSTED answers (each retried)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)


def emit(event: str, **extra: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **extra}) + "\n")
    sys.stdout.flush()


async def _send(call: Any, payload: bytes, stats: Stats, deadline: float) -> None:
    """One request; retries RESOURCE_EXHAUSTED until `deadline` (monotonic)."""
    started = time.monotonic()
    while True:
        try:
            await call(payload, timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline:
                stats.exhausted += 1
                await asyncio.sleep(RETRY_WAIT_S)
                continue
            stats.errors[code.name] = stats.errors.get(code.name, 0) + 1
            return
        stats.ok += 1
        if len(stats.latencies) < 200_000:
            stats.latencies.append(time.monotonic() - started)
        return


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pool = build_pool(args.pool if args.workload != "large" else min(args.pool, 8),
                      workload=args.workload)
    sizes = [len(p) for p in pool]
    per_request = spans_per_request(args.workload)
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(args.target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
        call = channel.unary_unary(EXPORT_METHOD, request_serializer=None,
                                   response_deserializer=None)
        emit("ready", pool=len(pool), bytes_per_span=sum(sizes) / len(sizes) / per_request)
        stats = Stats()
        begin = time.monotonic()
        measure_at = begin + args.warmup
        stop_at = measure_at + args.duration
        # retries and the drain of in-flight requests may run this much past the window
        hard_deadline = stop_at + args.grace
        inflight: set[asyncio.Task[None]] = set()
        limit = max(1, args.concurrency)
        slots = asyncio.Semaphore(limit)
        max_requests = args.max_spans // per_request if args.max_spans else 1 << 62
        interval = per_request / args.rate if args.rate > 0 else 0.0
        next_send = begin
        measuring = False
        late = 0
        index = 0
        window_started = 0

        def release(task: asyncio.Task[None]) -> None:
            inflight.discard(task)
            slots.release()

        while True:
            now = time.monotonic()
            if not measuring and now >= measure_at:
                measuring = True
                window_started = stats.started
                emit("measure_start", sent=stats.started * per_request,
                     ok=stats.ok * per_request)
            if now >= stop_at or stats.started >= max_requests:
                break
            if interval:
                if now < next_send:
                    await asyncio.sleep(min(next_send - now, stop_at - now))
                    continue
                next_send += interval
                if now - next_send > 1.0:  # more than a second behind: do not burst
                    late += 1
                    next_send = now
            await slots.acquire()
            payload = pool[index % len(pool)]
            index += 1
            stats.started += 1
            task = asyncio.create_task(_send(call, payload, stats, hard_deadline))
            inflight.add(task)
            task.add_done_callback(release)
        window = time.monotonic() - measure_at if measuring else 0.0
        emit("measure_end", sent=stats.started * per_request,
             ok=stats.ok * per_request, window_s=window,
             window_sent=(stats.started - window_started) * per_request)
        if inflight:
            _done, pending = await asyncio.wait(
                inflight, timeout=max(0.1, hard_deadline - time.monotonic()))
            for task in pending:
                task.cancel()
                stats.errors["CANCELLED_AT_DEADLINE"] = (
                    stats.errors.get("CANCELLED_AT_DEADLINE", 0) + 1)
        lat = sorted(stats.latencies)
        return {
            "requests_started": stats.started,
            "spans_sent": stats.started * per_request,
            "spans_ok": stats.ok * per_request,
            "resource_exhausted_retries": stats.exhausted,
            "errors": stats.errors,
            "pacer_resets": late,
            "latency_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "latency_p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the OTLP/gRPC receiver")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="spans/s; 0 = maximum rate (bounded by --concurrency)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="requests in flight at most (paced mode too)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds after the window for retries/in-flight requests")
    parser.add_argument("--max-spans", type=int, default=0, help="stop after this many (0: none)")
    parser.add_argument("--pool", type=int, default=64, help="distinct pre-encoded requests")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--workload", choices=WORKLOADS, default="agent",
                        help="agent spans; 10 %% of them with a secret; 20 x 5 KB attributes")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = asyncio.run(run(args))
    emit("done", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
