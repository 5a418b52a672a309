"""The wire check (`sidecar.wirecheck`, `_spanwalk.check`) against the protobuf parser (upb):
a request the check passes is one the parser takes, with the same item count; a request
it is not sure of is parsed, so what is refused is what the parser refuses. Random
requests, the same mangled byte by byte, and the cases the check leaves to the parser."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from sidecar.errors import BadInputError
from sidecar.model import _CHECKERS, Batch, Signal, count_items
from sidecar.signals import REQUEST_TYPES
from sidecar.wirecheck import Checker

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=6)
SCALARS = st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), TEXT),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(-2**63, 2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=False)),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=6)),
    st.just(AnyValue()))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.builds(lambda vs: AnyValue(array_value=ArrayValue(values=vs)),
              st.lists(inner, max_size=3)),
    st.builds(lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs)),
              st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), TEXT, inner),
                       max_size=3))), max_leaves=8)
ATTRIBUTES = st.lists(st.builds(lambda k, v: KeyValue(key=k, value=v), TEXT, VALUES),
                      max_size=4)


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    def span() -> Span:
        return Span(trace_id=draw(st.binary(max_size=16)), span_id=draw(st.binary(max_size=8)),
                    name=draw(TEXT), kind=draw(st.integers(0, 5)),
                    start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                    attributes=draw(ATTRIBUTES), dropped_attributes_count=draw(
                        st.integers(0, 2**32 - 1)),
                    events=[Span.Event(name=draw(TEXT), attributes=draw(ATTRIBUTES))],
                    links=[Span.Link(trace_id=b"\1" * 16, attributes=draw(ATTRIBUTES))]
                    if draw(st.booleans()) else [],
                    status=Status(message=draw(TEXT), code=draw(st.integers(0, 2))))
    return ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=draw(ATTRIBUTES)), schema_url=draw(TEXT),
                      scope_spans=[ScopeSpans(scope=InstrumentationScope(name=draw(TEXT)),
                                              spans=[span() for _ in range(draw(
                                                  st.integers(0, 3)))])
                                   for _ in range(draw(st.integers(0, 2)))])
        for _ in range(draw(st.integers(0, 2)))])


@st.composite
def log_requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    def record() -> LogRecord:
        return LogRecord(time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                         severity_number=draw(st.integers(0, 24)), severity_text=draw(TEXT),
                         body=draw(VALUES), attributes=draw(ATTRIBUTES),
                         trace_id=draw(st.binary(max_size=16)))
    return ExportLogsServiceRequest(resource_logs=[
        ResourceLogs(resource=Resource(attributes=draw(ATTRIBUTES)),
                     scope_logs=[ScopeLogs(log_records=[record() for _ in range(draw(
                         st.integers(0, 3)))]) for _ in range(draw(st.integers(0, 2)))])
        for _ in range(draw(st.integers(0, 2)))])


def parsed_items(signal: Signal, payload: bytes) -> int | None:
    """The parser's item count, None when it refuses the bytes."""
    try:
        message = REQUEST_TYPES[signal].FromString(payload)
    except DecodeError:
        return None
    return count_items(signal, message)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.tuples(st.just(Signal.TRACES), trace_requests()),
                 st.tuples(st.just(Signal.LOGS), log_requests())))
def test_the_check_counts_what_the_parser_counts(case: tuple[Signal, object]) -> None:
    signal, request = case
    payload = request.SerializeToString()  # type: ignore[attr-defined]
    # what a real encoder writes is always checked, never left to the parser
    assert _CHECKERS[signal].items(payload) == parsed_items(signal, payload)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut",
                                                "widen"]),
                               st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                     max_size=3)


def mangle(payload: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(payload)
    for op, at, byte in mutations:
        at = at % (len(data) + 1)
        if op == "insert" or not data:
            data[at:at] = bytes([byte])
        elif op == "cut":
            del data[at:]
        elif at < len(data):
            if op == "flip":
                data[at] ^= 1 << (byte % 8)
            elif op == "set":
                data[at] = byte
            elif op == "widen":
                # a one-byte varint (tag, length or value) spelled longer: 0x05 as
                # 0x85 0x80 .. 0x00, the same value in 2 to 12 bytes
                if data[at] < 0x80:
                    data[at:at + 1] = bytes([data[at] | 0x80]) + b"\x80" * (byte % 11) + b"\0"
            else:
                del data[at:at + 1 + byte % 4]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.tuples(st.just(Signal.TRACES), trace_requests()),
                 st.tuples(st.just(Signal.LOGS), log_requests())), MUTATIONS)
