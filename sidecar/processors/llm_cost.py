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
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pydantic import Field

from sidecar import _spanwalk
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
# spans read: those holding a known key that contains one of these (keys that may hold
# usage, agent roots: Traceloop agent/workflow spans, AI SDK v6 functionId and v7 metadata,
# and dialect names with canonical ones, genai_names.py), or an agent-root operation
_READ_IF_KEY_HAS = ("okens", "token_count", "traceloop.", "functionId",
                    "ai.telemetry.metadata.agent", "openinference.span.kind", "llm.",
                    "ai.operationId")
_AGENT_OPERATIONS = ("invoke_agent", "create_agent")
# a read span: what was read, its attributes (key -> serialized AnyValue) and the keys
# that may be flattened messages
_Found = tuple[gu.Scan, Mapping[str, bytes], Iterable[str]]
# a label combination's counters: [labels, calls cell, cost cell, token cells (per token
# type), latency histogram row, calls since the last ranking of the label values]; the cost
# and token cells are made on first use (a series nothing was counted in is not exported)
_Series = list[Any]
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
# the (service, tenant) pairs a call's C entry holds at most (`_hot_entry`)
_HOT_PAIRS = 64
_COUNT_KEYS = frozenset(gu.COUNT_KEYS)
_MAX_TOKENS = gu.MAX_TOKENS


_Pending = tuple[bytes, str | None, str | None, str | None, str, str, float | None, int,
                 tuple[int, int, int, int, int]]
