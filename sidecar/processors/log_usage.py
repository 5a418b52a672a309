"""Usage carried by log records: apps that log the provider's response, e.g. pino lines
`{model, usage: {prompt_tokens, completion_tokens, ...}}` or `{model, promptTokens,
totalTokens}`, as OTLP attributes, a structured (kvlist) body or a JSON string body.

Records are flattened to dotted keys (`usage.prompt_tokens`) and read with their own name
table. Raw Anthropic usage (`usage.cache_read_input_tokens` / `cache_creation_input_tokens`
beside `usage.input_tokens`) counts input without the cache, as the Anthropic API does."""

from __future__ import annotations

import math
from collections.abc import Iterable

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.processors import genai_usage as gu

# a JSON body longer than this is not parsed for usage
MAX_JSON_BODY = 64 * 1024
# nesting and key bounds of the flattening (hostile bodies)
_MAX_DEPTH = 4
_MAX_KEYS = 256

# the OTel event that repeats its span's usage: pricing it too would count twice (§1.7)
DETAILS_EVENT = "gen_ai.client.inference.operation.details"

_FIELDS: dict[str, tuple[str, ...]] = {
    "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "usage.prompt_tokens",
              "usage.input_tokens", "usage.promptTokens", "usage.inputTokens", "promptTokens",
              "inputTokens", "prompt_tokens", "input_tokens"),
    "output": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
               "usage.completion_tokens", "usage.output_tokens", "usage.completionTokens",
               "usage.outputTokens", "completionTokens", "outputTokens", "completion_tokens",
               "output_tokens"),
    "cache_read": ("gen_ai.usage.cache_read.input_tokens",
                   "usage.prompt_tokens_details.cached_tokens", "usage.cache_read_input_tokens",
                   "usage.cachedInputTokens", "cachedInputTokens",
                   "usage.input_tokens_details.cached_tokens"),
    "cache_write": ("gen_ai.usage.cache_creation.input_tokens",
                    "usage.cache_creation_input_tokens"),
    "reasoning": ("gen_ai.usage.reasoning.output_tokens",
                  "usage.completion_tokens_details.reasoning_tokens",
                  "usage.output_tokens_details.reasoning_tokens", "usage.reasoningTokens",
                  "reasoningTokens"),
    "total": ("gen_ai.usage.total_tokens", "usage.total_tokens", "usage.totalTokens",
              "totalTokens", "total_tokens"),
    "model": ("gen_ai.response.model", "gen_ai.request.model", "model", "usage.model",
              "response.model"),
    "provider": ("gen_ai.provider.name", "gen_ai.system", "provider", "llm.provider"),
    "agent": ("gen_ai.agent.name", "agent", "agentName"),
}
_ANTHROPIC_RAW = ("usage.cache_read_input_tokens", "usage.cache_creation_input_tokens")


def _flatten_any(prefix: str, value: AnyValue, out: dict[str, object], depth: int) -> None:
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        if depth < _MAX_DEPTH:
            for kv in value.kvlist_value.values:
                if len(out) >= _MAX_KEYS:
                    return
                _flatten_any(f"{prefix}.{kv.key}" if prefix else kv.key, kv.value, out,
                             depth + 1)
    elif kind in ("string_value", "int_value", "double_value", "bool_value"):
        out[prefix] = getattr(value, kind)


def _flatten_json(prefix: str, value: object, out: dict[str, object], depth: int) -> None:
    if isinstance(value, dict):
        if depth < _MAX_DEPTH:
            for key, item in value.items():
                if len(out) >= _MAX_KEYS:
                    return
                _flatten_json(f"{prefix}.{key}" if prefix else str(key), item, out, depth + 1)
    elif isinstance(value, str | int | float | bool):
        out[prefix] = value


def flatten(attributes: Iterable[KeyValue], body: AnyValue) -> dict[str, object]:
    """Attributes, then a kvlist body or a JSON-object string body, as dotted keys."""
    out: dict[str, object] = {}
    for kv in attributes:
        _flatten_any(kv.key, kv.value, out, 1)
    kind = body.WhichOneof("value")
    if kind == "kvlist_value":
        _flatten_any("", body, out, 0)
    elif kind == "string_value":
        text = body.string_value
        if text.startswith("{") and len(text) <= MAX_JSON_BODY and "okens" in text:
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                return out
            _flatten_json("", parsed, out, 0)
    return out


def _first(flat: dict[str, object], field: str) -> object:
    for key in _FIELDS[field]:
        if key in flat:
            return flat[key]
    return None


def _count(flat: dict[str, object], field: str, invalid: list[str]) -> int | None:
    raw = _first(flat, field)
    if raw is None:
        return None
    try:
        return gu.parse_count(raw)
    except gu.InvalidCount as exc:
        invalid.append(str(exc))
        return None


def usage_of(flat: dict[str, object], invalid: list[str]) -> gu.GenAIUsage | None:
    """Canonical usage of a log record naming a model and at least one count."""
    model = _first(flat, "model")
    if not isinstance(model, str) or not model:
        return None
    input_tokens = _count(flat, "input", invalid)
    output_tokens = _count(flat, "output", invalid)
    total = _count(flat, "total", invalid)
    if input_tokens is None and output_tokens is None:
        return None
    if output_tokens is None and input_tokens is not None and total is not None \
            and total >= input_tokens:
        output_tokens = total - input_tokens
    cache_read = _count(flat, "cache_read", invalid) or 0
    cache_write = _count(flat, "cache_write", invalid) or 0
    inp = input_tokens or 0
    adjusted = False
    if any(key in flat for key in _ANTHROPIC_RAW) or cache_read + cache_write > inp:
        inp += cache_read + cache_write
        adjusted = True
    out = output_tokens or 0
    reasoning = _count(flat, "reasoning", invalid) or 0
    provider = _first(flat, "provider")
    agent = _first(flat, "agent")
    cost = flat.get("gen_ai.usage.cost")
    reported = float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) \
        and math.isfinite(cost) and cost >= 0 else None
    return gu.GenAIUsage(
        operation="chat",
        provider=gu.canonical_provider(provider) if isinstance(provider, str) and provider
        else None,
        request_model=model, response_model=None,
        agent=agent if isinstance(agent, str) and agent else None, service_tier=None,
        input=inp, output=out, cache_read=cache_read, cache_write=cache_write,
        reasoning=min(reasoning, out) if out else reasoning, input_adjusted=adjusted,
        reported_cost=reported, has_cost_attribute=reported is not None, missing=[])
