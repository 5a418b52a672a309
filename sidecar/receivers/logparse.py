"""Sans-IO mapping of JSON log lines (pino, bunyan, winston, structlog, python-json-logger,
zap, zerolog, slog) to OTLP log records, batched into one ExportLogsServiceRequest.

No format switch is configured: each line is read by its keys. The time comes from the first
of `time`, `timestamp`, `ts`, `@timestamp`, `asctime` that parses (epoch numbers by
magnitude: ns, µs, ms or s; strings as ISO 8601, zone-less ones as local time); the level
from `level`, `levelname`, `severity` (numbers on the pino/bunyan scale, `levelno` on
Python's, names by the table in `_LEVELS`); the body from `msg`, `message` or `event`.
Trace context comes from the common field names (OTel instrumentations, camelCase, ECS,
Datadog's decimal ids flat or nested, `traceparent`); `service.name`, `host.name` and
`process.pid` go to the resource. Every other field is an attribute, nested maps kept as
maps, so child-logger bindings arrive as attributes.

A line that is not JSON is kept as a string body with `sidecar.log.parse_error`; a line
the framing cut is kept as text with `sidecar.log.truncated`. Values nested deeper than
`MAX_VALUE_DEPTH` are kept as their JSON text, so no record exceeds the nesting depth upb
parses downstream (`otlp_json.MAX_NESTING`)."""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sidecar.model import Batch, Signal
from sidecar.net.framing import Line
from sidecar.protowire import encode_varint

PARSE_ERROR_KEY: Final = "sidecar.log.parse_error"
TRUNCATED_KEY: Final = "sidecar.log.truncated"
SCOPE_NAME: Final = "sidecar.receivers.logs"

# A map value inside a record sits at request -> resource -> scope -> record -> attribute ->
# value (5 messages) and each JSON level below adds 3 (kvlist, key-value, value): 16 JSON
# levels reach 53 of the 100 upb accepts, leaving room for whatever wraps a record later.
MAX_VALUE_DEPTH: Final = 16
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_TIME_KEYS: Final = ("time", "timestamp", "ts", "@timestamp", "asctime")
_LEVEL_KEYS: Final = ("level", "levelname", "severity", "levelno")
_MESSAGE_KEYS: Final = ("msg", "message", "event")
# lifted into the record or the resource, so not repeated as attributes
_SERVICE_KEYS: Final = ("service.name", "service", "dd.service", "otelServiceName")

# lower-cased level names -> (OTLP severity number). Sources: genai-and-logs.md §4.3.
_LEVELS: Final[dict[str, int]] = {
    "trace": 1, "silly": 1, "finest": 1,
    "debug": 5, "finer": 5, "fine": 6, "config": 7, "verbose": 7, "http": 8,
    "info": 9, "information": 9, "informational": 9, "notice": 10,
    "warn": 13, "warning": 13,
    "error": 17, "err": 17, "exception": 17, "severe": 17,
    "crit": 18, "dpanic": 18, "alert": 19, "panic": 19,
    "critical": 21, "fatal": 21, "emerg": 21, "emergency": 21,
}
# pino/bunyan numbers (custom numbers take the nearest standard level below)
_PINO: Final = ((60, 21, "fatal"), (50, 17, "error"), (40, 13, "warn"), (30, 9, "info"),
                (20, 5, "debug"), (10, 1, "trace"))
# Python levelno: <=10 debug, <=20 info, <=30 warning, <=40 error, above critical
_PYTHON: Final = ((10, 5), (20, 9), (30, 13), (40, 17))
# slog's "INFO+2": base level plus an offset; number = slog level + 9
_SLOG: Final = re.compile(r"(DEBUG|INFO|WARN|ERROR)([+-]\d{1,3})")
_SLOG_BASE: Final = {"DEBUG": -4, "INFO": 0, "WARN": 4, "ERROR": 8}
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")
_HEX: Final = re.compile(r"[0-9a-fA-F]+")
_ZEROS: Final = {8: bytes(8), 16: bytes(16)}
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def severity(value: object, key: str = "level") -> tuple[int, str]:
    """(OTLP severity number, severity text) for a level value; (0, text) when unknown."""
    if type(value) is int or type(value) is float:
        n = int(value)
        if key == "levelno":
            if n <= 0:
                return 0, str(n)
            for bound, number in _PYTHON:
                if n <= bound:
                    return number, str(n)
            return 21, str(n)
        for bound, number, name in _PINO:
            if n >= bound:
                return number, name if n == bound else str(n)
        return (1 if n > 0 else 0), str(n)
    if type(value) is not str:
        return 0, ""
    text = _ANSI.sub("", value) if "\x1b" in value else value
    number = _LEVELS.get(text.lower(), 0)
    if number == 0 and ("+" in text or "-" in text):
        match = _SLOG.fullmatch(text)
        if match:
            number = min(max(_SLOG_BASE[match.group(1)] + int(match.group(2)) + 9, 1), 24)
    return number, text


