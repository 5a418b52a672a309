"""The shape-planned fast path of `LogBatchBuilder` against the general mapping: for any
line, both must make the same request bytes and the same counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.net.framing import Line
from sidecar.receivers.logparse import LogBatchBuilder

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from logs_parse_bench import pino_lines

OBSERVED = 1_800_000_000_000_000_000
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def both(lines: list[bytes], service: str | None = "svc") -> tuple[Any, Any]:
    fast = LogBatchBuilder(service)
    slow = LogBatchBuilder(service, fast=False)
    made = [(fast.add(Line(line), OBSERVED), slow.add(Line(line), OBSERVED)) for line in lines]
    assert all(a == b for a, b in made)
    counts = [(b.records, b.bytes, b.parse_errors, b.truncated) for b in (fast, slow)]
    assert counts[0] == counts[1]
    return fast.take_payload(), slow.take_payload()


def test_pino_lines_fast_equals_general() -> None:
    lines = pino_lines(3000).split(b"\n")[:-1]
    fast, slow = both(lines)
    assert fast is not None
    assert fast == slow


def test_every_format_fixture_fast_equals_general() -> None:
    lines = [
        # pino, bunyan, winston, structlog, python-json-logger, zap, zerolog, slog
        b'{"level":30,"time":1764633600000,"pid":7,"hostname":"h","msg":"m","a":{"b":1}}',
        b'{"name":"app","hostname":"h","pid":7,"level":40,"msg":"m","time":'
        b'"2026-12-01T10:00:00.000Z","v":0}',
        b'{"level":"info","message":"m","timestamp":"2026-12-01T10:00:00.123Z","svc":1}',
        b'{"event":"m","level":"warning","timestamp":"2026-12-01T10:00:00.123456Z"}',
        b'{"asctime":"2026-12-01 10:00:00,123","levelname":"ERROR","message":"m",'
        b'"otelTraceID":"' + TRACE.encode() + b'","otelSpanID":"' + SPAN.encode()
        + b'","otelTraceSampled":true,"otelServiceName":"py"}',
        b'{"level":"info","ts":1764633600.123456,"caller":"x.go:1","msg":"m","n":300}',
        b'{"level":"debug","time":1764633600,"message":"m","x":-5,"f":1.5,"l":[1,"a",null]}',
        b'{"time":"2026-12-01T10:00:00Z","level":"INFO+2","msg":"m","traceId":"'
        + TRACE.encode() + b'","spanId":"' + SPAN.encode() + b'","traceFlags":"01"}',
        b'{"level":30,"time":0,"msg":"no time"}',  # unreadable time: general path decides
        b'{"level":true,"msg":"m"}', b'{"level":30.0,"msg":"m"}',
        b'{"trace_id":"' + b"0" * 32 + b'","msg":"m"}',  # all-zero id
        b'{"trace_id":"0af7651916cd43dd 448eb211c80319c","msg":"m"}',  # whitespace
        b'{"trace_id":"zzf7651916cd43dd8448eb211c80319c","msg":"m"}',  # not hex
        b'{"trace_id":12345,"span_id":99,"msg":"m"}',
        b'{"dd.trace_id":"123","dd.span_id":"456","msg":"m"}',
        b'{"trace_flags":"zz","msg":"m"}', b'{"trace_flags":300,"msg":"m"}',
        b'{"trace_flags":"1","msg":"m"}', b'{"trace_flags":[1],"msg":"m"}',
        b'{"pid":-1,"hostname":5,"msg":"m"}', b'{"service":"","msg":"m"}',
        b'{"service.name":"a","service":"b","msg":"m"}',
        b'{"v":0,"name":"","hostname":"h","msg":"m"}',
        b'{"v":0,"name":7,"hostname":"h","msg":"m"}',
        b'{"msg":{"nested":"body"},"big":18446744073709551615,"neg":-9223372036854775808}',
        b'{"msg":"' + b"x" * 300 + b'","k":"' + b"y" * 5000 + b'"}',
        b'{"\\u00e9\\u00e9\\u00e9' + "é".encode() * 40 + b'":1,"msg":"long non-ASCII key"}',
        b'{"k' + b"k" * 100 + b'":"long key","msg":"m"}',
        b'{"msg":"m","deep":' + b'{"a":' * 30 + b"1" + b"}" * 30 + b"}",
        b'{"msg":"\\u0000 NUL"}', b'{"msg":"m","s":"\\ud83d\\ude00"}',
        b'{"msg":"lone \\ud800"}', b"not json", b"", b"   ", b"[1,2]", b"7",
        b'{"level":30,"time":9223372036855,"msg":"ms beyond int64 ns"}',
    ]
    fast, slow = both(lines)
    assert fast == slow
    fast, slow = both(lines, service=None)
    assert fast == slow


def test_err_objects_fast_equals_general() -> None:
    """pino's `err` (one line in 20 in logs_parse_bench) is planned: `exception.*` from its
    type (or name), message and stack, the rest of it an attribute in its place."""
    base = {"level": 50, "time": 1764633600000, "pid": 1, "hostname": "h", "a": 1,
            "msg": "m", "z": "x"}
    errs: list[Any] = [
        {"type": "Error", "message": "rate limited", "stack": "Error: x\n  at f", "code": 4},
        {"type": "Error", "message": "m", "stack": "s"}, {"name": "TypeError", "message": ""},
        {"type": "E", "name": "N"}, {"message": "only"}, {"stack": "s", "extra": {"a": [1]}},
        {}, {"code": "E429"}, {"type": "", "name": "N"}, {"type": None, "name": "N"},
        {"type": 5}, {"name": ""}, {"name": None}, {"message": None}, {"message": 5},
        {"stack": ["a"]}, {"type": "E", "message": {"nested": 1}}, "a string", 7, None,
        [{"type": "E"}], {"type": "E", "message": "m", "stack": "s", "cause": {"type": "C"}},
        {"type": "E", "message": "\ud800 lone"}, {"type": "E" * 300, "message": "x" * 5000},
    ]
    lines = [json.dumps({**base, "err": err}).encode() for err in errs]  # lone surrogates too
    lines += [orjson.dumps({"err": {"type": "E"}, "msg": "err first"}),
              orjson.dumps({"msg": "err last", "err": {"message": "m", "k": 1}})]
    fast, slow = both(lines * 2)
    assert fast == slow


def test_an_err_object_becomes_exception_attributes_and_the_rest_stays() -> None:
    builder = LogBatchBuilder("svc")
    builder.add(orjson.dumps({"msg": "m", "err": {"type": "Error", "message": "boom",
                                                  "stack": "Error: boom", "code": "E1"},
                              "n": 1}), OBSERVED)
    request = builder.take()
    assert request is not None
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    attributes = [(kv.key, kv.value) for kv in record.attributes]
    assert [key for key, _ in attributes] == [
        "exception.type", "exception.message", "exception.stacktrace", "err", "n"]
    assert attributes[0][1].string_value == "Error"
    assert attributes[2][1].string_value == "Error: boom"
    err = attributes[3][1].kvlist_value.values
    assert [(kv.key, kv.value.string_value) for kv in err] == [("code", "E1")]


def test_a_shape_seen_before_with_other_value_types_still_matches() -> None:
    """The plan is per shape; the checks are per line."""
    base = {"level": 30, "time": 1764633600000, "pid": 1, "hostname": "h",
            "trace_id": TRACE, "span_id": SPAN, "trace_flags": "01", "msg": "m", "a": "x"}
    variants: list[dict[str, Any]] = [base]
    for key, value in [("level", "nope"), ("level", None), ("time", "soon"), ("pid", "7"),
                       ("hostname", None), ("trace_id", "x"), ("span_id", 5),
                       ("trace_flags", False), ("msg", 5), ("a", {"b": [1, 2.5, None]}),
                       ("a", 2**63), ("a", 127), ("a", 128), ("a", True)]:
        variants.append({**base, key: value})
    lines = [orjson.dumps(v) for v in variants] * 2
    fast, slow = both(lines)
    assert fast == slow


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=140),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30)
role_values = (st.sampled_from([TRACE, SPAN, "01", "00", "ff", 1764633600000, 30, 50, "info",
                                "INFO+2", "2026-12-01T10:00:00Z", 0, "", "h"])
               | json_values)
known_keys = st.sampled_from([
    "time", "timestamp", "ts", "@timestamp", "asctime", "level", "levelname", "severity",
    "levelno", "msg", "message", "event", "trace_id", "traceId", "span_id", "spanId",
    "dd.trace_id", "dd.span_id", "trace_flags", "traceFlags", "otelTraceSampled", "pid",
    "hostname", "service", "service.name", "otelServiceName", "name", "v", "dd", "err",
    "traceparent"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(known_keys | st.text(max_size=8), role_values, max_size=10),
                min_size=1, max_size=6))
def test_generated_objects_fast_equals_general(objects: list[dict[str, Any]]) -> None:
    lines = [json.dumps(o).encode() for o in objects]  # any int, lone surrogates too
    lines += lines  # the second time round the shapes are planned already
    fast, slow = both(lines)
    assert fast == slow


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_fast_equals_general(data: bytes) -> None:
    line = data.replace(b"\n", b" ")
    fast, slow = both([line, b'{"msg":"m"}', line])
    assert fast == slow


def test_caches_stay_bounded_under_ever_new_keys_and_lengths() -> None:
    from sidecar.receivers import logparse

    lines = [orjson.dumps({"msg": "m", f"k{i}": "x" * (i % 90), f"n{i}": {"a": i % 200}})
             for i in range(3000)]
    fast, slow = both(lines)
    assert fast == slow
    for cache in logparse._slots.values():
        assert len(cache) <= 1024
        assert all(len(d) <= 32 for slot in cache.values() for d in slot[2:])
    assert len(logparse._plans) <= 512


def test_varint_sizes_round_trip_through_upb() -> None:
    """Ints and record lengths on both sides of the one-, two- and three-byte varints."""
    values = [0, 1, 127, 128, 129, 300, 16383, 16384, 16385, 2**21 - 1, 2**21, 2**63 - 1]
    lines = [orjson.dumps({"msg": "m", "n": v, "tokens": {"input": v}}) for v in values]
    lines += [orjson.dumps({"msg": "m", "pad": "x" * size}) for size in (100, 16300, 16400)]
    builder = LogBatchBuilder("svc")
    for data in lines:
        builder.add(data, OBSERVED)
    request = builder.take()
    assert request is not None
    records = request.resource_logs[0].scope_logs[0].log_records
    ints = [(r.attributes[0].value.int_value,
             r.attributes[1].value.kvlist_value.values[0].value.int_value)
            for r in records[:len(values)]]
    assert ints == [(v, v) for v in values]
    assert [len(r.attributes[0].value.string_value) for r in records[len(values):]] == [
        100, 16300, 16400]
