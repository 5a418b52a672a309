"""Where the items of a serialized OTLP request lie, for the redact processor to walk only
the spans, log records or metrics its raw-bytes pre-scan hit.

Hand-written: a wire walk three levels deep (request -> resource -> scope -> item) reading
tags and lengths only; the protobuf runtime has no public API for field offsets. Items are
numbered in wire order, which is the order of the parsed repeated fields."""

from __future__ import annotations

from dataclasses import dataclass


class WireError(ValueError):
    """Bytes this walk does not follow (groups, truncation): walk the whole message."""


@dataclass(frozen=True, slots=True)
class Layout:
    # (start, end) of each resource-level entry, in wire order
    resources: list[tuple[int, int]]
    # (start, end, resource index, scope index, item index), sorted by start
    items: list[tuple[int, int, int, int, int]]


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


def _fields(buf: bytes, pos: int, end: int, wanted: int) -> list[tuple[int, int]]:
    """(start, end) of each length-delimited field number `wanted` in buf[pos:end]."""
    out: list[tuple[int, int]] = []
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if tag >> 3 == wanted:
                out.append((pos, pos + length))
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise WireError(f"wire type {wire}")
        if pos > end:
            raise WireError("field runs past its message")
    return out


def layout(payload: bytes) -> Layout:
    """Resource entries are field 1 of every Export*ServiceRequest; scopes are field 2 of a
    resource entry, and items field 2 of a scope entry, for all three signals."""
    resources = _fields(payload, 0, len(payload), 1)
    items: list[tuple[int, int, int, int, int]] = []
    for r, (rs, re_) in enumerate(resources):
        for s, (ss, se) in enumerate(_fields(payload, rs, re_, 2)):
            for i, (is_, ie) in enumerate(_fields(payload, ss, se, 2)):
                items.append((is_, ie, r, s, i))
    return Layout(resources, items)
