"""Where the items of a serialized OTLP request lie, for the redact processor to walk only
the spans, log records or metrics its raw-bytes pre-scan hit, and `splice`, which puts
re-encoded items back into the request without re-encoding the rest of it.

Hand-written: a wire walk three levels deep (request -> resource -> scope -> item) reading
tags and lengths only; the protobuf runtime has no public API for field offsets, and a
full parse and re-serialisation of a 100-span request costs ~2.4 µs a span where the walk
costs ~0.4. Items are numbered in wire order, which is the order of the parsed repeated
fields."""

from __future__ import annotations

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
    the field holding byte `until` (the rest is not read)."""
    return _walk(buf, pos, end, -1, end if until is None else until)


def _fields(buf: bytes, pos: int, end: int, wanted: int) -> list[Field]:
    """(head, start, end) of each length-delimited field number `wanted` in buf[pos:end]."""
    return [(h, s, e) for _, h, s, e in _walk(buf, pos, end, wanted, end)]


def _walk(buf: bytes, pos: int, end: int, wanted: int,
          until: int) -> list[tuple[int, int, int, int]]:
    """Length-delimited fields numbered `wanted` (all when -1). Varints are read inline:
    this loop runs once per item of every hit request. The common shape, a one-byte tag of
    a length-delimited field with a length under 16384, takes the first branch (half the
    bytecodes of the general one)."""
    out: list[tuple[int, int, int, int]] = []
    append = out.append
    while pos < end and pos <= until:
        head = pos
        b = buf[pos]
        pos += 1
        if b & 0x87 == 0x02 and pos < end:  # a one-byte tag, wire type 2
            n = buf[pos]
            if n < 0x80:
                skip = 1
            elif pos + 1 < end and buf[pos + 1] < 0x80:
                n, skip = (n & 0x7F) | buf[pos + 1] << 7, 2
            else:
                skip = 0  # a longer length: the general path below
            if skip:
                pos += skip
                if wanted < 0 or b >> 3 == wanted:
                    append((b >> 3, head, pos, pos + n))
                pos += n
                if pos > end:
                    raise WireError("field runs past its message")
                continue
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
                if wanted < 0 or tag >> 3 == wanted:
                    append((tag >> 3, head, pos, pos + value))
                pos += value
        elif wire == 1:
            pos += 8
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
    heads: list[int] = []
    scopes: dict[tuple[int, int], Field] = {}
    for r, (_, rs, re_) in enumerate(resources):
        for s, scope in enumerate(_fields(payload, rs, re_, 2)):
            scopes[r, s] = scope
            for i, (head, is_, ie) in enumerate(_fields(payload, scope[1], scope[2], 2)):
                items.append((is_, ie, r, s, i))
                heads.append(head)
    return Layout([(s, e) for _, s, e in resources], items, [it[0] for it in items],
                  [it[1] for it in items], resources, scopes, heads)


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