def timestamp_ns(value: object) -> int:
    """Nanoseconds since the epoch, or 0 when `value` is no time we can read."""
    if type(value) is int or type(value) is float:
        magnitude = abs(value)
        scale = (1 if magnitude > 1e17 else 1_000 if magnitude > 1e14
                 else 1_000_000 if magnitude > 1e11 else 1_000_000_000)
        whole = int(value)
        # the fraction apart: a float of epoch seconds times 1e9 would lose the microseconds
        ns = whole * scale + round((value - whole) * scale)
        return ns if 0 < ns <= _INT64_MAX else 0
    if type(value) is str and 8 <= len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return 0
        # zone-less: local time (datetime.timestamp() takes it so)
        try:
            seconds = parsed.timestamp()
        except (OverflowError, OSError, ValueError):
            return 0
        ns = int(seconds) * 1_000_000_000 + parsed.microsecond * 1_000
        return ns if 0 < ns <= _INT64_MAX else 0
    return 0


def _id_bytes(value: object, size: int, decimal: bool = False) -> bytes | None:
    """A trace id (16 bytes) or span id (8) from hex, or (`decimal`: Datadog's ids) from a
    decimal 64-bit integer, which is the low 64 bits of a trace id. None if neither."""
    if type(value) is int:
        return value.to_bytes(size, "big") if 0 < value < 2**64 else None
    if type(value) is not str or not value or len(value) > (20 if decimal else 2 * size):
        return None
    if decimal:
        if not (value.isascii() and value.isdigit()):
            return None
        number = int(value)
        return number.to_bytes(size, "big") if 0 < number < 2**64 else None
    if _HEX.fullmatch(value) is None:
        return None
    raw = bytes.fromhex(value.rjust(2 * size, "0"))
    return None if raw == _ZEROS[size] else raw  # an all-zero id is no id


# --- OTLP protobuf written by hand -------------------------------------------------------
# The records are encoded straight to protobuf wire format instead of being built as upb
# messages: each message operation from Python costs ~0.2-0.5 µs and a pino line has ~10
# fields, so building messages was most of the parse cost (bench/logs_parse_bench.py).
# Field numbers from opentelemetry/proto/{common,logs,resource}/v1/*.proto; tests decode
# every request with upb (tests/unit/receivers/test_logparse.py).

_BYTE: Final = [bytes((i,)) for i in range(128)]
_PACK_DOUBLE: Final = struct.Struct("<d").pack
_PACK_FIXED64: Final = struct.Struct("<Q").pack
_PACK_FIXED32: Final = struct.Struct("<I").pack
_PACK_VARINT2: Final = struct.Struct("<H").pack
_KEY_CACHE_MAX: Final = 4096
_keys: dict[str, bytes] = {}  # attribute key -> its encoded KeyValue.key field


def _varint(n: int) -> bytes:
    """`protowire.encode_varint`, without its loop for the sizes of a log record (a record's
    length, a token count): below 16384 a varint is two bytes, low seven bits first."""
    if n < 128:
        return _BYTE[n]
    if n < 16384:
        return _PACK_VARINT2(n & 0x7F | 0x80 | (n >> 7) << 8)
    return encode_varint(n)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    n = len(payload)
    return tag + (_BYTE[n] if n < 128 else _varint(n)) + payload


def _key(key: str) -> bytes:
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _field(b"\x0a", key.encode())
        # bounded: hostile lines could bring any number of keys of any length
        if len(_keys) < _KEY_CACHE_MAX and len(key) <= 64:
            _keys[key] = encoded
    return encoded


def any_value(value: Any, depth: int = 0) -> bytes:
    """An AnyValue for a decoded JSON value (maps stay maps, lists arrays); None is the
    empty AnyValue. Raises ValueError (UnicodeEncodeError) for a lone surrogate."""
    kind = type(value)
    if kind is str:
        data: bytes = value.encode()
        n = len(data)
        return b"\x0a" + (_BYTE[n] if n < 128 else _varint(n)) + data
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        number: int = value
        if _INT64_MIN <= number <= _INT64_MAX:
            return b"\x18" + _varint(number & 0xFFFFFFFFFFFFFFFF)
        return any_value(str(number))
    if kind is float:
        packed: bytes = _PACK_DOUBLE(value)
        return b"\x21" + packed
    if value is None:
        return b""
    if depth >= MAX_VALUE_DEPTH and (kind is dict or kind is list):
        return any_value(_json_text(value))
    if kind is dict:
        return _field(b"\x32", b"".join(_key_values(b"\x0a", value, depth + 1)))
    if kind is list:
        values: list[Any] = value
        return _field(b"\x2a", b"".join(
            [_field(b"\x0a", any_value(v, depth + 1)) for v in values]))
    return b""


