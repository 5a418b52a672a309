"""Every metric the daemon exports, declared once, in the daemon's own registry.

Components take label children once at construction (`.labels(...)`) so the hot path is a
single increment."""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from sidecar import __version__

# prometheus_client adds a `_created` sample beside every counter and histogram by default,
# doubling the series scraped; Prometheus does not need them. Switched off here, on import of
# the registry, so it holds however the process started (console script, `python -m`, tests),
# whatever PROMETHEUS_DISABLE_CREATED_SERIES says. The switch is process-wide.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client

# Every metric but the per-span tables (`Tables`, the end of this module) registers here;
# REGISTRY (also at the end) is both together, what tests and get_sample_value read, and
# `exposition()` is what /metrics serves.
BASE = CollectorRegistry(auto_describe=True)

BUILD_INFO = Info("sidecar_build", "Version of the running sidecar", registry=BASE)
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

# --- receivers ---------------------------------------------------------------------------
RECEIVER_ACCEPTED = Counter(
    "sidecar_receiver_accepted_items",
    "Spans, log records or metric points accepted into the pipeline",
    ["receiver", "transport", "signal"],
    registry=BASE,
)
RECEIVER_REFUSED = Counter(
    "sidecar_receiver_refused_items",
    "Items refused: backpressure (client told to retry) or bad input (rejected)",
    ["receiver", "transport", "signal", "reason"],
    registry=BASE,
)
RECEIVER_BAD_REQUESTS = Counter(
    "sidecar_receiver_bad_requests",
    "Requests rejected as malformed, oversize or of an unsupported content type",
    ["receiver", "transport", "reason"],
    registry=BASE,
)

# --- processing stage (pipeline/stage.py) -------------------------------------------------
PROCESSOR_CPU = Counter(
    "sidecar_processor_cpu_seconds",
    "CPU time (the event loop thread's) spent in each processor, failed requests included",
    ["processor", "signal"],
    registry=BASE,
)

