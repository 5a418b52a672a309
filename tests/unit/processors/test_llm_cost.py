"""The cost processor on real OTLP requests: what it writes on spans and counts. Expected
costs come from per-million rates the test states (config overrides) or reads from
genai-prices' data."""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from decimal import Decimal

import pytest
from genai_prices.data_snapshot import get_snapshot
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.stage import Stage
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.sample import AttrValue, agent_runs, attrs
from sidecar.telemetry.metrics import REGISTRY
from tests.unit.processors.cost_helpers import attr

NOW = time.time_ns()
TRACE = b"t" * 16


def span(values: dict[str, AttrValue], trace_id: bytes = TRACE, name: str = "chat") -> Span:
    return Span(trace_id=trace_id, span_id=uuid.uuid4().bytes[:8], name=name,
                start_time_unix_nano=NOW, end_time_unix_nano=NOW + 1, attributes=attrs(values))


def request(service: str, *spans: Span) -> ExportTraceServiceRequest:
    resource = Resource(attributes=attrs({"service.name": service}))
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])])


def run(processor: LlmCost, req: ExportTraceServiceRequest) -> list[Span]:
    work = Work(Signal.TRACES, req.SerializeToString())
    processor.process(work)
    message = work.message
    assert isinstance(message, ExportTraceServiceRequest)
    return list(message.resource_spans[0].scope_spans[0].spans)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def chat(model: str, provider: str = "vllm", **extra: AttrValue) -> dict[str, AttrValue]:
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
            "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 3_000,
            "gen_ai.usage.output_tokens": 200, **extra}


OVERRIDE = CostSettings.model_validate({"prices": [
    {"provider": "vllm", "model": "house-llama", "input": "0.5", "output": "1.5",
     "cache_read": "0.05"}]})


def test_cost_and_breakdown_are_written_from_the_stated_rates() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    (out,) = run(LlmCost(OVERRIDE), request(service, span(chat(
        "house-llama", **{"gen_ai.usage.cache_read.input_tokens": 1_000, "tenant.id": "acme",
                          "gen_ai.agent.name": "triage"}))))
    want = (2_000 * 0.5 + 1_000 * 0.05 + 200 * 1.5) / 1e6
    assert attr(out, "gen_ai.usage.cost") == pytest.approx(want, rel=1e-12)
    assert attr(out, "gen_ai.usage.cost.amount") == attr(out, "gen_ai.usage.cost")
    assert attr(out, "gen_ai.usage.cost.currency") == "USD"
    assert attr(out, "gen_ai.usage.cost.source") == "local"
    assert attr(out, "gen_ai.cost.input_tokens") == pytest.approx(2_000 * 0.5 / 1e6)
    assert attr(out, "gen_ai.cost.cache_read.input_tokens") == pytest.approx(1_000 * 0.05 / 1e6)
    assert attr(out, "gen_ai.cost.output_tokens") == pytest.approx(200 * 1.5 / 1e6)
    assert attr(out, "gen_ai.cost.cache_creation.input_tokens") is None
    assert attr(out, "sidecar.cost.prices") == "override"
    labels = {"provider": "vllm", "model": "house-llama", "service": service,
              "agent": "triage", "tenant": "acme"}
    assert metric("sidecar_llm_cost_usd_total", **labels) == pytest.approx(want)
    assert metric("sidecar_llm_calls_total", **labels) == 1
    assert metric("sidecar_llm_tokens_total", **labels, token_type="input") == 3_000
    assert metric("sidecar_llm_tokens_total", **labels, token_type="cache_read") == 1_000
    assert metric("sidecar_llm_tokens_total", **labels, token_type="output") == 200


