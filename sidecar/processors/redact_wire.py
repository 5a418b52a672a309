"""Where the items of a serialized OTLP request lie, for the redact processor to walk only
the spans, log records or metrics its raw-bytes pre-scan hit, and `splice`, which puts
re-encoded items back into the request without re-encoding the rest of it.

The wire walks are in C (sidecar/_spanwalk.c, `redact_layout` and `hit_fields`): the
protobuf runtime has no public API for field offsets, a full parse and re-serialisation of
a 100-span request costs ~2.4 µs a span, and the Python walk these replaced cost ~0.5 µs a
span for the layout and ~6 µs for each hit item's fields. They read tags and lengths only,
three levels deep (request -> resource -> scope -> item), and refuse (WireError) what the
Python walk refused: truncation, groups, a length past its message, and tags the protobuf
parser refuses too (field number 0, or past 2^29 - 1). Property-tested against the Python
walk (kept in tests/unit/processors/test_redact_wire.py) and the protobuf library. Items
are numbered in wire order, which is the order of the parsed repeated fields."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar import _spanwalk
from sidecar.protowire import encode_varint as _varint

__all__ = ["Layout", "WireError", "field_header", "first_fields", "hit_fields", "layout",
           "splice"]


class WireError(ValueError):
    """Bytes this walk does not follow (groups, truncation): walk the whole message."""


# (head, start, end): a length-delimited field's tag starts at `head`, its content is
# buf[start:end]
Field = tuple[int, int, int]
# (head, start, end, resource index, index in its resource, index of its first item)
Scope = tuple[int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Layout:
    resource_fields: list[Field]  # of each resource-level entry, in wire order
    scopes: list[Scope]  # of each scope entry, in wire order
    starts: list[int]  # of the items' contents, in wire order (ascending)
    ends: list[int]
    item_heads: list[int]  # where each item's tag starts
    first_items: list[int]  # of each scope entry (ascending)

    def scope_of(self, k: int) -> int:
        """The index in `scopes` of item k's scope: the last scope whose first item is k or
        before (a scope without items has the first item of the next)."""
        return bisect_right(self.first_items, k) - 1

    def item(self, k: int) -> tuple[int, int, int, int, int]:
        """(start, end, resource index, scope index in its resource, index in its scope)"""
        _, _, _, r, s, first = self.scopes[self.scope_of(k)]
        return self.starts[k], self.ends[k], r, s, k - first


def layout(payload: bytes) -> Layout:
    """Resource entries are field 1 of every Export*ServiceRequest; scopes are field 2 of a
    resource entry, and items field 2 of a scope entry, for all three signals."""
    try:
        resources, scopes, starts, ends, heads = _spanwalk.redact_layout(payload)
    except ValueError as exc:
        raise WireError(str(exc)) from None
    return Layout(resources, scopes, starts, ends, heads, [s[5] for s in scopes])


def hit_fields(payload: bytes, start: int, end: int, number: int, until: int,
               points: Sequence[int]) -> tuple[list[tuple[int, int, int, int]], list[int]] | None:
    """The fields numbered `number` of the message payload[start:end] that hold the points
    (`_spanwalk.hit_fields`): (head, content start, content end, ordinal among those fields)
    of each, and per point the index of its field (-1: a point outside the message). None
    when a point lies in another field. Fields are read while one starts at or before
    `until`. Raises WireError."""
    try:
        return _spanwalk.hit_fields(payload, start, end, number, until, points)
    except ValueError as exc:
        raise WireError(str(exc)) from None


def first_fields(buf: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """The content (start, end) of each length-delimited field numbered 1 of the message
    buf[start:end]: a resource entry's `resource`, a scope entry's `scope`
    (`_spanwalk.first_fields`; it refuses what `redact_layout` refuses). Only called after
    a pre-scan hit outside every item, to walk the resources' and scopes' attributes
    without a parse. Raises WireError."""
    try:
        return _spanwalk.first_fields(buf, start, end)
    except ValueError as exc:
        raise WireError(str(exc)) from None


def field_header(buf: bytes, head: int, length: int) -> bytes:
    """The field's own tag bytes (whatever their encoding), then the new length."""
    pos = head
    while buf[pos] >= 0x80:
        pos += 1
    return buf[head:pos + 1] + _varint(length)


def splice(payload: bytes, lay: Layout, new_items: dict[int, bytes],
           new_fields: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """`payload` with item k's content replaced by new_items[k], and each field 1 of a
    resource or scope entry whose content starts at `at` by its new content (`new_fields`:
    (at, content)), and the lengths of the entries around them rewritten; every other byte
    is kept (`_spanwalk.redact_splice`: one copy of the request, in C)."""
    edits = [(lay.starts[k], new_items[k]) for k in new_items]
    edits += new_fields
    edits.sort(key=lambda e: e[0])
    return _spanwalk.redact_splice(payload, edits)