# how the matched attributes of a span are read, per tuple of their key ids in wire order:
# (present keys, positions of the non-count ones sorted by key, (count field, positions of
# its keys among the span's count values, in precedence order) per count field present);
# None: the full path (dialect names to add)
_Plan = tuple[frozenset[str], tuple[int, ...], tuple[tuple[int, tuple[int, ...]], ...]] | None
_DAY_NS = 86_400_000_000_000
# integers up to this are exact doubles (the C walk's prices stay below it)
_EXACT = 1 << 53
_first = itemgetter(0)
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
    # (canonical field, the positions of its keys among the span's matched values, in
    # precedence order) for the count fields present
    counts: tuple[tuple[int, tuple[int, ...]], ...]
    # the model call's count-free usage; None: not a model call
    static: gu.StaticUsage | None
    remember: str | None  # the agent the span names for its trace
    tenant: str | None
    # no counts but the canonical input and output ones, no cost on the span
    simple: bool
    # where those two are among the span's count values (-1: absent)
    simple_at: tuple[int, int]
    # (rates, struct, ...): the attribute bytes of a simple call, made on first use
    template: tuple[FastRates, struct.Struct, tuple[bytes, ...], bytes, bytes, bytes,
                    bytes] | None = None
    # (UTC day, the simple call's rates that day) of the last call priced
    day_rates: tuple[int, FastRates] | None = None
    # what the inline path in `process` needs, set by `_fast_span` once it priced a simple
    # call that names its agent: (UTC day, rates, pack, the template's byte pieces, where
    # the input and output counts are)
    hot: tuple[Any, ...] | None = None
    # (series generation, service, resource tenant, series) of the last call counted
    series: tuple[int, str, str | None, _Series] | None = None
    key: bytes = b""  # the walk's memo key it is held under


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
        # bumped when the series are dropped (spans' `_Known.series` are then stale)
        self._series_generation = 0
        self._labels_seen: set[tuple[str, ...]] = set()
        # the walk's memo key of a span (matched key ids, values but the counts) -> _Known
        self._known_spans: dict[bytes, _Known] = {}
        # the inline path's calls as the C walk prices them (`_spanwalk.c`, hot_span): memo
        # key -> entry (`_hot_entry`; (agent,) for a span read for its agent only; a dict
        # (service, tenant) -> entry for a call met under several resources), and a
        # resource's memo key -> (service, tenant) as `_resource` gives them; `_c_hot`
        # False does it all in Python (tests compare)
        self._hot: dict[bytes, _spanwalk.HotEntry] = {}
        self._hot_resources: dict[bytes, tuple[str, str | None]] = {}
        self._c_hot = True
        # the walk's attribute keys (id: index) and which make a span read
        self._key_names = tuple(sorted(self._known))
        self._trigger_keys = frozenset(k for k in self._known
                                       if any(part in k for part in _READ_IF_KEY_HAS))
        agent_roots = tuple(AnyValue(string_value=op).SerializeToString()
                            for op in _AGENT_OPERATIONS)
        self._span_keys = _spanwalk.Matcher(
            [k.encode() for k in self._key_names],
            [True if k in self._trigger_keys else agent_roots if k == gu.OPERATION_KEY
             else False for k in self._key_names],
            [k.encode() for k in self._key_names if k in _COUNT_KEYS],
            # the dialect names read only for `genai_names` (OpenInference's `session.id`,
            # ...): a span that uses them takes the full path (`_plan` gives None), any other
            # never reads their values, so a new session is not a new memo entry
            [k.encode() for k in self._key_names if k not in self._read_keys])
        self._resource_names = tuple(dict.fromkeys(("service.name", *self._tenant_keys)))
        self._tenant_rank = {k: n for n, k in reversed(list(enumerate(self._tenant_keys)))}
        self._resource_keys = _spanwalk.Matcher([k.encode() for k in self._resource_names],
                                                [False] * len(self._resource_names))
        # the matched key ids of a span, in wire order -> how they are read
        self._plans: dict[tuple[int, ...], _Plan] = {}
        # a resource's matched (ids, values) -> its service and tenant
        self._resources: dict[tuple[tuple[int, ...], tuple[bytes, ...]],
                              tuple[str, str | None]] = {}

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
        hot_edits: list[tuple[int, bytes]] = []
        in_c = (self._hot, self._hot_resources, self._agents if self._agent_limit else None,
                self._agent_limit, self._series_generation, _MAX_TOKENS,
                metrics.LLM_DURATION.bounds, hot_edits) if self._c_hot else None
        try:
            resources, spans = _spanwalk.walk(payload, self._span_keys, self._resource_keys,
                                              self._known_spans, in_c)
        except ValueError:
            # bytes the parser took but the walk does not follow (groups): the message
            self.book.lookups_left = LOOKUPS_PER_REQUEST
            self._process_message(work)
            return
        if not spans and not hot_edits:
            return
        self.book.lookups_left = LOOKUPS_PER_REQUEST
        extra: list[tuple[int, bytes]] = []
        pending: list[_Pending] = []
        resource_at = -1
        service, resource_tenant = UNKNOWN, None
        plans = self._plans
        known_spans = self._known_spans
        agents = self._agents
        # (series, cost, input, output, duration) of the calls priced inline
        hot_pending: list[tuple[_Series, float, int, int, int]] = []
        for r, start, end, trace_id, start_ns, end_ns, ids, values, flags, count, key, \
                counts in spans:
            if r != resource_at:
                resource_at = r
                service, resource_tenant = self._resource(resources[r])
            if not flags:
                known = known_spans.get(key)
                if known is None:
                    assert ids is not None  # the walk gives them unless memoised
                    assert values is not None
                    assert not isinstance(values, str)  # a str only in REMEMBER records
                    plan = plans[ids] if ids in plans else self._plan(ids)
                    if plan is not None:
                        known = self._known_span(key, ids, plan, values)
                if known is not None:
                    # the common model call inline (no call per span costs less): counts
                    # valid ints, rates known for its day, an agent named on the span,
                    # the series it counts in known; else `_fast_span` (tests compare them)
                    hot = known.hot
                    if hot is not None and hot[0] == start_ns // _DAY_NS:
                        _, day, struct_pack, head, mid, tail, out_key, end_key, i_at, \
                            o_at = hot
                        n_in = counts[i_at] if i_at >= 0 else 0
                        n_out = counts[o_at] if o_at >= 0 else 0
                        held = known.series
                        if type(n_in) is int and type(n_out) is int \
                                and 0 <= n_in <= _MAX_TOKENS and 0 <= n_out <= _MAX_TOKENS \
                                and held is not None and held[0] == self._series_generation \
                                and held[1] is service and held[2] is resource_tenant:
                            remember = known.remember
                            if remember is not None and agents.get(trace_id) != remember:
                                self._remember(trace_id, remember)
                            rate = day.input
                            plain = n_in * (rate if type(rate) is int
                                            else FastRates.rate(rate, n_in))
                            rate = day.output
                            part = n_out * (rate if type(rate) is int
                                            else FastRates.rate(rate, n_in))
                            scale = day.denominator
                            total = (plain + part) / scale
                            extra.append((start, struct_pack(
                                head, total, mid, total, tail, plain / scale, out_key,
                                part / scale, end_key)))
                            hot_pending.append((held[3], total, n_in, n_out,
                                                end_ns - start_ns))
                            continue
                    self._fast_span(known, counts, trace_id, start_ns, end_ns, start,
                                    service, resource_tenant, extra, pending)
                    continue
            elif flags & _spanwalk.REMEMBER:
                # a call the walk priced, whose trace's agent only the spans before it could
                # tell (the inline path's check, in order)
                assert isinstance(values, str)
                if agents.get(trace_id) != values:
                    self._remember(trace_id, values)
                continue
            raw = payload[start:end]
            found: _Found | None
            attributes = None if flags else \
                span_index.SpanView.FromString(raw).attributes  # type: ignore[attr-defined]
            if attributes is None or len(attributes) != count:
                # duplicate keys (the first one counts) or odd attributes: the message
                found = self._scan_message(Span.FromString(raw))
            else:
                names = self._key_names
                assert ids is not None  # given unless memoised (and then not read here)
                found = self._scan_view(raw, attributes, frozenset([names[i] for i in ids]))
            if found is not None:
                added = self._price_found(found, trace_id, start_ns, end_ns, service,
                                          resource_tenant, pending)
                if added:
                    extra.append((start, added))
        edits = [edit for edit in extra if edit[1]]
        if hot_edits:  # the calls the walk priced, in their place among the spans' edits
            edits += hot_edits
            edits.sort(key=_first)
        if edits:
            # cost is the last processor to read a request: the message is not kept in step
            work.edited_bytes(_spanwalk.splice(payload, edits))
        # every model call counts, priced or not (once the request's spans are all read)
        self._count_pending(pending)
        self._count_hot(hot_pending)

    def _count_hot(self, calls: list[tuple[_Series, float, int, int, int]]) -> None:
        """`_count` of the calls priced inline (their series known; the cost and token
        cells were made when the series was first given to a span)."""
        bounds = metrics.LLM_DURATION.bounds
        for series, cost, n_in, n_out, duration_ns in calls:
            series[5] += 1.0
            series[1][0] += 1.0
            cells = series[3]
            cell = series[2]
            if cell is None:
                cell = series[2] = metrics.LLM_COST.cell(series[0])
            cell[0] += cost
            if n_in:
                cell = cells[0]
                if cell is None:
                    cell = cells[0] = metrics.LLM_TOKENS.cell((*series[0], TOKEN_TYPES[0]))
                cell[0] += n_in
            if n_out:
                cell = cells[1]
                if cell is None:
                    cell = cells[1] = metrics.LLM_TOKENS.cell((*series[0], TOKEN_TYPES[1]))
                cell[0] += n_out
            seconds = max(duration_ns, 0) / 1e9
            row = series[4]
            row[bisect_left(bounds, seconds)] += 1
            row[-1] += seconds

    def _process_message(self, work: Work) -> None:
        """`process` through the message: the same spans read, the same fields added."""
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        pending: list[_Pending] = []
        changed = False
        for resource_spans in message.resource_spans:
            resource_attrs = resource_spans.resource.attributes
            service = _string_attr(resource_attrs, ("service.name",)) or UNKNOWN
            resource_tenant = _string_attr(resource_attrs, self._tenant_keys)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if not self._triggered(span.attributes):
                        continue
                    found = self._scan_message(span)
                    if found is None:
                        continue
                    added = self._price_found(found, span.trace_id, span.start_time_unix_nano,
                                              span.end_time_unix_nano, service,
                                              resource_tenant, pending)
                    if added:
                        span.MergeFromString(added)
                        changed = True
        if not changed:
            work.read_only()
        self._count_pending(pending)

    def _triggered(self, attributes: Iterable[KeyValue]) -> bool:
        """Whether `_spanwalk` reports a span with these attributes (for the same
        encodings: the walk compares an operation's serialized value)."""
        for kv in attributes:
            key = kv.key
            if key in self._trigger_keys:
                return True
            if key == gu.OPERATION_KEY and kv.value.WhichOneof("value") == "string_value" \
                    and kv.value.string_value in _AGENT_OPERATIONS:
                return True
        return False

    def _price_found(self, found: _Found, trace_id: bytes, start_ns: int, end_ns: int,
                     service: str, resource_tenant: str | None, pending: list[_Pending],
                     ) -> bytes:
        """The attributes the full path adds to a read span (b"": none), its call counted
        in `pending`."""
        scanned, raw_values, message_keys = found
        sources = scanned.present & genai_names.SOURCES
        if not gu.has_usage(scanned.present):
            if not _AGENT_HINTS.isdisjoint(scanned.present):
                named = gu.agent_of(scanned)
                if named is not None:
                    self._remember(trace_id, named)
            return self._names(raw_values, sources, message_keys)
        for reason in scanned.invalid:
            metrics.LLM_USAGE_INVALID.labels(reason).inc()
        named = gu.agent_of(scanned)
        if named is not None:
            self._remember(trace_id, named)
        usage = gu.usage_of(scanned, self._extra)
        if usage is None:
            return self._names(raw_values, sources, message_keys)
        out: list[bytes] = []
        cost = self._cost_attributes(usage, start_ns, out)
        if sources:
            out += genai_names.added(raw_values, sources, message_keys, gu.raw_scalar,
                                     skip=(key for key, _ in usage.missing))
        tenant = self._tenant(scanned) or resource_tenant
        pending.append((trace_id, usage.agent, usage.provider, usage.model, service,
                        tenant or UNKNOWN, cost, end_ns - start_ns, _tokens(usage)))
        return b"".join(out)

    def _count_pending(self, pending: list[_Pending]) -> None:
        """Count the calls of a request, once all its spans were read (a child span names
        its agent's trace after the root that names it, or before)."""
        agents = self._agents
        for trace_id, agent, provider, model, service_name, tenant_name, cost, duration, \
                tokens in pending:
            self._count(provider, model, service_name, agent or agents.get(trace_id),
                        tenant_name, cost, duration, tokens)

    def _resource(self, resource: tuple[tuple[int, ...], tuple[bytes, ...], int, bytes],
                  ) -> tuple[str, str | None]:
        """The service and tenant a resource's matched attributes name (as `_string_attr`
        reads them: the first string value of the first key in order)."""
        ids, values, _, hot_key = resource
        key = (ids, values)
        got = self._resources.get(key)
        if got is not None:
            return got
        service: str | None = None
        tenant: str | None = None
        rank = len(self._tenant_keys)
        names = self._resource_names
        for i, data in zip(ids, values, strict=True):
            value = gu.raw_scalar(data)
            if not isinstance(value, str):
                continue
            name = names[i]
            if name == "service.name" and service is None:
                service = value
            at = self._tenant_rank.get(name)
            if at is not None and at < rank:
                tenant, rank = value, at
        got = (service or UNKNOWN, tenant)
        if sum(map(len, values)) <= MAX_KNOWN_BYTES:
            if len(self._resources) >= MAX_KNOWN:
                self._resources.clear()
                self._hot_resources.clear()  # its services are the ones `is` compares
            self._resources[key] = got
            self._hot_resources[hot_key] = got
        return got

    def _plan(self, ids: tuple[int, ...]) -> _Plan:
        names = self._key_names
        present = frozenset([names[i] for i in ids])
        plan: _Plan = None
        # the dialect names read only for `genai_names` (OpenInference's generic
        # `session.id`, `tool.name`, ...) change nothing here unless effective (then the
        # full path): their values are not part of the memo key (`unkeyed`)
        if not genai_names.effective(present & genai_names.SOURCES):
            where = {names[i]: at for at, i in enumerate(ids)}
            static = tuple(where[key] for key in sorted((present - _COUNT_KEYS)
                                                       & self._read_keys))
            # the walk gives the count values apart, in wire order
            count_at = {name: at for at, name in
                        enumerate(names[i] for i in ids if names[i] in _COUNT_KEYS)}
            counts = tuple((f, tuple(count_at[name] for name in keys))
                           for f, keys in enumerate(gu.plan(present).counts) if keys)
            plan = (present, static, counts)
        if len(self._plans) >= MAX_KNOWN:
            self._plans.clear()
        self._plans[ids] = plan
        return plan

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
    def _names(raw_values: Mapping[str, bytes], sources: frozenset[str],
               message_keys: Iterable[str]) -> bytes:
        """The canonical names of a span that is not priced (genai_names.py)."""
        if not sources:
            return b""
        return b"".join(genai_names.added(raw_values, sources, message_keys, gu.raw_scalar))

    def _scan_message(self, span: Span) -> _Found | None:
        hits = gu.collect(span.attributes, self._known)
        if hits is None:
            return None
        raw_values: dict[str, bytes] = {}
        for kv in span.attributes:
            raw_values.setdefault(kv.key, kv.value.SerializeToString())
        return (self._resolve({key: gu.scalar(value) for key, value in hits.items()},
                              frozenset(hits)), raw_values, list(raw_values))

    def _known_span(self, key: bytes, ids: tuple[int, ...],
                    plan: tuple[frozenset[str], tuple[int, ...],
                                tuple[tuple[int, tuple[int, ...]], ...]],
                    values: tuple[bytes, ...]) -> _Known | None:
        """The reading of a span, memoised under the walk's key for it (its matched key ids
        and all values but the counts); None when it takes the full path (values too long
        to keep)."""
        if len(key) > MAX_KNOWN_BYTES:
            return None
        present, static_at, counts = plan
        raw_scalar = gu.raw_scalar
        names = self._key_names
        static_keys = frozenset([names[ids[at]] for at in static_at])
        scanned = self._resolve({names[ids[at]]: raw_scalar(values[at]) for at in static_at},
                                static_keys)
        scanned.present = present
        has_usage = gu.has_usage(present)
        static = gu.static_usage(scanned, self._extra) if has_usage else None
        remember = gu.agent_of(scanned) \
            if has_usage or not _AGENT_HINTS.isdisjoint(present) else None
        simple = static is not None and static.reported_cost is None \
            and present & _COUNT_KEYS <= _SIMPLE_COUNTS
        positions = dict(counts)
        simple_at = (positions.get(gu.INPUT, (-1,))[0], positions.get(gu.OUTPUT, (-1,))[0])
        known = _Known(has_usage, counts, static,
                       None if remember is None else remember[:MAX_LABEL + 1],
                       self._tenant(scanned), simple, simple_at)
        if len(self._known_spans) >= MAX_KNOWN:
            self._known_spans.clear()
            self._hot.clear()
        self._known_spans[key] = known
        known.key = key
        if not has_usage and self._c_hot:  # all `_fast_span` does with it: its agent
            self._hot[key] = (known.remember,)
        return known

    def _fast_span(self, known: _Known, values: tuple[int | bytes, ...], trace_id: bytes,
                   start: int, end: int, at: int, service: str, resource_tenant: str | None,
                   extra: list[tuple[int, bytes]], pending: list[_Pending]) -> None:
        """What the full path does with a span that has no dialect names to add, from its
        memoised reading and its count values (ints, or serialized AnyValues; tests
        compare the two)."""
        remember = known.remember
        if remember is not None and self._agents.get(trace_id) != remember:
            self._remember(trace_id, remember)
        if not known.has_usage:
            return
        static = known.static
        counts: list[int | None] = [None] * gu.COUNT_FIELDS
        raw_scalar, parse_count = gu.raw_scalar, gu.parse_count
        for field, positions in known.counts:
            for position in positions:
                value = values[position]
                try:
                    counts[field] = parse_count(value if type(value) is int
                                                else raw_scalar(value))  # type: ignore[arg-type]
                    break
                except gu.InvalidCount as exc:
                    metrics.LLM_USAGE_INVALID.labels(str(exc)).inc()
        if static is None:
            return
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
                known.day_rates = (start // _DAY_NS, rates)
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
                extra.append((at, added))
                tenant = known.tenant or resource_tenant or UNKNOWN
                pending.append((trace_id, static.agent, static.provider, model, service,
                                tenant, cost, end - start, (inp, output, 0, 0, 0)))
                if static.agent is not None:
                    # the next such call takes the inline path in `process`
                    raw = (static.provider, model, service, static.agent, tenant)
                    known.series = (self._series_generation, service, resource_tenant,
                                    self._series.get(raw) or self._new_series(raw))
                    i_at, o_at = known.simple_at
                    known.hot = (start // _DAY_NS, rates, template[1].pack, template[2][0],
                                 template[3], template[4], template[5], template[6], i_at,
                                 o_at)
                    self._hot_entry(known, rates, template)
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
        extra.append((at, b"".join(parts)))
        pending.append((trace_id, usage.agent, usage.provider, model, service,
                        known.tenant or resource_tenant or UNKNOWN, cost,
                        end - start, _tokens(usage)))

    def _hot_entry(self, known: _Known, rates: FastRates,
                   template: tuple[FastRates, struct.Struct, tuple[bytes, ...], bytes, bytes,
                                   bytes, bytes]) -> None:
        """The C walk's entry for a call `known.hot` prices inline, when its rates are flat
        (tiers stay in Python) and small enough for its exact arithmetic (hot_span)."""
        if not self._c_hot or known.series is None or known.hot is None:
            return
        in_rate = 0 if rates.input is None else rates.input
        out_rate = 0 if rates.output is None else rates.output
        if type(in_rate) is not int or type(out_rate) is not int \
                or max(in_rate, out_rate, rates.denominator) > _EXACT:
            return
        generation, service, tenant, series = known.series
        day, i_at, o_at = known.hot[0], known.hot[8], known.hot[9]
        entry = (day, generation, service, tenant, known.remember, in_rate, out_rate,
                 rates.denominator, i_at, o_at, template[2][0], template[3], template[4],
                 template[5], template[6], series)
        # the same call under several resources (services, tenants): one entry each, so
        # they do not take each other's place request after request
        held = self._hot.get(known.key)
        if isinstance(held, dict):
            if len(held) >= _HOT_PAIRS and (service, tenant) not in held:
                held.clear()
            held[service, tenant] = entry
        elif held is not None and len(held) == len(entry) and held[1] == generation \
                and (held[2] is not service or held[3] is not tenant):
            self._hot[known.key] = {(held[2], held[3]): held, (service, tenant): entry}
        else:
            self._hot[known.key] = entry

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
        # cells, not dict lookups: this runs once per model call
        series[5] += 1.0
        series[1][0] += 1.0
        if cost is not None:
            cell = series[2]
            if cell is None:
                cell = series[2] = metrics.LLM_COST.cell(series[0])
            cell[0] += cost
        cells = series[3]
        for n, count in enumerate(tokens):
            if count:
                cell = cells[n]
                if cell is None:
                    cell = cells[n] = metrics.LLM_TOKENS.cell((*series[0], TOKEN_TYPES[n]))
                cell[0] += count
        if duration_ns is not None:
            seconds = max(duration_ns, 0) / 1e9
            row = series[4]
            row[bisect_left(metrics.LLM_DURATION.bounds, seconds)] += 1
            row[-1] += seconds

    def _rerank(self) -> None:
        """Rank each label's values by the calls counted since the last ranking."""
        volumes = volumes_by(((raw, series) for raw, series in self._series.items()),
                             len(metrics.LLM_LABELS))
        changed = [self._guards[label].rerank(volume)
                   for label, volume in zip(metrics.LLM_LABELS, volumes, strict=True)]
        if any(changed):
            self._series.clear()  # their labels were made by the old ranking
            self._series_generation += 1
            self._hot.clear()  # their series are stale

    def _new_series(self, raw: tuple[str | None, ...]) -> _Series:
        guards = self._guards
        provider, model, service, agent, tenant = raw
        labels: tuple[str, ...] = (
            guards["provider"](provider), guards["model"](model), guards["service"](service),
            guards["agent"](agent), guards["tenant"](tenant))
        if labels not in self._labels_seen and len(self._labels_seen) >= MAX_SERIES:
            labels = (OTHER,) * len(labels)
        self._labels_seen.add(labels)
        series: _Series = [labels, metrics.LLM_CALLS.cell(labels), None,
                           [None] * len(TOKEN_TYPES), metrics.LLM_DURATION.row(labels), 0.0]
        if len(self._series) < MAX_SERIES:
            self._series[raw] = series
        return series


def _create(settings: ProcessorSettings) -> LlmCost:
    assert isinstance(settings, CostSettings)
    return LlmCost(settings)


register_processor(ProcessorFactory("cost", CostSettings, 20, _create))
