"""The wire walks the redact processor localises pre-scan hits with (`redact_wire`, in C:
sidecar/_spanwalk.c `redact_layout`, `hit_fields`) against the Python walk they replaced,
kept here as the reference, and the protobuf library: they must read the same fields, and
refuse bytes the reference cannot follow (a hit in a misread item would be walked in the
wrong place, so a secret could be missed)."""

from __future__ import annotations

import random
from bisect import bisect_right

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench.loadgen import build_workload
from sidecar import _spanwalk
from sidecar.processors.redact_wire import (
    Layout,
    WireError,
    field_header,
    first_fields,
    hit_fields,
    layout,
    splice,
)


# --- the reference: the Python walk the C replaced ------------------------------------
def _walk_one(buf: bytes, pos: int, end: int,
              out: list[tuple[int, int, int, int]]) -> int:
    """Read the field at `pos`: (number, head, start, end) onto `out` when it is
    length-delimited; the position after it. Raises WireError. The tags the protobuf
    parser refuses (number 0, past 2^29 - 1) are refused here too."""
    head = pos
    b = buf[pos]
    pos += 1
    if b < 0x80:
        tag = b
    else:
        tag, shift = b & 0x7F, 7
        while True:
            if pos >= end or shift > 63:
                raise WireError("truncated varint")
            b = buf[pos]
            pos += 1
            tag |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
    if not 0 < tag >> 3 < 1 << 29:
        raise WireError("bad tag")
    wire = tag & 7
    if wire == 2 or wire == 0:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        value, shift = b & 0x7F, 7
        while b >= 0x80:
            if pos >= end or shift > 63:
                raise WireError("truncated varint")
            b = buf[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
        if wire == 2:
            out.append((tag >> 3, head, pos, pos + value))
            pos += value
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    else:
        raise WireError(f"wire type {wire}")
    if pos > end:
        raise WireError("field runs past its message")
    return pos


def _walk(buf: bytes, pos: int, end: int, wanted: int,
          until: int) -> list[tuple[int, int, int, int]]:
    """Length-delimited fields numbered `wanted` (all when -1) read while one starts at or
    before `until`."""
    out: list[tuple[int, int, int, int]] = []
    got: list[tuple[int, int, int, int]] = []
    while pos < end and pos <= until:
        pos = _walk_one(buf, pos, end, got)
        if got:
            field = got.pop()
            if wanted < 0 or field[0] == wanted:
                out.append(field)
    return out


def ref_layout(payload: bytes) -> tuple[list[tuple[int, int, int]],
                                        list[tuple[int, int, int, int, int, int]],
                                        list[tuple[int, int, int, int, int, int]]]:
    """(resource fields, scope fields, items as (head, start, end, r, s, i))."""
    resources, scopes, items = [], [], []
    for r, (_, rh, rs, re_) in enumerate(_walk(payload, 0, len(payload), 1, len(payload))):
        resources.append((rh, rs, re_))
        for s, (_, sh, ss, se) in enumerate(_walk(payload, rs, re_, 2, re_)):
            scopes.append((sh, ss, se, r, s, len(items)))
            for i, (_, head, start, end) in enumerate(_walk(payload, ss, se, 2, se)):
                items.append((head, start, end, r, s, i))
    return resources, scopes, items


def ref_hit_fields(buf: bytes, start: int, end: int, number: int, until: int,
                   points: list[int]) -> object:
    """What `redact.py` computed from the Python walk's fields: per point in the item,
    the length-delimited field holding it (bisect on the heads), None when that is not a
    field numbered `number`; WireError when the walk refuses the bytes."""
    try:
        fields = _walk(buf, start, end, -1, until)
    except WireError:
        return WireError
    heads = [f[1] for f in fields]
    placed: list[int] = []
    for p in points:
        if not start <= p < end:
            placed.append(-1)
            continue
        j = bisect_right(heads, p) - 1
        if j < 0 or p >= fields[j][3] or fields[j][0] != number:
            return None
        placed.append(j)
    chosen = sorted({j for j in placed if j >= 0})
    out = [(fields[j][1], fields[j][2], fields[j][3],
            sum(1 for f in fields[:j] if f[0] == number)) for j in chosen]
    return out, [chosen.index(j) if j >= 0 else -1 for j in placed]


def ref_splice(payload: bytes, lay: Layout, new_items: dict[int, bytes]) -> bytes:
    """`payload` with item k's content replaced by new_items[k], and the lengths of the
    scope and resource entries around them rewritten; every other byte is kept: the Python
    splice the C replaced."""
    by_scope: dict[int, list[int]] = {}
    for k in sorted(new_items):
        by_scope.setdefault(lay.scope_of(k), []).append(k)
    by_resource: dict[int, list[int]] = {}
    for j in by_scope:
        by_resource.setdefault(lay.scopes[j][3], []).append(j)
    out: list[bytes] = []
    pos = 0
    for r in sorted(by_resource):
        rhead, rstart, rend = lay.resource_fields[r]
        rparts: list[bytes] = []
        rpos = rstart
        for j in sorted(by_resource[r]):
            shead, sstart, send = lay.scopes[j][:3]
            sparts: list[bytes] = []
            spos = sstart
            for k in by_scope[j]:
                iend = lay.ends[k]
                ihead = lay.item_heads[k]
                content = new_items[k]
                sparts += (payload[spos:ihead], field_header(payload, ihead, len(content)),
                           content)
                spos = iend
            sparts.append(payload[spos:send])
            scope = b"".join(sparts)
            rparts += (payload[rpos:shead], field_header(payload, shead, len(scope)), scope)
            rpos = send
        rparts.append(payload[rpos:rend])
        resource = b"".join(rparts)
        out += (payload[pos:rhead], field_header(payload, rhead, len(resource)), resource)
        pos = rend
    out.append(payload[pos:])
    return b"".join(out)


def _c_hit_fields(buf: bytes, start: int, end: int, number: int, until: int,
                  points: list[int]) -> object:
    try:
        return hit_fields(buf, start, end, number, until, points)
    except WireError:
        return WireError


def _c_layout(payload: bytes) -> object:
    try:
        lay = layout(payload)
    except WireError:
        return WireError
    items = [(lay.item_heads[k], *lay.item(k)) for k in range(len(lay.starts))]
    return lay.resource_fields, lay.scopes, items


def _ref_layout(payload: bytes) -> object:
    try:
        return ref_layout(payload)
    except WireError:
        return WireError


def _varint(n: int) -> bytes:  # the test's own encoder, not the code under test's
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# lengths at each varint size boundary, field numbers with one- and two-byte tags
LENGTHS = (0, 1, 127, 128, 129, 16383, 16384, 16385, 2_097_152)
NUMBERS = (1, 2, 9, 15, 16, 17, 100, 2047, 2048)


@pytest.mark.parametrize("number", NUMBERS)
def test_hit_fields_reads_every_length_and_tag_size(number: int) -> None:
    buf = bytearray(b"\x08\x96\x01")  # a varint field first (not length-delimited)
    expected = []
    for length in LENGTHS:
        head = len(buf)
        buf += _varint(number << 3 | 2) + _varint(length)
        expected.append((head, len(buf), len(buf) + length, len(expected)))
        buf += bytes([0x4A]) * length  # content that looks like tags: never read
        buf += b"\x11" + bytes(8) + b"\x1d" + bytes(4)  # fixed64, fixed32
    data = bytes(buf)
    # a point on each field's tag, on its last byte (when it has content) and outside
    points = [-1, len(data)]
    for head, _, end, _ in expected:
        points += [head, end - 1]
    assert hit_fields(data, 0, len(data), number, len(data), points) == (
        expected, [-1, -1, *(j for j in range(len(expected)) for _ in (0, 1))])
    # a point in the varint field, or in a field of another number: None
    assert hit_fields(data, 0, len(data), number, len(data), [1]) is None
    assert hit_fields(data, 0, len(data), number + 1, len(data), [3]) is None


def test_hit_fields_stops_after_the_field_holding_until() -> None:
    buf = b"".join(bytes([0x12]) + _varint(n) + bytes(n) for n in (3, 200, 5)) + b"\x0b"
    # the group past `until` is not read; a point past the last field read is not placed
    assert hit_fields(buf, 0, len(buf), 2, 3, [2]) == ([(0, 2, 5, 0)], [0])
    assert hit_fields(buf, 0, len(buf), 2, 3, [6]) is None
    assert hit_fields(buf, 0, len(buf), 2, 6, [6]) == ([(5, 8, 208, 1)], [0])
    with pytest.raises(WireError):
        hit_fields(buf, 0, len(buf), 2, len(buf), [2])


@pytest.mark.parametrize("bad", [
    b"\x12",  # a tag without its length
    b"\x12\x80",  # a length varint cut after one byte
    b"\x12\x80\x80",  # ... after two
    b"\x12\x05abc",  # content past the end
    b"\x12\x81\x01abc",  # a two-byte length past the end
    b"\x0b",  # a group (wire type 3)
    b"\x02\x00",  # field number 0
    b"\x82\x80\x80\x80\x10\x00",  # field number 2^29
])
def test_the_walks_refuse_what_they_cannot_follow(bad: bytes) -> None:
    with pytest.raises(WireError):
        hit_fields(bad, 0, len(bad), 2, len(bad), [0])
    with pytest.raises(WireError):
        layout(bad)
    with pytest.raises(WireError):
        layout(b"\x0a" + _varint(len(bad)) + bad)  # inside a resource entry
    assert ref_hit_fields(bad, 0, len(bad), 2, len(bad), [0]) is WireError
    with pytest.raises(WireError):
        first_fields(bad, 0, len(bad))
    with pytest.raises(WireError):
        _ref_first_fields(bad, 0, len(bad))


def test_the_tags_refused_beyond_the_python_walk_are_refused_by_the_parser() -> None:
    # field number 0 and 2^29 (the largest is 2^29 - 1): the C walks refuse them, as the
    # protobuf parser does, so no request the receiver accepted takes another path
    for bad in (b"\x02\x00", b"\x82\x80\x80\x80\x10\x00", b"\x0a\x02\x02\x00"):
        with pytest.raises(DecodeError):
            ExportTraceServiceRequest.FromString(bad)
    ExportTraceServiceRequest.FromString(b"\xfa\xff\xff\xff\x0f\x00")  # 2^29 - 1: taken
    assert layout(b"\xfa\xff\xff\xff\x0f\x00").starts == []


def test_hit_fields_in_a_window_refuses_a_field_running_past_it() -> None:
    buf = b"\x12\x03abc\x12\x01z"
    with pytest.raises(WireError):
        hit_fields(buf, 0, 4, 2, 4, [0])  # the window ends inside the first field
    with pytest.raises(WireError):
        hit_fields(buf, 0, len(buf) + 1, 2, 4, [0])  # a window past the payload


def test_layout_items_are_the_spans_bytes() -> None:
    rng = random.Random(7)
    spans = []
    for i in range(60):
        # string sizes on both sides of the one- and two-byte length boundaries
        size = rng.choice((0, 5, 100, 126, 127, 128, 300, 16_380, 16_400))
        spans.append(Span(name=f"s{i}", span_id=rng.randbytes(8), attributes=[
            KeyValue(key="k", value=AnyValue(string_value="x" * size))]))
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value="svc"))]),
            scope_spans=[ScopeSpans(spans=spans[:25]), ScopeSpans(),
                         ScopeSpans(spans=spans[25:])]),
        ResourceSpans(),
        ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(name="last")])]),
    ])
    payload = request.SerializeToString()
    lay = layout(payload)
    want = [*spans, Span(name="last")]
    assert len(lay.starts) == len(want)
    for k, span in enumerate(want):
        start, end = lay.item(k)[:2]
        assert Span.FromString(payload[start:end]) == span
    assert [lay.item(k)[2:] for k in range(len(want))] == (
        [(0, 0, i) for i in range(25)] + [(0, 2, i) for i in range(35)] + [(2, 0, 0)])
    assert [lay.scopes[lay.scope_of(k)][3:5] for k in (0, 24, 25, 60)] == [
        (0, 0), (0, 0), (0, 2), (2, 0)]
    for (_, start, end), rs in zip(lay.resource_fields, request.resource_spans, strict=True):
        assert ResourceSpans.FromString(payload[start:end]) == rs


