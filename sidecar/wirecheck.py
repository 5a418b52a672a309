"""Validating and counting an OTLP request without parsing it: a schema of the request's
message types, made from their protobuf descriptors, for the C check `_spanwalk.check`.

The receivers used to parse every request with upb only to know that it is valid and how
many items it holds; the message itself was rarely read (a processor that needs it parses
it then). `check` reads the bytes against this schema and answers with the item count when
the parser surely takes them, or "not sure" (-1), and the caller parses as before: so what
is accepted and refused is the parser's decision, and only the common request is spared the
parse. The schema is made from the installed descriptors, so a field added in a newer
opentelemetry-proto is checked as declared."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sidecar import _spanwalk

__all__ = ["Checker"]

# the C check's field kinds (sidecar/_spanwalk.c, K_*)
_VARINT, _FIXED64, _FIXED32, _BYTES, _STRING, _MESSAGE = range(1, 7)
_KINDS = {
    FieldDescriptor.TYPE_DOUBLE: _FIXED64, FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64,
    FieldDescriptor.TYPE_FLOAT: _FIXED32, FieldDescriptor.TYPE_FIXED32: _FIXED32,
    FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_INT32: _VARINT, FieldDescriptor.TYPE_INT64: _VARINT,
    FieldDescriptor.TYPE_UINT32: _VARINT, FieldDescriptor.TYPE_UINT64: _VARINT,
    FieldDescriptor.TYPE_SINT32: _VARINT, FieldDescriptor.TYPE_SINT64: _VARINT,
    FieldDescriptor.TYPE_BOOL: _VARINT, FieldDescriptor.TYPE_ENUM: _VARINT,
    FieldDescriptor.TYPE_BYTES: _BYTES, FieldDescriptor.TYPE_STRING: _STRING,
    FieldDescriptor.TYPE_MESSAGE: _MESSAGE,
}
_MAX_NUMBER = 64  # the C schema's table size per message


class Checker:
    """The check for one request type; `items` names the repeated message fields whose
    entries are the request's items, as (message full name, field name). Strings are
    checked as UTF-8 whatever the file's syntax: stricter than the parser for a proto2
    string, which only costs that request a parse (OTLP is proto3)."""

    def __init__(self, request: Descriptor, items: frozenset[tuple[str, str]]) -> None:
        order: list[Descriptor] = []
        index: dict[str, int] = {}
        todo = [request]
        while todo:
            message = todo.pop()
            if message.full_name in index:
                continue
            index[message.full_name] = len(order)
            order.append(message)
            todo += [f.message_type for f in message.fields if f.message_type is not None]
        tables: list[list[tuple[int, int, int, int, int]]] = []
        for message in order:
            fields = []
            for f in message.fields:
                kind = _KINDS.get(f.type)
                if kind is None or f.number > _MAX_NUMBER:
                    # (a group, or a number past the table: the check would treat the
                    # field as unknown, which the parser does not)
                    raise ValueError(f"{message.full_name}.{f.name}: not checkable")
                child = index[f.message_type.full_name] if f.message_type is not None else 0
                fields.append((f.number, kind, int(_repeated(f)), child,
                               int((message.full_name, f.name) in items)))
            tables.append(fields)
        self._schema = _spanwalk.schema(tables)

    def items(self, payload: bytes) -> int:
        """The request's item count when the parser surely takes it; -1: parse it."""
        return _spanwalk.check(payload, self._schema)


def _repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` on newer protobuf; `label` (deprecated there) on older ones
    flag: Any = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    label: Any = getattr(field, "label")  # noqa: B009 (not in this protobuf's stubs)
    return bool(label == FieldDescriptor.LABEL_REPEATED)

