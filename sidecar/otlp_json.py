"""OTLP/JSON <-> protobuf messages, both ways.

OTLP/JSON is the proto3 JSON mapping with one wire difference: trace and span ids are hex,
not base64 (in spans, links, log records and metric exemplars). Receivers must also be
lenient: enum names or numbers, int64 as strings or numbers, lowerCamelCase or snake_case
keys, unknown fields ignored.

protobuf's `json_format` implements all that but costs ~500 µs per span to decode and
~150 µs to encode (pure Python, generic). So both directions here use converters compiled
once per message type from the descriptors: decoding turns the orjson tree into constructor
keyword dicts that upb builds in C; encoding walks `ListFields()` (set fields only). When
the fast decoder meets anything unusual (a type mismatch, an unknown enum name) the request
is decoded again by `json_format`, which either accepts it or explains what is wrong, so the
leniency and the error messages are json_format's.

A span or log record whose id is not hex of the right length is dropped and counted
(partial success); everything else malformed fails the whole request."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.errors import BadInputError
from sidecar.model import REQUEST_TYPES, ExportRequest, Signal

TRACE_ID_BYTES: Final = 16
SPAN_ID_BYTES: Final = 8

# Fields carrying hex ids in OTLP/JSON, by message: field name -> size in bytes.
_IDS: Final = {"trace_id": TRACE_ID_BYTES, "span_id": SPAN_ID_BYTES}
ID_FIELDS: Final[dict[str, dict[str, int]]] = {
    "opentelemetry.proto.trace.v1.Span": {**_IDS, "parent_span_id": SPAN_ID_BYTES},
    "opentelemetry.proto.trace.v1.Span.Link": _IDS,
    "opentelemetry.proto.logs.v1.LogRecord": _IDS,
    "opentelemetry.proto.metrics.v1.Exemplar": _IDS,
}
# The items a bad id rejects on its own (partial success); elsewhere it fails the request.
_REJECTABLE: Final = {
    ("opentelemetry.proto.trace.v1.ScopeSpans", "spans"): "spans",
    ("opentelemetry.proto.logs.v1.ScopeLogs", "log_records"): "log records",
}
_INTEGERS: Final = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SINT32,
})
_INT64S: Final = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_SINT64,
})
_FLOAT_NAMES: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Convert = Callable[[Any], Any]


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


@dataclass(frozen=True, slots=True)
class DecodedJson:
    """A request decoded from OTLP/JSON, minus the items that had to be rejected."""

    message: ExportRequest
    rejected: int = 0
    error_message: str = ""


def decode_request(signal: Signal, data: bytes) -> DecodedJson:
    """OTLP/JSON bytes -> request message, dropping spans/log records with invalid ids.
    Raises `BadInputError` when the body as a whole is not a valid request."""
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadInputError(f"malformed OTLP {signal} JSON: {exc}", "malformed") from exc
    if not isinstance(tree, dict):
        raise BadInputError(f"malformed OTLP {signal} JSON: expected an object", "malformed")
    try:
        return _fast_decode(signal, tree)
    except Exception:  # anything unusual: json_format decides and explains
        return _reference_decode(signal, tree)


def request_from_json_bytes(signal: Signal, data: bytes) -> ExportRequest:
    """Strict decode: any invalid id fails the whole request with `BadInputError`."""
    decoded = decode_request(signal, data)
    if decoded.rejected:
        raise BadInputError(f"invalid OTLP {signal} JSON: {decoded.error_message}", "malformed")
    return decoded.message


def request_to_dict(signal: Signal, message: ExportRequest) -> dict[str, Any]:
    """The OTLP/JSON object for a request: hex ids, integer enums, lowerCamelCase keys,
    int64 as strings, default values omitted (what `json_format.MessageToDict` gives with
    `use_integers_for_enums`, plus hex ids)."""
    encode = _encoder(REQUEST_TYPES[signal].DESCRIPTOR)
    result: dict[str, Any] = encode(message)
    return result


def request_to_json_bytes(signal: Signal, message: ExportRequest) -> bytes:
    return orjson.dumps(request_to_dict(signal, message))


# --- ids ------------------------------------------------------------------------------------


class _InvalidId(Exception):
    pass


def _hex_id(size: int, key: str) -> Convert:
    digits = 2 * size

    def convert(value: Any) -> bytes:
        if type(value) is not str:
            raise _InvalidId(f"{key} must be a hex string, got {type(value).__name__}")
        if not value:
            return b""  # unset, e.g. a root span's parentSpanId
        if len(value) != digits:
            raise _InvalidId(f"{key} {value!r} is not {digits} hex digits")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise _InvalidId(f"{key} {value!r} is not hex") from None
        if len(raw) != size:  # fromhex skips whitespace
            raise _InvalidId(f"{key} {value!r} is not hex")
        return raw

    return convert


class _Rejections:
    __slots__ = ("count", "first", "what")

    def __init__(self) -> None:
        self.count = 0
        self.first = ""
        self.what = ""

    def add(self, what: str, exc: _InvalidId) -> None:
        self.count += 1
        self.what = what
        self.first = self.first or str(exc)

    def message(self) -> str:
        return f"{self.count} {self.what} rejected: {self.first}" if self.count else ""


_rejections: ContextVar[_Rejections] = ContextVar("otlp_json_rejections")


# --- fast decoding --------------------------------------------------------------------------


class _Unusual(Exception):
    """The fast decoder does not handle this input; json_format will."""


def _string(value: Any) -> Any:
    if type(value) is str:
        return value
    raise _Unusual


def _boolean(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise _Unusual


def _integer(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        return value
    if kind is str and " " not in value:
        return int(value)
    if kind is float and value.is_integer():
        return int(value)
    raise _Unusual


def _double(value: Any) -> Any:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str and value in _FLOAT_NAMES:
        return _FLOAT_NAMES[value]
    raise _Unusual


def _bytes(value: Any) -> Any:
    if type(value) is not str:
        raise _Unusual
    # json_format accepts standard and URL-safe base64, padded or not
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _enum(descriptor: EnumDescriptor) -> Convert:
    numbers = {v.name: v.number for v in descriptor.values}

    def convert(value: Any) -> Any:
        if type(value) is int:
            return value
        number = numbers.get(value) if type(value) is str else None
        if number is None:
            raise _Unusual
        return number

    return convert


_decoders: dict[str, Convert] = {}


def _decoder(descriptor: Descriptor) -> Convert:
    """dict (either key spelling) -> constructor kwargs for `descriptor`'s message type."""
    cached = _decoders.get(descriptor.full_name)
    if cached is not None:
        return cached
    table: dict[str, tuple[str, Convert]] = {}

    def decode(obj: Any) -> dict[str, Any]:
        if type(obj) is not dict:
            raise _Unusual
        out = {}
        for key, value in obj.items():
            entry = table.get(key)
            if entry is not None and value is not None:  # unknown keys and nulls: skipped
                out[entry[0]] = entry[1](value)
        return out

    # registered before the table is filled: AnyValue -> ArrayValue -> AnyValue recurses
    _decoders[descriptor.full_name] = decode
    ids = ID_FIELDS.get(descriptor.full_name, {})
    for field in descriptor.fields:
        convert = _field_decoder(field, ids.get(field.name))
        rejectable = _REJECTABLE.get((descriptor.full_name, field.name))
        if rejectable is not None:
            convert = _dropping_invalid(_decoder(_message_type(field)), rejectable)
        table[field.json_name] = table[field.name] = (field.name, convert)
    return decode


