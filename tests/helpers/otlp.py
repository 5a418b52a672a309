"""Turn OTLP protobuf values into plain Python for comparisons with SDK objects."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def py_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(py_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return py_attrs(value.kvlist_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


def py_attrs(attributes: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(attributes)
    return {kv.key: py_value(kv.value) for kv in items}
