"""OTLP log records -> Datadog logs intake entries (docs/vendors.md §3 mapping table)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from sidecar.exporters.datadog_logs import MAX_ENTRY, LogDefaults, encode_entry, entries, status

TRACE = bytes.fromhex("5e39606e3e0f98ce8dc40caa5ac79e2f")


def logs(*records: LogRecord, resource: dict[str, str] | None = None,
         defaults: LogDefaults | None = None) -> list[dict[str, Any]]:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for k, v in (resource if resource is not None else {"service.name": "chat-api"}).items():
        rl.resource.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    rl.scope_logs.add().log_records.extend(records)
    return [orjson.loads(e) for e in entries(req, defaults or LogDefaults(hostname="h0"))]


@pytest.mark.parametrize(("text", "number", "want"), [
    ("INFO", 9, "info"), ("Warn", 13, "warning"), ("error", 0, "error"),
    ("FATAL", 21, "critical"), ("TRACE", 1, "debug"), ("", 3, "debug"), ("", 6, "debug"),
    ("", 10, "info"), ("", 14, "warning"), ("", 18, "error"), ("", 23, "critical"),
    ("", 0, "info"), ("verbose-ish", 17, "error")])
def test_status_from_text_then_number(text: str, number: int, want: str) -> None:
    assert status(LogRecord(severity_text=text, severity_number=number)) == want  # type: ignore[arg-type]


def test_entry_fields_and_correlation() -> None:
    record = LogRecord(time_unix_nano=1_764_000_000_123_456_789, severity_text="ERROR",
                       trace_id=TRACE, span_id=bytes.fromhex("00000000000004d2"))
    record.body.string_value = "provider answered 503"
    record.attributes.append(KeyValue(key="gen_ai.request.model",
                                      value=AnyValue(string_value="gpt-4o")))
    record.attributes.append(KeyValue(key="attempt", value=AnyValue(int_value=3)))
    record.attributes.append(KeyValue(key="service", value=AnyValue(string_value="spoof")))
    (item,) = logs(record, resource={"service.name": "chat-api", "service.version": "1.2",
                                     "deployment.environment.name": "prod",
                                     "host.name": "web-1"},
                   defaults=LogDefaults(tags=("team:llm",)))
    assert item["message"] == "provider answered 503"
    assert item["status"] == "error"
    assert item["service"] == "chat-api"
    assert item["hostname"] == "web-1"
    assert item["ddsource"] == "sidecar"
    assert item["ddtags"] == "env:prod,version:1.2,team:llm"
    assert item["timestamp"] == 1_764_000_000_123
    assert item["dd.trace_id"] == "10215303780590132783"  # vendors.md's example
    assert item["dd.span_id"] == "1234"
    assert item["otel.trace_id"] == TRACE.hex()
    assert item["gen_ai.request.model"] == "gpt-4o"
    assert item["attempt"] == 3
    assert item["deployment.environment.name"] == "prod"


def test_structured_body_no_ids_and_defaults() -> None:
    record = LogRecord(observed_time_unix_nano=2_000_000, severity_number=9)
    record.body.kvlist_value.values.append(KeyValue(key="k", value=AnyValue(int_value=1)))
    (item,) = logs(record, resource={})
    assert item["message"] == '{"k":1}'
    assert item["timestamp"] == 2
    assert item["service"] == ""
    assert item["hostname"] == "h0"
    assert item["ddtags"] == ""
    assert "dd.trace_id" not in item
    assert "dd.span_id" not in item


def test_entries_over_1mb_are_cut_to_fit() -> None:
    item = {"message": "é" * 700_000, "status": "info", "service": "s", "ddsource": "x",
            "ddtags": "", "timestamp": 1, "extra": "y" * 10}
    data = encode_entry(item)
    assert len(data) <= MAX_ENTRY
    out = orjson.loads(data)
    assert out["message"].endswith("...")
    assert out["extra"] == "y" * 10
    huge_attrs = {**item, "message": "m", **{f"a{i}": "z" * 100_000 for i in range(12)}}
    out = orjson.loads(encode_entry(huge_attrs))
    assert len(orjson.dumps(out)) <= MAX_ENTRY
    assert out["service"] == "s"
    assert "a0" not in out
    small = {**item, "message": "short"}
    assert orjson.loads(encode_entry(small)) == small