def _key_values(tag: bytes, items: dict[str, Any], depth: int) -> list[bytes]:
    """KeyValue fields (`tag`: LogRecord.attributes or KeyValueList.values) with values at
    `depth`. Short strings and small ints, most fields of a log line, are written inline:
    a function call per field was a third of the cost."""
    out: list[bytes] = []
    append = out.append
    byte = _BYTE
    keys = _keys
    for key, value in items.items():
        encoded_key = keys.get(key)
        if encoded_key is None:
            encoded_key = _key(key)
        kind = type(value)
        if kind is str:
            data = value.encode()
            n = len(data)
            size = len(encoded_key) + n + 4
            if size < 128:  # every length below fits one byte
                append(tag + byte[size] + encoded_key + b"\x12" + byte[n + 2] + b"\x0a"
                       + byte[n] + data)
                continue
        elif kind is int and 0 <= value <= _INT64_MAX:
            number = byte[value] if value < 128 else _varint(value)
            size = len(encoded_key) + len(number) + 3
            if size < 128:
                append(tag + byte[size] + encoded_key + b"\x12" + byte[len(number) + 1]
                       + b"\x18" + number)
                continue
        elif kind is dict and depth < MAX_VALUE_DEPTH:  # child bindings: run={id, step}
            inner = b"".join(_key_values(b"\x0a", value, depth + 1))
            n = len(inner)
            kvlist = b"\x32" + (byte[n] if n < 128 else _varint(n)) + inner
            n = len(kvlist)
            entry = encoded_key + b"\x12" + (byte[n] if n < 128 else _varint(n)) + kvlist
            n = len(entry)
            append(tag + (byte[n] if n < 128 else _varint(n)) + entry)
            continue
        append(_field(tag, encoded_key + _field(b"\x12", any_value(value, depth))))
    return out


def _attribute(key: str, value: object, depth: int = 1) -> bytes:
    """A LogRecord.attributes entry (field 6)."""
    return _field(b"\x32", _key(key) + _field(b"\x12", any_value(value, depth)))


