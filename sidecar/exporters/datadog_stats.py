"""APM stats for `type: datadog` (mode: native): the Datadog Agent's concentrator, small.

The traces exporter feeds it the Datadog spans of every request the trace intake accepted
(so a retried or split request is counted once); it aggregates them into 10 s buckets and a
timer flushes the finished buckets to the stats intake (`POST /api/v0.2/stats`, a gzipped
msgpack `StatsPayload`), which is what Datadog's service pages show as RED metrics.

As the Agent (pkg/trace/stats: span_concentrator.go, statsraw.go, aggregation.go; writer in
pkg/trace/writer/stats.go):
- eligible spans: `_top_level` or `_dd.measured` metric 1, or (compute_by_span_kind) a
  span.kind of server, consumer, client or producer; partial snapshots are not;
- a span falls in the bucket of its end time, aligned to 10 s; a bucket is flushed once it
  is two buckets old (the current and previous one are kept for late spans); spans older
  than the oldest open bucket count in that bucket;
- one group per (service, name, resource, type, HTTP status code, synthetics, span.kind,
  peer tags, is-trace-root) within (env, hostname, version, container id); hits, errors,
  top-level hits, summed duration, and two DDSketches (ok and error durations, relative
  accuracy 1 %, at most 2,048 bins collapsing the lowest, durations truncated to 10 bits of
  mantissa first);
- peer tags (`key:value`, keys in sorted order) only on client, producer and consumer spans,
  or `_dd.base_service` alone on internal spans that carry it;
- at most 4,000 groups per payload; a larger flush is split and marked `SplitPayload`.

Bounds (the OTel Collector's concentrator grew until OOM, opentelemetry-collector-contrib
#30828): at most `max_keys` groups held across all buckets (a span with a new key beyond
that is refused and counted); a span ending in the future lands at most
`FUTURE_BUCKETS` buckets ahead, so buckets are bounded too; each sketch holds at most 2,048
bins. Worst case is ~`max_keys` x (2 x 16 KiB of bins + the key's strings).

The sketch is written here rather than taken from the `ddsketch` package because that one
follows the Python convention (index = ceil(log_gamma(v))) while the Agent's (sketches-go)
is floor, and the payload should mean what the Agent's means; `ddsketch` and ddtrace's
native concentrator are the oracles in the tests."""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack  # type: ignore[import-untyped]  # no stubs or py.typed

from sidecar.errors import PermanentError, RetryableError

if TYPE_CHECKING:
    from sidecar.exporters.datadog_mapping import MappedPayload

log = logging.getLogger(__name__)

PATH = "/api/v0.2/stats"
BUCKET_NS = 10 * 1_000_000_000
BUFFER_LEN = 2  # buckets kept open: the current and the previous one
FUTURE_BUCKETS = 6  # a span ending later than this lands in the last of these buckets
MAX_ENTRIES_PER_PAYLOAD = 4000  # the Agent's writer
RELATIVE_ACCURACY = 0.01
MAX_BINS = 2048
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_MULTIPLIER = 1 / math.log(_GAMMA)
# sketches-go: the smallest value with an index >= MinInt32 (and a normal float)
_MIN_INDEXABLE = max(math.exp((-(2**31)) / _MULTIPLIER + 1), 2.2250738585072014e-308 * _GAMMA)
_KINDS = frozenset({"server", "consumer", "client", "producer"})
_PEER_KINDS = frozenset({"client", "producer", "consumer"})
# the Agent's default peer tag keys (pkg/trace/config/peer_tags.ini, the precursor
# attributes of each peer.* tag) and _dd.base_service, sorted as the Agent sorts them
PEER_TAG_KEYS: tuple[str, ...] = tuple(sorted({
    "_dd.base_service", "tablename", "streamname", "bucketname", "aws.s3.bucket", "queuename",
    "db.cassandra.contact.points", "db.couchbase.seed.nodes", "db.name", "mongodb.db",
    "db.instance", "cassandra.keyspace", "db.namespace", "db.system",
    "active_record.db.vendor", "db.type", "sequel.db.vendor", "peer.hostname", "hostname",
    "net.peer.name", "db.hostname", "network.destination.name", "grpc.host", "http.host",
    "server.address", "http.server_name", "out.host", "dns.hostname",
    "network.destination.ip", "messaging.kafka.bootstrap.servers", "topicname",
    "messaging.destination", "messaging.destination.template",
    "messaging.destination.name", "messaging.rabbitmq.exchange", "amqp.destination",
    "amqp.queue", "amqp.exchange", "msmq.queue.path", "aws.queue.name", "messaging.system",
    "rpc.service", "rpc.system", "peer.service"}))
