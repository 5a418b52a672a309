"""The APM stats concentrator against the Agent's documented rules (pkg/trace/stats) and the
`ddsketch` package: sketches, bucketing, eligibility, grouping, bounds and payload split.
Expected values are computed here from the inputs, never by the code under test."""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

import msgpack
import pytest
from ddsketch import DDSketch as RefSketch

from sidecar._proto.datadog_trace_pb2 import TracerPayload
from sidecar.exporters import datadog_stats as st
from sidecar.exporters.datadog_mapping import Base, MappedPayload, SpanFields
from sidecar.exporters.datadog_stats import (
    BUCKET_NS,
    Concentrator,
    Sketch,
    StatsOptions,
    StatSpan,
    stat_spans,
)
from tests.helpers.sketch import decode_sketch, exact_quantile, quantile

NOW = 1_800_000_005_000_000_000  # 5 s into a 10 s bucket


def agent_truncate(ns: int) -> float:
    (bits,) = struct.unpack("<Q", struct.pack("<d", float(ns)))
    return float(struct.unpack("<d", struct.pack("<Q", bits & 0xFFFFF80000000000))[0])


def test_truncation_keeps_ten_bits_of_mantissa() -> None:
    for ns in (1, 1023, 1024, 1025, 123_456_789, 2**40 + 12345, 10**18):
        assert st.truncate(ns) == agent_truncate(ns)
        assert abs(st.truncate(ns) - ns) / ns < 1 / 512
    assert st.truncate(0) == 0.0
    assert st.truncate(-5) == 0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sketch_quantiles_within_relative_accuracy(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(15, 2) for _ in range(5000)]  # ~3 ms median, wide tail
    ours, ref = Sketch(), RefSketch(relative_accuracy=0.01)
    for v in values:
        ours.add(v)
        ref.add(v)
    raw = ours.encode()
    _, zero = decode_sketch(raw)
    assert zero + sum(c for _, c in decode_sketch(raw)[0]) == len(values)
    for q in (0.5, 0.75, 0.9, 0.95, 0.99):
        exact = exact_quantile(values, q)
        got = quantile(raw, q)
        assert abs(got - exact) / exact <= 0.0101, (q, got, exact)
        expected = ref.get_quantile_value(q)
        assert expected is not None
        assert abs(got - expected) / expected <= 0.0202, (q, got, expected)


def test_sketch_zero_and_tiny_values_go_to_the_zero_count() -> None:
    sketch = Sketch()
    for v in (0.0, 0.0, 1e-320, 5.0):
        sketch.add(v)
    values, zero = decode_sketch(sketch.encode())
    assert zero == 3
    assert sum(c for _, c in values) == 1


def test_sketch_bins_are_bounded_by_collapsing_the_lowest() -> None:
    sketch = Sketch()
    gamma = 1.01 / 0.99
    # 3,000 values one bin apart: more than the 2,048 bins a sketch may hold
    values = [gamma ** (k + 0.5) for k in range(3000)]
    for v in reversed(values):  # high first, then lower ones collapse upwards
        sketch.add(v)
    assert len(sketch.bins) <= 2048
    other = Sketch()
    for v in values:  # low first, then the lowest are folded as the range grows
        other.add(v)
    assert len(other.bins) <= 2048
    for s in (sketch, other):
        raw = s.encode()
        bins, zero = decode_sketch(raw)
        assert zero + sum(c for _, c in bins) == 3000
        # the top quantiles keep their accuracy
        assert abs(quantile(raw, 0.99) - exact_quantile(values, 0.99)) \
            / exact_quantile(values, 0.99) <= 0.0101


def dd_span(span_id: int, *, parent: int = 0, kind: str = "server", service: str = "svc",
            name: str = "op", resource: str = "GET /", typ: str = "web", error: int = 0,
            start: int = NOW - 2_000_000, duration: int = 1_000_000,
            metrics: dict[str, float] | None = None,
            meta: dict[str, str] | None = None) -> SpanFields:
    return {"service": service, "name": name, "resource": resource, "traceID": 7,
            "spanID": span_id, "parentID": parent, "start": start, "duration": duration,
            "error": error, "type": typ, "meta": {"span.kind": kind, **(meta or {})},
            "metrics": metrics or {}}


def payload(*spans: SpanFields, env: str = "prod", host: str = "h", version: str = "1.0",
            base: dict[str, str] | None = None) -> MappedPayload:
    scope = Base(base or {}, b"")
    return MappedPayload(TracerPayload(env=env, hostname=host, appVersion=version),
                         [[(span, scope) for span in spans]])


TOP = {"_top_level": 1.0}
MEASURED = {"_dd.measured": 1.0}


