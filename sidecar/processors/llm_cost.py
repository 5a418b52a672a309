"""The `cost` processor: prices every model-call span and writes the cost back on it.

Written on a priced span (names backends already read):
- `gen_ai.usage.cost` (USD double; Langfuse, LiteLLM, OpenLIT) and the proposed trio
  `gen_ai.usage.cost.amount` / `.currency` (`USD`) / `.source` (`local`, or `provider` when
  the span already carried a cost, which is kept unchanged);
- Sentry's breakdown `gen_ai.cost.input_tokens`, `gen_ai.cost.output_tokens`,
  `gen_ai.cost.cache_read.input_tokens`, `gen_ai.cost.cache_creation.input_tokens`;
- provenance `sidecar.cost.prices` (data version, `override` or `free`),
  `sidecar.cost.price_date`, `sidecar.cost.model_id`, `sidecar.cost.provider_id`,
  `sidecar.cost.input_adjusted`, and `sidecar.cost.local_amount` beside a provider's cost;
- the canonical `gen_ai.*` names of the usage when only a dialect name was there.

A model without a price gets no cost attribute; it is counted and logged once per
(provider, model)."""

from __future__ import annotations

import heapq
import logging
import struct
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field

from sidecar.component import ProcessorFactory, ProcessorSettings, register_processor
from sidecar.configtypes import Strict
from sidecar.model import Signal, Work
from sidecar.processors import genai_names, log_usage, span_index, wire
from sidecar.processors import genai_usage as gu
from sidecar.processors import prices as prices_module
from sidecar.processors.prices import MAX_NAME, FastRates, Price, PriceBook, Rates
from sidecar.telemetry import metrics

log = logging.getLogger(__name__)

# Every usage attribute of every dialect contains one of these byte strings; a log request
# without them has no model call and is not parsed or walked.
_PRESCAN = (b"okens", b"token_count")
# spans walked (a trace request without any is not parsed or walked): those that may hold
# usage, and agent roots (AI SDK v7 names the agent on the root only; Traceloop
# agent/workflow spans; AI SDK v6 functionId)
_SPANS = span_index.Needles((*_PRESCAN, b"invoke_agent", b"create_agent", b"traceloop.",
                             b"functionId", b"ai.telemetry.metadata.agent",
                             # dialect names with canonical ones (genai_names.py)
                             b"openinference.span.kind", b"llm.", b"ai.operationId"))
# a walked span: what was read, its attributes (key -> serialized AnyValue) and the keys
# that may be flattened messages
_Found = tuple[gu.Scan, Mapping[str, bytes], Iterable[str]]
_Series = tuple[tuple[str, ...], tuple[tuple[str, ...], ...], list[float], list[float]]
OTHER = "other"
UNKNOWN = "unknown"
TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation", "reasoning")
# price lookups of models not seen before, per request (the rest of the request's new models
# are left unpriced, counted as lookup failures, and looked up again in later requests)
LOOKUPS_PER_REQUEST = 64
# label values longer than this count as "other"
MAX_LABEL = 128
# label combinations with their own series; past this, a new combination counts as all "other"
MAX_SERIES = 5000
# (provider, model) pairs logged as unpriced; past this, only the counter tells
_MAX_LOGGED = 1000
_TRACE_ID_SIZE = 16
# the span memo (`_Known`): entries, and the bytes of the values a key holds at most (a span
# whose read values are longer takes the full path, uncached)
MAX_KNOWN = 4096
MAX_KNOWN_BYTES = 1024
_COUNT_KEYS = frozenset(gu.COUNT_KEYS)


_Pending = tuple[bytes, str | None, str | None, str | None, str, str, float | None, int,
                 tuple[int, int, int, int, int]]
_SIMPLE_COUNTS = frozenset((gu.CANONICAL_COUNT_KEYS[gu.INPUT], gu.CANONICAL_COUNT_KEYS[gu.OUTPUT]))


def _tokens(usage: gu.GenAIUsage) -> tuple[int, int, int, int, int]:
    return (usage.input, usage.output, usage.cache_read, usage.cache_write, usage.reasoning)


def _prefix(key: str) -> bytes:
    """A double attribute's bytes without its 8 value bytes (wire.DoubleAttribute's)."""
    return wire.attribute(key, 1.0)[:-8]