def test_library_priced_span_carries_provenance() -> None:
    (out,) = run(LlmCost(CostSettings()), request("svc", span(chat(
        "gpt-4o-2024-08-06", "openai"))))
    _, info = get_snapshot().find_provider_model("gpt-4o-2024-08-06", None, "openai", None)
    rates = info.get_prices(dt.datetime.fromtimestamp(NOW / 1e9, dt.UTC))
    assert isinstance(rates.input_mtok, Decimal)
    assert isinstance(rates.output_mtok, Decimal)
    want = (3_000 * rates.input_mtok + 200 * rates.output_mtok) / 1_000_000
    assert attr(out, "gen_ai.usage.cost") == float(want)
    assert attr(out, "sidecar.cost.model_id") == "gpt-4o"
    assert attr(out, "sidecar.cost.provider_id") == "openai"
    assert str(attr(out, "sidecar.cost.prices")).startswith("genai-prices ")


def test_a_cost_on_the_span_is_kept_and_a_disagreement_counted() -> None:
    model = f"house-llama-{uuid.uuid4().hex[:6]}"
    settings = CostSettings.model_validate({"prices": [
        {"provider": "vllm", "model": model, "input": "1", "output": "1"}]})
    processor = LlmCost(settings)
    ours = 3_200 / 1e6
    close, far = span(chat(model, **{"gen_ai.usage.cost": ours * 1.005})), \
        span(chat(model, **{"llm.cost.total": ours * 2}))
    out_close, out_far = run(processor, request("svc", close, far))
    assert attr(out_close, "gen_ai.usage.cost") == ours * 1.005  # unchanged
    assert attr(out_close, "gen_ai.usage.cost.source") == "provider"
    assert attr(out_close, "sidecar.cost.local_amount") == pytest.approx(ours)
    assert attr(out_far, "gen_ai.usage.cost") == ours * 2  # copied from llm.cost.total
    assert metric("sidecar_llm_cost_disagreements_total", provider="vllm", model=model) == 1


def test_unknown_model_gets_no_cost_a_counter_and_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    model = f"mystery-{uuid.uuid4().hex[:6]}"
    processor = LlmCost(CostSettings())
    with caplog.at_level(logging.WARNING, logger="sidecar.processors.llm_cost"):
        for _ in range(3):
            (out,) = run(processor, request("svc", span(chat(model, "openai"))))
            assert attr(out, "gen_ai.usage.cost") is None
            assert attr(out, "gen_ai.usage.cost.source") is None
    assert metric("sidecar_llm_price_lookup_failures_total", provider="openai",
                  model=model) == 3
    assert [r.getMessage() for r in caplog.records].count(
        f"no price for model {model!r} of provider 'openai': its calls carry no cost "
        "(add it under processors.cost.prices)") == 1


def test_requests_without_usage_are_neither_parsed_nor_reserialised() -> None:
    processor = LlmCost(CostSettings())
    plain = request("svc", span({"http.request.method": "GET"}))
    work = Work(Signal.TRACES, plain.SerializeToString())
    processor.process(work)
    assert not work.parsed
    # usage bytes but no model call (an agent root with totals): parsed, not re-serialised
    root = request("svc", span({"gen_ai.operation.name": "invoke_agent",
                                "gen_ai.usage.input_tokens": 5}))
    batch_bytes = root.SerializeToString()
    out = Stage(Signal.TRACES, [processor]).run(Batch(Signal.TRACES, 1, batch_bytes))
    assert out is not None
    assert out.payload is batch_bytes


def test_dialect_only_spans_get_canonical_names() -> None:
    (out,) = run(LlmCost(OVERRIDE), request("svc", span({
        "openinference.span.kind": "LLM", "llm.model_name": "house-llama",
        "llm.provider": "vllm", "llm.token_count.prompt": 10,
        "llm.token_count.completion": 5})))
    assert attr(out, "gen_ai.operation.name") == "chat"
    assert attr(out, "gen_ai.provider.name") == "vllm"
    assert attr(out, "gen_ai.request.model") == "house-llama"
    assert attr(out, "gen_ai.usage.input_tokens") == 10
    assert attr(out, "gen_ai.usage.output_tokens") == 5
    assert attr(out, "gen_ai.usage.cost") == pytest.approx((10 * 0.5 + 5 * 1.5) / 1e6)


