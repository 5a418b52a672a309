"""Dialect normalisation: one fixture per dialect, reproduced attribute for attribute from
shared/docs/genai-and-logs.md §2.1, and the §2.4 pitfalls."""

from __future__ import annotations

import pytest

from sidecar.processors import genai_usage as gu
from sidecar.sample import AttrValue, attrs

# --- fixtures, as each SDK emits its spans -------------------------------------------------

OTEL_CURRENT = {  # semconv latest: gen_ai_latest_experimental
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
    "gen_ai.usage.cache_read.input_tokens": 1000, "gen_ai.usage.reasoning.output_tokens": 0,
    "gen_ai.response.finish_reasons": "stop", "server.address": "api.openai.com",
    "gen_ai.request.max_tokens": 4096,
}
OPENLLMETRY = {  # Traceloop python, old names
    "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06", "llm.request.type": "chat",
    "gen_ai.usage.prompt_tokens": 1200, "gen_ai.usage.completion_tokens": 300,
    "llm.usage.total_tokens": 1500, "gen_ai.usage.cache_read_input_tokens": 1000,
    "llm.is_streaming": False, "gen_ai.prompt.0.role": "user",
    "gen_ai.prompt.0.content": "hi", "traceloop.workflow.name": "triage",
}
TRACELOOP_WORKFLOW = {  # the workflow span over that call: totals, not a call
    "traceloop.span.kind": "workflow", "traceloop.workflow.name": "triage",
    "traceloop.entity.name": "triage", "gen_ai.usage.prompt_tokens": 1200,
}
OPENINFERENCE = {
    "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-2024-08-06",
    "llm.provider": "openai", "llm.system": "openai", "llm.token_count.prompt": 1200,
    "llm.token_count.completion": 300, "llm.token_count.total": 1500,
    "llm.token_count.prompt_details.cache_read": 1000,
    "llm.input_messages.0.message.role": "user",
    "llm.input_messages.0.message.content": "hi",
}
OPENINFERENCE_CHAIN = {
    "openinference.span.kind": "CHAIN", "llm.token_count.prompt": 1200,
    "llm.token_count.completion": 300,
}
VERCEL_V6_OUTER = {  # ai.generateText: totals over all steps
    "ai.operationId": "ai.generateText", "operation.name": "ai.generateText triage",
    "ai.telemetry.functionId": "triage", "ai.model.id": "claude-sonnet-4-20250514",
    "ai.model.provider": "anthropic.messages", "ai.usage.inputTokens": 10_000,
    "ai.usage.outputTokens": 500, "ai.usage.totalTokens": 10_500,
}
VERCEL_V6_CALL = {  # ai.generateText.doGenerate: one provider call
    "ai.operationId": "ai.generateText.doGenerate",
    "operation.name": "ai.generateText.doGenerate triage", "resource.name": "triage",
    "ai.telemetry.functionId": "triage", "ai.model.id": "claude-sonnet-4-20250514",
    "ai.model.provider": "anthropic.messages", "ai.response.model": "claude-sonnet-4-20250514",
    "ai.usage.inputTokens": 10_000, "ai.usage.outputTokens": 500,
    "ai.usage.totalTokens": 10_500, "ai.usage.inputTokenDetails.noCacheTokens": 1_000,
    "ai.usage.inputTokenDetails.cacheReadTokens": 8_000,
    "ai.usage.inputTokenDetails.cacheWriteTokens": 1_000,
    "gen_ai.system": "anthropic.messages", "gen_ai.request.model": "claude-sonnet-4-20250514",
    "gen_ai.response.model": "claude-sonnet-4-20250514", "gen_ai.usage.input_tokens": 10_000,
    "gen_ai.usage.output_tokens": 500, "gen_ai.response.finish_reasons": "stop",
}
VERCEL_V7_ROOT = {
    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "triage",
    "gen_ai.usage.input_tokens": 10_000, "gen_ai.usage.output_tokens": 500,
}
VERCEL_V7_CALL = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
    "gen_ai.request.model": "claude-sonnet-4-20250514", "gen_ai.usage.input_tokens": 10_000,
    "gen_ai.usage.output_tokens": 500, "gen_ai.usage.cache_read.input_tokens": 8_000,
    "gen_ai.usage.cache_creation.input_tokens": 1_000, "ai.operationId": "ai.generateText",
}
OPENLIT = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300, "gen_ai.usage.total_tokens": 1500,
    "gen_ai.usage.prompt_tokens_details.cached_tokens": 1000,
    "gen_ai.usage.completion_tokens_details.reasoning_tokens": 100,
    "gen_ai.usage.cost": 0.0042, "gen_ai.application_name": "feedback-app",
    "gen_ai.environment": "dev",
}
AD_HOC = {"llm.model": "gpt-4o", "llm.vendor": "openai", "llm.usage.prompt_tokens": "1200",
          "llm.usage.completion_tokens": 300.0}


def usage(values: dict[str, AttrValue]) -> gu.GenAIUsage | None:
    found = gu.scan(attrs(values))
    assert found is not None
    return gu.usage_of(found)