@dataclass(slots=True)
class _Known:
    """What the cost processor does with a span, from the set of known keys it holds and
    the serialized values of all but the counts: spans of one instrumentation, model,
    agent and tenant share one, so only the counts are read per span."""

    has_usage: bool
    # (canonical field, its keys in precedence order) for the count fields present
    counts: tuple[tuple[int, tuple[str, ...]], ...]
    # the model call's count-free usage; None: not a model call
    static: gu.StaticUsage | None
    remember: str | None  # the agent the span names for its trace
    tenant: str | None
    # no counts but the canonical input and output ones, no cost on the span
    simple: bool
    # (rates, struct, ...): the attribute bytes of a simple call, made on first use
    template: tuple[FastRates, struct.Struct, tuple[bytes, ...], bytes, bytes, bytes,
                    bytes] | None = None


class PriceOverride(Strict):
    """USD per million tokens for a model the data lacks or prices differently for you."""

    model: str = Field(min_length=1)
    provider: str | None = None  # a `gen_ai.provider.name` value; None: any provider
    input: Decimal = Field(ge=0)
    output: Decimal = Field(default=Decimal(0), ge=0)
    cache_read: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)


class CostSettings(ProcessorSettings):
    # on by default: an empty config prices spans (issue 12)
    enabled: bool = True
    prices: list[PriceOverride] = Field(default_factory=list)
    # provider -> factor on every price of that provider (negotiated discounts)
    multipliers: dict[str, Decimal] = Field(default_factory=dict)
    # providers whose calls cost nothing (self-hosted: ollama, vllm)
    free_providers: list[str] = Field(default_factory=list)
    # `gen_ai.provider.name` value -> genai-prices provider id
    provider_aliases: dict[str, str] = Field(default_factory=dict)
    # `gen_ai.operation.name` values priced besides chat, text_completion,
    # generate_content and embeddings
    extra_operations: list[str] = Field(default_factory=list)
    # span or resource attributes naming the tenant, first found wins
    tenant_keys: list[str] = Field(default_factory=lambda: ["tenant.id", "tenantId", "tenant"])
    # values per metric label with their own series (the top ones by volume); the rest are
    # counted as "other"
    label_values: int = Field(default=50, ge=1, le=10_000)
    # requests between rankings of the label values by volume (0: the first ones seen keep
    # their series)
    label_rerank_requests: int = Field(default=100, ge=0, le=1_000_000)
    # trace_id -> agent entries remembered for child spans that do not name their agent
    agent_traces: int = Field(default=10_000, ge=0, le=1_000_000)


class LabelGuard:
    """The top `limit` values of a label by volume, then `other`: the series count stays
    bounded whatever the spans say. Values get their own series as they come until the
    limit is reached; then, at each `rerank` (the processor passes the volumes it counted
    since the last), the `limit` values of highest volume (earlier volume counts half at
    each rerank) keep or get one. A value that falls out stops being counted under its
    name (its series keeps what it had: counters never go back) and `other` takes its
    later counts; one that rises is counted under its name from then on."""

    __slots__ = ("_limit", "_seen", "_volume")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._volume: dict[str, float] = {}

    def __call__(self, value: str | None) -> str:
        if not value:
            return UNKNOWN
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or len(value) > MAX_LABEL:
            return OTHER
        self._seen.add(value)
        return value

    def rerank(self, volumes: Mapping[object, float]) -> bool:
        """Fold in the volumes since the last rerank; True when the values kept changed."""
        merged = {v: c / 2 for v, c in self._volume.items() if c >= 1}
        for value, count in volumes.items():
            if isinstance(value, str) and value and len(value) <= MAX_LABEL and count > 0:
                merged[value] = merged.get(value, 0.0) + count
        keep = 4 * self._limit  # the volume table's bound
        if len(merged) > keep:
            merged = dict(heapq.nlargest(keep, merged.items(), key=itemgetter(1)))
        self._volume = merged
        seen = self._seen
        top = heapq.nlargest(self._limit, merged, key=lambda v: (merged[v], v in seen))
        # values counted before the limit and quiet since keep their series while there
        # is room (the volume table forgets quiet values)
        live = set(top)
        for value in seen:
            if len(live) >= self._limit:
                break
            live.add(value)
        if live == seen:
            return False
        self._seen = live
        return True


