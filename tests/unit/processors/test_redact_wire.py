"""The wire walk the redact processor localises pre-scan hits with (`redact_wire`): its
one-byte-tag fast branch and its general branch must read the same fields, and both must
refuse bytes they cannot follow (a hit in a misread item would be walked in the wrong
place, so a secret could be missed)."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.processors.redact_wire import WireError, fields, layout


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