def test_layout_of_loadgen_and_log_requests_is_the_references() -> None:
    rng = random.Random(3)
    payloads = [build_workload(rng, w) for w in ("agent", "secrets", "large")]
    payloads.append(ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[
        ScopeLogs(log_records=[LogRecord(body=AnyValue(string_value="x" * n))
                               for n in (0, 1, 200, 20_000)])])]).SerializeToString())
    for payload in payloads:
        assert _c_layout(payload) == ref_layout(payload)


# Pieces of wire format: one-byte and longer tags of every wire type, lengths at the
# varint boundaries of the short loops (1 and 2 bytes), and stray bytes.
def _piece(number: int, wire: int, length: int) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 2:
        return tag + _varint(length) + bytes([0x12]) * length
    if wire == 0:
        return tag + _varint(length)
    if wire == 1:
        return tag + bytes(8)
    if wire == 5:
        return tag + bytes(4)
    return tag


pieces = st.builds(_piece, st.sampled_from((1, 2, 3, 9, 15, 16, 100)),
                   st.sampled_from((0, 1, 2, 5, 3)),
                   st.sampled_from((0, 1, 2, 127, 128, 129, 300, 16383, 16384)))
wire_bytes = st.one_of(
    st.lists(pieces, max_size=6).map(b"".join),
    st.lists(st.one_of(pieces, st.binary(max_size=4)), max_size=6).map(b"".join),
    st.binary(max_size=40),
)


