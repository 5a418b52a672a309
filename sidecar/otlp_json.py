"""OTLP/JSON <-> protobuf messages, both ways.

OTLP/JSON is the proto3 JSON mapping with one wire difference: trace and span ids are hex,
not base64 (in spans, links, log records and metric exemplars). Receivers must also be
lenient: enum names or numbers, int64 as strings or numbers, lowerCamelCase or snake_case
keys, unknown fields ignored.

protobuf's `json_format` costs ~500 µs per span to decode and ~150 µs to encode (pure
Python, generic), and it decodes more than the mapping allows: bytes that are not base64
(as empty), unknown enum names (dropped), '1_000', ' 5' or Arabic-Indic digits as integers,
`true` as 1.0. So both directions here use converters compiled once per message type (and,
for decoding, per nesting depth) from the descriptors: decoding turns the orjson tree into
constructor keyword dicts that upb builds in C; encoding walks `ListFields()` (set fields
only).

Decoding accepts what the proto3 JSON mapping allows and nothing that protobuf decoding
would refuse once the message is serialized: a batch is merged with other clients'
requests as bytes, so one unreadable request would lose them all. Anything else fails the
request with the JSON path of the value: a wrong type, a number not spelled as a JSON
number or out of its field's range, two members of a oneof, messages nested deeper than
upb parses (`MAX_NESTING`).

A span or log record whose id is not hex of the right length is dropped and counted
(partial success); everything else malformed fails the whole request."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.errors import BadInputError
from sidecar.model import REQUEST_TYPES, ExportRequest, Signal

TRACE_ID_BYTES: Final = 16
SPAN_ID_BYTES: Final = 8
# upb refuses to parse a message nested more than this many levels below the request (its
# default decode depth limit; tests check the number against the installed protobuf).
MAX_NESTING: Final = 100

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
_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
# integer field types -> the range of values they hold
_INTEGERS: Final = {
    FieldDescriptor.TYPE_INT32: _INT32, FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32, FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64, FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_INT64S: Final = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_SINT64,
})
_FLOAT_NAMES: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# A quoted number must be spelled as a JSON number (no '+', spaces, '_', leading zeros or
# non-ASCII digits, all of which int() and float() take).
_JSON_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# orjson turns an integer below -2**63 into a float, which may round to exactly -2**63: an
# integral float for an integer field must be above it.
_FLOAT_INT_MIN: Final = -(2.0**63)
_FLOAT32_MAX: Final = 3.4028234663852886e38
_URLSAFE: Final = str.maketrans("-_", "+/")
_SHOWN_CHARS: Final = 40
_SHOWN_PATH: Final = 12

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
    except (_Invalid, _InvalidId) as exc:
        raise BadInputError(f"invalid OTLP {signal} JSON: {exc}", "malformed") from None
    except (ValueError, TypeError) as exc:  # upb's own checks, should ours have missed one
        raise BadInputError(f"invalid OTLP {signal} JSON: {exc}", "malformed") from exc


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


def _show(value: Any) -> str:
    """A client's value (as orjson read it) for an error message, cut short: it may be
    megabytes."""
    if isinstance(value, str):
        if len(value) > _SHOWN_CHARS:
            return repr(value[:_SHOWN_CHARS]) + "..."
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return orjson.dumps(value).decode()  # true, null, numbers as JSON writes them


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
            raise _InvalidId(f"{key} {_show(value)} is not {digits} hex digits")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise _InvalidId(f"{key} {_show(value)} is not hex") from None
        if len(raw) != size:  # fromhex skips whitespace
            raise _InvalidId(f"{key} {_show(value)} is not hex")
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


class _Invalid(Exception):
    """A value the OTLP/JSON mapping does not allow. Each enclosing object adds its key to
    `path` on the way out (try blocks cost nothing until they catch, since Python 3.11)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []  # innermost key first

    def __str__(self) -> str:
        keys = self.path[::-1]
        if len(keys) > _SHOWN_PATH:
            half = _SHOWN_PATH // 2
            keys = [*keys[:half], "...", *keys[-half:]]
        return f"{'.'.join(keys)}: {self.reason}" if keys else self.reason