def _json_text(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # orjson writes at most 254 levels
        raise ValueError("nested too deep") from exc


ResourceKey = tuple[str | None, str | None, int | None]


def _resource(key: ResourceKey) -> bytes:
    """ResourceLogs.resource (field 1) and the scope of ResourceLogs.scope_logs."""
    service, host, pid = key
    attributes = [_field(b"\x0a", _key("service.name") + _field(
        b"\x12", any_value(service or "unknown_service")))]
    if host is not None:
        attributes.append(_field(b"\x0a", _key("host.name") + _field(
            b"\x12", any_value(host))))
    if pid is not None:
        attributes.append(_field(b"\x0a", _key("process.pid") + _field(
            b"\x12", any_value(pid))))
    return _field(b"\x0a", b"".join(attributes))


_SCOPE: Final = _field(b"\x0a", _field(b"\x0a", SCOPE_NAME.encode()))  # ScopeLogs.scope


class LogBatchBuilder:
    """Turns lines into log records of one ExportLogsServiceRequest, grouped by resource
    (service.name, host.name, process.pid). `take_batch()` hands the request over (as
    protobuf bytes) and starts a new one. Counts what it saw: records, bytes of input,
    parse errors, truncated lines."""

    __slots__ = ("_groups", "bytes", "fast", "parse_errors", "records", "service_name",
                 "truncated")

    def __init__(self, service_name: str | None = None, *, fast: bool = True) -> None:
        self.service_name = service_name
        # `fast=False`: every line through the general mapping (tests compare the two)
        self.fast = fast
        self._groups: dict[ResourceKey, list[bytes]] = {}
        self.records = 0
        self.bytes = 0
        self.parse_errors = 0  # over the builder's lifetime, not per request
        self.truncated = 0

    def take_payload(self) -> tuple[int, bytes] | None:
        """(records, ExportLogsServiceRequest bytes), or None when empty."""
        if not self.records:
            return None
        request = b"".join([
            _field(b"\x0a", _resource(key) + _field(b"\x12", _SCOPE + b"".join(records)))
            for key, records in self._groups.items()])
        count = self.records
        self._groups = {}
        self.records = 0
        self.bytes = 0
        return count, request

    def take_batch(self) -> Batch | None:
        taken = self.take_payload()
        if taken is None:
            return None
        return Batch(Signal.LOGS, taken[0], taken[1])

    def take(self) -> ExportLogsServiceRequest | None:
        """The request as a message (for tests and tools; receivers use `take_batch`)."""
        taken = self.take_payload()
        return None if taken is None else ExportLogsServiceRequest.FromString(taken[1])

    def add(self, line: Line | bytes, observed_ns: int | None = None) -> bool:
        """Add one framed line (bytes: a line that was not cut); False for a blank line (no
        record)."""
        if type(line) is bytes:
            data = line
            truncated = False
        else:
            assert isinstance(line, Line)
            data = line.data
            truncated = line.truncated
        if observed_ns is None:
            observed_ns = time.time_ns()
        if truncated:
            self.truncated += 1
            self.bytes += len(data)
            self._append(self._key(self.service_name, None, None),
                         _text(data, observed_ns, _attribute(TRUNCATED_KEY, True)))
            return True
        if self.fast:
            try:
                decoded = orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # blank or not JSON: the general path below says which
            else:
                if type(decoded) is dict:
                    # the fast path (below), `_append` written out: this runs once a line
                    keys = tuple(decoded)
                    plan = _plans.get(keys)
                    if plan is None:
                        plan = _plan(keys)
                    try:
                        done = (None if plan is None else
                                _planned(plan, decoded, observed_ns, self.service_name))
                    except (ValueError, TypeError):
                        done = None  # e.g. a lone surrogate: the general path makes the error
                    if done is not None:
                        self.bytes += len(data)
                        self.records += 1
                        resource, record = done
                        group = self._groups.get(resource)
                        if group is None:
                            group = self._groups[resource] = []
                        n = len(record)
                        group.append(b"\x12" + _BYTE[n] if n < 128 else b"\x12" + _varint(n))
                        group.append(record)
                        return True
                # the fast path changed nothing in `decoded`: the general one maps it
                self.bytes += len(data)
                return self._add_decoded(data, decoded, observed_ns)
        if not data.strip():
            return False
        self.bytes += len(data)
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._error(data, observed_ns, _reason(exc))
            return True
        return self._add_decoded(data, decoded, observed_ns)

    def _add_decoded(self, data: bytes, decoded: Any, observed_ns: int) -> bool:
        if type(decoded) is not dict:
            try:
                record = _fixed64(b"\x59", observed_ns) + _field(b"\x2a", any_value(decoded))
            except ValueError as exc:
                self._error(data, observed_ns, f"unrepresentable value: {exc}"[:120])
                return True
            self._append(self._key(self.service_name, None, None), record)
            return True
        fields: dict[str, Any] = decoded
        key = self._resource_fields(fields)
        try:
            record = _fill(fields, observed_ns)
        except (ValueError, TypeError) as exc:
            # a value protobuf cannot carry (e.g. a string with a lone surrogate): the text
            self.parse_errors += 1
            record = _text(data, observed_ns, _attribute(
                PARSE_ERROR_KEY, f"unrepresentable value: {exc}"[:120]))
        self._append(key, record)
        return True

    def _append(self, key: ResourceKey, record: bytes) -> None:
        self.records += 1
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = []
        n = len(record)  # ScopeLogs.log_records: its tag and length, then the record
        group.append(b"\x12" + _BYTE[n] if n < 128 else b"\x12" + _varint(n))
        group.append(record)

    def _key(self, service: str | None, host: str | None, pid: int | None) -> ResourceKey:
        return (service, host, pid)

    def _error(self, data: bytes, observed_ns: int, reason: str) -> None:
        self.parse_errors += 1
        self._append(self._key(self.service_name, None, None),
                     _text(data, observed_ns, _attribute(PARSE_ERROR_KEY, reason)))

    def _resource_fields(self, fields: dict[str, Any]) -> ResourceKey:
        service: str | None = None
        for key in _SERVICE_KEYS:
            value = fields.get(key)
            if type(value) is str and value:
                service = value
                del fields[key]
                break
        if service is None:
            dd = fields.get("dd")
            if type(dd) is dict and type(dd.get("service")) is str and dd["service"]:
                service = dd.pop("service")
            elif "v" in fields and type(fields.get("name")) is str and "hostname" in fields:
                service = fields.pop("name")  # bunyan: `name` is the app's name
        host = fields.get("hostname")
        if type(host) is str:
            del fields["hostname"]
        else:
            host = None
        pid = fields.get("pid")
        if type(pid) is int and 0 <= pid <= _INT64_MAX:
            del fields["pid"]
        else:
            pid = None
        return service or self.service_name, host, pid


def _fixed64(tag: bytes, value: int) -> bytes:
    return tag + _PACK_FIXED64(value)


def _text(data: bytes, observed_ns: int, flag: bytes) -> bytes:
    """A record whose body is the line as text: NUL is valid UTF-8, invalid bytes become
    U+FFFD so the body stays a valid string."""
    return (_fixed64(b"\x59", observed_ns)
            + _field(b"\x2a", any_value(data.decode("utf-8", "replace"))) + flag)


def _reason(exc: orjson.JSONDecodeError) -> str:
    message = str(exc)
    if "depth limit" in message or "recursion" in message:
        return "not JSON: nested too deep"
    return "not JSON: " + message.split(":", 1)[0][:80]


def _fill(fields: dict[str, Any], observed_ns: int) -> bytes:
    """The LogRecord for a JSON object line (fields in field-number order)."""
    parts: list[bytes] = []
    for key in _TIME_KEYS:
        if key in fields:
            ns = timestamp_ns(fields[key])
            if ns:
                parts.append(_fixed64(b"\x09", ns))
                del fields[key]
                break
    for key in _LEVEL_KEYS:
        if key in fields:
            number, text = severity(fields[key], key)
            if number or text:
                if number:
                    parts.append(b"\x10" + _varint(number))
                if text:
                    parts.append(_field(b"\x1a", text.encode()))
                del fields[key]
                break
    for key in _MESSAGE_KEYS:
        if key in fields:
            parts.append(_field(b"\x2a", any_value(fields.pop(key))))
            break
    trace, span, flags = _trace_context(fields)
    errors = _errors(fields)
    fields.pop("v", None)  # bunyan's format version
    parts.extend([_attribute(key, value) for key, value in errors])
    parts.extend(_key_values(b"\x32", fields, 1))
    if flags is not None:
        parts.append(b"\x45" + _PACK_FIXED32(flags))
    if trace is not None:
        parts.append(_field(b"\x4a", trace))
    if span is not None:
        parts.append(_field(b"\x52", span))
    parts.append(_fixed64(b"\x59", observed_ns))
    return b"".join(parts)


def _pop_id(fields: dict[str, Any], keys: tuple[str, ...], size: int) -> bytes | None:
    for key in keys:
        if key in fields:
            raw = _id_bytes(fields[key], size, key.startswith("dd."))
            if raw is not None:
                del fields[key]
                return raw
    return None


_TRACE_KEYS: Final = ("trace_id", "traceId", "traceID", "otelTraceID", "trace.id",
                      "dd.trace_id", "logging.googleapis.com/trace")
_SPAN_KEYS: Final = ("span_id", "spanId", "spanID", "otelSpanID", "span.id", "dd.span_id",
                     "logging.googleapis.com/spanId")


def _trace_context(fields: dict[str, Any]) -> tuple[bytes | None, bytes | None, int | None]:
    trace = _pop_id(fields, _TRACE_KEYS, 16)
    span = _pop_id(fields, _SPAN_KEYS, 8)
    dd = fields.get("dd")
    if type(dd) is dict:
        if trace is None and (trace := _id_bytes(dd.get("trace_id"), 16, True)) is not None:
            del dd["trace_id"]
        if span is None and (span := _id_bytes(dd.get("span_id"), 8, True)) is not None:
            del dd["span_id"]
        if not dd:
            del fields["dd"]
    flags = None
    parent = fields.get("traceparent")
    if trace is None and type(parent) is str:
        match = _TRACEPARENT.fullmatch(parent)
        if match:
            trace, span = bytes.fromhex(match.group(1)), bytes.fromhex(match.group(2))
            flags = int(match.group(3), 16)
            del fields["traceparent"]
    for key in ("trace_flags", "traceFlags", "otelTraceSampled"):
        value = fields.get(key)
        if type(value) is bool:
            flags = int(value)
        elif type(value) is int and 0 <= value <= 0xFF:
            flags = value
        elif type(value) is str and len(value) <= 2 and _HEX.fullmatch(value):
            flags = int(value, 16)
        else:
            continue
        del fields[key]
        break
    return trace, span, flags


def _errors(fields: dict[str, Any]) -> list[tuple[str, object]]:
    """pino/bunyan `err`, zerolog `error`, structlog `exception`, python-json-logger
    `exc_info`, winston `stack`, zap `stacktrace` -> OTel `exception.*` attributes."""
    kind = message = stack = None
    for key in ("err", "error"):
        err = fields.get(key)
        if type(err) is dict:
            kind = err.pop("type", None) or err.pop("name", None)
            message = err.pop("message", None)
            stack = err.pop("stack", None)
            if not err:
                del fields[key]
            break
        if type(err) is str and key == "error":
            message = fields.pop(key)
            break
    exception = fields.get("exception")
    if type(exception) is list and exception and type(exception[-1]) is dict:
        last = exception[-1]  # structlog dict_tracebacks: the list stays (with its frames)
        kind = kind or last.get("exc_type")
        message = message or last.get("exc_value")
    elif type(exception) is str:
        stack = stack or fields.pop("exception")
    for key in ("exc_info", "stack", "stacktrace"):
        if type(fields.get(key)) is str:
            stack = stack or fields.pop(key)
            break
    return [(name, value) for name, value in (
        ("exception.type", kind), ("exception.message", message),
        ("exception.stacktrace", stack)) if value is not None]


# --- the fast path: one plan per line shape ----------------------------------------------
# A program logs the same few shapes of line over and over (a pino child logger: the same
# keys in the same order on every line). The general mapping above works out per line which
# key is the time, the level, the ids... by probing ~40 candidate names and popping them;
# that probing, not orjson, was most of its cost (~150k of ~166k instructions per pino line,
# callgrind). Here it is done once per shape (the tuple of the line's keys): the plan names
# the key of each role, and each attribute key comes with its encoded KeyValue.key and
# caches of the bytes that precede a value of a given length.
#
# The fast path reads the line and changes nothing in it. Where the general mapping would
# look further (a time that does not parse, an id that is not an id, an `err` whose type,
# message or stack is no string, Datadog's nested `dd`, `traceparent`, the other error keys),
# the plan does not guess: `_planned` returns None and the line goes through the
# general mapping, so both give the same bytes for every line
# (tests/unit/receivers/test_logparse_fast.py compares them on generated lines).

_FAST_SLOW_KEYS: Final = frozenset((
    "dd", "error", "exception", "exc_info", "stack", "stacktrace", "traceparent"))
_FLAG_KEYS: Final = ("trace_flags", "traceFlags", "otelTraceSampled")
_PLANS_MAX: Final = 512  # shapes; the cache is emptied when full (hostile lines: any shape)
_PLAN_KEYS_MAX: Final = 64  # a shape with more keys, or a longer key, is not planned
_SLOT_CACHE_MAX: Final = 32  # entries per key in each of its three caches
_SLOTS_MAX: Final = 1024  # keys with caches, per tag: at most ~10 MB of cached heads
_SEVERITY_CACHE_MAX: Final = 256
_ZERO16: Final = bytes(16)
_ZERO8: Final = bytes(8)

# one key of a map, for one tag (LogRecord.attributes or KeyValueList.values): (key,
# encoded KeyValue.key, {string length: bytes before the string}, {small int: whole entry},
# {inner length: bytes before a nested map's entries})
_Slot = tuple[str, bytes, dict[int, bytes], dict[int, bytes], dict[int, bytes]]
_slots: dict[bytes, dict[str, _Slot]] = {b"\x32": {}, b"\x0a": {}}
_NO_CACHE: Final[dict[int, bytes]] = {}  # shared by uncached slots: never written


class _Plan:
    __slots__ = ("attrs", "attrs_no_err", "bunyan", "err", "flags", "host", "level",
                 "message", "pid", "service", "span", "time", "trace")

    def __init__(self, keys: tuple[str, ...]) -> None:
        present = set(keys)

        def first(candidates: tuple[str, ...]) -> str | None:
            return next((key for key in candidates if key in present), None)

        self.service = first(_SERVICE_KEYS)
        self.bunyan = (self.service is None and "v" in present and "name" in present
                       and "hostname" in present)
        if self.bunyan:
            self.service = "name"
        self.host = "hostname" if "hostname" in present else None
        self.pid = "pid" if "pid" in present else None
        self.time = first(_TIME_KEYS)
        self.level = first(_LEVEL_KEYS)
        self.message = first(_MESSAGE_KEYS)
        self.trace = first(_TRACE_KEYS)
        self.span = first(_SPAN_KEYS)
        self.flags = first(_FLAG_KEYS)
        roles = {self.service, self.host, self.pid, self.time, self.level, self.message,
                 self.trace, self.span, self.flags, "v"}
        self.attrs = tuple(_slot(b"\x32", key) for key in keys if key not in roles)
        # pino's `err` object: its type, message and stack become `exception.*` (see
        # `_errors`); what else it holds stays an attribute `err` in its place, and an
        # `err` left empty is no attribute
        self.err = "err" if "err" in present else None
        self.attrs_no_err = tuple(slot for slot in self.attrs if slot[0] != "err")


def _slot(tag: bytes, key: str) -> _Slot:
    cache = _slots[tag]
    slot = cache.get(key)
    if slot is None:
        if len(cache) < _SLOTS_MAX:
            slot = cache[key] = (key, _field(b"\x0a", key.encode()), {}, {}, {})
        else:  # beyond the bound a key's heads are made each time, never kept
            slot = (key, _field(b"\x0a", key.encode()), _NO_CACHE, _NO_CACHE, _NO_CACHE)
    return slot


def _plannable(keys: tuple[str, ...]) -> bool:
    """Whether a shape may be cached: it holds its keys."""
    return len(keys) <= _PLAN_KEYS_MAX and all(len(key) <= 64 for key in keys)


_map_shapes: dict[tuple[str, ...], tuple[_Slot, ...]] = {}


def _map_slots(keys: tuple[str, ...]) -> tuple[_Slot, ...] | None:
    """The slots of a nested map's keys (KeyValueList.values), None if not cacheable."""
    slots = _map_shapes.get(keys)
    if slots is None:
        if not _plannable(keys):
            return None
        try:
            slots = tuple(_slot(b"\x0a", key) for key in keys)
        except ValueError:  # a key with a lone surrogate
            return None
        if len(_map_shapes) >= _PLANS_MAX:
            _map_shapes.clear()
        _map_shapes[keys] = slots
    return slots


def _entries(append: Callable[[bytes], None], slots: tuple[_Slot, ...],
             items: dict[str, Any], tag: bytes, depth: int) -> None:
    """The KeyValue entries of `items` (whose keys are the slots', in order), values at
    `depth`: the same bytes as `_key_values(tag, items, depth)`."""
    byte = _BYTE
    for key, ek, heads, ints, maps in slots:
        value = items[key]
        kind = type(value)
        if kind is str:
            data = value.encode()
            head = heads.get(len(data))
            if head is None:
                head = _string_head(tag, ek, len(data), heads)
            append(head)
            append(data)
        elif kind is int and 0 <= value <= _INT64_MAX:
            if value < 128:
                entry = ints.get(value)
                if entry is None:
                    entry = _field(tag, ek + b"\x12\x02\x18" + byte[value])
                    if ints is not _NO_CACHE and len(ints) < _SLOT_CACHE_MAX:
                        ints[value] = entry
                append(entry)
            else:
                number = _varint(value)
                append(_field(tag, ek + b"\x12" + byte[len(number) + 1] + b"\x18" + number))
        elif kind is dict and depth < MAX_VALUE_DEPTH:
            inner_slots = _map_slots(tuple(value))
            if inner_slots is None:
                append(_field(tag, ek + _field(b"\x12", any_value(value, depth))))
                continue
            parts: list[bytes] = []
            _entries(parts.append, inner_slots, value, b"\x0a", depth + 1)
            inner = b"".join(parts)
            n = len(inner)
            head = maps.get(n)
            if head is None:
                whole = _field(tag, ek + _field(b"\x12", _field(b"\x32", bytes(n))))
                head = whole[:len(whole) - n]
                if maps is not _NO_CACHE and len(maps) < _SLOT_CACHE_MAX:
                    maps[n] = head
            append(head)
            append(inner)
        else:
            append(_field(tag, ek + _field(b"\x12", any_value(value, depth))))


_plans: dict[tuple[str, ...], _Plan | None] = {}


def _plan(keys: tuple[str, ...]) -> _Plan | None:
    """The plan for lines with these keys, None for a shape the fast path leaves alone."""
    plan = _plans.get(keys)
    if plan is not None or keys in _plans:
        return plan
    if not _plannable(keys):
        return None  # not cached: the shape would hold the long keys
    try:
        plan = None if _FAST_SLOW_KEYS.intersection(keys) else _Plan(keys)
    except ValueError:  # a key with a lone surrogate
        return None
    if len(_plans) >= _PLANS_MAX:
        _plans.clear()
    _plans[keys] = plan
    return plan


def _string_head(tag: bytes, ek: bytes, n: int, cache: dict[int, bytes]) -> bytes:
    """The bytes of an entry with key `ek` before a string value of `n` bytes: made from
    the general encoder's output for a string of that length."""
    whole = _field(tag, ek + _field(b"\x12", any_value("\0" * n)))
    head = whole[:len(whole) - n]
    if cache is not _NO_CACHE and len(cache) < _SLOT_CACHE_MAX:
        cache[n] = head
    return head


def _severity_bytes(value: object, key: str) -> bytes:
    """LogRecord severity_number and severity_text for a level value; b"" if it is none."""
    number, text = severity(value, key)
    return ((b"\x10" + _varint(number) if number else b"")
            + (_field(b"\x1a", text.encode()) if text else b""))


# level value (int or str only) -> severity bytes, for `levelno` and for the other keys
_severity_cache: dict[object, bytes] = {}
_levelno_cache: dict[object, bytes] = {}
_FLAG_BYTES: Final[dict[object, bytes]] = {
    **{n: b"\x45" + _PACK_FIXED32(n) for n in range(256)},
    **{text: b"\x45" + _PACK_FIXED32(int(text, 16)) for text in (
        list("0123456789abcdefABCDEF")
        + [a + b for a in "0123456789abcdefABCDEF" for b in "0123456789abcdefABCDEF"])}}


_EXCEPTION_SLOTS: Final = {name: _slot(b"\x32", name) for name in (
    "exception.type", "exception.message", "exception.stacktrace")}
_ERR_ROLES: Final = frozenset(("type", "name", "message", "stack"))


def _fast_err(append: Callable[[bytes], None], err: dict[str, Any]) -> dict[str, Any] | None:
    """Appends the `exception.*` attributes of a pino/bunyan `err` object and returns what
    is left of it, as `_errors` does (without changing `err`); None when a value is not the
    usual string (the general mapping decides those)."""
    if not _ERR_ROLES.intersection(err):
        return err
    named: dict[str, Any] = {}
    taken = "type" if "type" in err else "name"  # `type or name`: a falsy type is declined
    if taken in err:
        kind = err[taken]
        if type(kind) is not str or not kind:
            return None
        named["exception.type"] = kind
    for role, name in (("message", "exception.message"), ("stack", "exception.stacktrace")):
        if role in err:
            value = err[role]
            if type(value) is not str:
                return None
            named[name] = value
    _entries(append, tuple(_EXCEPTION_SLOTS[name] for name in named), named, b"\x32", 1)
    return {key: value for key, value in err.items()
            if key != taken and key != "message" and key != "stack"}


def _planned(plan: _Plan, fields: dict[str, Any], observed_ns: int,
             default_service: str | None) -> tuple[ResourceKey, bytes] | None:
    service = None
    if plan.service is not None:
        service = fields[plan.service]
        if type(service) is not str or not (service or plan.bunyan):
            return None
    host = None
    if plan.host is not None:
        host = fields[plan.host]
        if type(host) is not str:
            return None
    pid = None
    if plan.pid is not None:
        pid = fields[plan.pid]
        if type(pid) is not int or not 0 <= pid <= _INT64_MAX:
            return None
    parts: list[bytes] = []
    append = parts.append
    key = plan.time
    if key is not None:
        value = fields[key]
        if type(value) is int and 100_000_000_000 < value <= _INT64_MAX // 1_000_000:
            ns = value * 1_000_000  # epoch milliseconds (pino, bunyan, winston's numbers)
        else:
            ns = timestamp_ns(value)
            if not ns:
                return None
        append(b"\x09" + _PACK_FIXED64(ns))
    key = plan.level
    if key is not None:
        value = fields[key]
        kind = type(value)
        if kind is int or kind is str:  # not bool or float: True == 1, 30.0 == 30
            cache = _levelno_cache if key == "levelno" else _severity_cache
            encoded = cache.get(value)
            if encoded is None:
                encoded = _severity_bytes(value, key)
                if len(cache) < _SEVERITY_CACHE_MAX and (kind is int or len(value) <= 32):
                    cache[value] = encoded
        else:
            encoded = _severity_bytes(value, key)
        if not encoded:
            return None
        append(encoded)
    key = plan.message
    if key is not None:
        value = fields[key]
        if type(value) is str:
            data = value.encode()
            n = len(data)
            if n < 126:
                append(b"\x2a" + _BYTE[n + 2] + b"\x0a" + _BYTE[n] + data)
            else:
                append(_field(b"\x2a", any_value(value)))
        else:
            append(_field(b"\x2a", any_value(value)))
    if plan.err is not None and type(fields[plan.err]) is dict:
        rest = _fast_err(append, fields[plan.err])
        if rest is None:
            return None
        if rest:
            _entries(append, plan.attrs, {**fields, plan.err: rest}, b"\x32", 1)
        else:
            _entries(append, plan.attrs_no_err, fields, b"\x32", 1)
    else:  # no `err`, or one that is no object: an attribute like any other
        _entries(append, plan.attrs, fields, b"\x32", 1)
    key = plan.flags
    if key is not None:
        value = fields[key]
        kind = type(value)
        if kind is bool:
            append(b"\x45" + _PACK_FIXED32(int(value)))
        elif kind is int or kind is str:
            flag = _FLAG_BYTES.get(value)
            if flag is None:
                return None
            append(flag)
        else:
            return None
    key = plan.trace
    if key is not None:
        value = fields[key]
        # 32 hex digits: fromhex raises on others (the general path decides those)
        if type(value) is str and len(value) == 32 and key != "dd.trace_id":
            raw = bytes.fromhex(value)
            if len(raw) != 16 or raw == _ZERO16:  # whitespace between digits; no id
                return None
        else:
            parsed = _id_bytes(value, 16, key == "dd.trace_id")
            if parsed is None:
                return None
            raw = parsed
        append(b"\x4a\x10" + raw)
    key = plan.span
    if key is not None:
        value = fields[key]
        if type(value) is str and len(value) == 16 and key != "dd.span_id":
            raw = bytes.fromhex(value)
            if len(raw) != 8 or raw == _ZERO8:
                return None
        else:
            parsed = _id_bytes(value, 8, key == "dd.span_id")
            if parsed is None:
                return None
            raw = parsed
        append(b"\x52\x08" + raw)
    append(b"\x59" + _PACK_FIXED64(observed_ns))
    return (service or default_service, host, pid), b"".join(parts)