def test_eligibility_follows_the_agent() -> None:
    spans = [
        dd_span(1, metrics=TOP),  # top-level
        dd_span(2, parent=1, kind="internal", metrics=MEASURED),  # measured
        dd_span(3, parent=1, kind="client"),  # by span kind
        dd_span(4, parent=1, kind="internal"),  # none of these: no stats
        dd_span(5, parent=1, kind="server", metrics={**TOP, "_dd.partial_version": 1.0}),
    ]
    got = stat_spans([payload(*spans)], StatsOptions())
    assert [s.key[6] for s in got] == ["server", "internal", "client"]
    by_kind_off = stat_spans([payload(*spans)], StatsOptions(compute_by_span_kind=False))
    assert [s.key[6] for s in by_kind_off] == ["server", "internal"]
    assert got[0].top_level
    assert not got[1].top_level
    assert got[0].key[8] == st.TRACE_ROOT_TRUE
    assert got[1].key[8] == st.TRACE_ROOT_FALSE


def test_key_fields_status_synthetics_and_payload_key() -> None:
    spans = [dd_span(1, metrics={**TOP, "http.status_code": 404.0}),
             dd_span(2, metrics=TOP, meta={"http.status_code": "503"}),
             dd_span(3, metrics=TOP, meta={"http.status_code": "not a number"})]
    got = stat_spans([payload(*spans, env="", base={"_dd.origin": "synthetics-browser"})],
                     StatsOptions())
    assert [s.key[4] for s in got] == [404, 503, 0]
    assert all(s.key[5] is True for s in got)
    assert got[0].payload == ("none", "h", "1.0", "")  # the Agent's default env
    assert got[0].key[:4] == ("svc", "op", "GET /", "web")


def test_peer_tags_on_client_producer_consumer_and_base_service_on_internal() -> None:
    meta = {"db.system": "postgresql", "peer.service": "billing-db", "out.host": "10.0.0.1",
            "unrelated": "x"}
    spans = [dd_span(1, kind="client", metrics=MEASURED, meta=meta),
             dd_span(2, kind="server", metrics=TOP, meta=meta),
             dd_span(3, kind="internal", metrics=MEASURED,
                     meta={**meta, "_dd.base_service": "web"})]
    got = stat_spans([payload(*spans)], StatsOptions())
    assert got[0].key[7] == ("db.system:postgresql", "out.host:10.0.0.1",
                             "peer.service:billing-db")
    # the resource's or scope's meta counts too, the span's own entries win
    (inherited,) = stat_spans([payload(dd_span(1, kind="client", metrics=MEASURED,
                                               meta={"db.system": "mysql"}),
                                       base={"peer.service": "users", "db.system": "x"})],
                              StatsOptions())
    assert inherited.key[7] == ("db.system:mysql", "peer.service:users")
    assert got[1].key[7] == ()
    assert got[2].key[7] == ("_dd.base_service:web",)
    off = stat_spans([payload(*spans)], StatsOptions(peer_tags=False))
    assert all(s.key[7] == () for s in off)


def stat(end: int, *, key: str = "op", duration: int = 1000, error: bool = False,
         top: bool = True) -> StatSpan:
    return StatSpan(("prod", "h", "", ""), ("svc", key, "r", "web", 200, False, "server", (),
                                            1), end, duration, error, top)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_buckets_by_end_time_flush_after_two_buckets_and_clamp_old_spans() -> None:
    clock = Clock(NOW)
    c = Concentrator(100, now=clock)
    bucket = NOW - NOW % BUCKET_NS
    # a new concentrator's oldest bucket is the current one (the Agent's oldestTs)
    c.add([stat(NOW - 1000), stat(bucket + 1, duration=5), stat(bucket - 1),
           stat(bucket - 50 * BUCKET_NS)])
    assert c.flush() == []  # nothing two buckets old yet
    clock.now = NOW + BUCKET_NS
    assert c.flush() == []
    clock.now = NOW + 2 * BUCKET_NS
    (client,) = c.flush()
    assert [(b["Start"], b["Stats"][0]["Hits"]) for b in client["Stats"]] == [(bucket, 4)]
    assert c.keys == 0
    # now the previous bucket is open for late spans; older ones count in it
    c.add([stat(bucket + BUCKET_NS + 7), stat(bucket + 1), stat(NOW + 2 * BUCKET_NS)])
    clock.now = NOW + 10 * BUCKET_NS
    (client,) = c.flush()
    assert [(b["Start"], b["Stats"][0]["Hits"]) for b in client["Stats"]] == [
        (bucket + BUCKET_NS, 2), (bucket + 2 * BUCKET_NS, 1)]


def test_future_spans_land_at_most_six_buckets_ahead() -> None:
    c = Concentrator(100, now=Clock(NOW))
    c.add([stat(NOW + 10**6 * BUCKET_NS), stat(NOW + 3 * BUCKET_NS)])
    (client,) = c.flush(force=True)
    bucket = NOW - NOW % BUCKET_NS
    assert sorted(b["Start"] for b in client["Stats"]) == [bucket + 3 * BUCKET_NS,
                                                          bucket + 6 * BUCKET_NS]


