"""Span attributes appended as serialized bytes.

`Span.MergeFromString(data)` parses `data` in C and appends to the span's repeated
`attributes`. Building a `KeyValue` message in Python costs ~1.5 µs (measured, bench/
cost_bench.py), so the cost processor builds each attribute once with the protobuf library
and caches its bytes; a double attribute is its cached prefix plus the 8 bytes of the
value (a double is a fixed64 at the end of the record)."""

from __future__ import annotations

import struct

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.protowire import encode_varint as _varint

# Span.attributes, length-delimited
_TAG = bytes([Span.DESCRIPTOR.fields_by_name["attributes"].number << 3 | 2])
_DOUBLE = struct.Struct("<d")

Value = str | int | float | bool


def key_value(key: str, value: Value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def attribute(key: str, value: Value) -> bytes:
    """One span attribute as bytes for `Span.MergeFromString`."""
    data = key_value(key, value).SerializeToString()
    return _TAG + _varint(len(data)) + data


def raw_attribute(key: str, value: bytes) -> bytes:
    """A span attribute whose value is an already serialized AnyValue."""
    encoded = key.encode("utf-8")
    data = b"\n" + _varint(len(encoded)) + encoded + b"\x12" + _varint(len(value)) + value
    return _TAG + _varint(len(data)) + data


class DoubleAttribute:
    """A double attribute of a fixed key: cached prefix + packed value."""

    __slots__ = ("_prefix",)

    def __init__(self, key: str) -> None:
        template = attribute(key, 1.0)
        if template[-8:] != _DOUBLE.pack(1.0):
            raise AssertionError("unexpected encoding of a double attribute")
        self._prefix = template[:-8]

    def __call__(self, value: float) -> bytes:
        return self._prefix + _DOUBLE.pack(value)