def _field_decoder(field: FieldDescriptor, id_size: int | None) -> Convert:
    item: Convert
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        item = _decoder(_message_type(field))
    elif id_size is not None:
        item = _hex_id(id_size, field.json_name)
    elif field.type == FieldDescriptor.TYPE_BYTES:
        item = _bytes
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        item = _enum(field.enum_type)
    elif field.type in _INTEGERS:
        item = _integer
    elif field.type == FieldDescriptor.TYPE_BOOL:
        item = _boolean
    elif field.type == FieldDescriptor.TYPE_STRING:
        item = _string
    else:
        item = _double
    if not field.is_repeated:
        return item

    def repeated(value: Any) -> Any:
        if type(value) is not list:
            raise _Unusual
        return [item(v) for v in value]

    return repeated


def _dropping_invalid(convert_item: Convert, what: str) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _Unusual
        out = []
        for item in value:
            try:
                out.append(convert_item(item))
            except _InvalidId as exc:
                _rejections.get().add(what, exc)
        return out

    return convert


def _fast_decode(signal: Signal, tree: dict[str, Any]) -> DecodedJson:
    message_type = REQUEST_TYPES[signal]
    rejections = _Rejections()
    token = _rejections.set(rejections)
    try:
        # upb builds the whole nested message from plain dicts and lists, in C
        message = message_type(**_decoder(message_type.DESCRIPTOR)(tree))
    finally:
        _rejections.reset(token)
    return DecodedJson(message, rejections.count, rejections.message())


# --- reference decoding (json_format) -------------------------------------------------------


def _fix_ids(node: Any, descriptor: Descriptor, rejections: _Rejections | None) -> None:
    """Rewrite hex ids to base64 in place for json_format, dropping rejectable items with
    bad ids. Follows the message schema, so it reaches links, exemplars and so on."""
    if not isinstance(node, dict):
        return
    ids = ID_FIELDS.get(descriptor.full_name, {})
    for field in descriptor.fields:
        for key in {field.json_name, field.name}:
            value = node.get(key)
            if value is None:
                continue
            if field.name in ids:
                raw = _hex_id(ids[field.name], field.json_name)(value)
                node[key] = base64.b64encode(raw).decode("ascii")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                if not field.is_repeated:
                    _fix_ids(value, _message_type(field), rejections)
                elif isinstance(value, list):
                    what = _REJECTABLE.get((descriptor.full_name, field.name))
                    node[key] = _fix_list(value, _message_type(field), what, rejections)