_PEER_SET = frozenset(PEER_TAG_KEYS)
_BASE_SERVICE = "_dd.base_service"
TRACE_ROOT_TRUE, TRACE_ROOT_FALSE = 1, 2  # the proto's Trilean
_F64, _U64 = struct.Struct("<d"), struct.Struct("<Q")
_U64_MAX = 2**64 - 1


def truncate(duration: int) -> float:
    """The Agent's nsTimestampToFloat: keep 10 bits of the float's mantissa (the bits
    masked by 0xfffff80000000000), so nearby durations share a sketch bin."""
    if duration <= 0:
        return 0.0
    (bits,) = _U64.unpack(_F64.pack(float(duration)))
    (value,) = _F64.unpack(_U64.pack(bits & 0xFFFFF80000000000))
    return float(value)


class Sketch:
    """A DDSketch with the Agent's logarithmic mapping (gamma = 1.01/0.99, index offset 0,
    bin k = [gamma^k, gamma^(k+1))) and a collapsing-lowest dense store of `MAX_BINS`."""

    __slots__ = ("bins", "offset", "zero")

    def __init__(self) -> None:
        self.bins: list[float] = []
        self.offset = 0  # the index of bins[0]
        self.zero = 0.0

    def add(self, value: float) -> None:
        if value < _MIN_INDEXABLE:
            self.zero += 1
            return
        k = math.floor(math.log(value) * _MULTIPLIER)
        bins = self.bins
        if not bins:
            self.bins = [1.0]
            self.offset = k
            return
        low = self.offset
        high = low + len(bins) - 1
        if k < low:
            floor = max(k, high - MAX_BINS + 1)  # lower indices collapse into the lowest
            if floor < low:
                bins[0:0] = [0.0] * (low - floor)
                self.offset = low = floor
            bins[max(k, low) - low] += 1
        elif k > high:
            bins.extend([0.0] * (k - high))
            extra = len(bins) - MAX_BINS
            if extra > 0:
                folded = sum(bins[:extra + 1])
                del bins[:extra]
                bins[0] = folded
                self.offset = low = low + extra
            bins[k - low] += 1
        else:
            bins[k - low] += 1

    @property
    def count(self) -> float:
        return self.zero + sum(self.bins)

    def encode(self) -> bytes:
        from sidecar.exporters import datadog_proto

        pb = datadog_proto.load_sketch()
        return bytes(pb.DDSketch(
            mapping=pb.IndexMapping(gamma=_GAMMA, indexOffset=0.0),
            positiveValues=pb.Store(contiguousBinCounts=self.bins,
                                    contiguousBinIndexOffset=self.offset),
            negativeValues=pb.Store(),
            zeroCount=self.zero,
        ).SerializeToString())


# (env, hostname, version, container id)
PayloadKey = tuple[str, str, str, str]
# (service, name, resource, type, http status, synthetics, span.kind, peer tags, trace root)
GroupKey = tuple[str, str, str, str, int, bool, str, tuple[str, ...], int]


class StatSpan(NamedTuple):
    """What the concentrator needs of one eligible span (a tuple: cheap to build)."""

    payload: PayloadKey
    key: GroupKey
    end: int  # Unix ns
    duration: int
    error: bool
    top_level: bool


class _Group:
    __slots__ = ("duration", "err", "errors", "hits", "ok", "top_level_hits")

    def __init__(self) -> None:
        self.hits = self.errors = self.top_level_hits = self.duration = 0
        self.ok = Sketch()
        self.err = Sketch()


@dataclass(frozen=True, slots=True)
class StatsOptions:
    compute_by_span_kind: bool = True
    peer_tags: bool = True
    default_env: str = "none"  # the Agent's DefaultEnv


def stat_spans(payloads: Iterable[MappedPayload], options: StatsOptions) -> list[StatSpan]:
    """The eligible spans of mapped payloads, as the Agent's NewStatSpan selects them. A
    span's meta is its own entries over its scope's base (resource and scope meta)."""
    out: list[StatSpan] = []
    for mp in payloads:
        tp = mp.header
        pkey: PayloadKey = (tp.env or options.default_env, tp.hostname, tp.appVersion,
                            tp.containerID)
        for chunk in mp.chunks:
            for span, base in chunk:
                metrics = span["metrics"]
                meta = _Meta(span["meta"], base.meta)
                kind = meta.get("span.kind")
                top = metrics.get("_top_level") == 1.0
                if not (top or metrics.get("_dd.measured") == 1.0
                        or (options.compute_by_span_kind and kind.lower() in _KINDS)):
                    continue
                if metrics.get("_dd.partial_version", -1.0) >= 0:
                    continue
                duration = span["duration"]
                out.append(StatSpan(
                    pkey,
                    (span["service"], span["name"], span["resource"], span["type"],
                     _status_code(meta, metrics),
                     meta.get("_dd.origin").startswith("synthetics"), kind,
                     _peer_tags(meta, kind) if options.peer_tags else (),
                     TRACE_ROOT_TRUE if span["parentID"] == 0 else TRACE_ROOT_FALSE),
                    span["start"] + duration, duration, span["error"] != 0, top))
    return out