def test_a_mangled_request_the_check_passes_is_one_the_parser_takes(
        case: tuple[Signal, object], mutations: list[tuple[str, int, int]]) -> None:
    signal, request = case
    payload = mangle(request.SerializeToString(), mutations)  # type: ignore[attr-defined]
    items = _CHECKERS[signal].items(payload)
    if items >= 0:
        assert parsed_items(signal, payload) == items
    # and through the receivers' entry point: refused exactly when the parser refuses
    expected = parsed_items(signal, payload)
    if expected is None:
        with pytest.raises(BadInputError):
            Batch.from_bytes(signal, payload)
    else:
        assert Batch.from_bytes(signal, payload).items == expected


def _span_request(span: Span) -> bytes:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[span])])]).SerializeToString()


def _replace(payload: bytes, old: bytes, new: bytes) -> bytes:
    assert payload.count(old) == 1
    assert len(old) == len(new)
    return payload.replace(old, new)


@pytest.mark.parametrize("bad", [b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80",
                                 b"\xe0\x80\xaf", b"\xf8\x88\x80\x80"])
@pytest.mark.parametrize("where", ["name", "key", "value", "nested", "status", "event"])
def test_bad_utf8_in_any_string_is_refused(bad: bytes, where: str) -> None:
    mark = "Q" * len(bad)
    nested = AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="k", value=AnyValue(array_value=ArrayValue(values=[
            AnyValue(string_value=mark if where == "nested" else "v")])))]))
    span = Span(name=mark if where == "name" else "n",
                attributes=[KeyValue(key=mark if where == "key" else "k",
                                     value=AnyValue(string_value=mark if where == "value"
                                                    else "v")),
                            KeyValue(key="deep", value=nested)],
                status=Status(message=mark if where == "status" else ""),
                events=[Span.Event(name=mark if where == "event" else "e")])
    payload = _replace(_span_request(span), mark.encode(), bad)
    assert _CHECKERS[Signal.TRACES].items(payload) == -1
    assert parsed_items(Signal.TRACES, payload) is None
    with pytest.raises(BadInputError):
        Batch.from_bytes(Signal.TRACES, payload)


def test_valid_utf8_of_every_length_passes() -> None:
    for text in ["é", "€", "𝄞", "\U0010ffff", "\ud7ff", "\ue000", "a" * 17 + "é" + "b" * 9]:
        payload = _span_request(Span(name=text))
        assert _CHECKERS[Signal.TRACES].items(payload) == 1


def _wrap(span_content: bytes) -> bytes:
    """A request of one resource, one scope and one span whose content is given raw."""
    scope = b"\x12" + _varint(len(span_content)) + span_content  # ScopeSpans.spans
    resource = b"\x12" + _varint(len(scope)) + scope  # ResourceSpans.scope_spans
    return b"\x0a" + _varint(len(resource)) + resource  # request.resource_spans


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_the_raw_request_builder_is_what_the_library_writes() -> None:
    assert _wrap(b"\x2a\x01n") == _span_request(Span(name="n"))


NAME = b"\x2a\x01n"  # Span.name (field 5) = "n"
DEEP = AnyValue(string_value="x")
for _ in range(40):
    DEEP = AnyValue(array_value=ArrayValue(values=[DEEP]))
NOT_SURE = {
    # an unknown group (field 99, start and end) in the span: the parser skips it
    "group": NAME + b"\x9b\x06\x9c\x06",
    # the span's name given as a varint: an unknown field to the parser
    "wrong wire type": b"\x28\x01" + NAME,
    # nesting deeper than the check follows (the parser's limit is 100)
    "deep": Span(attributes=[KeyValue(key="k", value=DEEP)]).SerializeToString(),
    # kind (field 6) as a 10-byte varint whose last byte holds more than one bit
    "long varint": NAME + b"\x30" + b"\x80" * 9 + b"\x7f",
    # a field numbered 0
    "field zero": NAME + b"\x00\x00",
    # an unknown field with an 11-byte varint
    "overlong unknown": NAME + b"\xf8\x05" + b"\x80" * 10 + b"\x01",
    # a length (of an unknown field 50) as a 6-byte varint of 0: the parser refuses sizes
    # longer than 5 bytes whatever their value (found by fuzzing)
    "overlong length": NAME + b"\x92\x03" + b"\x80" * 5 + b"\x00",
    # a tag as a 6-byte varint (field 5, string: "n")
    "overlong tag": b"\xaa\x80\x80\x80\x80\x00\x01n",
}