_KINDS: Final[dict[type, str]] = {bool: "a boolean", int: "a number", float: "a number",
                                  str: "a string", dict: "an object", list: "an array"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _string(value: Any) -> Any:
    if type(value) is str:
        return value
    raise _Invalid(f"expected a string, got {_kind(value)}")


def _boolean(value: Any) -> Any:
    if type(value) is bool:
        return value
    raise _Invalid(f"expected true or false, got {_show(value)}")


def _integer(low: int, high: int) -> Convert:
    """An integer field holding `low`..`high`: a number, or a string spelled as one."""

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind is int:
            number = value
        elif kind is str:
            if value.isascii() and value.isdigit() and (value[0] != "0" or len(value) == 1):
                try:
                    number = int(value)  # the usual quoted int64
                except ValueError:  # more digits than int() reads (4300)
                    raise _Invalid(f"{_show(value)} is out of range") from None
            else:
                number = _quoted_integer(value)
        elif kind is float:
            number = _integral(value, value)
        else:
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if low <= number <= high:
            return number
        raise _Invalid(f"{_show(value)} is out of range")

    return convert


def _digits(value: str) -> int:
    try:
        return int(value)
    except ValueError:  # more digits than int() reads (4300): far out of any range
        raise _Invalid(f"{_show(value)} is out of range") from None


def _quoted_integer(value: str) -> int:
    if _JSON_NUMBER.fullmatch(value) is None:
        raise _Invalid(f"{_show(value)} is not an integer")
    if "." in value or "e" in value or "E" in value:
        # exponent or fraction: read as a double, as protobuf's own parsers do
        return _integral(float(value), value)
    return _digits(value)


def _integral(number: float, shown: Any) -> int:
    if not number.is_integer():
        raise _Invalid(f"{_show(shown)} is not an integer")
    if number <= _FLOAT_INT_MIN:
        raise _Invalid(f"{_show(shown)} is out of range")
    return int(number)


def _double(value: Any) -> Any:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)  # orjson's numbers are finite and its integers 64-bit
    if kind is str:
        special = _FLOAT_NAMES.get(value)
        if special is not None:
            return special
        if _JSON_NUMBER.fullmatch(value) is not None:
            number = float(value)
            if math.isfinite(number):
                return number
            raise _Invalid(f"{_show(value)} is out of range")
        raise _Invalid(f"{_show(value)} is not a number")
    raise _Invalid(f"expected a number, got {_show(value)}")


def _float(value: Any) -> Any:
    number = _double(value)
    if math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise _Invalid(f"{_show(value)} is out of range for a float")
    return number


def _bytes(value: Any) -> Any:
    if type(value) is not str:
        raise _Invalid(f"expected a base64 string, got {_kind(value)}")
    # standard or URL-safe base64, padded or not (proto3 JSON); nothing else
    text = value.translate(_URLSAFE) if "-" in value or "_" in value else value
    if "=" not in text:
        text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise _Invalid(f"{_show(value)} is not base64") from None


def _enum(descriptor: EnumDescriptor) -> Convert:
    numbers = {v.name: v.number for v in descriptor.values}

    low, high = _INT32

    def convert(value: Any) -> Any:
        if type(value) is int:
            if low <= value <= high:
                return value  # open enum: any int32, including numbers not named yet
            raise _Invalid(f"{value} is out of range")
        if type(value) is str:
            number = numbers.get(value)
            if number is not None:
                return number
            raise _Invalid(f"unknown {descriptor.name} {_show(value)}")
        raise _Invalid(f"expected a {descriptor.name} name or integer, got {_show(value)}")

    return convert


def _too_deep(value: Any) -> Any:
    raise _Invalid(f"values nest more than {MAX_NESTING} levels deep")


