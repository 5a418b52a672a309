"""JSON log lines of each common logger, as raw bytes, to OTLP log records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from sidecar.model import Batch, Signal
from sidecar.net.framing import Line
from sidecar.otlp_json import MAX_NESTING
from sidecar.receivers.logparse import (
    MAX_VALUE_DEPTH,
    PARSE_ERROR_KEY,
    TRUNCATED_KEY,
    LogBatchBuilder,
    severity,
    timestamp_ns,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
OBSERVED = 1_800_000_000_000_000_000


def one(line: bytes | str, service: str | None = None,
        truncated: bool = False) -> tuple[LogRecord, dict[str, Any], LogBatchBuilder]:
    """The record made of `line`, its resource attributes, and the builder."""
    builder = LogBatchBuilder(service)
    data = line.encode() if isinstance(line, str) else line
    assert builder.add(Line(data, truncated), OBSERVED)
    request = builder.take()
    assert request is not None
    # the request survives a round trip through upb (what every later stage does)
    request = ExportLogsServiceRequest.FromString(request.SerializeToString())
    (resource,) = request.resource_logs
    (scope,) = resource.scope_logs
    (record,) = scope.log_records
    resource_attrs = {kv.key: MessageToDict(kv.value) for kv in resource.resource.attributes}
    return record, resource_attrs, builder


def attrs(record: LogRecord) -> dict[str, Any]:
    return {kv.key: MessageToDict(kv.value) for kv in record.attributes}


def test_pino_line_with_child_bindings_error_and_otel_trace_context() -> None:
    line = {"level": 50, "time": 1764633600123, "pid": 4242, "hostname": "web-1",
            "agent": "planner", "run": {"id": "r1", "step": 3},
            "trace_id": TRACE, "span_id": SPAN, "trace_flags": "01",
            "err": {"type": "Error", "message": "boom", "stack": "Error: boom\n    at f",
                    "code": "ECONNRESET"},
            "msg": "tool failed"}
    record, resource, _ = one(orjson.dumps(line), service="agent-app")
    assert record.time_unix_nano == 1_764_633_600_123_000_000
    assert record.observed_time_unix_nano == OBSERVED
    assert (record.severity_number, record.severity_text) == (17, "error")
    assert record.body.string_value == "tool failed"
    assert record.trace_id.hex() == TRACE
    assert record.span_id.hex() == SPAN
    assert record.flags == 1
    assert resource == {"service.name": {"stringValue": "agent-app"},
                        "host.name": {"stringValue": "web-1"},
                        "process.pid": {"intValue": "4242"}}
    assert attrs(record) == {
        "agent": {"stringValue": "planner"},
        "run": {"kvlistValue": {"values": [
            {"key": "id", "value": {"stringValue": "r1"}},
            {"key": "step", "value": {"intValue": "3"}}]}},
        "exception.type": {"stringValue": "Error"},
        "exception.message": {"stringValue": "boom"},
        "exception.stacktrace": {"stringValue": "Error: boom\n    at f"},
        "err": {"kvlistValue": {"values": [
            {"key": "code", "value": {"stringValue": "ECONNRESET"}}]}},
    }


@pytest.mark.parametrize(("level", "number", "text"), [
    (10, 1, "trace"), (20, 5, "debug"), (30, 9, "info"), (40, 13, "warn"),
    (50, 17, "error"), (60, 21, "fatal"), (35, 9, "35"), (5, 1, "5"),
])
def test_pino_numeric_levels(level: int, number: int, text: str) -> None:
    assert severity(level) == (number, text)


@pytest.mark.parametrize(("value", "number"), [
    ("silly", 1), ("verbose", 7), ("http", 8), ("info", 9), ("warning", 13),
    ("WARNING", 13), ("CRITICAL", 21), ("dpanic", 18), ("notice", 10), ("emerg", 21),
    ("\x1b[31merror\x1b[39m", 17), ("INFO+2", 11), ("DEBUG-8", 1), ("loud", 0),
])
def test_level_names(value: str, number: int) -> None:
    assert severity(value)[0] == number


def test_ansi_colour_codes_are_not_kept_in_the_severity_text() -> None:
    assert severity("\x1b[32minfo\x1b[39m") == (9, "info")


@pytest.mark.parametrize(("levelno", "number"), [(10, 5), (20, 9), (30, 13), (40, 17),
                                                 (50, 21), (25, 13), (0, 0)])
def test_python_levelno(levelno: int, number: int) -> None:
    assert severity(levelno, "levelno")[0] == number


def test_bunyan_line_names_the_service_and_drops_the_format_version() -> None:
    line = ('{"name":"checkout","hostname":"h2","pid":7,"level":30,"msg":"paid",'
            '"time":"2026-12-01T10:00:00.250Z","v":0,"order":"o-1"}')
    record, resource, _ = one(line)
    assert resource["service.name"] == {"stringValue": "checkout"}
    assert record.time_unix_nano == 1_796_119_200_250_000_000
    assert record.severity_number == 9
    assert attrs(record) == {"order": {"stringValue": "o-1"}}


def test_winston_json_with_errors_stack() -> None:
    line = ('{"level":"error","message":"db down","stack":"Error: db down\\n at q",'
            '"timestamp":"2026-12-01T10:00:00.000Z","service":"api"}')
    record, resource, _ = one(line)
    assert resource["service.name"] == {"stringValue": "api"}
    assert (record.severity_number, record.severity_text) == (17, "error")
    assert record.body.string_value == "db down"
    assert attrs(record) == {"exception.stacktrace": {"stringValue": "Error: db down\n at q"}}
    assert record.time_unix_nano == 1_796_119_200_000_000_000


def test_structlog_json_renderer_with_dict_tracebacks() -> None:
    line = orjson.dumps({
        "event": "step failed", "level": "error", "timestamp": "2026-12-01T10:00:00.000001Z",
        "logger": "agent.loop",
        "exception": [{"exc_type": "ValueError", "exc_value": "bad", "frames": [
            {"filename": "a.py", "lineno": 3, "locals": {"key": "v"}}]}]})
    record, _, _ = one(line)
    assert record.body.string_value == "step failed"
    assert record.time_unix_nano == 1_796_119_200_000_001_000
    got = attrs(record)
    assert got["exception.type"] == {"stringValue": "ValueError"}
    assert got["exception.message"] == {"stringValue": "bad"}
    assert got["logger"] == {"stringValue": "agent.loop"}
    frames = got["exception"]["arrayValue"]["values"][0]["kvlistValue"]["values"]
    assert frames[2]["key"] == "frames"  # the traceback stays, nested


def test_python_json_logger_with_otel_logging_instrumentation() -> None:
    line = ('{"asctime":"2026-12-01 10:00:00,790","levelname":"WARNING","name":"app",'
            '"message":"slow","otelTraceID":"' + TRACE + '","otelSpanID":"' + SPAN + '",'
            '"otelTraceSampled":true,"otelServiceName":"py-agent","exc_info":"Traceback..."}')
    record, resource, _ = one(line)
    assert resource["service.name"] == {"stringValue": "py-agent"}
    assert (record.severity_number, record.severity_text) == (13, "WARNING")
    assert record.body.string_value == "slow"
    assert record.trace_id.hex() == TRACE
    assert record.span_id.hex() == SPAN
    assert record.flags == 1
    # asctime has no zone: local time
    seconds = int(datetime(2026, 12, 1, 10, 0, 0).timestamp())
    assert record.time_unix_nano == seconds * 1_000_000_000 + 790_000_000
    assert attrs(record) == {"name": {"stringValue": "app"},
                             "exception.stacktrace": {"stringValue": "Traceback..."}}


def test_zap_production_line() -> None:
    line = ('{"level":"panic","ts":1764633600.5,"logger":"srv","caller":"main.go:12",'
            '"msg":"oops","stacktrace":"main.main\\n\\tmain.go:12"}')
    record, _, _ = one(line)
    assert record.time_unix_nano == 1_764_633_600_500_000_000
    assert record.severity_number == 19
    assert record.body.string_value == "oops"
    assert attrs(record)["exception.stacktrace"] == {"stringValue": "main.main\n\tmain.go:12"}


def test_zerolog_line() -> None:
    line = ('{"level":"warn","error":"timeout","time":"2026-12-01T10:00:00Z",'
            '"message":"retrying","attempt":2}')
    record, _, _ = one(line)
    assert record.time_unix_nano == 1_796_119_200_000_000_000
    assert record.severity_number == 13
    assert record.body.string_value == "retrying"
    assert attrs(record) == {"attempt": {"intValue": "2"},
                             "exception.message": {"stringValue": "timeout"}}


@pytest.mark.parametrize(("value", "ns"), [
    (1764633600, 1_764_633_600_000_000_000),  # s
    (1764633600.25, 1_764_633_600_250_000_000),  # s, float
    (1764633600123, 1_764_633_600_123_000_000),  # ms
    (1764633600123456, 1_764_633_600_123_456_000),  # µs
    (1764633600123456789, 1_764_633_600_123_456_789),  # ns
    ("2026-12-01T10:00:00+01:00", 1_796_115_600_000_000_000),
    ("yesterday", 0), (True, 0), (-5, 0), ("9" * 200, 0),
])
def test_time_by_type_and_magnitude(value: object, ns: int) -> None:
    assert timestamp_ns(value) == ns


def test_an_unreadable_time_stays_an_attribute() -> None:
    record, _, _ = one('{"time":"soon","msg":"x"}')
    assert record.time_unix_nano == 0
    assert attrs(record) == {"time": {"stringValue": "soon"}}


def test_datadog_decimal_ids_flat_and_nested() -> None:
    flat, _, _ = one('{"msg":"a","dd.trace_id":"1234567890123456789","dd.span_id":"42",'
                     '"dd.env":"prod"}')
    assert flat.trace_id.hex() == "0000000000000000" + f"{1234567890123456789:016x}"
    assert flat.span_id.hex() == "000000000000002a"
    assert attrs(flat) == {"dd.env": {"stringValue": "prod"}}
    nested, resource, _ = one('{"msg":"b","dd":{"trace_id":"1234567890123456",'
                              '"span_id":"9","service":"node-app","env":"dev"}}')
    # sixteen decimal digits are a decimal Datadog id, not hex
    assert nested.trace_id.hex() == "0000000000000000" + f"{1234567890123456:016x}"
    assert nested.span_id.hex() == "0000000000000009"
    assert resource["service.name"] == {"stringValue": "node-app"}
    assert attrs(nested) == {"dd": {"kvlistValue": {"values": [
        {"key": "env", "value": {"stringValue": "dev"}}]}}}


def test_camel_case_ids_and_traceparent() -> None:
    camel, _, _ = one(f'{{"msg":"a","traceId":"{TRACE}","spanId":"{SPAN}"}}')
    assert (camel.trace_id.hex(), camel.span_id.hex()) == (TRACE, SPAN)
    parent, _, _ = one(f'{{"msg":"a","traceparent":"00-{TRACE}-{SPAN}-01"}}')
    assert (parent.trace_id.hex(), parent.span_id.hex(), parent.flags) == (TRACE, SPAN, 1)


@pytest.mark.parametrize("bad", ['"xyz"', '"' + "a" * 40 + '"', '"0000"', "true", "-1"])
def test_an_id_that_is_not_an_id_stays_an_attribute(bad: str) -> None:
    record, _, _ = one(f'{{"msg":"a","trace_id":{bad}}}')
    assert record.trace_id == b""
    assert "trace_id" in attrs(record)


def test_service_name_from_config_when_the_line_has_none() -> None:
    _, resource, _ = one('{"msg":"x"}', service="from-config")
    assert resource == {"service.name": {"stringValue": "from-config"}}
    _, resource, _ = one('{"msg":"x"}')
    assert resource == {"service.name": {"stringValue": "unknown_service"}}


def test_records_are_grouped_by_resource() -> None:
    builder = LogBatchBuilder("svc")
    for line in (b'{"pid":1,"msg":"a"}', b'{"pid":2,"msg":"b"}', b'{"pid":1,"msg":"c"}'):
        builder.add(Line(line), OBSERVED)
    request = builder.take()
    assert request is not None
    bodies = [[r.body.string_value for r in rl.scope_logs[0].log_records]
              for rl in request.resource_logs]
    assert bodies == [["a", "c"], ["b"]]
    assert builder.take() is None


def test_a_line_that_is_not_json_is_kept_as_text_and_counted() -> None:
    record, resource, builder = one(b"GET /health 200 \xff\xfe\x00 done", service="s")
    assert record.body.string_value == "GET /health 200 \ufffd\ufffd\x00 done"
    assert attrs(record)[PARSE_ERROR_KEY]["stringValue"].startswith("not JSON")
    assert record.observed_time_unix_nano == OBSERVED
    assert resource == {"service.name": {"stringValue": "s"}}
    assert builder.parse_errors == 1


def test_a_json_scalar_line_is_its_body() -> None:
    record, _, builder = one(b"[1, 2]")
    assert MessageToDict(record.body) == {"arrayValue": {"values": [
        {"intValue": "1"}, {"intValue": "2"}]}}
    assert builder.parse_errors == 0


def test_a_truncated_line_is_text_with_the_marker_and_counted() -> None:
    record, _, builder = one(b'{"msg":"aaaa', truncated=True)
    assert record.body.string_value == '{"msg":"aaaa'
    assert attrs(record) == {TRUNCATED_KEY: {"boolValue": True}}
    assert (builder.truncated, builder.parse_errors) == (1, 0)


def test_blank_lines_make_no_record() -> None:
    builder = LogBatchBuilder()
    assert not builder.add(Line(b"  \t"), OBSERVED)
    assert builder.take() is None


def test_a_lone_surrogate_in_json_is_a_parse_error_not_a_crash() -> None:
    record, _, builder = one(b'{"msg":"\\ud800"}')
    assert PARSE_ERROR_KEY in attrs(record)
    assert builder.parse_errors == 1


def test_nested_ten_thousand_deep_is_a_parse_error() -> None:
    record, _, builder = one(b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
    assert attrs(record)[PARSE_ERROR_KEY] == {"stringValue": "not JSON: nested too deep"}
    assert builder.parse_errors == 1


def test_deep_values_are_cut_to_text_so_upb_still_parses_the_request() -> None:
    depth = 200  # within orjson's limits, beyond upb's
    line = b'{"msg":"m","a":' + b'{"b":' * depth + b"1" + b"}" * depth + b"}"
    builder = LogBatchBuilder()
    builder.add(Line(line), OBSERVED)
    request = builder.take()
    assert request is not None
    batch = Batch.from_message(Signal.LOGS, request)
    parsed = batch.message  # parses in upb: raises if nested over its limit
    value = parsed.resource_logs[0].scope_logs[0].log_records[0].attributes[0].value
    levels = 0
    while value.HasField("kvlist_value"):
        value = value.kvlist_value.values[0].value
        levels += 1
    assert levels == MAX_VALUE_DEPTH - 1
    assert value.string_value.startswith('{"b":{"b":')
    assert 5 + 3 * MAX_VALUE_DEPTH < MAX_NESTING


def test_a_value_too_deep_to_write_back_keeps_the_line_as_text() -> None:
    line = b'{"msg":"m","a":' + b'{"b":' * 1000 + b"1" + b"}" * 1000 + b"}"
    record, _, builder = one(line)
    assert record.body.string_value == line.decode()
    assert attrs(record) == {PARSE_ERROR_KEY: {
        "stringValue": "unrepresentable value: nested too deep"}}
    assert builder.parse_errors == 1


def test_a_ten_megabyte_line_parses() -> None:
    big = "x" * (10 * 1024 * 1024)
    record, _, _ = one(orjson.dumps({"msg": big, "level": 30}))
    assert len(record.body.string_value) == len(big)


def test_integers_beyond_int64_are_kept_as_text() -> None:
    record, _, _ = one(b'{"msg":"m","big":18446744073709551615,"neg":-9223372036854775808}')
    assert attrs(record) == {"big": {"stringValue": "18446744073709551615"},
                             "neg": {"intValue": "-9223372036854775808"}}


def test_counts_bytes_and_records_per_request() -> None:
    builder = LogBatchBuilder()
    builder.add(Line(b'{"msg":"abc"}'), OBSERVED)
    builder.add(Line(b"plain"), OBSERVED)
    assert (builder.records, builder.bytes) == (2, 18)
    builder.take()
    assert (builder.records, builder.bytes) == (0, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30)
# the keys the mapper reads, so generated objects hit its branches
known_keys = st.sampled_from([
    "time", "timestamp", "ts", "level", "levelname", "levelno", "msg", "message", "event",
    "trace_id", "span_id", "traceId", "dd", "dd.trace_id", "traceparent", "trace_flags",
    "err", "error", "exception", "exc_info", "stack", "pid", "hostname", "service", "name",
    "v"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_make_one_record_that_upb_parses(data: bytes) -> None:
    builder = LogBatchBuilder()
    line = data.replace(b"\n", b" ")
    made = builder.add(Line(line), OBSERVED)
    request = builder.take()
    assert made == (request is not None)
    if request is not None:
        Batch.from_message(Signal.LOGS, request).message  # noqa: B018 - parses or raises


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=8))
def test_any_json_object_maps_to_a_record_that_upb_parses(obj: dict[str, Any]) -> None:
    builder = LogBatchBuilder("svc")
    assert builder.add(Line(orjson.dumps(obj)), OBSERVED)
    request = builder.take()
    assert request is not None
    parsed = Batch.from_message(Signal.LOGS, request).message
    assert sum(len(s.log_records) for r in parsed.resource_logs  # type: ignore[union-attr]
               for s in r.scope_logs) == 1


def test_all_zero_ids_are_no_ids_and_stay_attributes() -> None:
    record, _, _ = one(f'{{"msg":"m","trace_id":"{"0" * 32}","span_id":"0000000000000000"}}')
    assert record.trace_id == b""
    assert record.span_id == b""
    assert set(attrs(record)) == {"trace_id", "span_id"}


def test_child_bindings_and_large_ints_nest_as_upb_writes_them() -> None:
    """The inline paths (nested maps, ints of several varint bytes) against upb's own
    encoding of the same values."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList

    record, _, _ = one('{"msg":"m","run":{"id":"r","step":300,"deep":{"n":-5}},'
                       '"big":9007199254740993}')
    expected = [
        KeyValue(key="run", value=AnyValue(kvlist_value=KeyValueList(values=[
            KeyValue(key="id", value=AnyValue(string_value="r")),
            KeyValue(key="step", value=AnyValue(int_value=300)),
            KeyValue(key="deep", value=AnyValue(kvlist_value=KeyValueList(values=[
                KeyValue(key="n", value=AnyValue(int_value=-5))])))]))),
        KeyValue(key="big", value=AnyValue(int_value=9007199254740993))]
    assert list(record.attributes) == expected
