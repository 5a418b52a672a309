"""GenAI attribute dialects -> one canonical usage record per span.

Dialects (shared/docs/genai-and-logs.md §2.2): OTel GenAI current and deprecated names,
OpenLLMetry/Traceloop, OpenInference, Vercel AI SDK (`ai.*`), OpenLIT and ad hoc names.
Per field the first name in precedence order wins (official current > deprecated >
OpenInference > OpenLLMetry extras > Vercel > ad hoc). Only model-call spans are priced
(§2.4): outer spans carry totals over their children."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# canonical count fields
INPUT, OUTPUT, CACHE_READ, CACHE_WRITE, REASONING, TOTAL = range(6)
COUNT_FIELDS = 6
# canonical string fields
PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, OPERATION, AGENT, SERVICE_TIER = range(6)
STRING_FIELDS = 6

# Official names the canonical fields are written back under.
CANONICAL_COUNT_KEYS = (
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens", None,
)
CANONICAL_STRING_KEYS = (
    "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
    "gen_ai.operation.name", "gen_ai.agent.name", None,
)

# key -> (field, rank); lower rank wins
COUNT_KEYS: dict[str, tuple[int, int]] = {}
STRING_KEYS: dict[str, tuple[int, int]] = {}


def _table(target: dict[str, tuple[int, int]], field: int, *keys: str) -> None:
    for rank, key in enumerate(keys):
        target[key] = (field, rank)


_table(COUNT_KEYS, INPUT, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
       "llm.token_count.prompt", "ai.usage.inputTokens", "ai.usage.promptTokens",
       "llm.usage.prompt_tokens", "llm.usage.input_tokens")
_table(COUNT_KEYS, OUTPUT, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
       "llm.token_count.completion", "ai.usage.outputTokens", "ai.usage.completionTokens",
       "llm.usage.completion_tokens", "llm.usage.output_tokens")
_table(COUNT_KEYS, CACHE_READ, "gen_ai.usage.cache_read.input_tokens",
       "gen_ai.usage.cache_read_input_tokens", "llm.token_count.prompt_details.cache_read",
       "llm.token_count.prompt_details.cache_input",
       "ai.usage.inputTokenDetails.cacheReadTokens", "ai.usage.cachedInputTokens",
       "gen_ai.usage.prompt_tokens_details.cached_tokens")
_table(COUNT_KEYS, CACHE_WRITE, "gen_ai.usage.cache_creation.input_tokens",
       "gen_ai.usage.cache_creation_input_tokens", "llm.token_count.prompt_details.cache_write",
       "ai.usage.inputTokenDetails.cacheWriteTokens",
       "gen_ai.usage.prompt_tokens_details.cache_creation_tokens")
_table(COUNT_KEYS, REASONING, "gen_ai.usage.reasoning.output_tokens",
       "gen_ai.usage.reasoning_tokens", "llm.token_count.completion_details.reasoning",
       "llm.usage.reasoning_tokens", "ai.usage.reasoningTokens",
       "ai.usage.outputTokenDetails.reasoningTokens",
       "gen_ai.usage.completion_tokens_details.reasoning_tokens")
_table(COUNT_KEYS, TOTAL, "gen_ai.usage.total_tokens", "llm.token_count.total",
       "llm.usage.total_tokens", "ai.usage.totalTokens")
_table(STRING_KEYS, PROVIDER, "gen_ai.provider.name", "gen_ai.system", "llm.provider",
       "llm.system", "ai.model.provider", "llm.vendor")
_table(STRING_KEYS, REQUEST_MODEL, "gen_ai.request.model", "llm.request.model_name",
       "llm.model_name", "ai.model.id", "langfuse.observation.model.name", "llm.model")
_table(STRING_KEYS, RESPONSE_MODEL, "gen_ai.response.model", "llm.response.model_name",
       "ai.response.model")
_table(STRING_KEYS, AGENT, "gen_ai.agent.name", "ai.telemetry.functionId",
       "ai.telemetry.metadata.agent")
_table(STRING_KEYS, SERVICE_TIER, "openai.response.service_tier",
       "gen_ai.openai.response.service_tier")

# structural markers: which kind of span this is
OPERATION_KEY = "gen_ai.operation.name"
VERCEL_OPERATION_KEY = "ai.operationId"
OPENINFERENCE_KIND_KEY = "openinference.span.kind"
TRACELOOP_KIND_KEY = "traceloop.span.kind"
TRACELOOP_ENTITY_KEY = "traceloop.entity.name"
TRACELOOP_WORKFLOW_KEY = "traceloop.workflow.name"
OPENLLMETRY_TYPE_KEY = "llm.request.type"
COST_KEYS = ("gen_ai.usage.cost", "llm.cost.total")
# set by a sidecar that priced the span already (a chain of sidecars prices once)
PRICED_KEY = "gen_ai.usage.cost.source"
MARKER_KEYS = frozenset((PRICED_KEY, OPERATION_KEY, VERCEL_OPERATION_KEY, OPENINFERENCE_KIND_KEY,
                         TRACELOOP_KIND_KEY, TRACELOOP_ENTITY_KEY, TRACELOOP_WORKFLOW_KEY,
                         OPENLLMETRY_TYPE_KEY, *COST_KEYS))

MODEL_CALL_OPERATIONS = frozenset(("chat", "text_completion", "generate_content", "embeddings"))
_VERCEL_CALLS = {".doGenerate": "chat", ".doStream": "chat", ".doEmbed": "embeddings"}
_OPENINFERENCE_CALLS = {"LLM": "chat", "EMBEDDING": "embeddings"}
_OPENLLMETRY_CALLS = {"chat": "chat", "completion": "text_completion"}

# The largest count accepted: far above any real request, small enough for exact Decimals.
MAX_TOKENS = 10**12
# A string count longer than this is not a count (and int() of it could be slow).
_MAX_COUNT_CHARS = 24

# §2.3: provider strings of every dialect -> `gen_ai.provider.name` values. Vercel provider
# strings (`openai.chat`, `google.vertex.chat`) match a prefix followed by `.` or `-`.
_PROVIDER_PREFIXES = (
    ("google.vertex", "gcp.vertex_ai"), ("google.generative-ai", "gcp.gemini"),
    ("google-vertex", "gcp.vertex_ai"), ("amazon-bedrock", "aws.bedrock"),
    ("azure-openai", "azure.ai.openai"), ("anthropic", "anthropic"), ("openai", "openai"),
    ("azure", "azure.ai.inference"), ("google", "gcp.gemini"), ("mistral", "mistral_ai"),
    ("cohere", "cohere"), ("bedrock", "aws.bedrock"), ("groq", "groq"),
    ("deepseek", "deepseek"), ("perplexity", "perplexity"), ("xai", "x_ai"),
)
_PROVIDER_EXACT = {
    "az.ai.openai": "azure.ai.openai", "az.ai.inference": "azure.ai.inference",
    "gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "vertexai": "gcp.vertex_ai",
    "xai": "x_ai", "mistralai": "mistral_ai", "aws": "aws.bedrock", "google": "gcp.gen_ai",
    "azure": "azure.ai.openai",
    # already canonical
    "aws.bedrock": "aws.bedrock", "azure.ai.inference": "azure.ai.inference",
    "azure.ai.openai": "azure.ai.openai", "gcp.gemini": "gcp.gemini",
    "gcp.vertex_ai": "gcp.vertex_ai", "gcp.gen_ai": "gcp.gen_ai", "x_ai": "x_ai",
    "mistral_ai": "mistral_ai", "moonshot_ai": "moonshot_ai", "ibm.watsonx.ai": "ibm.watsonx.ai",
}


def canonical_provider(raw: str) -> str:
    value = raw.strip().lower()
    exact = _PROVIDER_EXACT.get(value)
    if exact is not None:
        return exact
    for prefix, canonical in _PROVIDER_PREFIXES:
        if value == prefix or (value.startswith(prefix) and value[len(prefix)] in ".-"):
            return canonical
    return value


class InvalidCount(ValueError):
    """A token count that is negative, NaN, fractional or not a number."""


def parse_count(value: object) -> int:
    """int, integral double or decimal string -> non-negative int, else InvalidCount."""
    if isinstance(value, bool):
        raise InvalidCount("bool")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidCount("not an integer")
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > _MAX_COUNT_CHARS:
            raise InvalidCount("not a number")
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise InvalidCount("not a number") from None
            return parse_count(as_float)
    else:
        raise InvalidCount("not a number")
    if number < 0:
        raise InvalidCount("negative")
    if number > MAX_TOKENS:
        raise InvalidCount("too large")
    return number


def scalar(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    return None


@dataclass(slots=True)
class GenAIUsage:
    """Canonical usage of one model call. Counts are inclusive: `input` includes the cache
    reads and writes, `output` includes reasoning."""

    operation: str
    provider: str | None
    request_model: str | None
    response_model: str | None
    agent: str | None
    service_tier: str | None
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int
    # the input count excluded the cached tokens (raw Anthropic style) and was adjusted
    input_adjusted: bool
    # a cost the producer already put on the span (USD), and whether under gen_ai.usage.cost
    reported_cost: float | None
    has_cost_attribute: bool
    # canonical names absent from the span: (key, value) to add
    missing: list[tuple[str, str | int]]

    @property
    def model(self) -> str | None:
        return self.response_model or self.request_model


@dataclass(slots=True)
class Scan:
    """What one pass over a span's attributes found."""

    counts: list[int | None]
    count_ranks: list[int]
    strings: list[str | None]
    string_ranks: list[int]
    present: set[str]
    markers: dict[str, object]
    invalid: list[str]