def volumes_by(entries: Iterable[tuple[Sequence[object], list[float]]],
               positions: int) -> list[dict[object, float]]:
    """Per label position, the volume of each raw value over (raw key, [.., count])
    entries; the counts are reset."""
    out: list[dict[object, float]] = [{} for _ in range(positions)]
    for key, entry in entries:
        count = entry[-1]
        if count:
            entry[-1] = 0.0
            for table, value in zip(out, key, strict=False):
                table[value] = table.get(value, 0.0) + count
    return out


# span attribute bytes start with Span.attributes' tag; a log record's have their own
_LOG_TAG = bytes([LogRecord.DESCRIPTOR.fields_by_name["attributes"].number << 3 | 2])
_USD = wire.attribute("gen_ai.usage.cost.currency", "USD")
_SOURCE_LOCAL = wire.attribute("gen_ai.usage.cost.source", "local")
_SOURCE_PROVIDER = wire.attribute("gen_ai.usage.cost.source", "provider")
_INPUT_ADJUSTED = wire.attribute("sidecar.cost.input_adjusted", True)
_COST = wire.DoubleAttribute("gen_ai.usage.cost")
_AMOUNT = wire.DoubleAttribute("gen_ai.usage.cost.amount")
_LOCAL_AMOUNT = wire.DoubleAttribute("sidecar.cost.local_amount")
_COST_INPUT = wire.DoubleAttribute("gen_ai.cost.input_tokens")
_COST_OUTPUT = wire.DoubleAttribute("gen_ai.cost.output_tokens")
_COST_CACHE_READ = wire.DoubleAttribute("gen_ai.cost.cache_read.input_tokens")
_COST_CACHE_WRITE = wire.DoubleAttribute("gen_ai.cost.cache_creation.input_tokens")
# spans whose agent name may matter to the model calls of their trace
_AGENT_HINTS = frozenset(k for k, (field, _) in gu.STRING_KEYS.items() if field == gu.AGENT) \
    | {gu.TRACELOOP_KIND_KEY, gu.TRACELOOP_WORKFLOW_KEY}


def _string_attr(attributes: Iterable[KeyValue], keys: tuple[str, ...]) -> str | None:
    wanted = None
    rank = len(keys)
    for kv in attributes:
        if kv.key in keys:
            index = keys.index(kv.key)
            if index < rank and kv.value.WhichOneof("value") == "string_value":
                wanted, rank = kv.value.string_value, index
    return wanted