def test_hits_errors_durations_and_top_level_hits() -> None:
    c = Concentrator(100, now=Clock(NOW))
    durations = [1000, 2000, 3000, 4000]
    c.add([stat(NOW, duration=d, error=(i % 2 == 1), top=(i < 3))
           for i, d in enumerate(durations)])
    (client,) = c.flush(force=True)
    (group,) = client["Stats"][0]["Stats"]
    assert (group["Hits"], group["Errors"], group["Duration"], group["TopLevelHits"]) == (
        4, 2, 10_000, 3)
    ok, _ = decode_sketch(group["OkSummary"])
    err, _ = decode_sketch(group["ErrorSummary"])
    assert sum(n for _, n in ok) == 2
    assert sum(n for _, n in err) == 2


def test_key_limit_refuses_new_keys_and_counts_them() -> None:
    refused: list[int] = []
    c = Concentrator(3, now=Clock(NOW), on_refused=refused.append)
    assert c.add([stat(NOW, key=f"op{i}") for i in range(5)]) == 2
    assert refused == [2]
    # existing keys still aggregate at the limit
    assert c.add([stat(NOW, key="op0"), stat(NOW, key="op9")]) == 1
    assert c.keys == 3
    (client,) = c.flush(force=True)
    hits = {g["Name"]: g["Hits"] for g in client["Stats"][0]["Stats"]}
    assert hits == {"op0": 2, "op1": 1, "op2": 1}
    assert c.keys == 0
    assert c.add([stat(NOW, key="op9")]) == 0  # room again once flushed


def test_payloads_split_at_4000_groups() -> None:
    c = Concentrator(10_000, now=Clock(NOW))
    c.add([stat(NOW, key=f"op{i}") for i in range(9001)])
    clients = c.flush(force=True)
    docs = list(st.payloads(clients, "agent-host", "prod", "sidecar-x"))
    counts = [sum(len(b["Stats"]) for cl in d["Stats"] for b in cl["Stats"]) for d in docs]
    assert counts == [4000, 4000, 1001]
    assert all(d["SplitPayload"] for d in docs)
    names = [g["Name"] for d in docs for cl in d["Stats"] for b in cl["Stats"]
             for g in b["Stats"]]
    assert sorted(names) == sorted(f"op{i}" for i in range(9001))
    one = list(st.payloads(Concentrator(10, now=Clock(NOW)).flush(force=True) or [], "h",
                           "e", "v"))
    assert one == []


def test_encoded_payload_is_msgpack_with_the_agents_field_names() -> None:
    c = Concentrator(10, now=Clock(NOW))
    c.add([stat(NOW)])
    (doc,) = st.payloads(c.flush(force=True), "agent-host", "prod", "sidecar-x")
    decoded: dict[str, Any] = msgpack.unpackb(st.encode(doc))
    assert decoded["AgentHostname"] == "agent-host"
    assert decoded["ClientComputed"] is False
    assert decoded["SplitPayload"] is False
    group = decoded["Stats"][0]["Stats"][0]["Stats"][0]
    assert isinstance(group["OkSummary"], bytes)  # msgpack bin, as msgp writes []byte
    assert group["Service"] == "svc"


async def test_flusher_timer_sends_finished_buckets_and_close_sends_the_rest() -> None:
    clock = Clock(NOW)
    c = Concentrator(100, now=clock)
    posts: list[dict[str, Any]] = []
    outcomes: list[str] = []

    posted = asyncio.Event()

    async def post(body: bytes) -> None:
        posts.append(msgpack.unpackb(body))
        posted.set()

    flusher = st.StatsFlusher(c, post, hostname="h", env="e", agent_version="v",
                              on_payload=outcomes.append, interval=0.01)
    flusher.start()
    c.add([stat(NOW)])
    await asyncio.sleep(0.05)
    assert posts == []  # the bucket is still open
    clock.now = NOW + 2 * BUCKET_NS
    c.add([stat(NOW + 2 * BUCKET_NS)])
    async with asyncio.timeout(10):
        await posted.wait()
    assert [b["Start"] for b in posts[0]["Stats"][0]["Stats"]] == [NOW - NOW % BUCKET_NS]
    await flusher.close()
    assert len(posts) == 2  # the open bucket, at close
    assert outcomes == ["sent", "sent"]


def test_hostile_values_do_not_break_the_payload() -> None:
    spans = [dd_span(1, metrics={**TOP, "http.status_code": float("nan")}),
             dd_span(2, metrics=TOP, meta={"http.status_code": "9" * 20_000}),
             dd_span(3, metrics={**TOP, "http.status_code": -5.0}),
             dd_span(4, metrics=TOP, meta={"http.status_code": "\u0663"})]  # Arabic-Indic 3
    got = stat_spans([payload(*spans)], StatsOptions())
    assert [s.key[4] for s in got] == [0, 0, 0, 0]
    c = Concentrator(10, now=Clock(NOW))
    huge = 2**63 + 12345
    c.add([stat(NOW, duration=huge), stat(NOW, duration=huge), stat(NOW, duration=0)])
    (doc,) = st.payloads(c.flush(force=True), "h", "e", "v")
    group = msgpack.unpackb(st.encode(doc))["Stats"][0]["Stats"][0]["Stats"][0]
    assert group["Hits"] == 3
    assert group["Duration"] == 2**64 - 1
    bins, zero = decode_sketch(group["OkSummary"])
    assert zero == 1
    assert sum(n for _, n in bins) == 2