class _Meta:
    """A span's meta as the intake sees it: its own entries over its scope's base."""

    __slots__ = ("base", "own")

    def __init__(self, own: Mapping[str, str], base: Mapping[str, str]) -> None:
        self.own = own
        self.base = base

    def get(self, key: str) -> str:
        value = self.own.get(key)
        if value is None:
            value = self.base.get(key, "")
        return value


def _status_code(meta: _Meta, metrics: Mapping[str, float]) -> int:
    code = metrics.get("http.status_code")
    if code is not None:
        return int(code) if 0 <= code < 2**32 else 0
    text = meta.get("http.status_code")
    # at most 10 digits: int() of a hostile 25,000-digit value would raise (or be slow)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 \
        and int(text) < 2**32 else 0


def _peer_tags(meta: _Meta, kind: str) -> tuple[str, ...]:
    kind = kind.lower()
    if kind in ("", "internal"):
        base = meta.get(_BASE_SERVICE)
        return (f"{_BASE_SERVICE}:{base}",) if base else ()
    if kind not in _PEER_KINDS:
        return ()
    # the peer keys present (a C-level pass over the span's own map, then its scope's),
    # instead of ~45 lookups per span
    keys = _PEER_SET.intersection(meta.own) | _PEER_SET.intersection(meta.base)
    tags = []
    for key in sorted(keys):
        value = meta.get(key)
        if value:
            tags.append(f"{key}:{value}")
    return tuple(tags)


class Concentrator:
    """Buckets of groups, bounded by `max_keys` groups in all. Not thread-safe: used on the
    event loop only."""

    def __init__(self, max_keys: int, *, now: Callable[[], int] = time.time_ns,
                 on_refused: Callable[[int], None] = lambda n: None) -> None:
        self.max_keys = max_keys
        self._now = now
        self._on_refused = on_refused
        self._buckets: dict[int, dict[PayloadKey, dict[GroupKey, _Group]]] = {}
        self._oldest = _align(now())
        self.keys = 0

    def add(self, spans: Iterable[StatSpan]) -> int:
        """Aggregate spans; returns how many were refused (key limit)."""
        refused = 0
        newest = _align(self._now()) + FUTURE_BUCKETS * BUCKET_NS
        for s in spans:
            btime = min(max(_align(s.end), self._oldest), newest)
            bucket = self._buckets.get(btime)
            if bucket is None:
                bucket = self._buckets[btime] = {}
            groups = bucket.get(s.payload)
            if groups is None:
                groups = bucket[s.payload] = {}
            group = groups.get(s.key)
            if group is None:
                if self.keys >= self.max_keys:
                    refused += 1
                    continue
                group = groups[s.key] = _Group()
                self.keys += 1
            group.hits += 1
            group.duration += s.duration
            if s.top_level:
                group.top_level_hits += 1
            if s.error:
                group.errors += 1
                group.err.add(truncate(s.duration))
            else:
                group.ok.add(truncate(s.duration))
        if refused:
            self._on_refused(refused)
        return refused

    def flush(self, force: bool = False) -> list[dict[str, Any]]:
        """Remove the finished buckets (all with `force`) and return them as
        ClientStatsPayload documents (msgpack field names of the Agent's msgp code)."""
        return export(self.take(force))

    def take(self, force: bool = False) -> list[tuple[int, PayloadKey, dict[GroupKey, Any]]]:
        """Remove the finished buckets (all with `force`): (start, payload key, groups).
        Cheap; `export` (sketch encoding) may then run in a thread, as nothing here
        refers to the taken groups any more."""
        now = self._now()
        taken = []
        for btime in sorted(self._buckets):
            if not force and btime > now - BUFFER_LEN * BUCKET_NS:
                continue
            for pkey, groups in self._buckets.pop(btime).items():
                self.keys -= len(groups)
                taken.append((btime, pkey, groups))
        oldest = _align(now) - (BUFFER_LEN - 1) * BUCKET_NS
        self._oldest = max(self._oldest, oldest)
        return taken


def export(taken: list[tuple[int, PayloadKey, dict[GroupKey, Any]]]) -> list[dict[str, Any]]:
    """Taken buckets as ClientStatsPayload documents, one per payload key."""
    by_payload: dict[PayloadKey, list[dict[str, Any]]] = {}
    for btime, pkey, groups in taken:
        by_payload.setdefault(pkey, []).append({
            "Start": btime, "Duration": BUCKET_NS, "AgentTimeShift": 0,
            "Stats": [_grouped(key, g) for key, g in groups.items()]})
    return [{
        "Hostname": host, "Env": env, "Version": version, "Stats": buckets,
        "Lang": "", "TracerVersion": "", "RuntimeID": "", "Sequence": 0,
        "AgentAggregation": "", "Service": "", "ContainerID": container, "Tags": [],
        "GitCommitSha": "", "ImageTag": "",
    } for (env, host, version, container), buckets in by_payload.items()]