# every attribute key the normalisation reads
KNOWN_KEYS = frozenset((*COUNT_KEYS, *STRING_KEYS, *MARKER_KEYS))
_COUNT_KEYSET = frozenset(COUNT_KEYS)


def collect(attributes: Iterable[KeyValue], known: frozenset[str] = KNOWN_KEYS,
            ) -> dict[str, AnyValue] | None:
    """The values of the known keys (first occurrence wins), None when there are none. The
    one loop every span pays for: a set lookup per attribute."""
    hits: dict[str, AnyValue] | None = None
    for kv in attributes:
        key = kv.key
        if key in known:
            if hits is None:
                hits = {}
            hits.setdefault(key, kv.value)
    return hits


def has_usage(hits: dict[str, AnyValue]) -> bool:
    return not _COUNT_KEYSET.isdisjoint(hits)


def resolve(hits: dict[str, AnyValue]) -> Scan:
    """Per canonical field, the value of the highest-precedence name present."""
    result = Scan([None] * COUNT_FIELDS, [99] * COUNT_FIELDS, [None] * STRING_FIELDS,
                  [99] * STRING_FIELDS, set(hits), {}, [])
    for key, any_value in hits.items():
        value = scalar(any_value)
        count_slot = COUNT_KEYS.get(key)
        if count_slot is not None:
            field, rank = count_slot
            if rank < result.count_ranks[field]:
                try:
                    result.counts[field] = parse_count(value)
                    result.count_ranks[field] = rank
                except InvalidCount as exc:
                    result.invalid.append(str(exc))
            continue
        string_slot = STRING_KEYS.get(key)
        if string_slot is not None:
            field, rank = string_slot
            if rank < result.string_ranks[field] and isinstance(value, str) and value:
                result.strings[field] = value
                result.string_ranks[field] = rank
        elif key in MARKER_KEYS:
            result.markers[key] = value
    return result