PIPELINE_GROUP_REQUESTS = Histogram(
    "sidecar_pipeline_group_requests",
    "Requests that went through the processors and into the queue together "
    "(pipelines.coalesce)",
    ["signal"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=BASE,
)

# --- exporters (shared export layer) ------------------------------------------------------
EXPORTER_SENT = Counter(
    "sidecar_exporter_sent_items",
    "Items the destination acknowledged",
    ["exporter", "signal"],
    registry=BASE,
)
EXPORTER_FAILED = Counter(
    "sidecar_exporter_send_failed_items",
    "Items in failed send attempts (each attempt counted)",
    ["exporter", "signal"],
    registry=BASE,
)
EXPORTER_RETRIED = Counter(
    "sidecar_exporter_retries",
    "Send attempts that were retried",
    ["exporter", "signal"],
    registry=BASE,
)
EXPORTER_DROPPED = Counter(
    "sidecar_exporter_dropped_items",
    "Items given up on: permanent error, partial-success rejection, retries exhausted",
    ["exporter", "signal", "reason"],
    registry=BASE,
)
EXPORTER_QUEUE_BYTES = Gauge(
    "sidecar_exporter_queue_size_bytes", "Bytes waiting in the exporter queue", ["exporter"],
    registry=BASE,
)
EXPORTER_QUEUE_ITEMS = Gauge(
    "sidecar_exporter_queue_size_items", "Items waiting in the exporter queue", ["exporter"],
    registry=BASE,
)
EXPORTER_QUEUE_CAPACITY = Gauge(
    "sidecar_exporter_queue_capacity_bytes", "Configured queue bound", ["exporter"],
    registry=BASE,
)
EXPORTER_BATCH_ITEMS = Histogram(
    "sidecar_exporter_batch_size_items",
    "Items per request sent to the destination",
    ["exporter"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
    registry=BASE,
)
EXPORTER_LATENCY = Histogram(
    "sidecar_exporter_send_duration_seconds",
    "Time for one send attempt, request to answer",
    ["exporter"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=BASE,
)

# --- Datadog APM stats (exporters/datadog_stats.py) ---------------------------------------
DATADOG_STATS_SPANS = Counter(
    "sidecar_datadog_stats_spans",
    "Spans aggregated into Datadog APM stats (spans the trace intake accepted)",
    ["exporter"],
    registry=BASE,
)
DATADOG_STATS_REFUSED = Counter(
    "sidecar_datadog_stats_refused_spans",
    "Spans left out of Datadog APM stats: their aggregation key is new and the aggregator "
    "holds stats.max_keys keys",
    ["exporter"],
    registry=BASE,
)
DATADOG_STATS_KEYS = Gauge(
    "sidecar_datadog_stats_keys", "Aggregation keys the Datadog APM stats aggregator holds",
    ["exporter"], registry=BASE,
)
DATADOG_STATS_PAYLOADS = Counter(
    "sidecar_datadog_stats_payloads",
    "Datadog APM stats payloads by outcome (sent; dropped after retries or refused)",
    ["exporter", "outcome"],
    registry=BASE,
)
# --- durable queue (exporthelper/durable.py, wal.py) and dead letters -----------------------
QUEUE_DISK_BYTES = Gauge(
    "sidecar_queue_disk_bytes", "Bytes of segment files on disk, per signal log", ["log"],
    registry=BASE,
)
QUEUE_DISK_RECORDS = Gauge(
    "sidecar_queue_disk_records", "Requests stored in segment files on disk, per signal log",
    ["log"], registry=BASE,
)
QUEUE_OLDEST_AGE = Gauge(
    "sidecar_queue_oldest_item_age_seconds",
    "Age of the oldest request the exporter has not finished with (0: none)", ["exporter"],
    registry=BASE,
)
QUEUE_FSYNC = Histogram(
    "sidecar_queue_fsync_duration_seconds", "Time of one fsync of a queue log", ["log"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=BASE,
)
QUEUE_CORRUPT = Counter(
    "sidecar_queue_corrupt_records",
    "Damaged regions of a queue log skipped (torn tail, failed checksum)", ["log"],
    registry=BASE,
)
QUEUE_DISK_ERRORS = Counter(
    "sidecar_queue_disk_errors",
    "Queue storage failures (disk_full: the client was told to retry)", ["log", "reason"],
    registry=BASE,
)
QUEUE_REDELIVERED = Counter(
    "sidecar_queue_redelivered_items",
    "Items handed to the exporter again after a restart that it had been given before "
    "(possible duplicates; a lower bound)", ["exporter"],
    registry=BASE,
)
DEADLETTER_ITEMS = Counter(
    "sidecar_deadletter_items",
    "Items of batches refused for good and written to the dead-letter directory",
    ["exporter", "signal"],
    registry=BASE,
)
DEADLETTER_DROPPED = Counter(
    "sidecar_deadletter_dropped_items",
    "Dead-letter items deleted to stay within deadletter.max_bytes, or not writable",
    ["exporter", "reason"],
    registry=BASE,
)

# --- redact -------------------------------------------------------------------------------
REDACT_REDACTIONS = Counter(
    "sidecar_redact_redactions",
    "Values or spans of text redacted (masked, hashed or dropped), per rule",
    ["signal", "rule"],
    registry=BASE,
)
REDACT_REQUESTS = Counter(
    "sidecar_redact_requests",
    "Requests (or coalesced groups of them, pipelines.coalesce) seen by the redaction "
    "processor: skipped (the pre-scan found nothing that could match) or walked",
    ["signal", "outcome"],
    registry=BASE,
)
REDACT_FAILURES = Counter(
    "sidecar_redact_failures",
    "Requests (or coalesced groups of them) refused because redaction raised (nothing of "
    "them was exported; a group refused whole is tried again request by request)",
    ["signal"],
    registry=BASE,
)

# --- cost (LLM call pricing, processors/llm_cost.py) ---------------------------------------
# label values pass the processor's cardinality guard (first N distinct, then "other")
LLM_LABELS = ["provider", "model", "service", "agent", "tenant"]
LLM_PRICE_LOOKUP_FAILURES = Counter(
    "sidecar_llm_price_lookup_failures", "Model calls left unpriced: no price for the model",
    ["provider", "model"], registry=BASE,
)
LLM_COST_DISAGREEMENTS = Counter(
    "sidecar_llm_cost_disagreements",
    "Model calls whose reported cost differs from the daemon's price by more than 1 %",
    ["provider", "model"], registry=BASE,
)
LLM_USAGE_INVALID = Counter(
    "sidecar_llm_usage_invalid",
    "Token counts ignored as negative, NaN, fractional, too large or not a number",
    ["reason"], registry=BASE,
)
# span-derived RED metrics (processors/spanmetrics.py)
SPAN_LABELS = ["service", "span_name", "span_kind", "status_code"]
# the model-call counters, their latency histogram and the span RED metrics are tables
# (`Tables` at the end of this module): counted per span, so kept as plain floats

# --- logs receiver ------------------------------------------------------------------------
LOGS_LINES = Counter(
    "sidecar_logs_lines",
    "Log lines read from streams (each one becomes a record; blank lines excepted)",
    ["receiver", "transport"],
    registry=BASE,
)
LOGS_PARSE_ERRORS = Counter(
    "sidecar_logs_parse_errors",
    "Log lines that were not JSON objects we could map, kept as text bodies",
    ["receiver", "transport"],
    registry=BASE,
)
LOGS_TRUNCATED = Counter(
    "sidecar_logs_truncated_lines",
    "Log lines longer than max_line_length, cut to it and marked",
    ["receiver", "transport"],
    registry=BASE,
)
LOGS_CONNECTIONS = Gauge(
    "sidecar_logs_connections", "Open log stream connections", ["receiver", "transport"],
    registry=BASE,
)
LOGS_CONNECTIONS_REFUSED = Counter(
    "sidecar_logs_connections_refused",
    "Log stream connections closed on arrival because max_connections were open",
    ["receiver", "transport"],
    registry=BASE,
)

# --- daemon -------------------------------------------------------------------------------
RELOADS = Counter("sidecar_config_reload", "Configuration reloads (SIGHUP, POST /-/reload)",
                  ["result"], registry=BASE)
EVENT_LOOP_LAG = Gauge("sidecar_event_loop_lag_seconds",
                       "Worst lateness of a 100 ms timer over the last 15 s (a held loop "
                       "delays every client)", registry=BASE)
MEMORY_RSS = Gauge("sidecar_memory_rss_bytes",
                   "Resident memory of the daemon at the memory limiter's last check",
                   registry=BASE)
MEMORY_SOFT_LIMIT = Gauge("sidecar_memory_soft_limit_bytes", "service.memory.soft_limit",
                          registry=BASE)
MEMORY_HARD_LIMIT = Gauge("sidecar_memory_hard_limit_bytes", "service.memory.hard_limit",
                          registry=BASE)
MEMORY_LEVEL = Gauge("sidecar_memory_limit_level",
                     "0 under the soft limit, 1 over it (receivers refuse), 2 over the hard "
                     "limit (the cache sheds too)", registry=BASE)
MEMORY_REFUSED = Counter("sidecar_memory_refused_requests",
                         "Requests refused (retryable) because memory was over the soft limit",
                         ["signal"], registry=BASE)
MEMORY_CACHE_SHED_BYTES = Counter("sidecar_memory_cache_shed_bytes",
                                  "Bytes of cache L1 entries evicted over the hard limit",
                                  registry=BASE)
ADMIN_UNAUTHENTICATED = Counter(
    "sidecar_admin_unauthenticated",
    "Admin requests refused for a missing or wrong bearer token", registry=BASE)
READY = Gauge("sidecar_ready", "1 when every listener is bound and every exporter started",
              registry=BASE)
COMPONENT_RESTARTS = Counter(
    "sidecar_component_restarts",
    "Component tasks that died from an unexpected error and were restarted",
    ["component"],
    registry=BASE,
)

# --- cache --------------------------------------------------------------------------------
# The cache's hot path counts with plain ints on its own objects (a prometheus_client
# `inc()` takes a lock and costs as much as an L1 GET); this collector turns them into
# metric families at scrape time. Each running CacheService attaches one snapshot source.

from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from prometheus_client.core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector  # noqa: E402


@dataclass(slots=True)
class CacheNamespaceSample:
    namespace: str
    hits_l1: int = 0
    hits_l2: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    evictions_l1: int = 0
    expirations_l1: int = 0
    items_l1: int = 0
    bytes_l1: int = 0
    saved_usd: float = 0.0


@dataclass(slots=True)
class CacheSample:
    namespaces: list[CacheNamespaceSample] = field(default_factory=list)
    backend_up: float | None = None  # None: no L2 configured
    l2_pending: int = 0
    l2_replayed: int = 0
    l2_dropped: int = 0
    l2_errors: int = 0
    connections: int = 0
    protocol_errors: int = 0
    limit_errors: int = 0
    # command -> (upper bounds, cumulative-free bucket counts incl. +Inf, sum of seconds)
    latency: dict[str, tuple[tuple[float, ...], list[int], float]] = field(default_factory=dict)


class CacheCollector(Collector):
    def __init__(self) -> None:
        self._sources: list[Callable[[], CacheSample]] = []

    def attach(self, source: Callable[[], CacheSample]) -> None:
        self._sources.append(source)

    def detach(self, source: Callable[[], CacheSample]) -> None:
        if source in self._sources:
            self._sources.remove(source)

    def describe(self) -> Iterable[Metric]:
        return self._families([])

    def collect(self) -> Iterable[Metric]:
        return self._families([source() for source in self._sources])

    @staticmethod
    def _families(samples: list[CacheSample]) -> list[Metric]:
        ns_labels = ["namespace"]
        tier_labels = ["namespace", "tier"]
        hits = CounterMetricFamily("sidecar_cache_hits", "Cache lookups answered, by tier",
                                   labels=tier_labels)
        misses = CounterMetricFamily("sidecar_cache_misses", "Lookups with no value in any tier",
                                     labels=ns_labels)
        sets = CounterMetricFamily("sidecar_cache_sets", "Values written by clients",
                                   labels=ns_labels)
        deletes = CounterMetricFamily("sidecar_cache_deletes", "Keys deleted by clients",
                                      labels=ns_labels)
        evictions = CounterMetricFamily("sidecar_cache_evictions",
                                        "Entries evicted to stay within the memory bound",
                                        labels=tier_labels)
        expirations = CounterMetricFamily("sidecar_cache_expirations",
                                          "Entries removed because their TTL passed",
                                          labels=tier_labels)
        items = GaugeMetricFamily("sidecar_cache_items", "Entries held", labels=tier_labels)
        size = GaugeMetricFamily("sidecar_cache_bytes", "Bytes held (keys, values, overhead)",
                                 labels=tier_labels)
        saved = CounterMetricFamily("sidecar_cache_saved_usd",
                                    "Estimated USD saved: hits x the namespace's value_usd",
                                    labels=ns_labels)
        up = GaugeMetricFamily("sidecar_cache_backend_up",
                               "1 when the Redis L2 answers, 0 while serving from memory only")
        pending = GaugeMetricFamily("sidecar_cache_l2_pending_writes",
                                    "Writes waiting to reach Redis (in flight or outage)")
        replayed = CounterMetricFamily("sidecar_cache_l2_replayed_writes",
                                       "Writes delivered to Redis after an outage")
        dropped = CounterMetricFamily("sidecar_cache_l2_dropped_writes",
                                      "Queued writes given up, oldest first, at the queue bound")
        errors = CounterMetricFamily("sidecar_cache_l2_errors",
                                     "Redis commands that failed or timed out")
        conns = GaugeMetricFamily("sidecar_cache_connections", "Open client connections")
        perrors = CounterMetricFamily("sidecar_cache_protocol_errors",
                                      "Connections closed for breaking the protocol")
        lerrors = CounterMetricFamily("sidecar_cache_limit_errors",
                                      "Commands refused for exceeding a limit "
                                      "(e.g. a SCAN MATCH pattern too long)")
        per_ns: dict[str, CacheNamespaceSample] = {}
        latency: dict[str, tuple[tuple[float, ...], list[int], float]] = {}
        any_l2 = False
        up_value = 1.0
        totals = CacheSample()
        for sample in samples:
            for row in sample.namespaces:
                acc = per_ns.setdefault(row.namespace, CacheNamespaceSample(row.namespace))
                for name in ("hits_l1", "hits_l2", "misses", "sets", "deletes", "evictions_l1",
                             "expirations_l1", "items_l1", "bytes_l1", "saved_usd"):
                    setattr(acc, name, getattr(acc, name) + getattr(row, name))
            if sample.backend_up is not None:
                any_l2 = True
                up_value = min(up_value, sample.backend_up)
            totals.l2_pending += sample.l2_pending
            totals.l2_replayed += sample.l2_replayed
            totals.l2_dropped += sample.l2_dropped
            totals.l2_errors += sample.l2_errors
            totals.connections += sample.connections
            totals.protocol_errors += sample.protocol_errors
            totals.limit_errors += sample.limit_errors
            for command, (bounds, counts, total) in sample.latency.items():
                if command in latency:
                    _, acc_counts, acc_sum = latency[command]
                    merged = [a + b for a, b in zip(acc_counts, counts, strict=True)]
                    latency[command] = (bounds, merged, acc_sum + total)
                else:
                    latency[command] = (bounds, list(counts), total)
        for ns, row in sorted(per_ns.items()):
            hits.add_metric([ns, "l1"], row.hits_l1)
            hits.add_metric([ns, "l2"], row.hits_l2)
            misses.add_metric([ns], row.misses)
            sets.add_metric([ns], row.sets)
            deletes.add_metric([ns], row.deletes)
            evictions.add_metric([ns, "l1"], row.evictions_l1)
            expirations.add_metric([ns, "l1"], row.expirations_l1)
            items.add_metric([ns, "l1"], row.items_l1)
            size.add_metric([ns, "l1"], row.bytes_l1)
            saved.add_metric([ns], row.saved_usd)
        if any_l2:  # memory-only: no backend, so no alert on a backend that is "down"
            up.add_metric([], up_value)
        if samples:
            pending.add_metric([], totals.l2_pending)
            replayed.add_metric([], totals.l2_replayed)
            dropped.add_metric([], totals.l2_dropped)
            errors.add_metric([], totals.l2_errors)
            conns.add_metric([], totals.connections)
            perrors.add_metric([], totals.protocol_errors)
            lerrors.add_metric([], totals.limit_errors)
        duration = HistogramMetricFamily("sidecar_cache_command_duration_seconds",
                                         "Time from a parsed command to its reply",
                                         labels=["command"])
        for command, (bounds, counts, total) in sorted(latency.items()):
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*bounds, float("inf")), counts, strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            duration.add_metric([command], buckets, total)
        return [hits, misses, sets, deletes, evictions, expirations, items, size, saved, up,
                pending, replayed, dropped, errors, conns, perrors, lerrors, duration]


CACHE_COLLECTOR = CacheCollector()
BASE.register(CACHE_COLLECTOR)


# --- model calls and span RED metrics (processors/llm_cost.py, processors/spanmetrics.py) -
# Counted per span: a prometheus_client `inc()` or `observe()` takes a lock and walks its
# buckets in Python (~1 µs each; a model call counted 4-5 of them), so the processors add
# plain floats into these tables and the collector turns them into metric families at
# scrape time. The processors run on the event loop, as scrapes do; `collect` copies each
# row anyway before reading it.
#
# /metrics writes the tables' text itself (`text`), byte for byte what generate_latest makes
# of their families (tests/unit/telemetry/test_metrics_tables.py): a model call has a series per
# provider, model, service, agent and tenant, each with 17 histogram lines, and thousands
# of them (measured: 1,347 series, 28k lines, 4 MB) took prometheus_client ~195 ms of the
# event loop per scrape, building a Sample and a label dict per line and escaping every
# label again. Here a series' escaped, sorted label text is made once, and its lines are
# written again only when its values changed: ~31 ms for that scrape when every series
# is new, ~4 ms when none changed.

from bisect import bisect_left  # noqa: E402
from typing import TypeVar  # noqa: E402

from prometheus_client.exposition import generate_latest  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

_V = TypeVar("_V")


def _go(value: float) -> str:
    """floatToGoString, without its work in the common case: a whole number below a million,
    whose repr is what it returns."""
    if type(value) is float and value.is_integer() and -1e6 < value < 1e6:
        return repr(value)
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape(text: str) -> str:
    """Backslash, newline and double quote escaped, as generate_latest writes text."""
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(name: str, documentation: str, kind: str) -> str:
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


_Labels = tuple[str, str, str]


class _SeriesText:
    """Each series' text, kept from one scrape to the next and written again only when its
    values changed (most series of a scrape did not: an idle tenant's, agent's, model's),
    with its label text, sorted by label name as generate_latest writes it: (the labels, the
    labels before where `le` sorts in with a comma after them, the labels after it with a
    comma before them). Values compare equal only when their text is the same: -0.0, whose
    text differs from 0.0's, never arises from sums that start at 0.0."""

    __slots__ = ("_cache", "_le_at", "_names", "_order")

    def __init__(self, labels: list[str]) -> None:
        self._order = sorted(range(len(labels)), key=lambda i: labels[i])
        self._names = [labels[i] for i in self._order]
        self._le_at = bisect_left(self._names, "le")
        self._cache: dict[tuple[str, ...], tuple[_Labels, object, str]] = {}

    def _labels(self, key: tuple[str, ...]) -> _Labels:
        pairs = [f'{name}="{_escape(key[i])}"'
                 for name, i in zip(self._names, self._order, strict=True)]
        before, after = pairs[:self._le_at], pairs[self._le_at:]
        return (",".join(pairs), "".join(f"{p}," for p in before),
                "".join(f",{p}" for p in after))

    def text(self, key: tuple[str, ...], values: _V, render: Callable[[_Labels, _V], str],
             seen: dict[tuple[str, ...], tuple[_Labels, object, str]]) -> str:
        """`key`'s text for `values` (kept, or `render`ed), also put in `seen`: this
        scrape's, which `keep` keeps (so a series gone from its table goes from here)."""
        found = self._cache.get(key)
        if found is None:
            labels = self._labels(key)
        else:
            labels, last, text = found
            if last == values:
                seen[key] = found
                return text
        text = render(labels, values)
        seen[key] = (labels, values, text)
        return text

    def keep(self, seen: dict[tuple[str, ...], tuple[_Labels, object, str]]) -> None:
        self._cache = seen


def _braced(labels: str) -> str:
    return f"{{{labels}}}" if labels else ""


class CounterTable:
    """A counter family: label values -> total. A hot path that counts one series again and
    again holds its `cell` (a one-element list: `cell[0] += n`) instead of looking it up."""

    __slots__ = ("_text", "cells", "documentation", "labels", "name", "values")

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}
        self.cells: dict[tuple[str, ...], list[float]] = {}
        self._text = _SeriesText(labels)

    def add(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[key] = values.get(key, 0.0) + amount

    def cell(self, key: tuple[str, ...]) -> list[float]:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [0.0]
        return cell

    def totals(self) -> dict[tuple[str, ...], float]:
        """Every series' total: what `add` counted plus what its cell holds."""
        out = dict(self.values)
        for key, cell in list(self.cells.items()):
            out[key] = out.get(key, 0.0) + cell[0]
        return out

    def family(self) -> Metric:
        out = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.totals().items():
            out.add_metric(list(key), value)
        return out

    def text(self) -> str:
        return _counter_text(self.name, self.documentation, self._text, self.totals())


def _counter_text(name: str, documentation: str, series: _SeriesText,
                  totals: dict[tuple[str, ...], float]) -> str:
    sample = f"{name}_total"

    def line(labels: _Labels, value: float) -> str:
        return f"{sample}{_braced(labels[0])} {_go(value)}\n"

    lines = [_header(sample, documentation, "counter")]
    seen: dict[tuple[str, ...], tuple[_Labels, object, str]] = {}
    for key, value in totals.items():
        lines.append(series.text(key, value, line, seen))
    series.keep(seen)
    return "".join(lines)


class HistogramTable:
    """A histogram family: label values -> [count per bucket (last: +Inf), sum]."""

    __slots__ = ("_les", "_text", "bounds", "documentation", "labels", "name", "rows")

    def __init__(self, name: str, documentation: str, labels: list[str],
                 bounds: tuple[float, ...]) -> None:
        if any(b < 0 for b in bounds):
            raise ValueError("histogram bounds must not be negative")  # (a _count and _sum)
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = bounds
        self.rows: dict[tuple[str, ...], list[float]] = {}
        self._les = [*(_go(float(b)) for b in bounds), "+Inf"]
        self._text = _SeriesText(labels)

    def row(self, key: tuple[str, ...]) -> list[float]:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0.0] * (len(self.bounds) + 2)
        return row

    def observe(self, key: tuple[str, ...], value: float) -> None:
        row = self.row(key)
        row[bisect_left(self.bounds, value)] += 1  # the first bucket with value <= le
        row[-1] += value

    def family(self) -> Metric:
        out = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, row in list(self.rows.items()):
            counts = tuple(row)
            out.add_metric(list(key), self._cumulative(counts), counts[-1])
        return out

    def _cumulative(self, counts: tuple[float, ...]) -> list[tuple[str, float]]:
        """(le, observations at or below it) of each bucket, +Inf last: the total."""
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for le, n in zip(self._les, counts, strict=False):
            running += n
            buckets.append((le, running))
        return buckets

    def text(self) -> str:
        lines = [_header(self.name, self.documentation, "histogram")]
        seen: dict[tuple[str, ...], tuple[_Labels, object, str]] = {}
        series = self._text
        for key, row in list(self.rows.items()):
            lines.append(series.text(key, tuple(row), self._series_text, seen))
        series.keep(seen)
        return "".join(lines)

    def _series_text(self, label_text: _Labels, counts: tuple[float, ...]) -> str:
        name = self.name
        labels, before, after = label_text
        buckets = self._cumulative(counts)
        lines = [f'{name}_bucket{{{before}le="{le}"{after}}} {_go(n)}\n' for le, n in buckets]
        braced = _braced(labels)
        lines.append(f"{name}_count{braced} {_go(buckets[-1][1])}\n"
                     f"{name}_sum{braced} {_go(counts[-1])}\n")
        return "".join(lines)


class CallsOf:
    """A counter family of the observations of a histogram table (its `_count`), so the
    hot path counts once."""

    __slots__ = ("_text", "documentation", "histogram", "name")

    def __init__(self, name: str, documentation: str, histogram: HistogramTable) -> None:
        self.name = name
        self.documentation = documentation
        self.histogram = histogram
        self._text = _SeriesText(histogram.labels)

    @property
    def labels(self) -> list[str]:
        return self.histogram.labels

    def _totals(self) -> dict[tuple[str, ...], float]:
        return {key: sum(row[:-1]) for key, row in list(self.histogram.rows.items())}

    def family(self) -> Metric:
        out = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self._totals().items():
            out.add_metric(list(key), value)
        return out

    def text(self) -> str:
        return _counter_text(self.name, self.documentation, self._text, self._totals())


class Tables(Collector):
    def __init__(self, *tables: CounterTable | HistogramTable | CallsOf) -> None:
        self._tables = tables

    def describe(self) -> Iterable[Metric]:
        return [table.family() for table in self._tables]

    def collect(self) -> Iterable[Metric]:
        return [table.family() for table in self._tables]

    def text(self) -> str:
        """What generate_latest writes for `collect()`'s families."""
        return "".join(table.text() for table in self._tables)


class _Registered(Collector):
    """A registry's metrics, as one collector of another registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


LLM_CALLS = CounterTable("sidecar_llm_calls", "Model calls seen on spans (priced or not)",
                         LLM_LABELS)
LLM_TOKENS = CounterTable(
    "sidecar_llm_tokens",
    "Tokens of model calls by type (input includes cache reads and writes, output includes "
    "reasoning)",
    [*LLM_LABELS, "token_type"])
LLM_COST = CounterTable(
    "sidecar_llm_cost_usd",
    "Cost of model calls in USD, as written on the spans (gen_ai.usage.cost)", LLM_LABELS)
LLM_DURATION = HistogramTable(
    "sidecar_llm_operation_duration_seconds",
    "Model call durations (span end - start), like gen_ai.client.operation.duration",
    LLM_LABELS,
    # the GenAI semantic conventions' advised buckets for gen_ai.client.operation.duration
    (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92))
SPAN_DURATION = HistogramTable(
    "sidecar_span_duration_seconds", "Span durations (end - start)", SPAN_LABELS,
    # the OpenTelemetry Collector spanmetrics connector's default buckets
    (0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1, 1.4, 2, 5, 10, 15))
SPAN_CALLS = CallsOf("sidecar_span_calls", "Spans seen, by service, name, kind and status",
                     SPAN_DURATION)
TABLES = Tables(LLM_CALLS, LLM_TOKENS, LLM_COST, LLM_DURATION, SPAN_CALLS, SPAN_DURATION)

# --- logs: tailed files, connection bounds, tail feed (receivers.logs, sidecar tail) --------
LOGS_FILES_OPEN = Gauge(
    "sidecar_logs_files_open", "Log files being tailed", ["receiver"], registry=BASE)
LOGS_FILE_RESTARTS = Counter(
    "sidecar_logs_file_restarts",
    "Tailed files read again from the start: truncated (shorter than the offset read) or "
    "replaced (first bytes changed: copytruncate, a reused inode)",
    ["receiver", "reason"], registry=BASE)
LOGS_FILES_SKIPPED = Counter(
    "sidecar_logs_files_skipped",
    "Matching files not tailed because max_files were open (counted once per poll)",
    ["receiver"], registry=BASE)
LOGS_FILE_ERRORS = Counter(
    "sidecar_logs_file_errors",
    "Tailed-file operations that failed (open, read, checkpoint write); retried next poll",
    ["receiver", "operation"], registry=BASE)
LOGS_CHECKPOINTS = Counter(
    "sidecar_logs_checkpoints_written",
    "File-tail checkpoint files written (after the records up to them were accepted)",
    ["receiver"], registry=BASE)
LOGS_BUFFERED_BYTES = Gauge(
    "sidecar_logs_buffered_bytes",
    "Bytes of unfinished lines held across a logs receiver's connections "
    "(bounded by max_buffered_bytes)", ["receiver"], registry=BASE)
LOGS_BUDGET_CUTS = Counter(
    "sidecar_logs_budget_cut_lines",
    "Unfinished lines cut (delivered marked truncated) because all connections together "
    "held max_buffered_bytes", ["receiver", "transport"], registry=BASE)
LOGS_IDLE_CLOSED = Counter(
    "sidecar_logs_connections_idle_closed",
    "Log stream connections closed for sending nothing within idle_timeout",
    ["receiver", "transport"], registry=BASE)
TAIL_SUBSCRIBERS = Gauge(
    "sidecar_tail_subscribers", "Open `sidecar tail` feeds (GET /tail on the admin server)",
    registry=BASE)
TAIL_SENT = Counter(
    "sidecar_tail_items_sent", "Spans and log records sent to `sidecar tail` feeds",
    registry=BASE)
TAIL_DROPPED = Counter(
    "sidecar_tail_items_dropped",
    "Spans and log records a `sidecar tail` feed missed because its reader was slower than "
    "the pipeline (per feed; the pipeline never waits for a reader)", registry=BASE)


# Both registries' metrics, for tests and get_sample_value (a name in both fails here).
REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(_Registered(BASE))
REGISTRY.register(TABLES)


def exposition() -> bytes:
    """The /metrics body (text format 0.0.4): what generate_latest(REGISTRY) writes, the
    tables' families last."""
    return generate_latest(BASE) + TABLES.text().encode()
