"""Span-derived RED metrics: calls and a duration histogram per service, name, kind and
status; spans go on unchanged."""

from __future__ import annotations

import uuid

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.spanmetrics import SpanMetrics, SpanMetricsSettings
from sidecar.sample import attrs
from sidecar.telemetry.metrics import REGISTRY


def span(name: str, ms: int, kind: int = Span.SPAN_KIND_CLIENT,
         status: int = Status.STATUS_CODE_UNSET) -> Span:
    return Span(name=name, kind=kind, start_time_unix_nano=10**18,
                end_time_unix_nano=10**18 + ms * 1_000_000, status=Status(code=status))


def request(service: str, *spans: Span) -> bytes:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=attrs({"service.name": service})),
        scope_spans=[ScopeSpans(spans=list(spans))])]).SerializeToString()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_calls_errors_and_durations_per_span_name_kind_and_status() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    payload = request(service, span("GET /a", 3), span("GET /a", 30),
                      span("GET /a", 300, status=Status.STATUS_CODE_ERROR),
                      span("work", 1, kind=Span.SPAN_KIND_INTERNAL))
    out = Stage(Signal.TRACES, [SpanMetrics(SpanMetricsSettings())]).run(
        Batch.from_bytes(Signal.TRACES, payload))
    assert out is not None
    assert out.payload is payload  # read-only
    ok = {"service": service, "span_name": "GET /a", "span_kind": "client",
          "status_code": "unset"}
    error = {**ok, "status_code": "error"}
    assert value("sidecar_span_calls_total", **ok) == 2
    assert value("sidecar_span_calls_total", **error) == 1
    assert value("sidecar_span_calls_total", service=service, span_name="work",
                 span_kind="internal", status_code="unset") == 1
    assert value("sidecar_span_duration_seconds_count", **ok) == 2
    assert value("sidecar_span_duration_seconds_sum", **ok) == 0.033
    assert value("sidecar_span_duration_seconds_bucket", **ok, le="0.004") == 1
    assert value("sidecar_span_duration_seconds_bucket", **ok, le="0.05") == 2


def test_span_names_past_the_limit_count_as_other() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    processor = SpanMetrics(SpanMetricsSettings(label_values=2))
    Stage(Signal.TRACES, [processor]).run(Batch.from_bytes(Signal.TRACES, request(
        service, *(span(f"GET /user/{i}", 1) for i in range(6)))))
    base = {"service": service, "span_kind": "client", "status_code": "unset"}
    assert value("sidecar_span_calls_total", **base, span_name="GET /user/0") == 1
    assert value("sidecar_span_calls_total", **base, span_name="GET /user/1") == 1
    assert value("sidecar_span_calls_total", **base, span_name="other") == 4


def test_negative_durations_count_as_zero() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    broken = Span(name="clock skew", start_time_unix_nano=5, end_time_unix_nano=1)
    Stage(Signal.TRACES, [SpanMetrics(SpanMetricsSettings())]).run(
        Batch.from_bytes(Signal.TRACES, request(service, broken)))
    labels = {"service": service, "span_name": "clock skew", "span_kind": "unspecified",
              "status_code": "unset"}
    assert value("sidecar_span_duration_seconds_sum", **labels) == 0
    assert value("sidecar_span_duration_seconds_count", **labels) == 1


def test_names_are_ranked_by_volume_and_counters_never_go_back() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    stage = Stage(Signal.TRACES, [SpanMetrics(SpanMetricsSettings(
        label_values=2, label_rerank_requests=1))])

    def send(*names: str) -> None:
        stage.run(Batch.from_bytes(Signal.TRACES, request(service, *(span(n, 1) for n in names))))

    send("a", "a", "b")  # first come: a and b get series
    send(*["c"] * 5)  # no room: other
    send(*["c"] * 3, "b")  # ranked: c (5) and a (2, halved) beat b (1, halved)
    base = {"service": service, "span_kind": "client", "status_code": "unset"}
    counts = {n: value("sidecar_span_calls_total", **base, span_name=n)
              for n in ("a", "b", "c", "other")}
    assert counts == {"a": 2, "b": 1, "c": 3, "other": 6}
    assert value("sidecar_span_duration_seconds_count", **base, span_name="other") == 6


def test_first_seen_values_keep_their_series_without_ranking() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    stage = Stage(Signal.TRACES, [SpanMetrics(SpanMetricsSettings(
        label_values=1, label_rerank_requests=0))])
    for names in (["a"], ["b"] * 9, ["b"]):
        stage.run(Batch.from_bytes(Signal.TRACES, request(service, *(span(n, 1) for n in names))))
    base = {"service": service, "span_kind": "client", "status_code": "unset"}
    assert value("sidecar_span_calls_total", **base, span_name="a") == 1
    assert value("sidecar_span_calls_total", **base, span_name="other") == 10