class LlmCost:
    name = "cost"
    mutates = True
    signals = frozenset({Signal.TRACES, Signal.LOGS})

    def __init__(self, settings: CostSettings) -> None:
        overrides = {(o.provider, o.model): Rates(o.input, o.output, o.cache_read, o.cache_write)
                     for o in settings.prices}
        self.book = PriceBook(overrides, settings.multipliers, frozenset(settings.free_providers),
                              settings.provider_aliases)
        self._extra = frozenset(settings.extra_operations)
        self._tenant_keys = tuple(settings.tenant_keys)
        self._known = gu.KNOWN_KEYS | frozenset(self._tenant_keys) | genai_names.SOURCES
        self._read_keys = gu.KNOWN_KEYS | frozenset(self._tenant_keys)
        self._canonical_kvs: dict[tuple[str, str], bytes] = {}
        self._provenance_kvs: dict[tuple[str, str | None, str, str], tuple[bytes, ...]] = {}
        self._guards = {label: LabelGuard(settings.label_values) for label in metrics.LLM_LABELS}
        self._agents: OrderedDict[bytes, str] = OrderedDict()
        self._agent_limit = settings.agent_traces
        self._logged: set[tuple[str, str]] = set()
        # raw label values -> (guarded labels, their token_type keys, latency histogram row,
        # [calls since the last ranking of the label values])
        self._series: dict[tuple[str | None, ...], _Series] = {}
        self._rerank_every = settings.label_rerank_requests
        self._requests = 0
        self._labels_seen: set[tuple[str, ...]] = set()
        # (known keys present, serialized values of the non-count ones) -> _Known
        self._known_spans: dict[tuple[frozenset[str], tuple[bytes, ...]], _Known] = {}
        # known keys present -> the non-count ones, sorted
        self._static_keys: dict[frozenset[str], tuple[str, ...]] = {}

    def process(self, work: Work) -> None:
        self._requests += 1
        if self._rerank_every and self._requests % self._rerank_every == 0:
            self._rerank()
        payload = work.payload
        if work.signal is Signal.LOGS:
            if any(marker in payload for marker in _PRESCAN):
                self.book.lookups_left = LOOKUPS_PER_REQUEST
                self._process_logs(work)
            return
        # one search over the whole request: none of the needles, nothing to read
        matches = _SPANS.matches(payload)
        if not matches:
            return
        self.book.lookups_left = LOOKUPS_PER_REQUEST
        try:
            lay = span_index.layout(payload)
        except span_index.WireError:
            lay = None  # bytes the parser took but the walk does not follow: walk it all
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        resources = message.resource_spans
        if lay is not None:
            hits = _SPANS.spans(payload, lay, matches)
            if not hits:
                work.read_only()
                return  # usage bytes outside any span (a resource attribute, an event)
            positions = [(lay.positions[h], h) for h in hits]
        else:
            positions = [((i, j, k), -1) for i, rs in enumerate(resources)
                         for j, ss in enumerate(rs.scope_spans) for k in range(len(ss.spans))]
        extra: dict[tuple[int, int, int], bytes] = {}
        pending: list[_Pending] = []
        resource_index = -1
        scope_at: tuple[int, int] = (-1, -1)
        service, resource_tenant = UNKNOWN, None
        for position, hit in positions:
            i, j, k = position
            if i != resource_index:
                resource_index = i
                resource_attrs = resources[i].resource.attributes
                service = _string_attr(resource_attrs, ("service.name",)) or UNKNOWN
                resource_tenant = _string_attr(resource_attrs, self._tenant_keys)
            if scope_at != (i, j):  # spans of one scope come in a row
                scope_at = (i, j)
                scope_spans = resources[i].scope_spans[j].spans
            span = scope_spans[k]
            if lay is None:
                if not _SPANS.in_any(span.SerializeToString()):
                    continue
                found = self._scan_message(span)
            else:
                raw = payload[lay.starts[hit]:lay.ends[hit]]
                attributes = span_index.SpanView.FromString(raw).attributes  # type: ignore[attr-defined]
                present = self._known.intersection(attributes)
                if not present:
                    continue
                if len(attributes) != len(span.attributes):
                    found = self._scan_message(span)  # duplicate keys: the first one counts
                else:
                    known = self._known_span(present, attributes)
                    if known is not None:
                        self._fast_span(known, attributes, span, position, service,
                                        resource_tenant, extra, pending)
                        continue
                    found = self._scan_view(raw, attributes, present)
            if found is None:
                continue
            scanned, raw_values, message_keys = found
            sources = scanned.present & genai_names.SOURCES
            if not gu.has_usage(scanned.present):
                if not _AGENT_HINTS.isdisjoint(scanned.present):
                    named = gu.agent_of(scanned)
                    if named is not None:
                        self._remember(span.trace_id, named)
                self._add_names(span, position, raw_values, sources, message_keys, extra)
                continue
            for reason in scanned.invalid:
                metrics.LLM_USAGE_INVALID.labels(reason).inc()
            named = gu.agent_of(scanned)
            if named is not None:
                self._remember(span.trace_id, named)
            usage = gu.usage_of(scanned, self._extra)
            if usage is None:
                self._add_names(span, position, raw_values, sources, message_keys, extra)
                continue
            out: list[bytes] = []
            cost = self._cost_attributes(usage, span.start_time_unix_nano, out)
            if sources:
                out += genai_names.added(raw_values, sources, message_keys, gu.raw_scalar,
                                         skip=(key for key, _ in usage.missing))
            added = b"".join(out)
            # the same fields on the message (for later processors) and in the bytes
            span.MergeFromString(added)
            extra[position] = added
            tenant = self._tenant(scanned) or resource_tenant
            duration = span.end_time_unix_nano - span.start_time_unix_nano
            pending.append((span.trace_id, usage.agent, usage.provider, usage.model, service,
                            tenant or UNKNOWN, cost, duration, _tokens(usage)))
        if not extra:
            work.read_only()  # nothing was edited: spare the stage a re-serialisation
            return
        if lay is not None:
            work.edited(span_index.splice(payload, lay, extra))
        agents = self._agents
        for trace_id, agent, provider, model, service_name, tenant_name, cost, duration, \
                tokens in pending:
            self._count(provider, model, service_name, agent or agents.get(trace_id),
                        tenant_name, cost, duration, tokens)

    def _process_logs(self, work: Work) -> None:
        message = work.message
        assert isinstance(message, ExportLogsServiceRequest)
        changed = False
        for resource_logs in message.resource_logs:
            resource_attrs = resource_logs.resource.attributes
            service = _string_attr(resource_attrs, ("service.name",)) or UNKNOWN
            resource_tenant = _string_attr(resource_attrs, self._tenant_keys)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    if record.event_name == log_usage.DETAILS_EVENT:
                        continue  # its span carries the same usage
                    flat = log_usage.flatten(record.attributes, record.body)
                    if flat.get("event.name") == log_usage.DETAILS_EVENT \
                            or "gen_ai.usage.cost.source" in flat:
                        continue
                    invalid: list[str] = []
                    usage = log_usage.usage_of(flat, invalid)
                    for reason in invalid:
                        metrics.LLM_USAGE_INVALID.labels(reason).inc()
                    if usage is None:
                        continue
                    changed = True
                    out: list[bytes] = []
                    cost = self._cost_attributes(usage, record.time_unix_nano, out)
                    record.MergeFromString(b"".join(_LOG_TAG + a[1:] for a in out))
                    tenant = next((v for k in self._tenant_keys
                                   if isinstance(v := flat.get(k), str) and v), None)
                    agent = usage.agent or self._agents.get(record.trace_id)
                    self._count(usage.provider, usage.model, service, agent,
                                tenant or resource_tenant or UNKNOWN, cost, None,
                                _tokens(usage))
        if not changed:
            work.read_only()

    def _tenant(self, scanned: gu.Scan) -> str | None:
        for key in self._tenant_keys:
            value = scanned.extra.get(key)
            if isinstance(value, str):
                return value
        return None

    @staticmethod
    def _add_names(span: Span, position: tuple[int, int, int], raw_values: Mapping[str, bytes],
                   sources: frozenset[str], message_keys: Iterable[str],
                   extra: dict[tuple[int, int, int], bytes]) -> None:
        """The canonical names of a span that is not priced (genai_names.py)."""
        if not sources:
            return
        names = b"".join(genai_names.added(raw_values, sources, message_keys, gu.raw_scalar))
        if names:
            span.MergeFromString(names)
            extra[position] = names

    def _scan_message(self, span: Span) -> _Found | None:
        hits = gu.collect(span.attributes, self._known)
        if hits is None:
            return None
        raw_values: dict[str, bytes] = {}
        for kv in span.attributes:
            raw_values.setdefault(kv.key, kv.value.SerializeToString())
        return (self._resolve({key: gu.scalar(value) for key, value in hits.items()},
                              frozenset(hits)), raw_values, list(raw_values))

    def _known_span(self, present: frozenset[str], attributes: Mapping[str, bytes],
                    ) -> _Known | None:
        """The memoised reading of a span, None when it takes the full path (dialect names
        to add, or values too long to keep)."""
        static_keys = self._static_keys.get(present)
        if static_keys is None:
            if genai_names.effective(present & genai_names.SOURCES):
                return None
            # the dialect names read only for `genai_names` (OpenInference's generic
            # `session.id`, `tool.name`, ...) change nothing here: not part of the key
            static_keys = tuple(sorted((present - _COUNT_KEYS) & self._read_keys))
            if len(self._static_keys) >= MAX_KNOWN:
                self._static_keys.clear()
            self._static_keys[present] = static_keys
        values = tuple([attributes[key] for key in static_keys])
        memo_key = (present, values)
        known = self._known_spans.get(memo_key)
        if known is not None:
            return known
        if sum(map(len, values)) > MAX_KNOWN_BYTES:
            return None
        raw_scalar = gu.raw_scalar
        scanned = self._resolve({key: raw_scalar(attributes[key]) for key in static_keys},
                                frozenset(static_keys))
        scanned.present = present
        has_usage = gu.has_usage(present)
        count_plan = gu.plan(present).counts
        static = gu.static_usage(scanned, self._extra) if has_usage else None
        remember = gu.agent_of(scanned) \
            if has_usage or not _AGENT_HINTS.isdisjoint(present) else None
        simple = static is not None and static.reported_cost is None \
            and present & _COUNT_KEYS <= _SIMPLE_COUNTS
        known = _Known(has_usage, tuple((f, names) for f, names in enumerate(count_plan)
                                        if names), static, remember, self._tenant(scanned),
                       simple)
        if len(self._known_spans) >= MAX_KNOWN:
            self._known_spans.clear()
        self._known_spans[memo_key] = known
        return known

    def _fast_span(self, known: _Known, attributes: Mapping[str, bytes], span: Span,
                   position: tuple[int, int, int], service: str, resource_tenant: str | None,
                   extra: dict[tuple[int, int, int], bytes],
                   pending: list[_Pending],
                   ) -> None:
        """What the full path does with a span that has no dialect names to add, from its
        memoised reading and its counts (tests compare the two)."""
        if known.remember is not None:
            self._remember(span.trace_id, known.remember)
        if not known.has_usage:
            return
        counts: list[int | None] = [None] * gu.COUNT_FIELDS
        raw_scalar, parse_count = gu.raw_scalar, gu.parse_count
        for field, names in known.counts:
            for name in names:
                try:
                    counts[field] = parse_count(raw_scalar(attributes[name]))
                    break
                except gu.InvalidCount as exc:
                    metrics.LLM_USAGE_INVALID.labels(str(exc)).inc()
        static = known.static
        if static is None:
            return
        start = span.start_time_unix_nano
        model = static.model
        if known.simple:
            # only the canonical input and output counts: nothing to adjust or add
            inp, output = counts[gu.INPUT], counts[gu.OUTPUT]
            if inp is None and output is None:
                return
            inp = inp or 0
            output = output or 0
            rates = self.book.fast_rates(static.provider, model, start,
                                         static.service_tier) if model else None
            if rates is not None:
                template = known.template
                if template is None or template[0] is not rates:
                    template = known.template = self._template(static, rates)
                rate = FastRates.rate
                plain = rate(rates.input, inp) * inp
                out = rate(rates.output, inp) * output
                scale = rates.denominator
                cost: float | None = (plain + out) / scale
                added = template[1].pack(*template[2], cost, template[3], cost, template[4],
                                         plain / scale, template[5], out / scale, template[6])
                span.MergeFromString(added)
                extra[position] = added
                pending.append((span.trace_id, static.agent, static.provider, model, service,
                                known.tenant or resource_tenant or UNKNOWN, cost,
                                span.end_time_unix_nano - start, (inp, output, 0, 0, 0)))
                return
        usage = gu.finish_usage(static, counts)
        if usage is None:
            return
        parts: list[bytes] = []
        rates = self.book.fast_rates(usage.provider, model, start, usage.service_tier) \
            if model and usage.reported_cost is None else None
        if rates is None:
            cost = self._cost_attributes(usage, start, parts)
        else:
            cost = self._fast_cost(usage, rates, parts)
        added = b"".join(parts)
        span.MergeFromString(added)
        extra[position] = added
        pending.append((span.trace_id, usage.agent, usage.provider, model, service,
                        known.tenant or resource_tenant or UNKNOWN, cost,
                        span.end_time_unix_nano - start, _tokens(usage)))

    def _template(self, static: gu.StaticUsage, rates: FastRates,
                  ) -> tuple[FastRates, struct.Struct, tuple[bytes, ...], bytes, bytes,
                             bytes, bytes]:
        """The attributes of a simple call priced at `rates`, as one struct: the same
        bytes `_fast_cost` joins (tests compare them), with the four doubles packed in."""
        head = b"".join(self._canonical(key, value) for key, value in static.missing)
        tail = b"".join(self._provenance_of(prices_module.DATA_VERSION, rates.price_date,
                                            rates.model_id, rates.provider_id))
        pieces = (head + _prefix("gen_ai.usage.cost"), _prefix("gen_ai.usage.cost.amount"),
                  _USD + _SOURCE_LOCAL + _prefix("gen_ai.cost.input_tokens"),
                  _prefix("gen_ai.cost.output_tokens"), tail)
        layout = "<{}sd{}sd{}sd{}sd{}s".format(*map(len, pieces))
        return (rates, struct.Struct(layout), (pieces[0],), pieces[1], pieces[2], pieces[3],
                pieces[4])

    def _fast_cost(self, usage: gu.GenAIUsage, rates: FastRates, out: list[bytes]) -> float:
        """`_cost_attributes` of a call priced by the fast path, in integers."""
        for key, value in usage.missing:
            out.append(self._canonical(key, value))
        if usage.input_adjusted:
            out.append(_INPUT_ADJUSTED)
        rate = FastRates.rate
        total_input = usage.input
        plain = total_input
        cache_read = cache_write = 0
        if rates.cache_read is not None:
            plain -= usage.cache_read
            cache_read = rate(rates.cache_read, total_input) * usage.cache_read
        if rates.cache_write is not None:
            plain -= usage.cache_write
            cache_write = rate(rates.cache_write, total_input) * usage.cache_write
        plain *= rate(rates.input, total_input)
        output = rate(rates.output, total_input) * usage.output
        scale = rates.denominator
        total = (plain + cache_read + cache_write + output) / scale
        out += (_COST(total), _AMOUNT(total), _USD, _SOURCE_LOCAL, _COST_INPUT(plain / scale),
                _COST_OUTPUT(output / scale))
        if usage.cache_read:
            out.append(_COST_CACHE_READ(cache_read / scale))
        if usage.cache_write:
            out.append(_COST_CACHE_WRITE(cache_write / scale))
        out += self._provenance_of(prices_module.DATA_VERSION, rates.price_date,
                                   rates.model_id, rates.provider_id)
        return total

    def _scan_view(self, raw: bytes, attributes: Mapping[str, bytes],
                   present: frozenset[str]) -> _Found:
        raw_scalar = gu.raw_scalar
        scanned = self._resolve({key: raw_scalar(attributes[key]) for key in present},
                                frozenset(present))
        message_keys = attributes if genai_names.MESSAGE_NEEDLE in raw else ()
        return scanned, attributes, message_keys

    def _resolve(self, values: dict[str, object], keys: frozenset[str]) -> gu.Scan:
        scanned = gu.resolve_values(values, keys)
        scanned.extra = {k: values[k] for k in self._tenant_keys if k in values}
        return scanned

    def _remember(self, trace_id: bytes, agent: str) -> None:
        # only valid (16-byte) trace ids are keys, and a name past MAX_LABEL is kept cut at
        # MAX_LABEL + 1 (it counts as "other" either way): an entry is small whatever the span
        if self._agent_limit == 0 or len(trace_id) != _TRACE_ID_SIZE:
            return
        agent = agent[:MAX_LABEL + 1]
        if self._agents.get(trace_id) == agent:
            return
        self._agents[trace_id] = agent
        if len(self._agents) > self._agent_limit:
            self._agents.popitem(last=False)

    def _price_span(self, span: Span, usage: gu.GenAIUsage) -> float | None:
        """Write the usage's canonical names and its cost on the span; the cost in USD."""
        out: list[bytes] = []
        cost = self._cost_attributes(usage, span.start_time_unix_nano, out)
        span.MergeFromString(b"".join(out))
        return cost

    def _cost_attributes(self, usage: gu.GenAIUsage, start_ns: int, out: list[bytes],
                         ) -> float | None:
        """Append the usage's canonical names and cost attributes (as span attribute
        bytes) to `out`; the cost in USD."""
        for key, value in usage.missing:
            out.append(self._canonical(key, value))
        if usage.input_adjusted:
            out.append(_INPUT_ADJUSTED)
        model = usage.model
        price: Price | None = None
        if model:
            price = self.book.price(
                usage.provider, model, start_ns, input_tokens=usage.input,
                output_tokens=usage.output, cache_read=usage.cache_read,
                cache_write=usage.cache_write, service_tier=usage.service_tier)
        reported = usage.reported_cost
        if price is None:
            self._unpriced(usage.provider or UNKNOWN, model or UNKNOWN)
            if reported is None:
                return None
        if reported is not None:
            if not usage.has_cost_attribute:
                out.append(_COST(reported))
            out += (_AMOUNT(reported), _USD, _SOURCE_PROVIDER)
            if price is not None:
                local = float(price.total)
                out += (_LOCAL_AMOUNT(local), *self._provenance(price))
                if abs(local - reported) > 0.01 * max(local, reported):
                    metrics.LLM_COST_DISAGREEMENTS.labels(
                        self._guards["provider"](usage.provider),
                        self._guards["model"](model)).inc()
            return reported
        assert price is not None
        total = float(price.total)
        uncached = price.uncached_input if price.uncached_input is not None else price.input
        out += (_COST(total), _AMOUNT(total), _USD, _SOURCE_LOCAL,
                _COST_INPUT(float(uncached)), _COST_OUTPUT(float(price.output)))
        if price.cache_read is not None and usage.cache_read:
            out.append(_COST_CACHE_READ(float(price.cache_read)))
        if price.cache_write is not None and usage.cache_write:
            out.append(_COST_CACHE_WRITE(float(price.cache_write)))
        out += self._provenance(price)
        return total

    def _canonical(self, key: str, value: str | int) -> bytes:
        """A canonical usage attribute's bytes; the few string values (provider, model,
        operation names) are built once, not per span (~1.5 µs each)."""
        if not isinstance(value, str) or len(value) > MAX_LABEL:
            return wire.attribute(key, value)
        memo = self._canonical_kvs
        data = memo.get((key, value))
        if data is None:
            data = wire.attribute(key, value)
            if len(memo) >= MAX_SERIES:
                memo.clear()
            memo[key, value] = data
        return data

    def _provenance(self, price: Price) -> tuple[bytes, ...]:
        return self._provenance_of(price.source, price.price_date, price.model_id,
                                   price.provider_id)

    def _provenance_of(self, source: str, price_date: str | None, model_id: str,
                       provider_id: str) -> tuple[bytes, ...]:
        key = (source, price_date, model_id, provider_id)
        data = self._provenance_kvs.get(key)
        if data is None:
            parts = [wire.attribute("sidecar.cost.prices", source)]
            if price_date is not None:
                parts.append(wire.attribute("sidecar.cost.price_date", price_date))
            parts += (wire.attribute("sidecar.cost.model_id", model_id),
                      wire.attribute("sidecar.cost.provider_id", provider_id))
            data = tuple(parts)
            if len(model_id) > MAX_NAME:
                return data  # a free provider's model id is the span's name: not kept
            if len(self._provenance_kvs) >= MAX_SERIES:
                self._provenance_kvs.clear()
            self._provenance_kvs[key] = data
        return data

    def _unpriced(self, provider: str, model: str) -> None:
        metrics.LLM_PRICE_LOOKUP_FAILURES.labels(
            self._guards["provider"](provider), self._guards["model"](model)).inc()
        pair = (provider[:200], model[:200])
        if pair not in self._logged and len(self._logged) < _MAX_LOGGED:
            self._logged.add(pair)
            log.warning("no price for model %r of provider %r: its calls carry no cost "
                        "(add it under processors.cost.prices)", model[:200], provider[:200])

    def _count(self, provider: str | None, model: str | None, service: str,
               agent: str | None, tenant: str, cost: float | None, duration_ns: int | None,
               tokens: tuple[int, int, int, int, int]) -> None:
        raw = (provider, model, service, agent, tenant)
        series = self._series.get(raw)
        if series is None:
            series = self._new_series(raw)
        labels, token_keys, duration_row, volume = series
        volume[0] += 1
        # CounterTable.add, inlined (once per model call)
        calls = metrics.LLM_CALLS.values
        calls[labels] = calls.get(labels, 0.0) + 1.0
        if cost is not None:
            costs = metrics.LLM_COST.values
            costs[labels] = costs.get(labels, 0.0) + cost
        totals = metrics.LLM_TOKENS.values
        for key, count in zip(token_keys, tokens, strict=True):
            if count:
                totals[key] = totals.get(key, 0.0) + count
        if duration_ns is not None:
            seconds = max(duration_ns, 0) / 1e9
            duration_row[bisect_left(metrics.LLM_DURATION.bounds, seconds)] += 1
            duration_row[-1] += seconds

    def _rerank(self) -> None:
        """Rank each label's values by the calls counted since the last ranking."""
        volumes = volumes_by(((raw, series[3]) for raw, series in self._series.items()),
                             len(metrics.LLM_LABELS))
        changed = [self._guards[label].rerank(volume)
                   for label, volume in zip(metrics.LLM_LABELS, volumes, strict=True)]
        if any(changed):
            self._series.clear()  # their labels were made by the old ranking

    def _new_series(self, raw: tuple[str | None, ...]) -> _Series:
        guards = self._guards
        provider, model, service, agent, tenant = raw
        labels: tuple[str, ...] = (
            guards["provider"](provider), guards["model"](model), guards["service"](service),
            guards["agent"](agent), guards["tenant"](tenant))
        if labels not in self._labels_seen and len(self._labels_seen) >= MAX_SERIES:
            labels = (OTHER,) * len(labels)
        self._labels_seen.add(labels)
        series = (labels, tuple((*labels, t) for t in TOKEN_TYPES),
                  metrics.LLM_DURATION.row(labels), [0.0])
        if len(self._series) < MAX_SERIES:
            self._series[raw] = series
        return series


def _create(settings: ProcessorSettings) -> LlmCost:
    assert isinstance(settings, CostSettings)
    return LlmCost(settings)


register_processor(ProcessorFactory("cost", CostSettings, 20, _create))