def _align(ns: int) -> int:
    return ns - ns % BUCKET_NS


def _grouped(key: GroupKey, g: _Group) -> dict[str, Any]:
    service, name, resource, typ, status, synthetics, kind, peer_tags, root = key
    return {
        "Service": service, "Name": name, "Resource": resource, "HTTPStatusCode": status,
        "Type": typ, "DBType": "", "Hits": g.hits, "Errors": g.errors,
        # a uint64 on the wire: a hostile sum is capped
        "Duration": min(g.duration, _U64_MAX),
        "OkSummary": g.ok.encode(), "ErrorSummary": g.err.encode(),
        "Synthetics": synthetics, "TopLevelHits": g.top_level_hits, "SpanKind": kind,
        "PeerTags": list(peer_tags), "IsTraceRoot": root,
    }


def payloads(clients: list[dict[str, Any]], hostname: str, env: str,
             agent_version: str) -> Iterator[dict[str, Any]]:
    """StatsPayload documents of at most MAX_ENTRIES_PER_PAYLOAD groups each (the Agent's
    buildPayloads: a client payload with too many groups is spread over several)."""
    pieces: list[tuple[dict[str, Any], int]] = []
    for client in clients:
        entries = [(b, g) for b in client["Stats"] for g in b["Stats"]]
        for i in range(0, len(entries), MAX_ENTRIES_PER_PAYLOAD):
            part: dict[int, dict[str, Any]] = {}
            for b, g in entries[i:i + MAX_ENTRIES_PER_PAYLOAD]:
                bucket = part.get(b["Start"])
                if bucket is None:
                    bucket = part[b["Start"]] = {**b, "Stats": []}
                bucket["Stats"].append(g)
            pieces.append(({**client, "Stats": list(part.values())},
                           min(MAX_ENTRIES_PER_PAYLOAD, len(entries) - i)))
    grouped: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    count = 0
    for client, n in pieces:
        if current and count + n > MAX_ENTRIES_PER_PAYLOAD:
            grouped.append(current)
            current, count = [], 0
        current.append(client)
        count += n
    if current:
        grouped.append(current)
    for stats in grouped:
        yield {"AgentHostname": hostname, "AgentEnv": env, "Stats": stats,
               "AgentVersion": agent_version, "ClientComputed": False,
               "SplitPayload": len(grouped) > 1}


def encode(payload: dict[str, Any]) -> bytes:
    return bytes(msgpack.packb(payload, use_bin_type=True))


class StatsFlusher:
    """The flush timer: every bucket interval, the finished buckets go out through `post`
    (one msgpack body per call; it raises RetryableError or PermanentError as the shared
    classification does). A retryable failure is tried `ATTEMPTS` times in all within the
    flush; then the payload is dropped and counted (stats are a summary: a late bucket
    would be double-counted by nothing, but a queue of them would grow without bound)."""

    ATTEMPTS = 3

    def __init__(self, concentrator: Concentrator, post: Callable[[bytes], Awaitable[None]],
                 *, hostname: str, env: str, agent_version: str,
                 on_payload: Callable[[str], None] = lambda outcome: None,
                 interval: float = BUCKET_NS / 1e9,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.concentrator = concentrator
        self._post = post
        self._meta = (hostname, env, agent_version)
        self._on_payload = on_payload
        self._interval = interval
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="datadog-stats-flush")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # a bug here must not stop the timer
                log.exception("datadog stats flush failed")

    async def flush(self, force: bool = False) -> None:
        taken = self.concentrator.take(force)
        if not taken:
            return
        # encoding thousands of sketches is tens of ms: off the event loop
        bodies = await asyncio.to_thread(
            lambda: [encode(p) for p in payloads(export(taken), *self._meta)])
        for body in bodies:
            await self._send(body, attempts=self.ATTEMPTS)

    async def _send(self, body: bytes, attempts: int) -> None:
        for attempt in range(attempts):
            try:
                await self._post(body)
            except RetryableError as exc:
                if attempt + 1 < attempts:
                    await self._sleep(min(exc.retry_after or 2.0 ** attempt, 5.0))
                    continue
                log.warning("datadog stats payload dropped after %d attempts: %s",
                            attempts, exc)
                self._on_payload("dropped")
                return
            except PermanentError as exc:
                log.warning("datadog stats payload refused: %s", exc)
                self._on_payload("dropped")
                return
            self._on_payload("sent")
            return

    async def close(self) -> None:
        """Stop the timer and send every bucket, finished or not (the caller bounds the
        time this takes)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush(force=True)
