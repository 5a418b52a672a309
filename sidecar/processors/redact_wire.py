"""Where the items of a serialized OTLP request lie, for the redact processor to walk only
the spans, log records or metrics its raw-bytes pre-scan hit, and `splice`, which puts
re-encoded items back into the request without re-encoding the rest of it.

Hand-written: a wire walk three levels deep (request -> resource -> scope -> item) reading
tags and lengths only; the protobuf runtime has no public API for field offsets, and a
full parse and re-serialisation of a 100-span request costs ~2.4 µs a span where the walk
costs ~0.4. Items are numbered in wire order, which is the order of the parsed repeated
fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sidecar.protowire import encode_varint as _varint

__all__ = ["Layout", "WireError", "field_header", "fields", "layout", "splice"]


class WireError(ValueError):
    """Bytes this walk does not follow (groups, truncation): walk the whole message."""


# (head, start, end): a length-delimited field's tag starts at `head`, its content is
# buf[start:end]
Field = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Layout:
    # (start, end) of each resource-level entry, in wire order
    resources: list[tuple[int, int]]
    # (start, end, resource index, scope index, item index), sorted by start
    items: list[tuple[int, int, int, int, int]]
    starts: list[int]  # of the items
    ends: list[int]
    resource_fields: list[Field]
    scope_fields: dict[tuple[int, int], Field]  # (resource, scope) -> field
    item_heads: list[int]  # where each item's tag starts


def fields(buf: bytes, pos: int, end: int, until: int | None = None,
           ) -> list[tuple[int, int, int, int]]:
    """(number, head, start, end) of every length-delimited field in buf[pos:end], up to
    the field holding byte `until` (the rest is not read). The common shape, a one-byte
    tag of a length-delimited field with a length under 16384, takes a short loop; any
    other field is read by `_walk`, one at a time."""
    out: list[tuple[int, int, int, int]] = []
    append = out.append
    if until is None:
        until = end
    while pos < end and pos <= until:
        tag = buf[pos]
        if tag & 0x87 == 0x02 and pos + 2 < end:
            n = buf[pos + 1]
            if n < 0x80:
                start = pos + 2
            else:
                b = buf[pos + 2]
                start = pos + 3 if b < 0x80 else -1
                n = (n & 0x7F) | b << 7
            if start >= 0:
                stop = start + n
                if stop > end:
                    raise WireError("field runs past its message")
                append((tag >> 3, pos, start, stop))
                pos = stop
                continue
        pos = _one(buf, pos, end, -1, append)
    return out


def _fields(buf: bytes, pos: int, end: int, wanted: int) -> list[Field]:
    """(head, start, end) of each length-delimited field number `wanted` in buf[pos:end]:
    `fields`' short loop, for the entries and items of a request (~100 a request)."""
    out: list[Field] = []
    append = out.append
    want = wanted << 3 | 2
    found: list[tuple[int, int, int, int]] = []
    while pos < end:
        tag = buf[pos]
        if tag & 0x87 == 0x02 and pos + 2 < end:
            n = buf[pos + 1]
            if n < 0x80:
                start = pos + 2
            else:
                b = buf[pos + 2]
                start = pos + 3 if b < 0x80 else -1
                n = (n & 0x7F) | b << 7
            if start >= 0:
                stop = start + n
                if stop > end:
                    raise WireError("field runs past its message")
                if tag == want:
                    append((pos, start, stop))
                pos = stop
                continue
        pos = _one(buf, pos, end, wanted, found.append)
        if found:
            append(found.pop()[1:])
    return out


def _one(buf: bytes, pos: int, end: int, wanted: int,
         append: Callable[[tuple[int, int, int, int]], None]) -> int:
    """Read the one field at `pos` (any encoding `_walk` follows), appending it when it is
    length-delimited and numbered `wanted` (any when -1); the position after it."""
    got: list[tuple[int, int, int, int]] = []
    nxt = _walk_one(buf, pos, end, got)
    if got and (wanted < 0 or got[0][0] == wanted):
        append(got[0])
    return nxt


