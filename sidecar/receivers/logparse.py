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
import time
from datetime import datetime
from typing import Any, Final

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ScopeLogs, SeverityNumber

from sidecar.net.framing import Line

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
    return raw if any(raw) else None


def set_value(target: AnyValue, value: object, depth: int = 0) -> None:
    """Fill an AnyValue from a decoded JSON value (maps stay maps, lists arrays)."""
    if type(value) is str:
        target.string_value = value
    elif type(value) is bool:
        target.bool_value = value
    elif type(value) is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif type(value) is float:
        target.double_value = value
    elif (type(value) is dict or type(value) is list) and depth >= MAX_VALUE_DEPTH:
        target.string_value = _json_text(value)
    elif type(value) is dict:
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        add = kvlist.values.add
        for key, item in value.items():
            entry = add()
            entry.key = key
            set_value(entry.value, item, depth + 1)
    elif type(value) is list:
        array = target.array_value
        array.SetInParent()
        add_value = array.values.add
        for item in value:
            set_value(add_value(), item, depth + 1)
    # None: an empty AnyValue (OTLP's "no value")


def _json_text(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:  # orjson writes at most 254 levels
        raise ValueError("nested too deep") from exc


ResourceKey = tuple[str | None, str | None, int | None]


class LogBatchBuilder:
    """Turns lines into log records of one ExportLogsServiceRequest, grouped by resource
    (service.name, host.name, process.pid). `take()` hands the request over and starts a
    new one. Counts what it saw: records, bytes of input, parse errors, truncated lines."""

    __slots__ = ("_scopes", "bytes", "parse_errors", "records", "request", "service_name",
                 "truncated")

    def __init__(self, service_name: str | None = None) -> None:
        self.service_name = service_name
        self.request = ExportLogsServiceRequest()
        self._scopes: dict[ResourceKey, ScopeLogs] = {}
        self.records = 0
        self.bytes = 0
        self.parse_errors = 0  # over the builder's lifetime, not per request
        self.truncated = 0

    def take(self) -> ExportLogsServiceRequest | None:
        if not self.records:
            return None
        request = self.request
        self.request = ExportLogsServiceRequest()
        self._scopes = {}
        self.records = 0
        self.bytes = 0
        return request

    def add(self, line: Line, observed_ns: int | None = None) -> bool:
        """Add one framed line; False for a blank line (no record)."""
        data = line.data
        if observed_ns is None:
            observed_ns = time.time_ns()
        if line.truncated:
            self.truncated += 1
            record = self._record(self.service_name, None, None)
            self._text(record, data, observed_ns)
            _flag(record, TRUNCATED_KEY, True)
            self.bytes += len(data)
            return True
        if not data.strip():
            return False
        self.bytes += len(data)
        try:
            decoded = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._error(data, observed_ns, _reason(exc))
            return True
        if type(decoded) is not dict:
            record = self._record(self.service_name, None, None)
            record.observed_time_unix_nano = observed_ns
            set_value(record.body, decoded)
            return True
        fields: dict[str, Any] = decoded
        service, host, pid = self._resource_fields(fields)
        record = self._record(service, host, pid)
        try:
            _fill(record, fields, observed_ns)
        except (ValueError, TypeError) as exc:
            # a value protobuf refuses (e.g. a string with a lone surrogate): keep the text
            record.Clear()
            self._text(record, data, observed_ns)
            _flag(record, PARSE_ERROR_KEY, f"unrepresentable value: {exc}"[:120])
            self.parse_errors += 1
        return True

    def _error(self, data: bytes, observed_ns: int, reason: str) -> None:
        self.parse_errors += 1
        record = self._record(self.service_name, None, None)
        self._text(record, data, observed_ns)
        _flag(record, PARSE_ERROR_KEY, reason)

    @staticmethod
    def _text(record: LogRecord, data: bytes, observed_ns: int) -> None:
        record.observed_time_unix_nano = observed_ns
        # NUL is valid UTF-8; invalid bytes become U+FFFD so the body stays a valid string
        record.body.string_value = data.decode("utf-8", "replace")

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

    def _record(self, service: str | None, host: str | None, pid: int | None) -> LogRecord:
        self.records += 1
        key = (service, host, pid)
        scope = self._scopes.get(key)
        if scope is None:
            resource_logs = self.request.resource_logs.add()
            attributes = resource_logs.resource.attributes
            _kv(attributes.add(), "service.name", service or "unknown_service")
            if host is not None:
                _kv(attributes.add(), "host.name", host)
            if pid is not None:
                entry = attributes.add()
                entry.key = "process.pid"
                entry.value.int_value = pid
            scope = resource_logs.scope_logs.add()
            scope.scope.name = SCOPE_NAME
            self._scopes[key] = scope
        record: LogRecord = scope.log_records.add()
        return record


def _kv(entry: KeyValue, key: str, value: str) -> None:
    entry.key = key
    entry.value.string_value = value


def _flag(record: LogRecord, key: str, value: str | bool) -> None:
    entry = record.attributes.add()
    entry.key = key
    if type(value) is bool:
        entry.value.bool_value = value
    else:
        entry.value.string_value = value


def _reason(exc: orjson.JSONDecodeError) -> str:
    message = str(exc)
    if "depth limit" in message or "recursion" in message:
        return "not JSON: nested too deep"
    return "not JSON: " + message.split(":", 1)[0][:80]


def _fill(record: LogRecord, fields: dict[str, Any], observed_ns: int) -> None:
    record.observed_time_unix_nano = observed_ns
    for key in _TIME_KEYS:
        if key in fields:
            ns = timestamp_ns(fields[key])
            if ns:
                record.time_unix_nano = ns
                del fields[key]
                break
    for key in _LEVEL_KEYS:
        if key in fields:
            value = fields[key]
            number, text = severity(value, key)
            if number or text:
                record.severity_number = SeverityNumber.ValueType(number)
                record.severity_text = text
                del fields[key]
                break
    for key in _MESSAGE_KEYS:
        if key in fields:
            set_value(record.body, fields.pop(key))
            break
    _trace_context(record, fields)
    _errors(record, fields)
    fields.pop("v", None)  # bunyan's format version
    add = record.attributes.add
    for key, value in fields.items():
        entry = add()
        entry.key = key
        set_value(entry.value, value, 1)


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


def _trace_context(record: LogRecord, fields: dict[str, Any]) -> None:
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
    if trace is not None:
        record.trace_id = trace
    if span is not None:
        record.span_id = span
    if flags is not None:
        record.flags = flags


def _errors(record: LogRecord, fields: dict[str, Any]) -> None:
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
    add = record.attributes.add
    for name, value in (("exception.type", kind), ("exception.message", message),
                        ("exception.stacktrace", stack)):
        if value is not None:
            entry = add()
            entry.key = name
            set_value(entry.value, value, 1)