@pytest.mark.parametrize("case", sorted(NOT_SURE))
def test_what_the_check_is_not_sure_of_the_parser_decides(case: str) -> None:
    payload = _wrap(NOT_SURE[case])
    assert _CHECKERS[Signal.TRACES].items(payload) == -1
    expected = parsed_items(Signal.TRACES, payload)
    if expected is None:
        with pytest.raises(BadInputError):
            Batch.from_bytes(Signal.TRACES, payload)
    else:
        assert Batch.from_bytes(Signal.TRACES, payload).items == expected == 1


def test_unknown_plain_fields_are_taken_and_kept() -> None:
    # a field a newer OTLP may add (number 50, each plain wire type): checked, not parsed
    content = NAME + b"\x90\x03\x05" + b"\x99\x03" + b"\0" * 8 + b"\x95\x03" + b"\0" * 4 \
        + b"\x92\x03\x02ab"
    payload = _wrap(content)
    assert parsed_items(Signal.TRACES, payload) == 1
    assert _CHECKERS[Signal.TRACES].items(payload) == 1
    assert Batch.from_bytes(Signal.TRACES, payload).payload == payload


# metrics hold packed repeated numbers (bucket counts, bounds): not checked by the
# receivers (their items are data points by kind), but the check's packed reading is
# tested on them here against the parser, plain and mangled
METRICS = Checker(REQUEST_TYPES[Signal.METRICS].DESCRIPTOR, frozenset())


@st.composite
def metric_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    points = [HistogramDataPoint(
        bucket_counts=draw(st.lists(st.integers(0, 2**64 - 1), max_size=4)),
        explicit_bounds=draw(st.lists(st.floats(allow_nan=False), max_size=4)),
        count=draw(st.integers(0, 2**64 - 1)), attributes=draw(ATTRIBUTES))
        for _ in range(draw(st.integers(0, 2)))]
    return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(scope_metrics=[
        ScopeMetrics(metrics=[Metric(name=draw(TEXT),
                                     histogram=Histogram(data_points=points))])])])


@settings(max_examples=300, deadline=None)
@given(metric_requests(), st.one_of(st.just([]), MUTATIONS))
def test_packed_numbers_are_checked_as_the_parser_reads_them(
        request: ExportMetricsServiceRequest, mutations: list[tuple[str, int, int]]) -> None:
    payload = request.SerializeToString()
    if not mutations:
        assert METRICS.items(payload) == 0  # what an encoder writes passes
    payload = mangle(payload, mutations)
    if METRICS.items(payload) >= 0:
        ExportMetricsServiceRequest.FromString(payload)  # the parser takes it too


def _field(number: int, content: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(content)) + content


@pytest.mark.parametrize(("packed", "whole"), [
    (b"\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0", True),  # two fixed64 counts
    (b"\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0", False)])  # 15 bytes
def test_packed_fixed_numbers_must_fill_whole_elements(packed: bytes, whole: bool) -> None:
    # request.resource_metrics(1).scope_metrics(2).metrics(2).histogram(9).data_points(1)
    # .bucket_counts(6, packed fixed64)
    point = _field(6, packed)
    request = _field(1, _field(2, _field(2, _field(1, b"m") + _field(9, _field(1, point)))))
    assert METRICS.items(request) == (0 if whole else -1)
    if whole:
        parsed = ExportMetricsServiceRequest.FromString(request)
        counts = parsed.resource_metrics[0].scope_metrics[0].metrics[0].histogram
        assert list(counts.data_points[0].bucket_counts) == [1, 2]
    else:
        with pytest.raises(DecodeError):
            ExportMetricsServiceRequest.FromString(request)