def _fix_list(
    items: list[Any], descriptor: Descriptor, what: str | None, rejections: _Rejections | None
) -> list[Any]:
    kept = []
    for item in items:
        try:
            _fix_ids(item, descriptor, rejections)
        except _InvalidId as exc:
            if what is None or rejections is None:
                raise
            rejections.add(what, exc)
            continue
        kept.append(item)
    return kept


def _reference_decode(signal: Signal, tree: dict[str, Any]) -> DecodedJson:
    message_type = REQUEST_TYPES[signal]
    rejections = _Rejections()
    try:
        _fix_ids(tree, message_type.DESCRIPTOR, rejections)
        message = json_format.ParseDict(tree, message_type(), ignore_unknown_fields=True)
    except (_InvalidId, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise BadInputError(f"invalid OTLP {signal} JSON: {exc}", "malformed") from exc
    return DecodedJson(message, rejections.count, rejections.message())


# --- encoding -------------------------------------------------------------------------------


def _json_double(value: float) -> Any:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _hex(value: bytes) -> str:
    return value.hex()


_encoders: dict[str, Callable[[Message], dict[str, Any]]] = {}


def _encoder(descriptor: Descriptor) -> Callable[[Message], dict[str, Any]]:
    cached = _encoders.get(descriptor.full_name)
    if cached is not None:
        return cached
    table: dict[FieldDescriptor, tuple[str, Convert | None]] = {}

    def encode(message: Message) -> dict[str, Any]:
        out = {}
        for field, value in message.ListFields():  # set fields only, in field-number order
            name, convert = table[field]
            out[name] = value if convert is None else convert(value)
        return out

    _encoders[descriptor.full_name] = encode
    ids = ID_FIELDS.get(descriptor.full_name, {})
    for field in descriptor.fields:
        table[field] = (field.json_name, _field_encoder(field, field.name in ids))
    return encode


def _field_encoder(field: FieldDescriptor, is_id: bool) -> Convert | None:
    item: Convert | None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        item = _encoder(_message_type(field))
    elif is_id:
        item = _hex
    elif field.type == FieldDescriptor.TYPE_BYTES:
        item = _b64
    elif field.type in _INT64S:
        item = str  # proto3 JSON: 64-bit integers as strings
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        item = _json_double
    else:
        item = None  # strings, bools, enums (as numbers), 32-bit integers
    if not field.is_repeated:
        return item
    if item is None:
        return list
    convert_item = item
    return lambda values: [convert_item(v) for v in values]


def _install_attribute_encoders() -> None:
    """Attributes are most of an OTLP request (KeyValue + AnyValue per attribute), so their
    encoders skip `ListFields()` for a oneof lookup; output is the same as the generic one."""
    kinds: dict[str, tuple[str, Convert | None]] = {}
    # Fields newer protos add to KeyValue (e.g. key_strindex) are rare: the generic encoder
    # takes a pair that sets one, so the fast path never drops a field.
    generic_key_value = _encoder(KeyValue.DESCRIPTOR)
    extra_fields = tuple(f.name for f in KeyValue.DESCRIPTOR.fields
                         if f.name not in ("key", "value"))

    def encode_any_value(value: AnyValue) -> dict[str, Any]:
        kind = value.WhichOneof("value")
        if kind is None:
            return {}
        name, convert = kinds[kind]
        inner = getattr(value, kind)
        return {name: inner if convert is None else convert(inner)}

    def encode_key_value(pair: KeyValue) -> dict[str, Any]:
        for name in extra_fields:
            if getattr(pair, name):
                return generic_key_value(pair)
        key = pair.key
        value = pair.value
        kind = value.WhichOneof("value")
        if kind is not None and key:  # the usual attribute, inlined
            name, convert = kinds[kind]
            inner = getattr(value, kind)
            return {"key": key, "value": {name: inner if convert is None else convert(inner)}}
        out: dict[str, Any] = {}
        if key:
            out["key"] = key
        if pair.HasField("value"):
            out["value"] = encode_any_value(value)
        return out

    _encoders[AnyValue.DESCRIPTOR.full_name] = encode_any_value  # type: ignore[assignment]
    _encoders[KeyValue.DESCRIPTOR.full_name] = encode_key_value  # type: ignore[assignment]
    for field in AnyValue.DESCRIPTOR.fields:
        kinds[field.name] = (field.json_name, _field_encoder(field, is_id=False))


_install_attribute_encoders()

# Compiled now rather than on first use: a converter is registered before its table is
# filled (for recursive types), so lazy compilation could hand a half-built converter to a
# second thread (an exporter encoding in an executor).
for _request_type in REQUEST_TYPES.values():
    _decoder(_request_type.DESCRIPTOR)
    _encoder(_request_type.DESCRIPTOR)