@settings(max_examples=800, deadline=None)
@given(wire_bytes, st.integers(0, 40), st.sampled_from((1, 2, 9)),
       st.lists(st.integers(-2, 60), max_size=8))
def test_hit_fields_places_the_points_as_the_reference(buf: bytes, cut: int, number: int,
                                                      points: list[int]) -> None:
    for start, end in ((0, len(buf)), (0, max(0, len(buf) - cut)), (min(cut, len(buf)),
                                                                   len(buf))):
        for until in (end, start + cut):
            assert _c_hit_fields(buf, start, end, number, until, points) == ref_hit_fields(
                buf, start, end, number, until, points)


def _entry(number: int, content: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(content)) + content


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.lists(st.one_of(pieces, wire_bytes), max_size=3).map(b"".join),
                         max_size=4), min_size=1, max_size=3), st.binary(max_size=3))
def test_layout_finds_the_items_the_reference_finds(shape: list[list[bytes]],
                                                    junk: bytes) -> None:
    # resource entries (field 1) of scope entries (field 2) of items (field 2), each with
    # other fields around them; items of any bytes (never read), and stray bytes at the end
    payload = b"".join(
        _entry(1, b"\x0a\x00" + b"".join(_entry(2, b"\x0a\x01x" + b"".join(
            _entry(2, item) + b"\x18\x01" for item in items)) for items in [scope])
            + b"\x1a\x00")
        for scope in shape)
    assert _c_layout(payload) == _ref_layout(payload)
    assert _c_layout(payload + junk) == _ref_layout(payload + junk)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(pieces, wire_bytes, st.builds(_entry, st.sampled_from((1, 2)),
                                                         wire_bytes)), max_size=5))