def _walk(buf: bytes, pos: int, end: int, wanted: int,
          until: int) -> list[tuple[int, int, int, int]]:
    """Length-delimited fields numbered `wanted` (all when -1), one `_walk_one` each: the
    general reader, which `fields` and `_fields` fall back to and are tested against."""
    out: list[tuple[int, int, int, int]] = []
    got: list[tuple[int, int, int, int]] = []
    while pos < end and pos <= until:
        pos = _walk_one(buf, pos, end, got)
        if got:
            field = got.pop()
            if wanted < 0 or field[0] == wanted:
                out.append(field)
    return out


def _walk_one(buf: bytes, pos: int, end: int,
              out: list[tuple[int, int, int, int]]) -> int:
    """Read the field at `pos`: (number, head, start, end) onto `out` when it is
    length-delimited; the position after it. Raises WireError."""
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


def layout(payload: bytes) -> Layout:
    """Resource entries are field 1 of every Export*ServiceRequest; scopes are field 2 of a
    resource entry, and items field 2 of a scope entry, for all three signals. The items,
    ~100 a request, are read by `_fields`' short loop written out here (a call and a
    tuple less per item)."""
    resources = _fields(payload, 0, len(payload), 1)
    items: list[tuple[int, int, int, int, int]] = []
    heads: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    scopes: dict[tuple[int, int], Field] = {}
    got: list[tuple[int, int, int, int]] = []
    for r, (_, rs, re_) in enumerate(resources):
        for s, scope in enumerate(_fields(payload, rs, re_, 2)):
            scopes[r, s] = scope
            _, pos, end = scope
            i = 0
            while pos < end:
                tag = payload[pos]
                if tag & 0x87 == 0x02 and pos + 2 < end:
                    n = payload[pos + 1]
                    if n < 0x80:
                        start = pos + 2
                    else:
                        b = payload[pos + 2]
                        start = pos + 3 if b < 0x80 else -1
                        n = (n & 0x7F) | b << 7
                    if start >= 0:
                        stop = start + n
                        if stop > end:
                            raise WireError("field runs past its message")
                        if tag == 0x12:
                            items.append((start, stop, r, s, i))
                            heads.append(pos)
                            starts.append(start)
                            ends.append(stop)
                            i += 1
                        pos = stop
                        continue
                head = pos
                pos = _walk_one(payload, pos, end, got)
                if got:
                    number, _, start, stop = got.pop()
                    if number == 2:
                        items.append((start, stop, r, s, i))
                        heads.append(head)
                        starts.append(start)
                        ends.append(stop)
                        i += 1
    return Layout([(s, e) for _, s, e in resources], items, starts, ends, resources, scopes,
                  heads)


def field_header(buf: bytes, head: int, length: int) -> bytes:
    """The field's own tag bytes (whatever their encoding), then the new length."""
    pos = head
    while buf[pos] >= 0x80:
        pos += 1
    return buf[head:pos + 1] + _varint(length)


def splice(payload: bytes, lay: Layout, new_items: dict[int, bytes]) -> bytes:
    """`payload` with item k's content replaced by new_items[k], and the lengths of the
    scope and resource entries around them rewritten; every other byte is kept."""
    by_scope: dict[tuple[int, int], list[int]] = {}
    for k in sorted(new_items):
        _, _, r, s, _ = lay.items[k]
        by_scope.setdefault((r, s), []).append(k)
    by_resource: dict[int, list[tuple[int, int]]] = {}
    for r, s in by_scope:
        by_resource.setdefault(r, []).append((r, s))
    out: list[bytes] = []
    pos = 0
    for r in sorted(by_resource):
        rhead, rstart, rend = lay.resource_fields[r]
        rparts: list[bytes] = []
        rpos = rstart
        for key in sorted(by_resource[r]):
            shead, sstart, send = lay.scope_fields[key]
            sparts: list[bytes] = []
            spos = sstart
            for k in by_scope[key]:
                iend = lay.items[k][1]
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