# compiled per (message type, nesting depth): the depth is known when compiling, so a
# message nested too deep is refused without counting levels while decoding
_decoders: dict[tuple[str, int], Convert] = {}


def _decoder(descriptor: Descriptor, depth: int = 0) -> Convert:
    """dict (either key spelling) -> constructor kwargs for `descriptor`'s message type,
    `depth` levels below the request."""
    if depth > MAX_NESTING:
        return _too_deep
    cached = _decoders.get((descriptor.full_name, depth))
    if cached is not None:
        return cached
    table: dict[str, tuple[str, Convert]] = {}
    oneofs = [tuple(f.name for f in o.fields) for o in descriptor.oneofs if len(o.fields) > 1]

    def decode(obj: Any) -> dict[str, Any]:
        if type(obj) is not dict:
            raise _Invalid(f"expected an object, got {_show(obj)}")
        out = {}
        for key, value in obj.items():
            entry = table.get(key)
            if entry is not None and value is not None:  # unknown keys and nulls: skipped
                try:
                    out[entry[0]] = entry[1](value)
                except _Invalid as exc:
                    exc.path.append(key)
                    raise
        if oneofs and len(out) > 1:
            _check_oneofs(out, oneofs)
        return out

    def decode_one_of(obj: Any) -> dict[str, Any]:
        """`decode` for a message that is all one oneof (AnyValue, one per attribute):
        checking as it goes costs less than `_check_oneofs` afterwards."""
        if type(obj) is not dict:
            raise _Invalid(f"expected an object, got {_show(obj)}")
        out: dict[str, Any] = {}
        for key, value in obj.items():
            entry = table.get(key)
            if entry is not None and value is not None:
                if out:
                    raise _Invalid(f"only one of {', '.join([*out, entry[0]])} may be set")
                try:
                    out[entry[0]] = entry[1](value)
                except _Invalid as exc:
                    exc.path.append(key)
                    raise
        return out

    exclusive = len(oneofs) == 1 and len(oneofs[0]) == len(descriptor.fields)
    chosen = decode_one_of if exclusive else decode
    _decoders[(descriptor.full_name, depth)] = chosen
    ids = ID_FIELDS.get(descriptor.full_name, {})
    for field in descriptor.fields:
        convert = _field_decoder(field, ids.get(field.name), depth)
        rejectable = _REJECTABLE.get((descriptor.full_name, field.name))
        if rejectable is not None:
            convert = _dropping_invalid(_decoder(_message_type(field), depth + 1), rejectable)
        table[field.json_name] = table[field.name] = (field.name, convert)
    return chosen


def _check_oneofs(out: dict[str, Any], oneofs: list[tuple[str, ...]]) -> None:
    for members in oneofs:
        given = [name for name in members if name in out]
        if len(given) > 1:
            raise _Invalid(f"only one of {', '.join(given)} may be set")


def _field_decoder(field: FieldDescriptor, id_size: int | None, depth: int) -> Convert:
    item: Convert
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        item = _decoder(_message_type(field), depth + 1)
    elif id_size is not None:
        item = _hex_id(id_size, field.json_name)
    elif field.type == FieldDescriptor.TYPE_BYTES:
        item = _bytes
    elif field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        item = _enum(field.enum_type)
    elif field.type in _INTEGERS:
        item = _integer(*_INTEGERS[field.type])
    elif field.type == FieldDescriptor.TYPE_BOOL:
        item = _boolean
    elif field.type == FieldDescriptor.TYPE_STRING:
        item = _string
    elif field.type == FieldDescriptor.TYPE_FLOAT:
        item = _float  # none in OTLP today
    else:
        item = _double
    if not field.is_repeated:
        return item

    def repeated(value: Any) -> Any:
        if type(value) is not list:
            raise _Invalid(f"expected an array, got {_show(value)}")
        return [item(v) for v in value]

    return repeated


def _dropping_invalid(convert_item: Convert, what: str) -> Convert:
    def convert(value: Any) -> Any:
        if type(value) is not list:
            raise _Invalid(f"expected an array, got {_show(value)}")
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