def scan(attributes: Iterable[KeyValue]) -> Scan | None:
    """`collect` then `resolve`: None when nothing GenAI-related is there."""
    hits = collect(attributes)
    return None if hits is None else resolve(hits)


def model_call_operation(found: Scan, extra_operations: frozenset[str]) -> str | None:
    """The canonical operation when the span is one model call, else None (§2.4 item 1)."""
    markers = found.markers
    operation = markers.get(OPERATION_KEY)
    if isinstance(operation, str) and operation:
        if operation in MODEL_CALL_OPERATIONS or operation in extra_operations:
            return operation
        return None
    vercel = markers.get(VERCEL_OPERATION_KEY)
    if isinstance(vercel, str) and vercel:
        for suffix, canonical in _VERCEL_CALLS.items():
            if vercel.endswith(suffix):
                return canonical
        return None
    kind = markers.get(OPENINFERENCE_KIND_KEY)
    if isinstance(kind, str) and kind:
        return _OPENINFERENCE_CALLS.get(kind.upper())
    if TRACELOOP_KIND_KEY in markers:
        # workflow/agent/task/tool spans aggregate their children
        return None
    request_type = markers.get(OPENLLMETRY_TYPE_KEY)
    if isinstance(request_type, str) and request_type:
        return _OPENLLMETRY_CALLS.get(request_type)
    # no structure at all: an ad hoc span with usage counts is taken as one call
    if found.counts[INPUT] is not None or found.counts[OUTPUT] is not None:
        return "chat"
    return None


