"""The C walk of trace requests (sidecar/_spanwalk.c) against the protobuf library: it
reports the spans and attributes the parser reads, at the byte ranges they occupy, a
splice parses to the message edited through the library, and span metrics from the walk
are those read from the message. Hostile bytes get ValueError, never a crash."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from sidecar import _spanwalk
from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors import wire
from sidecar.processors.spanmetrics import SpanMetrics, SpanMetricsSettings
from sidecar.telemetry import metrics

KEYS = ["gen_ai.usage.input_tokens", "gen_ai.request.model", "gen_ai.operation.name",
        "tenant.id", "k" * 300, "x"]
TRIGGERS: list[bool | tuple[bytes, ...]] = [
    True, False, (AnyValue(string_value="invoke_agent").SerializeToString(),), False, True,
    False]
COUNTS = [b"gen_ai.usage.input_tokens"]
SPAN_KEYS = _spanwalk.Matcher([k.encode() for k in KEYS], TRIGGERS, COUNTS)
RESOURCE_KEYS = _spanwalk.Matcher([b"service.name", b"tenant.id"], [False, False])

VALUES = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v),
              st.sampled_from(["invoke_agent", "chat", "", "gpt-4o", "é" * 70])),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=False)),
    st.just(AnyValue()))
ATTRIBUTES = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v),
                                st.sampled_from([*KEYS, "other", "service.name", ""]),
                                VALUES), max_size=8)


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    resources = []
    for _ in range(draw(st.integers(0, 3))):
        scopes = []
        for _ in range(draw(st.integers(0, 3))):
            spans = [Span(trace_id=draw(st.binary(max_size=17)), name=draw(st.text(max_size=5)),
                          start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                          end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                          attributes=draw(ATTRIBUTES),
                          events=[Span.Event(name="e", attributes=draw(ATTRIBUTES))])
                     for _ in range(draw(st.integers(0, 4)))]
            scopes.append(ScopeSpans(spans=spans))
        resources.append(ResourceSpans(resource=Resource(attributes=draw(ATTRIBUTES)),
                                       scope_spans=scopes))
    return ExportTraceServiceRequest(resource_spans=resources)


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def triggered(span: Span) -> bool:
    for kv in span.attributes:
        at = KEYS.index(kv.key) if kv.key in KEYS else -1
        trigger = TRIGGERS[at] if at >= 0 else False
        if trigger is True or (isinstance(trigger, tuple)
                               and kv.value.SerializeToString() in trigger):
            return True
    return False


def matched(attributes: list[KeyValue], keys: list[str]) -> list[tuple[int, AnyValue]]:
    return [(keys.index(kv.key), kv.value) for kv in attributes if kv.key in keys]


def check_against_library(payload: bytes, request: ExportTraceServiceRequest) -> None:
    resources, spans = _spanwalk.walk(payload, SPAN_KEYS, RESOURCE_KEYS)
    assert len(resources) == len(request.resource_spans)
    for (ids, values, _, key), rs in zip(resources, request.resource_spans, strict=True):
        want = matched(list(rs.resource.attributes), ["service.name", "tenant.id"])
        assert list(zip(ids, map(AnyValue.FromString, values), strict=True)) == want
        # the resource's memo key: per matched attribute its id, value length and value
        assert key == b"".join(varint(i) + varint(len(v)) + v
                               for i, v in zip(ids, values, strict=True))
    expected = [(i, span) for i, rs in enumerate(request.resource_spans)
                for ss in rs.scope_spans for span in ss.spans if triggered(span)]
    assert len(spans) == len(expected)
    for record, (i, span) in zip(spans, expected, strict=True):
        r, start, end, trace_id, start_ns, end_ns, ids, values, flags, count, key, counts \
            = record
        assert r == i
        assert Span.FromString(payload[start:end]) == span
        assert (trace_id, start_ns, end_ns) == (span.trace_id, span.start_time_unix_nano,
                                                span.end_time_unix_nano)
        assert count == len(span.attributes)
        pairs = matched(list(span.attributes), KEYS)
        assert list(zip(ids, map(AnyValue.FromString, values), strict=True)) == pairs
        ids_seen = [at for at, _ in pairs]
        assert bool(flags & _spanwalk.DUPLICATE) == (len(set(ids_seen)) != len(ids_seen))
        # the counts apart: an int for an int_value, else the value's bytes
        want_counts = [v.int_value if v.WhichOneof("value") == "int_value"
                       else v.SerializeToString() for at, v in pairs if at == 0]
        assert list(counts) == want_counts
        assert key  # equal keys for equal (ids, non-count values): checked below


@settings(max_examples=200, deadline=None)
@given(requests())
def test_the_walk_reports_what_the_library_parses(request: ExportTraceServiceRequest) -> None:
    check_against_library(request.SerializeToString(), request)


@settings(max_examples=100, deadline=None)
@given(requests(), st.randoms(use_true_random=False))
def test_spans_known_to_the_memo_come_without_ids_and_values(
        request: ExportTraceServiceRequest, rnd: random.Random) -> None:
    payload = request.SerializeToString()
    _, plain = _spanwalk.walk(payload, SPAN_KEYS, RESOURCE_KEYS)
    memo = {record[10]: object() for record in plain if rnd.random() < 0.5}
    _, with_memo = _spanwalk.walk(payload, SPAN_KEYS, RESOURCE_KEYS, memo)
    assert len(with_memo) == len(plain)
    for a, b in zip(plain, with_memo, strict=True):
        skipped = a[8] == 0 and a[10] in memo  # no flags, key memoised
        assert b[6:8] == ((None, None) if skipped else a[6:8])
        assert b[:6] == a[:6]
        assert b[8:] == a[8:]


def test_the_memo_key_is_the_ids_and_values_but_for_counts() -> None:
    def span(**values: str | int) -> bytes:
        attributes = [KeyValue(key=k.replace("_", ".") if k != "x" else k,
                               value=AnyValue(string_value=v) if isinstance(v, str)
                               else AnyValue(int_value=v)) for k, v in values.items()]
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
            ScopeSpans(spans=[Span(attributes=[KeyValue(key="gen_ai.usage.input_tokens",
                                                        value=AnyValue(int_value=7)),
                                               *attributes])])])])
        return _spanwalk.walk(request.SerializeToString(), SPAN_KEYS, RESOURCE_KEYS)[1][0][10]

    assert span(x="a") == span(x="a")
    assert span(x="a") != span(x="b")
    assert span(x="a", tenant_id="t") != span(tenant_id="t", x="a")  # order is part of it
    base = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(
        spans=[Span(attributes=[KeyValue(key="gen_ai.usage.input_tokens",
                                         value=AnyValue(int_value=n))]) for n in (1, 2)])])])
    first, second = _spanwalk.walk(base.SerializeToString(), SPAN_KEYS, RESOURCE_KEYS)[1]
    assert first[10] == second[10]
    assert (first[11], second[11]) == ((1,), (2,))


def test_unkeyed_values_are_given_but_left_out_of_the_memo_key() -> None:
    matcher = _spanwalk.Matcher([b"gen_ai.usage.input_tokens", b"session.id", b"x"],
                                [True, False, False], [b"gen_ai.usage.input_tokens"],
                                [b"session.id"])

    def record(*pairs: tuple[str, str]) -> tuple[object, ...]:
        attributes = [KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=3)),
                      *(KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in pairs)]
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
            ScopeSpans(spans=[Span(attributes=attributes)])])])
        return _spanwalk.walk(request.SerializeToString(), matcher, RESOURCE_KEYS)[1][0]

    one, two = record(("session.id", "s-1"), ("x", "a")), record(("session.id", "s-2"), ("x", "a"))
    a = AnyValue(string_value="a").SerializeToString()
    assert one[10] == two[10] == b"\x00\x01\x02" + varint(len(a)) + a  # x's value only
    assert [AnyValue.FromString(v) for v in one[7]] == [  # type: ignore[union-attr]
        AnyValue(int_value=3), AnyValue(string_value="s-1"), AnyValue(string_value="a")]
    assert AnyValue.FromString(two[7][1]).string_value == "s-2"  # the value is still given
    assert record(("x", "a"))[10] != one[10]  # the key's presence is still part of it
    assert record(("session.id", "s-1"), ("x", "b"))[10] != one[10]


@settings(max_examples=200, deadline=None)
@given(requests(), st.data())
def test_a_splice_parses_to_the_message_edited_through_the_library(
        request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    payload = request.SerializeToString()
    _, spans = _spanwalk.walk(payload, SPAN_KEYS, RESOURCE_KEYS)
    chosen = sorted(data.draw(st.sets(st.sampled_from([s[1] for s in spans])))
                    if spans else set())
    extra = {at: wire.attribute("added", at) + wire.attribute("v" * 200, "w" * 300)
             for at in chosen}
    edited = ExportTraceServiceRequest.FromString(payload)
    # edit by position: the n-th reported span is the n-th triggered span in wire order
    expected_spans = [span for rs in edited.resource_spans for ss in rs.scope_spans
                      for span in ss.spans if triggered(span)]
    for record, span in zip(spans, expected_spans, strict=True):
        if record[1] in extra:
            span.MergeFromString(extra[record[1]])
    out = _spanwalk.splice(payload, sorted(extra.items()))
    assert ExportTraceServiceRequest.FromString(out) == edited


def test_splice_refuses_edits_out_of_order_or_naming_no_span() -> None:
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(
        spans=[Span(attributes=[KeyValue(key="x")]), Span(name="b")])])])
    payload = request.SerializeToString()
    with pytest.raises(ValueError, match="ascending"):
        _spanwalk.splice(payload, [(10, b""), (5, b"")])
    with pytest.raises(ValueError, match="names no span"):
        _spanwalk.splice(payload, [(1, b"\x4a\x00")])
    assert _spanwalk.splice(payload, []) == payload


def test_a_matcher_refuses_duplicate_or_wrong_keys() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        _spanwalk.Matcher([b"a", b"a"], [False, False])
    with pytest.raises(TypeError):
        _spanwalk.Matcher(["a"], [False])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="differ"):
        _spanwalk.Matcher([b"a"], [])
    with pytest.raises(ValueError, match="not one of the keys"):
        _spanwalk.Matcher([b"a"], [False], [b"b"])
    with pytest.raises(ValueError, match="unkeyed key is not one of the keys"):
        _spanwalk.Matcher([b"a"], [False], [], [b"b"])
    with pytest.raises(ValueError, match="both a count and unkeyed"):
        _spanwalk.Matcher([b"a"], [False], [b"a"], [b"a"])
    with pytest.raises(TypeError):
        _spanwalk.Matcher([b"a"], [False], [], 3)  # type: ignore[arg-type]


def test_hostile_bytes_are_refused_or_read_as_the_library_reads_them() -> None:
    rng = random.Random(5)
    good = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=[KeyValue(
            key="service.name", value=AnyValue(string_value="svc"))]),
            scope_spans=[ScopeSpans(spans=[Span(trace_id=b"t" * 16, attributes=[
                KeyValue(key=k, value=AnyValue(int_value=n)) for n, k in enumerate(KEYS)])
                for _ in range(3)])])])
    payload = good.SerializeToString()
    for n in range(3000):
        data = bytearray(payload)
        if n % 3 == 0:
            data = data[:rng.randrange(len(data))]  # truncated anywhere
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            parsed = ExportTraceServiceRequest.FromString(bytes(data))
        except Exception:  # the library refused it: the walk may still read it
            parsed = None
        try:
            _, spans = _spanwalk.walk(bytes(data), SPAN_KEYS, RESOURCE_KEYS)
        except ValueError:
            continue
        for record in spans:
            assert 0 <= record[1] <= record[2] <= len(data)
        out = _spanwalk.splice(bytes(data), [(s[1], b"\x4a\x00") for s in spans])
        # each edit adds its 2 bytes (and enclosing lengths may take a byte more)
        assert len(out) >= len(data) + 2 * len(spans)
        if parsed is not None:
            edited = ExportTraceServiceRequest.FromString(out)
            assert sum(len(ss.spans) for rs in edited.resource_spans
                       for ss in rs.scope_spans) == sum(
                len(ss.spans) for rs in parsed.resource_spans for ss in rs.scope_spans)
    for junk in (b"\x0b", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0a\x05ab",
                 b"\x09abc", b"\x0d\x00", b"\x80" * 11):
        with pytest.raises(ValueError, match=r"tag|truncated|wire type"):
            _spanwalk.walk(junk, SPAN_KEYS, RESOURCE_KEYS)


@st.composite
def red_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    resources = []
    for _ in range(draw(st.integers(0, 3))):
        service = draw(st.sampled_from([None, AnyValue(string_value="svc"), AnyValue(),
                                        AnyValue(string_value=""), AnyValue(int_value=3)]))
        attributes = [KeyValue(key="service.name", value=service)] if service is not None \
            else []
        if draw(st.booleans()):
            attributes.insert(0, KeyValue(key="x", value=AnyValue(string_value="y")))
        spans = [Span(name=draw(st.sampled_from(["", "GET /", "chat", "é"])),
                      kind=draw(st.sampled_from([0, 1, 2, 3, 7, -1])),
                      start_time_unix_nano=(start := draw(st.integers(0, 2**63))),
                      end_time_unix_nano=draw(st.sampled_from(
                          [start, start + 1, max(start - 5, 0), start + 3 * 10**9,
                           start + 10**9, start + 10**7,
                           start + draw(st.integers(0, 10**12))])),
                      status=Status(code=draw(st.sampled_from([0, 1, 2, 5]))))
                 for _ in range(draw(st.integers(0, 6)))]
        resources.append(ResourceSpans(resource=Resource(attributes=attributes),
                                       scope_spans=[ScopeSpans(spans=spans)]))
    return ExportTraceServiceRequest(resource_spans=resources)


@settings(max_examples=200, deadline=None)
@given(st.lists(red_requests(), min_size=1, max_size=4), st.sampled_from([0, 1, 3]))
def test_span_metrics_from_the_walk_are_those_from_the_message(
        requests: list[ExportTraceServiceRequest], rerank: int) -> None:
    # several requests, twice, through one processor: the later ones add to series the
    # walk already knows (in C), and reranking (every `rerank` requests) drops them
    payloads = [r.SerializeToString() for r in requests] * 2
    rows = []
    for fast in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            table = metrics.HistogramTable(metrics.SPAN_DURATION.name, "d",
                                           metrics.SPAN_DURATION.labels,
                                           metrics.SPAN_DURATION.bounds)
            patch.setattr(metrics, "SPAN_DURATION", table)
            if not fast:
                patch.setattr(_spanwalk, "red", _refuse)
            stage = Stage(Signal.TRACES, [SpanMetrics(SpanMetricsSettings(
                label_rerank_requests=rerank))])
            for payload in payloads:
                stage.run(Batch.from_bytes(Signal.TRACES, payload))
        rows.append(table.rows)
    fast_rows, message_rows = rows
    assert fast_rows.keys() == message_rows.keys()
    for key, row in message_rows.items():
        assert fast_rows[key][:-1] == row[:-1]  # bucket counts exactly
        assert fast_rows[key][-1] == pytest.approx(row[-1], rel=1e-12)  # sums, any order


def test_span_metrics_walk_adds_nothing_from_bytes_it_refuses() -> None:
    good = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[Span(name="a", start_time_unix_nano=1, end_time_unix_nano=2)])])])
    payload = good.SerializeToString()
    row, volume = [0.0] * (len(metrics.SPAN_DURATION.bounds) + 2), [0.0]
    series = {(None, b"a", 0, 0): (row, volume)}
    _, misses = _spanwalk.red(payload, metrics.SPAN_DURATION.bounds, series)
    assert misses == []
    assert (row[0], volume) == (1.0, [1.0])
    with pytest.raises(ValueError, match="truncated"):
        _spanwalk.red(payload + b"\x0a\x05ab", metrics.SPAN_DURATION.bounds, series)
    assert (row[0], volume) == (1.0, [1.0])  # the good part of a refused request: not added
    with pytest.raises(TypeError, match="series values"):
        _spanwalk.red(payload, metrics.SPAN_DURATION.bounds, {(None, b"a", 0, 0): ([0.0], [])})


def _refuse(*_: object) -> None:
    raise ValueError("forced")
