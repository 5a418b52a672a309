"""Where a trace request's spans lie in its bytes: which spans hold one of a few byte
strings, and splicing attributes onto spans without re-serialising the request.

Walking a span's attributes through the protobuf wrappers costs ~0.25 µs per attribute
(~4 µs for a 15-attribute span), and re-serialising a 100-span request costs more than
parsing it. So the request's layout is read from its bytes (a wire walk three levels
deep, reading tags and lengths only: the protobuf runtime has no public API for field
offsets), one multi-pattern search (Aho-Corasick, in Rust) finds the needles in the
whole request, and only the spans holding one are walked, by position. Attributes are
appended to a span by rewriting its entry and the lengths of its scope and resource
entries; the other bytes are copied as they are (protobuf appends repeated fields that
come later in a message, so the spliced request parses to the edited message).

Spans are numbered in wire order, which is the order of the parsed repeated fields."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ahocorasick_rs
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from sidecar.protowire import encode_varint


def _span_view() -> type[Message]:
    """A Span read as its attributes only, as a map from key to the serialized AnyValue
    (a KeyValue is wire-identical to a map entry), built by the parser in C: looking up a
    few keys costs less than walking every attribute through the message wrappers. A map
    keeps the last of duplicate keys; the caller compares counts to catch those."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="sidecar_span_view.proto",
                                              package="sidecar.span_view", syntax="proto3")
    view = file.message_type.add(name="Span")
    entry = view.nested_type.add(name="AttributesEntry")
    entry.field.add(name="key", number=1, label=field.LABEL_OPTIONAL, type=field.TYPE_STRING)
    entry.field.add(name="value", number=2, label=field.LABEL_OPTIONAL, type=field.TYPE_BYTES)
    entry.options.map_entry = True
    # Span.attributes = 9; every other field is kept as an unknown field and not read
    view.field.add(name="attributes", number=9, label=field.LABEL_REPEATED,
                   type=field.TYPE_MESSAGE, type_name=".sidecar.span_view.Span.AttributesEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sidecar.span_view.Span"))


SpanView = _span_view()


class WireError(ValueError):
    """Bytes this walk does not follow (groups, truncation)."""


# field 1 (ExportTraceServiceRequest.resource_spans) and field 2 (ResourceSpans.scope_spans,
# ScopeSpans.spans), length-delimited
_TAG1 = 1 << 3 | 2
_TAG2 = 2 << 3 | 2

Entry = tuple[int, int, int]  # (start of the tag, start of the content, end)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _entries(buf: bytes, pos: int, end: int, wanted: int) -> list[Entry]:
    """Each length-delimited field with tag `wanted` in buf[pos:end]. (Lengths of one and
    two bytes, nearly all of them, are read inline: this loop runs once per span.)"""
    out: list[Entry] = []
    append = out.append
    while pos < end:
        at = pos
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint(buf, at, end)
        wire = tag & 7
        if wire == 2:
            if pos >= end:
                raise WireError("truncated length")
            length = buf[pos]
            if length < 0x80:
                pos += 1
            elif pos + 1 < end and buf[pos + 1] < 0x80:
                length = (length & 0x7F) | buf[pos + 1] << 7
                pos += 2
            else:
                length, pos = _varint(buf, pos, end)
            if tag == wanted:
                append((at, pos, pos + length))
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise WireError(f"wire type {wire}")
        if pos > end:
            raise WireError("field runs past its message")
    return out


@dataclass(slots=True)
class Layout:
    resources: list[Entry]
    scopes: list[list[Entry]]  # per resource
    spans: list[list[list[Entry]]]  # per resource, per scope
    # every span in wire order: its (resource, scope, span) position and its content range
    positions: list[tuple[int, int, int]]
    starts: list[int]
    ends: list[int]


