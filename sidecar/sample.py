"""A realistic sample of LLM-agent telemetry: one traced agent run per call, with model
calls in several GenAI attribute dialects, a tool call, an HTTP call, and correlated logs.
Used by `sidecar send-test` so a newcomer sees data flowing, and by tests as input."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import (
    LogRecord,
    ResourceLogs,
    ScopeLogs,
    SeverityNumber,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

AttrValue = str | int | float | bool

MODELS = (
    ("openai", "gpt-4o", "chat"),
    ("anthropic", "claude-3-5-sonnet-20241022", "chat"),
    ("openai", "text-embedding-3-small", "embeddings"),
)
AGENTS = ("triage", "categorizer", "sentiment", "summarizer", "prioritizer", "researcher")


def attrs(values: dict[str, AttrValue]) -> list[KeyValue]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = AnyValue(double_value=value)
        else:
            any_value = AnyValue(string_value=value)
        out.append(KeyValue(key=key, value=any_value))
    return out


@dataclass(frozen=True, slots=True)
class AgentRun:
    traces: ExportTraceServiceRequest
    logs: ExportLogsServiceRequest
    spans: int
    log_records: int


def agent_run(service: str = "feedback-app", rng: random.Random | None = None) -> AgentRun:
    rng = rng or random.Random()
    trace_id = rng.randbytes(16)
    agent = rng.choice(AGENTS)
    tenant = f"tenant-{rng.randint(1, 40):03d}"
    now = time.time_ns()
    spans: list[Span] = []
    root_id = rng.randbytes(8)
    spans.append(Span(
        trace_id=trace_id, span_id=root_id, name=f"invoke_agent {agent}",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=now, end_time_unix_nano=now + 2_400_000_000,
        attributes=attrs({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent,
                          "tenant.id": tenant, "app.request_id": f"req-{rng.getrandbits(48):x}"}),
        status=Status(code=Status.STATUS_CODE_OK),
    ))
    offset = 10_000_000
    for provider, model, operation in MODELS:
        input_tokens, output_tokens = rng.randint(200, 4000), rng.randint(20, 800)
        values: dict[str, AttrValue] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
            "gen_ai.request.model": model, "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": input_tokens, "gen_ai.agent.name": agent,
            "server.address": f"api.{provider}.com", "tenant.id": tenant,
        }
        if operation == "chat":
            values["gen_ai.usage.output_tokens"] = output_tokens
            values["gen_ai.request.temperature"] = 0.2
            values["gen_ai.response.finish_reasons"] = "stop"
        span = Span(
            trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root_id,
            name=f"{operation} {model}", kind=Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=now + offset, end_time_unix_nano=now + offset + 600_000_000,
            attributes=attrs(values),
        )
        span.events.add(name="gen_ai.content.prompt", time_unix_nano=now + offset,
                        attributes=attrs({"gen_ai.prompt": "Categorise this feedback: ..."}))
        spans.append(span)
        offset += 610_000_000
    spans.append(Span(
        trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root_id,
        name="execute_tool search_docs", kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=now + offset, end_time_unix_nano=now + offset + 50_000_000,
        attributes=attrs({"gen_ai.operation.name": "execute_tool",
                          "gen_ai.tool.name": "search_docs", "tenant.id": tenant}),
    ))
    spans.append(Span(
        trace_id=trace_id, span_id=rng.randbytes(8), parent_span_id=root_id,
        name="POST", kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=now + offset, end_time_unix_nano=now + offset + 40_000_000,
        attributes=attrs({"http.request.method": "POST", "url.full": "https://hooks.example.com/x",
                          "http.response.status_code": 200}),
    ))
    resource = Resource(attributes=attrs({
        "service.name": service, "service.version": "1.4.2",
        "deployment.environment.name": "dev", "host.name": os.uname().nodename,
        "telemetry.sdk.language": "python",
    }))
    scope = InstrumentationScope(name="sidecar.send-test", version="1")
    traces = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=spans)])])
    records = [
        LogRecord(time_unix_nano=now, severity_text="INFO",
                  severity_number=SeverityNumber.SEVERITY_NUMBER_INFO,
                  body=AnyValue(string_value=f"agent {agent} started"),
                  trace_id=trace_id, span_id=root_id, attributes=attrs({"tenant.id": tenant})),
        LogRecord(time_unix_nano=now + offset, severity_text="WARN",
                  severity_number=SeverityNumber.SEVERITY_NUMBER_WARN,
                  body=AnyValue(string_value="model call retried after 429"),
                  trace_id=trace_id, span_id=spans[1].span_id,
                  attributes=attrs({"gen_ai.request.model": MODELS[0][1]})),
    ]
    logs = ExportLogsServiceRequest(resource_logs=[ResourceLogs(
        resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=records)])])
    return AgentRun(traces, logs, len(spans), len(records))


def agent_runs(count: int, seed: int | None = None) -> Iterator[AgentRun]:
    rng = random.Random(seed)
    for _ in range(count):
        yield agent_run(rng=rng)