def test_layout_of_any_bytes_is_the_references(parts: list[bytes]) -> None:
    payload = b"".join(parts)
    for data in (payload, _entry(1, payload), _entry(1, _entry(2, payload))):
        assert _c_layout(data) == _ref_layout(data)


def test_layout_of_mangled_requests_is_the_references() -> None:
    rng = random.Random(11)
    payload = build_workload(rng, "secrets")
    for n in range(600):
        data = bytearray(payload)
        if n % 3 == 0:
            data = data[:rng.randrange(len(data))]  # truncated anywhere
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        assert _c_layout(bytes(data)) == _ref_layout(bytes(data))


def test_a_layout_item_names_its_scope_past_empty_scopes() -> None:
    lay = Layout([(0, 0, 0)], [(0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 1, 2), (0, 0, 0, 0, 2, 2),
                               (0, 0, 0, 0, 3, 3)], [0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 0, 0],
                 [0, 2, 2, 3])
    assert [lay.item(k)[2:] for k in range(4)] == [(0, 0, 0), (0, 0, 1), (0, 2, 0), (0, 3, 0)]



ITEM_TEXT = st.sampled_from(["", "x", "y" * 126, "z" * 127, "w" * 20_000])


@st.composite
def trace_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    # sizes around the one-, two- and three-byte length boundaries at every level
    return ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=[KeyValue(key="k", value=AnyValue(
            string_value=draw(ITEM_TEXT)))]), scope_spans=[
            ScopeSpans(spans=[Span(name=draw(ITEM_TEXT)) for _ in range(draw(st.integers(0, 3)))])
            for _ in range(draw(st.integers(0, 3)))])
        for _ in range(draw(st.integers(0, 3)))])


