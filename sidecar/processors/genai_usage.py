"""GenAI attribute dialects -> one canonical usage record per span.

Dialects (shared/docs/genai-and-logs.md §2.2): OTel GenAI current and deprecated names,
OpenLLMetry/Traceloop, OpenInference, Vercel AI SDK (`ai.*`), OpenLIT and ad hoc names.
Per field the first name in precedence order wins (official current > deprecated >
OpenInference > OpenLLMetry extras > Vercel > ad hoc). Only model-call spans are priced
(§2.4): outer spans carry totals over their children."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field

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


_ANY_STRING, _ANY_BOOL, _ANY_INT, _ANY_DOUBLE = 0x0A, 0x10, 0x18, 0x21
_DOUBLE = struct.Struct("<d")


# serialized AnyValue -> value: provider, model, operation and agent names repeat on every
# call, and counts fall in a small range; bounded, emptied when full
_SCALARS: dict[bytes, object] = {}
_MAX_SCALARS = 1 << 16
_MAX_SCALAR_BYTES = 64


def raw_scalar(data: bytes) -> object:
    """`scalar` of a serialized AnyValue (memoised for short ones)."""
    value = _SCALARS.get(data)
    if value is None:
        value = _raw_scalar(data)
        if len(data) <= _MAX_SCALAR_BYTES:
            if len(_SCALARS) >= _MAX_SCALARS:
                _SCALARS.clear()
            _SCALARS[data] = value
    return value


def _raw_scalar(data: bytes) -> object:
    """Decodes the one-field forms an SDK writes by hand (a parse costs more than the
    value); anything else goes through the library."""
    n = len(data)
    if n >= 2:
        tag = data[0]
        if tag == _ANY_STRING:
            length = data[1]
            if length < 0x80 and n == length + 2:
                return data[2:].decode("utf-8")
        elif tag == _ANY_INT and n <= 11:
            value = shift = 0
            for i in range(1, n):
                byte = data[i]
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    if i != n - 1:
                        break  # more fields follow: the library decides
                    value &= (1 << 64) - 1
                    return value - (1 << 64) if value >= 1 << 63 else value
        elif tag == _ANY_DOUBLE and n == 9:
            return _DOUBLE.unpack_from(data, 1)[0]
        elif tag == _ANY_BOOL and n == 2 and data[1] < 2:
            return data[1] == 1
    return scalar(AnyValue.FromString(data))


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
    strings: list[str | None]
    present: frozenset[str]
    markers: dict[str, object]
    invalid: list[str]
    # values of other keys the caller asked for (the cost processor's tenant keys)
    extra: dict[str, object] = dataclass_field(default_factory=dict)


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


def has_usage(hits: Iterable[str]) -> bool:
    return not _COUNT_KEYSET.isdisjoint(hits)


@dataclass(frozen=True, slots=True)
class Plan:
    """For one set of known keys: per canonical field, the keys present in precedence
    order, and the marker keys present. Spans of one instrumentation share a key set."""

    counts: tuple[tuple[str, ...], ...]
    strings: tuple[tuple[str, ...], ...]
    markers: tuple[str, ...]
    present: frozenset[str]


_PLANS: dict[frozenset[str], Plan] = {}
_MAX_PLANS = 4096


def plan(keys: frozenset[str]) -> Plan:
    found = _PLANS.get(keys)
    if found is not None:
        return found

    def ranked(table: dict[str, tuple[int, int]], fields: int) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(sorted((k for k in keys if k in table and table[k][0] == field),
                                  key=lambda k: table[k][1])) for field in range(fields))

    made = Plan(ranked(COUNT_KEYS, COUNT_FIELDS), ranked(STRING_KEYS, STRING_FIELDS),
                tuple(k for k in sorted(keys) if k in MARKER_KEYS), keys)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[keys] = made
    return made


def resolve(hits: dict[str, AnyValue]) -> Scan:
    """Per canonical field, the value of the highest-precedence name present."""
    return resolve_values({key: scalar(value) for key, value in hits.items()})


def resolve_values(values: dict[str, object], keys: frozenset[str] | None = None) -> Scan:
    """`resolve` over plain values. Per field the names are tried in precedence order; the
    first valid one wins, and an invalid one counts only when it was tried."""
    found = plan(frozenset(values) if keys is None else keys)
    counts: list[int | None] = [None] * COUNT_FIELDS
    invalid: list[str] = []
    for field, names in enumerate(found.counts):
        for name in names:
            try:
                counts[field] = parse_count(values[name])
                break
            except InvalidCount as exc:
                invalid.append(str(exc))
    strings: list[str | None] = [None] * STRING_FIELDS
    for field, names in enumerate(found.strings):
        for name in names:
            value = values[name]
            if isinstance(value, str) and value:
                strings[field] = value
                break
    return Scan(counts, strings, found.present, {k: values[k] for k in found.markers}, invalid)


def scan(attributes: Iterable[KeyValue]) -> Scan | None:
    """`collect` then `resolve`: None when nothing GenAI-related is there."""
    hits = collect(attributes)
    return None if hits is None else resolve(hits)


def model_call_operation(found: Scan, extra_operations: frozenset[str],
                         assume_counts: bool = False) -> str | None:
    """The canonical operation when the span is one model call, else None (§2.4 item 1).
    `assume_counts`: an ad hoc span counts as a call whatever its counts (the caller
    checks them)."""
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
    if assume_counts or found.counts[INPUT] is not None or found.counts[OUTPUT] is not None:
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


@dataclass(frozen=True, slots=True)
class StaticUsage:
    """What a model call's usage takes from its strings and markers (not its counts):
    the same for every call of one model, agent and instrumentation."""

    operation: str
    provider: str | None
    request_model: str | None
    response_model: str | None
    agent: str | None
    service_tier: str | None
    reported_cost: float | None
    has_cost_attribute: bool
    missing: tuple[tuple[str, str], ...]  # canonical string names absent from the span
    present: frozenset[str]

    @property
    def model(self) -> str | None:
        return self.response_model or self.request_model


def static_usage(found: Scan, extra_operations: frozenset[str] = frozenset(),
                 ) -> StaticUsage | None:
    """The count-free part of `usage_of`; None when the span is not a model call."""
    if PRICED_KEY in found.markers:
        return None
    operation = model_call_operation(found, extra_operations, assume_counts=True)
    if operation is None:
        return None
    strings = found.strings
    provider = strings[PROVIDER]
    cost: float | None = None
    for key in COST_KEYS:
        raw = found.markers.get(key)
        if isinstance(raw, int | float) and not isinstance(raw, bool) \
                and math.isfinite(raw) and raw >= 0:
            cost = float(raw)
            break
    canonical = canonical_provider(provider) if provider else None
    agent = agent_of(found)
    present = found.present
    missing = tuple((name, value) for name, value in zip(
        CANONICAL_STRING_KEYS, (canonical, strings[REQUEST_MODEL], strings[RESPONSE_MODEL],
                                operation, agent), strict=False)
        if name is not None and value and name not in present)
    return StaticUsage(operation, canonical, strings[REQUEST_MODEL], strings[RESPONSE_MODEL],
                       agent, strings[SERVICE_TIER], cost, COST_KEYS[0] in present, missing,
                       present)


def finish_usage(static: StaticUsage, counts: list[int | None]) -> GenAIUsage | None:
    """`usage_of` from its count-free part and the span's counts (per canonical field)."""
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
    missing: list[tuple[str, str | int]] = list(static.missing)
    present = static.present
    canonical_counts = (inp if input_tokens is not None or adjusted else None,
                        output_tokens, counts[CACHE_READ], counts[CACHE_WRITE],
                        counts[REASONING])
    for name, number in zip(CANONICAL_COUNT_KEYS, canonical_counts, strict=False):
        if name is not None and number is not None and name not in present:
            missing.append((name, number))
    return GenAIUsage(
        operation=static.operation, provider=static.provider,
        request_model=static.request_model, response_model=static.response_model,
        agent=static.agent, service_tier=static.service_tier,
        input=inp, output=out, cache_read=cache_read, cache_write=cache_write,
        reasoning=reasoning, input_adjusted=adjusted, reported_cost=static.reported_cost,
        has_cost_attribute=static.has_cost_attribute, missing=missing)


def usage_of(found: Scan, extra_operations: frozenset[str] = frozenset()) -> GenAIUsage | None:
    """Canonical usage when the span is a model call with at least one count, else None."""
    static = static_usage(found, extra_operations)
    return None if static is None else finish_usage(static, found.counts)
