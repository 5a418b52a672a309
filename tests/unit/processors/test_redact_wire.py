"""The wire walk the redact processor localises pre-scan hits with (`redact_wire`): its
one-byte-tag fast branch and its general branch must read the same fields, and both must
refuse bytes they cannot follow (a hit in a misread item would be walked in the wrong
place, so a secret could be missed)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.processors.redact_wire import WireError, _fields, _walk, fields, layout


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
def test_fields_reads_every_length_and_tag_size(number: int) -> None:
    buf = bytearray(b"\x08\x96\x01")  # a varint field first (not length-delimited)
    expected = []
    for length in LENGTHS:
        head = len(buf)
        buf += _varint(number << 3 | 2) + _varint(length)
        expected.append((number, head, len(buf), len(buf) + length))
        buf += bytes([0x4A]) * length  # content that looks like tags: never read
        buf += b"\x11" + bytes(8) + b"\x1d" + bytes(4)  # fixed64, fixed32
    assert fields(bytes(buf), 0, len(buf)) == expected


def test_fields_stops_after_the_field_holding_until() -> None:
    buf = b"".join(bytes([0x12]) + _varint(n) + bytes(n) for n in (3, 200, 5))
    assert [f[2] for f in fields(buf, 0, len(buf), until=3)] == [2]
    assert [f[2] for f in fields(buf, 0, len(buf), until=6)] == [2, 8]


@pytest.mark.parametrize("bad", [
    b"\x12",  # a tag without its length
    b"\x12\x80",  # a length varint cut after one byte
    b"\x12\x80\x80",  # ... after two
    b"\x12\x05abc",  # content past the end
    b"\x12\x81\x01abc",  # a two-byte length past the end
    b"\x0b",  # a group (wire type 3)
])
def test_fields_refuses_what_it_cannot_follow(bad: bytes) -> None:
    with pytest.raises(WireError):
        fields(bad, 0, len(bad))


def test_fields_in_a_window_refuses_a_field_running_past_it() -> None:
    buf = b"\x12\x03abc\x12\x01z"
    with pytest.raises(WireError):
        fields(buf, 0, 4)  # the window ends inside the first field


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
            scope_spans=[ScopeSpans(spans=spans[:25]), ScopeSpans(spans=spans[25:])]),
        ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(name="last")])]),
    ])
    payload = request.SerializeToString()
    lay = layout(payload)
    want = [*spans, Span(name="last")]
    assert len(lay.items) == len(want)
    for (start, end, *_), span in zip(lay.items, want, strict=True):
        assert Span.FromString(payload[start:end]) == span
    assert [it[2:] for it in lay.items] == (
        [(0, 0, i) for i in range(25)] + [(0, 1, i) for i in range(35)] + [(1, 0, 0)])


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


def _general(buf: bytes, pos: int, end: int, wanted: int, until: int) -> object:
    try:
        return _walk(buf, pos, end, wanted, until)
    except WireError:
        return WireError


def _short(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except WireError:
        return WireError


@settings(max_examples=500, deadline=None)
@given(wire_bytes, st.integers(0, 40), st.sampled_from((1, 2, 9)))
def test_the_short_loops_read_what_the_general_reader_reads(buf: bytes, cut: int,
                                                           wanted: int) -> None:
    for end in (len(buf), max(0, len(buf) - cut)):
        general = _general(buf, 0, end, -1, end)
        assert _short(lambda: fields(buf, 0, end)) == general  # noqa: B023
        until = min(cut, end)
        assert _short(lambda: fields(buf, 0, end, until)) == _general(  # noqa: B023
            buf, 0, end, -1, until)
        want = _general(buf, 0, end, wanted, end)
        if want is not WireError:
            assert isinstance(want, list)
            want = [(h, s, e) for _, h, s, e in want]
        assert _short(lambda: _fields(buf, 0, end, wanted)) == want  # noqa: B023


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.lists(pieces, max_size=3).map(b"".join), max_size=4),
                min_size=1, max_size=3))
def test_layout_finds_the_items_the_general_reader_finds(shape: list[list[bytes]]) -> None:
    # resource entries (field 1) of scope entries (field 2) of items (field 2), each with
    # other fields around them
    def entry(number: int, content: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(content)) + content

    payload = b"".join(
        entry(1, b"\x0a\x00" + b"".join(entry(2, b"\x0a\x01x" + b"".join(
            entry(2, item) + b"\x18\x01" for item in items)) for items in [scope])
            + b"\x1a\x00")
        for scope in shape)
    lay = layout(payload)
    want = []
    for r, (_, _, rs, re_) in enumerate(_walk(payload, 0, len(payload), 1, len(payload))):
        for s, (_, _, ss, se) in enumerate(_walk(payload, rs, re_, 2, re_)):
            for i, (_, head, start, end) in enumerate(_walk(payload, ss, se, 2, se)):
                want.append((head, (start, end, r, s, i)))
    assert lay.items == [w[1] for w in want]
    assert lay.item_heads == [w[0] for w in want]
    assert lay.starts == [w[1][0] for w in want]
    assert lay.ends == [w[1][1] for w in want]