def agent_of(found: Scan) -> str | None:
    """The agent a span names for itself and its trace, from any dialect."""
    agent = found.strings[AGENT]
    if agent:
        return agent
    markers = found.markers
    if markers.get(TRACELOOP_KIND_KEY) == "agent":
        entity = markers.get(TRACELOOP_ENTITY_KEY)
        if isinstance(entity, str) and entity:
            return entity
    workflow = markers.get(TRACELOOP_WORKFLOW_KEY)
    if isinstance(workflow, str) and workflow:
        return workflow
    return None


def usage_of(found: Scan, extra_operations: frozenset[str] = frozenset()) -> GenAIUsage | None:
    """Canonical usage when the span is a model call with at least one count, else None."""
    if PRICED_KEY in found.markers:
        return None
    operation = model_call_operation(found, extra_operations)
    if operation is None:
        return None
    counts = found.counts
    input_tokens, output_tokens, total = counts[INPUT], counts[OUTPUT], counts[TOTAL]
    if input_tokens is None and output_tokens is None:
        return None
    if output_tokens is None and input_tokens is not None and total is not None \
            and total >= input_tokens:
        output_tokens = total - input_tokens
    inp = input_tokens or 0
    cache_read = counts[CACHE_READ] or 0
    cache_write = counts[CACHE_WRITE] or 0
    adjusted = False
    if cache_read + cache_write > inp:
        # raw Anthropic counts exclude the cache: make the input inclusive (§2.4 item 2)
        inp += cache_read + cache_write
        adjusted = True
    out = output_tokens or 0
    reasoning = min(counts[REASONING] or 0, out) if out else (counts[REASONING] or 0)
    strings = found.strings
    provider = strings[PROVIDER]
    cost: float | None = None
    for key in COST_KEYS:
        raw = found.markers.get(key)
        if isinstance(raw, int | float) and not isinstance(raw, bool) \
                and math.isfinite(raw) and raw >= 0:
            cost = float(raw)
            break
    usage = GenAIUsage(
        operation=operation,
        provider=canonical_provider(provider) if provider else None,
        request_model=strings[REQUEST_MODEL], response_model=strings[RESPONSE_MODEL],
        agent=agent_of(found), service_tier=strings[SERVICE_TIER],
        input=inp, output=out, cache_read=cache_read, cache_write=cache_write,
        reasoning=reasoning, input_adjusted=adjusted, reported_cost=cost,
        has_cost_attribute=COST_KEYS[0] in found.present, missing=[])
    present = found.present
    canonical_strings = (usage.provider, usage.request_model, usage.response_model,
                         operation, usage.agent)
    for name, value in zip(CANONICAL_STRING_KEYS, canonical_strings, strict=False):
        if name is not None and value and name not in present:
            usage.missing.append((name, value))
    canonical_counts = (inp if input_tokens is not None or adjusted else None,
                        output_tokens, counts[CACHE_READ], counts[CACHE_WRITE],
                        counts[REASONING])
    for name, number in zip(CANONICAL_COUNT_KEYS, canonical_counts, strict=False):
        if name is not None and number is not None and name not in present:
            usage.missing.append((name, number))
    return usage
