"""OTLP log records -> Datadog HTTP intake v2 JSON entries (docs/vendors.md §3). Pure
functions; the exporter sends the array.

Per record: `message` (the body text, or JSON of a structured body), `status` (from the
severity text, else the severity number's range), `service`, `hostname`, `ddsource`,
`ddtags` (`env:`, `version:` and the configured tags), `timestamp` (Unix ms), and, for
records inside a span, `dd.trace_id` / `dd.span_id` in Datadog's decimal form (the low 64
bits of the trace id, as the trace mapping's `traceID`) plus the hex `otel.trace_id` /
`otel.span_id`. Remaining resource and record attributes follow as keys (record over
resource); the reserved keys above are never overwritten by one.

An entry over 1 MB has its message cut so that it fits, with "..." (the intake would cut
it itself); an entry that is still over (huge attributes) loses its attributes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from sidecar.exporters.datadog_mapping import as_string, py_value

MAX_ENTRY = 1_000_000
_RESERVED = ("message", "status", "service", "hostname", "ddsource", "ddtags", "timestamp",
             "dd.trace_id", "dd.span_id", "otel.trace_id", "otel.span_id")
_STATUS_TEXT = {
    "trace": "debug", "debug": "debug", "info": "info", "information": "info",
    "notice": "notice", "warn": "warning", "warning": "warning", "error": "error",
    "err": "error", "critical": "critical", "crit": "critical", "fatal": "critical",
    "alert": "alert", "emergency": "emergency", "emerg": "emergency",
}


@dataclass(frozen=True, slots=True)
class LogDefaults:
    hostname: str = ""
    env: str = ""
    source: str = "sidecar"
    tags: tuple[str, ...] = ()  # "k:v" pairs from the config


def status(record: LogRecord) -> str:
    text = _STATUS_TEXT.get(record.severity_text.strip().lower())
    if text is not None:
        return text
    number = record.severity_number
    if 1 <= number <= 8:
        return "debug"
    if 13 <= number <= 16:
        return "warning"
    if 17 <= number <= 20:
        return "error"
    if 21 <= number <= 24:
        return "critical"
    return "info"


def _message(record: LogRecord) -> str:
    kind = record.body.WhichOneof("value")
    if kind == "string_value":
        return record.body.string_value
    if kind in ("kvlist_value", "array_value"):
        return orjson.dumps(py_value(record.body)).decode()
    return as_string(record.body)


def entry(record: LogRecord, resource: Mapping[str, Any], base: Mapping[str, Any],
          ) -> dict[str, Any]:
    """One intake entry; `base` holds the reserved keys of the record's resource."""
    out: dict[str, Any] = dict(resource)
    for kv in record.attributes:
        out[kv.key] = py_value(kv.value)
    out.update(base)
    out["message"] = _message(record)
    out["status"] = status(record)
    nanos = record.time_unix_nano or record.observed_time_unix_nano
    out["timestamp"] = nanos // 1_000_000
    if any(record.trace_id):
        out["dd.trace_id"] = str(int.from_bytes(record.trace_id[8:], "big"))
        out["otel.trace_id"] = record.trace_id.hex()
    if any(record.span_id):
        out["dd.span_id"] = str(int.from_bytes(record.span_id, "big"))
        out["otel.span_id"] = record.span_id.hex()
    return out


def encode_entry(item: dict[str, Any]) -> bytes:
    """JSON of one entry, cut to MAX_ENTRY bytes as described in the module docstring."""
    data = orjson.dumps(item)
    if len(data) <= MAX_ENTRY:
        return data
    message = str(item.get("message", ""))
    excess = len(data) - MAX_ENTRY
    # cut by UTF-8 bytes, then drop a partial character; JSON escaping can make the cut
    # short by a little, so the loop below tries once more with everything else removed
    raw = message.encode()
    keep = raw[:max(len(raw) - excess - 16, 0)].decode("utf-8", "ignore")
    item = {**item, "message": keep + "..."}
    data = orjson.dumps(item)
    if len(data) <= MAX_ENTRY:
        return data
    reserved = {k: item[k] for k in _RESERVED if k in item}
    data = orjson.dumps(reserved)
    if len(data) <= MAX_ENTRY:
        return data
    reserved["message"] = reserved["message"][:MAX_ENTRY // 8] + "..."
    return orjson.dumps(reserved)


def entries(request: ExportLogsServiceRequest, defaults: LogDefaults) -> Iterator[bytes]:
    for rl in request.resource_logs:
        resource = {kv.key: py_value(kv.value) for kv in rl.resource.attributes}
        strings = {kv.key: as_string(kv.value) for kv in rl.resource.attributes}
        env = strings.get("deployment.environment.name") or strings.get(
            "deployment.environment") or defaults.env
        tags = [f"env:{env}"] if env else []
        if strings.get("service.version"):
            tags.append(f"version:{strings['service.version']}")
        tags.extend(defaults.tags)
        base = {"service": strings.get("service.name", ""),
                "hostname": strings.get("host.name") or defaults.hostname,
                "ddsource": defaults.source, "ddtags": ",".join(tags)}
        for sl in rl.scope_logs:
            for record in sl.log_records:
                yield encode_entry(entry(record, resource, base))