def test_vercel_outer_and_inner_spans_are_priced_once() -> None:
    usage: dict[str, AttrValue] = {
        "ai.model.id": "house-llama", "ai.model.provider": "vllm",
        "ai.usage.inputTokens": 1_000, "ai.usage.outputTokens": 100}
    outer, inner = run(LlmCost(OVERRIDE), request(
        "svc", span({**usage, "ai.operationId": "ai.generateText"}),
        span({**usage, "ai.operationId": "ai.generateText.doGenerate"})))
    assert attr(outer, "gen_ai.usage.cost") is None
    assert attr(inner, "gen_ai.usage.cost") == pytest.approx((1_000 * 0.5 + 100 * 1.5) / 1e6)


def test_agent_comes_from_the_root_span_in_the_same_or_an_earlier_request() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    processor = LlmCost(OVERRIDE)
    root = span({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"},
                name="invoke_agent planner")
    # the child arrives before its root, in the same request
    run(processor, request(service, span(chat("house-llama")), root))
    # and in a later request than its root
    run(processor, request(service, span(chat("house-llama"))))
    # another trace with no root at all
    run(processor, request(service, span(chat("house-llama"), trace_id=b"u" * 16)))
    base = {"provider": "vllm", "model": "house-llama", "service": service, "tenant": "unknown"}
    assert metric("sidecar_llm_calls_total", **base, agent="planner") == 2
    assert metric("sidecar_llm_calls_total", **base, agent="unknown") == 1


def test_label_values_past_the_limit_are_counted_as_other() -> None:
    settings = CostSettings.model_validate({"label_values": 2, "free_providers": ["vllm"]})
    service = f"svc-{uuid.uuid4().hex[:8]}"
    processor = LlmCost(settings)
    run(processor, request(service, *(span(chat(f"m{i}")) for i in range(5))))
    base = {"provider": "vllm", "service": service, "agent": "unknown", "tenant": "unknown"}
    assert metric("sidecar_llm_calls_total", **base, model="m0") == 1
    assert metric("sidecar_llm_calls_total", **base, model="m1") == 1
    assert metric("sidecar_llm_calls_total", **base, model="other") == 3


def test_invalid_counts_are_counted() -> None:
    before = metric("sidecar_llm_usage_invalid_total", reason="negative")
    (out,) = run(LlmCost(OVERRIDE), request("svc", span(chat(
        "house-llama", **{"gen_ai.usage.input_tokens": -1}))))
    assert metric("sidecar_llm_usage_invalid_total", reason="negative") == before + 1
    assert attr(out, "gen_ai.usage.cost") == pytest.approx(200 * 1.5 / 1e6)


def test_sample_agent_runs_are_all_priced() -> None:
    processor = LlmCost(CostSettings())
    for agent_run in agent_runs(5, seed=3):
        spans = run(processor, agent_run.traces)
        calls = [s for s in spans if attr(s, "gen_ai.usage.input_tokens") is not None
                 and attr(s, "gen_ai.operation.name") != "invoke_agent"]
        assert calls
        assert all(isinstance(attr(s, "gen_ai.usage.cost"), float) for s in calls)


def test_hostile_model_names_cost_bounded_work_and_labels() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    processor = LlmCost(CostSettings())
    huge = "m" * 100_000
    names = [f"fake-{uuid.uuid4().hex}" for _ in range(100)]
    spans = run(processor, request(service, span(chat(huge, "openai")),
                                   *(span(chat(n, "openai")) for n in names),
                                   span(chat("gpt-4o", "openai"))))
    assert all(attr(s, "gen_ai.usage.cost") is None for s in spans[:-1])
    # past the per-request lookup budget a new model is left unpriced, even a known one...
    assert attr(spans[-1], "gen_ai.usage.cost") is None
    # ...and priced in a later request
    (again,) = run(processor, request(service, span(chat("gpt-4o", "openai"))))
    assert isinstance(attr(again, "gen_ai.usage.cost"), float)
    base = {"provider": "openai", "service": service, "agent": "unknown", "tenant": "unknown"}
    assert metric("sidecar_llm_calls_total", **base, model="other") > 0  # the huge name
    assert metric("sidecar_llm_calls_total", **base, model=huge) == 0


def test_remembered_agents_stay_small_whatever_the_spans_name() -> None:
    processor = LlmCost(OVERRIDE)
    long_name = "a" * 50_000
    for trace_id in (b"v" * 16, b"w" * 100_000, b""):
        run(processor, request("svc", span({"gen_ai.operation.name": "invoke_agent",
                                            "gen_ai.agent.name": long_name},
                                           trace_id=trace_id),
                                      span(chat("house-llama"), trace_id=trace_id)))
    assert list(processor._agents) == [b"v" * 16]
    assert all(len(agent) <= 129 for agent in processor._agents.values())


def test_a_free_providers_hostile_model_names_are_not_kept() -> None:
    processor = LlmCost(CostSettings.model_validate({"free_providers": ["vllm"]}))
    names = [f"{'m' * 10_000}-{i}" for i in range(20)]
    spans = run(processor, request("svc", *(span(chat(n)) for n in names)))
    assert [attr(s, "sidecar.cost.model_id") for s in spans] == names
    assert [attr(s, "gen_ai.usage.cost") for s in spans] == [0.0] * len(names)
    kept = sum(len(part) for parts in processor._provenance_kvs.values() for part in parts)
    assert kept < 10_000


def test_model_call_latency_is_a_histogram_by_provider_model_service_agent_and_tenant() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    calls = []
    for ms in (300, 700, 3_000):
        one = span(chat("house-llama", **{"tenant.id": "acme", "gen_ai.agent.name": "triage"}))
        one.end_time_unix_nano = one.start_time_unix_nano + ms * 1_000_000
        calls.append(one)
    not_a_call = span({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "triage",
                       "gen_ai.usage.input_tokens": 9_000})
    run(LlmCost(OVERRIDE), request(service, *calls, not_a_call))
    labels = {"provider": "vllm", "model": "house-llama", "service": service,
              "agent": "triage", "tenant": "acme"}
    name = "sidecar_llm_operation_duration_seconds"
    assert metric(f"{name}_count", **labels) == 3
    assert metric(f"{name}_sum", **labels) == pytest.approx(4.0)
    assert metric(f"{name}_bucket", **labels, le="0.32") == 1
    assert metric(f"{name}_bucket", **labels, le="0.64") == 1
    assert metric(f"{name}_bucket", **labels, le="1.28") == 2
    assert metric(f"{name}_bucket", **labels, le="2.56") == 2
    assert metric(f"{name}_bucket", **labels, le="5.12") == 3
    assert metric(f"{name}_bucket", **labels, le="+Inf") == 3


def test_models_are_ranked_by_calls_and_a_promoted_model_counts_from_then_on() -> None:
    service = f"svc-{uuid.uuid4().hex[:8]}"
    processor = LlmCost(CostSettings.model_validate({
        "label_values": 1, "label_rerank_requests": 1, "free_providers": ["vllm"]}))
    for model, calls in (("model-a", 1), ("model-b", 3), ("model-b", 1)):
        run(processor, request(service, *(span(chat(model)) for _ in range(calls))))
    labels = {"provider": "vllm", "service": service, "agent": "unknown", "tenant": "unknown"}
    calls_of = {m: metric("sidecar_llm_calls_total", **labels, model=m)
                for m in ("model-a", "model-b", "other")}
    assert calls_of == {"model-a": 1, "model-b": 1, "other": 3}