def layout(payload: bytes) -> Layout:
    resources = _entries(payload, 0, len(payload), _TAG1)
    scopes: list[list[Entry]] = []
    spans: list[list[list[Entry]]] = []
    positions: list[tuple[int, int, int]] = []
    starts: list[int] = []
    ends: list[int] = []
    for i, (_, rs, re_) in enumerate(resources):
        resource_scopes = _entries(payload, rs, re_, _TAG2)
        scopes.append(resource_scopes)
        resource_spans: list[list[Entry]] = []
        for j, (_, ss, se) in enumerate(resource_scopes):
            scope_spans = _entries(payload, ss, se, _TAG2)
            resource_spans.append(scope_spans)
            for k, (_, start, end) in enumerate(scope_spans):
                positions.append((i, j, k))
                starts.append(start)
                ends.append(end)
        spans.append(resource_spans)
    return Layout(resources, scopes, spans, positions, starts, ends)


class Needles:
    """Finds the spans whose bytes contain one of some byte strings, as `needle in span`
    would, with one search over the whole request."""

    __slots__ = ("_needles", "_search")

    def __init__(self, needles: Sequence[bytes]) -> None:
        self._needles = tuple(needles)
        self._search = ahocorasick_rs.BytesAhoCorasick(
            list(needles), matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_FIRST)

    def in_any(self, data: bytes) -> bool:
        return any(needle in data for needle in self._needles)

    def matches(self, payload: bytes) -> list[tuple[int, int, int]]:
        """(needle, start, end) of the needles in `payload`, leftmost first, not overlapping."""
        return self._search.find_matches_as_indexes(payload)

    def spans(self, payload: bytes, lay: Layout,
              matches: list[tuple[int, int, int]] | None = None) -> list[int]:
        """Indexes (into `lay.positions`) of the spans holding a needle, in wire order."""
        starts, ends = lay.starts, lay.ends
        found: set[int] = set()
        for _, start, end in self.matches(payload) if matches is None else matches:
            s = bisect_right(starts, start) - 1
            if s >= 0 and end <= ends[s]:
                found.add(s)
                continue
            # a match not inside one span: the spans it overlaps are tested on their own
            # (matches do not overlap each other, so it may hide one of theirs)
            first = max(s, 0)
            last = bisect_right(starts, end - 1) - 1
            for t in range(first, last + 1):
                if t not in found and self.in_any(payload[starts[t]:ends[t]]):
                    found.add(t)
        return sorted(found)


def splice(payload: bytes, lay: Layout, extra: Mapping[tuple[int, int, int], bytes]) -> bytes:
    """The request with `extra[(i, j, k)]` appended to span (i, j, k)'s bytes."""
    by_resource: dict[int, dict[int, list[int]]] = {}
    for i, j, k in sorted(extra):
        by_resource.setdefault(i, {}).setdefault(j, []).append(k)
    out: list[bytes] = []
    pos = 0
    for i, scopes in by_resource.items():
        r_at, r_start, r_end = lay.resources[i]
        resource: list[bytes] = []
        r_pos = r_start
        for j, ks in scopes.items():
            s_at, s_start, s_end = lay.scopes[i][j]
            scope: list[bytes] = []
            s_pos = s_start
            for k in ks:
                k_at, k_start, k_end = lay.spans[i][j][k]
                added = extra[i, j, k]
                scope += (payload[s_pos:k_at], bytes((_TAG2,)),
                          encode_varint(k_end - k_start + len(added)), payload[k_start:k_end],
                          added)
                s_pos = k_end
            scope.append(payload[s_pos:s_end])
            scope_bytes = b"".join(scope)
            resource += (payload[r_pos:s_at], bytes((_TAG2,)), encode_varint(len(scope_bytes)),
                         scope_bytes)
            r_pos = s_end
        resource.append(payload[r_pos:r_end])
        resource_bytes = b"".join(resource)
        out += (payload[pos:r_at], bytes((_TAG1,)), encode_varint(len(resource_bytes)),
                resource_bytes)
        pos = r_end
    out.append(payload[pos:])
    return b"".join(out)
