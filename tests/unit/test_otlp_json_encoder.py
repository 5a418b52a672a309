"""The fast OTLP-JSON encoder (file exporter, HTTP receiver) against
google.protobuf.json_format on messages with every field set (generated from the
descriptors, so new proto fields are covered too)."""

from __future__ import annotations

import base64
import itertools
import math
from typing import Any

import orjson
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from sidecar.model import REQUEST_TYPES, Signal
from sidecar.otlp_json import request_to_dict


def to_dict(message: Message) -> dict[str, Any]:
    signal = next(s for s, t in REQUEST_TYPES.items() if isinstance(message, t))
    return request_to_dict(signal, message)  # type: ignore[arg-type]

ID_KEYS = {"traceId", "spanId", "parentSpanId"}
_counter = itertools.count()

SCALARS: dict[int, Any] = {
    FieldDescriptor.TYPE_STRING: "text",
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_INT32: -7, FieldDescriptor.TYPE_SINT32: -8,
    FieldDescriptor.TYPE_UINT32: 9, FieldDescriptor.TYPE_FIXED32: 10,
    FieldDescriptor.TYPE_SFIXED32: -11,
    FieldDescriptor.TYPE_INT64: -(2**62) - 1, FieldDescriptor.TYPE_SINT64: -(2**61),
    FieldDescriptor.TYPE_UINT64: 2**63 + 5, FieldDescriptor.TYPE_FIXED64: 2**64 - 1,
    FieldDescriptor.TYPE_SFIXED64: -(2**63),
    FieldDescriptor.TYPE_DOUBLE: 1.25, FieldDescriptor.TYPE_FLOAT: 0.5,
    FieldDescriptor.TYPE_BYTES: bytes(range(1, 17)),
}


def scalar(field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_BYTES and field.name == "span_id":
        return bytes(range(1, 9))
    return SCALARS[field.type]


def fill(message: Message, depth: int = 0) -> None:
    """Set every field; each oneof takes the next alternative, round robin, so the whole
    tree covers all of them."""
    descriptor = message.DESCRIPTOR
    chosen = set()
    for oneof in descriptor.oneofs:
        chosen.add(oneof.fields[next(_counter) % len(oneof.fields)].name)
    for field in descriptor.fields:
        if field.containing_oneof is not None and field.name not in chosen:
            continue
        if field.message_type is not None:
            if depth >= 7:
                continue
            if field.is_repeated:
                for _ in range(2):
                    fill(getattr(message, field.name).add(), depth + 1)
            else:
                fill(getattr(message, field.name), depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend([scalar(field)] * 2)
        else:
            setattr(message, field.name, scalar(field))


def reference(message: Message) -> Any:
    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: base64.b64decode(v).hex() if k in ID_KEYS else fix(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return fix(MessageToDict(message, use_integers_for_enums=True))


@pytest.mark.parametrize("signal", list(Signal))
def test_every_field_matches_json_format(signal: Signal) -> None:
    message = REQUEST_TYPES[signal]()
    for _ in range(3):  # a few rounds so every oneof alternative appears
        fill(message)
    expected = reference(message)
    assert to_dict(message) == expected
    assert orjson.loads(orjson.dumps(to_dict(message))) == expected


def test_defaults_are_left_out_and_ids_are_hex() -> None:
    message = REQUEST_TYPES[Signal.TRACES]()
    span = message.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="s", kind=2)
    span.attributes.add(key="empty").value.string_value = ""
    span.attributes.add(key="unset")
    doc = to_dict(message)
    assert doc == {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "01" * 16, "spanId": "02" * 8, "name": "s", "kind": 2,
        "attributes": [{"key": "empty", "value": {"stringValue": ""}}, {"key": "unset"}],
    }]}]}]}


def test_non_finite_doubles_are_strings() -> None:
    message = REQUEST_TYPES[Signal.METRICS]()
    metric = message.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
    for value in (math.inf, -math.inf, math.nan):
        metric.gauge.data_points.add(as_double=value)
    points = to_dict(message)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    assert [p["asDouble"] for p in points["gauge"]["dataPoints"]] == [
        "Infinity", "-Infinity", "NaN"]
    assert to_dict(message) == reference(message)