@settings(max_examples=300, deadline=None)
@given(trace_requests(), st.data())
def test_splice_is_the_references_and_parses_to_the_edited_message(
        request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    payload = request.SerializeToString()
    lay = layout(payload)
    chosen = data.draw(st.sets(st.integers(0, len(lay.starts) - 1))) if lay.starts else set()
    names = {k: data.draw(ITEM_TEXT) for k in chosen}
    new_items = {k: Span(name=names[k]).SerializeToString() for k in chosen}
    out = splice(payload, lay, new_items)
    assert out == ref_splice(payload, lay, new_items)
    edited = ExportTraceServiceRequest.FromString(payload)
    spans = [sp for rs in edited.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    for k, name in names.items():
        spans[k].Clear()
        spans[k].name = name
    assert ExportTraceServiceRequest.FromString(out) == edited
    assert splice(payload, lay, {}) == payload


def test_splice_keeps_long_tags_and_refuses_edits_naming_no_item() -> None:
    # a resource entry whose tag is written in two bytes (0x8a 0x00: field 1, wire 2)
    item = _entry(2, b"\x2a\x01a")
    payload = b"\x8a\x00" + _varint(len(_entry(2, item))) + _entry(2, item)
    lay = layout(payload)
    assert len(lay.starts) == 1
    out = splice(payload, lay, {0: b"\x2a\x02bc"})
    assert out == ref_splice(payload, lay, {0: b"\x2a\x02bc"})
    assert out.startswith(b"\x8a\x00")
    assert field_header(payload, 0, 9) == b"\x8a\x00\x09"
    with pytest.raises(ValueError, match="names no item"):
        _spanwalk.redact_splice(payload, [(1, b"")])
    with pytest.raises(ValueError, match="ascending"):
        _spanwalk.redact_splice(payload, [(7, b""), (7, b"")])


def _ref_first_fields(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    fields: list[tuple[int, int, int, int]] = []
    pos = start
    while pos < end:
        pos = _walk_one(buf, pos, end, fields)
    return [(s, e) for number, _, s, e in fields if number == 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(pieces, wire_bytes, st.builds(_entry, st.sampled_from((1, 2, 3)),
                                                         wire_bytes)), max_size=6))
def test_first_fields_are_the_references(parts: list[bytes]) -> None:
    data = b"".join(parts)
    try:
        want: list[tuple[int, int]] | type[WireError] = _ref_first_fields(data, 0, len(data))
    except WireError:
        want = WireError
    try:
        got: list[tuple[int, int]] | type[WireError] = first_fields(data, 0, len(data))
    except WireError:
        got = WireError
    assert got == want


def test_first_fields_are_the_resource_the_parser_reads() -> None:
    rng = random.Random(5)
    payload = build_workload(rng, "agent")
    lay = layout(payload)
    request = ExportTraceServiceRequest.FromString(payload)
    for r, (_, start, end) in enumerate(lay.resource_fields):
        (found,) = first_fields(payload, start, end)
        assert Resource.FromString(payload[found[0]:found[1]]) \
            == request.resource_spans[r].resource