@pytest.mark.parametrize("fixture", [OTEL_CURRENT, OPENLLMETRY, OPENINFERENCE, OPENLIT])
def test_openai_dialects_normalise_to_the_same_usage(fixture: dict[str, AttrValue]) -> None:
    got = usage(fixture)
    assert got is not None
    assert (got.provider, got.model, got.input, got.output, got.cache_read, got.cache_write) \
        == ("openai", "gpt-4o-2024-08-06" if "gpt-4o-2024-08-06" in fixture.values()
            else "gpt-4o", 1200, 300, 1000, 0)
    assert got.operation == "chat"


def test_outer_spans_with_totals_are_not_model_calls() -> None:
    for fixture in (TRACELOOP_WORKFLOW, OPENINFERENCE_CHAIN, VERCEL_V6_OUTER, VERCEL_V7_ROOT):
        assert usage(fixture) is None, fixture


def test_vercel_v6_call_span() -> None:
    got = usage(VERCEL_V6_CALL)
    assert got is not None
    assert (got.provider, got.model, got.input, got.output, got.cache_read, got.cache_write,
            got.agent, got.input_adjusted) == (
        "anthropic", "claude-sonnet-4-20250514", 10_000, 500, 8_000, 1_000, "triage", False)


def test_vercel_v7_call_span_is_a_call_although_it_has_an_operation_id() -> None:
    got = usage(VERCEL_V7_CALL)
    assert got is not None
    assert (got.input, got.cache_read, got.cache_write) == (10_000, 8_000, 1_000)


def test_openlit_keeps_its_reported_cost_and_reasoning() -> None:
    got = usage(OPENLIT)
    assert got is not None
    assert got.reported_cost == 0.0042
    assert got.reasoning == 100
    assert got.output == 300  # reasoning is inside output, never added again


def test_ad_hoc_string_and_double_counts() -> None:
    got = usage(AD_HOC)
    assert got is not None
    assert (got.provider, got.model, got.input, got.output) == ("openai", "gpt-4o", 1200, 300)
    assert ("gen_ai.usage.input_tokens", 1200) in got.missing
    assert ("gen_ai.request.model", "gpt-4o") in got.missing


def test_canonical_names_are_added_only_where_absent() -> None:
    got = usage(OPENINFERENCE)
    assert got is not None
    assert dict(got.missing) == {
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-2024-08-06",
        "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300, "gen_ai.usage.cache_read.input_tokens": 1000}
    current = usage(OTEL_CURRENT)
    assert current is not None
    assert current.missing == []


def test_anthropic_style_counts_that_exclude_the_cache_are_made_inclusive() -> None:
    got = usage({"gen_ai.operation.name": "chat", "gen_ai.system": "anthropic",
                 "gen_ai.request.model": "claude-sonnet-4-20250514",
                 "gen_ai.usage.input_tokens": 1_000, "gen_ai.usage.output_tokens": 500,
                 "gen_ai.usage.cache_read_input_tokens": 8_000,
                 "gen_ai.usage.cache_creation_input_tokens": 1_000})
    assert got is not None
    assert (got.input, got.cache_read, got.cache_write, got.input_adjusted) == (
        10_000, 8_000, 1_000, True)


def test_the_first_name_in_precedence_order_wins() -> None:
    got = usage({"gen_ai.operation.name": "chat", "llm.token_count.prompt": 5,
                 "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.input_tokens": 9,
                 "gen_ai.request.model": "gpt-4o"})
    assert got is not None
    assert got.input == 9


@pytest.mark.parametrize(("value", "reason"), [
    (-5, "negative"), (float("nan"), "not an integer"), (float("inf"), "not an integer"),
    (2.5, "not an integer"), ("12x", "not a number"), ("-3", "negative"),
    ("9" * 40, "not a number"), (10**13, "too large"), (True, "bool"),
])
def test_bad_counts_are_rejected_with_a_reason(value: AttrValue, reason: str) -> None:
    found = gu.scan(attrs({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                           "gen_ai.usage.input_tokens": value,
                           "gen_ai.usage.output_tokens": 10}))
    assert found is not None
    assert found.invalid == [reason]
    got = gu.usage_of(found)
    assert got is not None
    assert (got.input, got.output) == (0, 10)


@pytest.mark.parametrize(("value", "want"), [(12, 12), (12.0, 12), ("12", 12), (" 12 ", 12),
                                             ("12.0", 12), (0, 0)])
def test_counts_arrive_as_int_double_or_string(value: AttrValue, want: int) -> None:
    assert gu.parse_count(value) == want


def test_a_span_priced_upstream_is_not_priced_again() -> None:
    assert usage({**OTEL_CURRENT, "gen_ai.usage.cost.source": "local"}) is None


def test_spans_without_genai_attributes_are_skipped() -> None:
    assert gu.scan(attrs({"http.request.method": "POST", "url.full": "https://x"})) is None


@pytest.mark.parametrize(("raw", "want"), [
    ("openai.chat", "openai"), ("openai.responses", "openai"),
    ("anthropic.messages", "anthropic"), ("google.vertex.chat", "gcp.vertex_ai"),
    ("google.generative-ai", "gcp.gemini"), ("amazon-bedrock", "aws.bedrock"),
    ("az.ai.openai", "azure.ai.openai"), ("mistralai", "mistral_ai"), ("xai", "x_ai"),
    ("Vertex_AI", "gcp.vertex_ai"), ("openaiish", "openaiish"), ("ollama", "ollama"),
])
def test_provider_names_of_every_dialect(raw: str, want: str) -> None:
    assert gu.canonical_provider(raw) == want
