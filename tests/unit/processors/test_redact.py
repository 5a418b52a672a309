"""The redact processor's engine: built-in value and key rules in every place a secret can
sit, negatives unchanged byte for byte, the pre-scan, fail-closed errors and counters."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar.model import Batch, ExportRequest, Signal, Work
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import RedactionError, RedactProcessor, RedactSettings
from sidecar.telemetry.metrics import REGISTRY
from tests.unit.processors.redact_corpus import (
    ALLOWED_KEYS,
    SECRET_KEYS,
    in_context,
    negatives,
)

RNG = random.Random(7)
CASES = in_context(RNG)
NEGATIVES = negatives(RNG)


def _traces() -> tuple[ExportTraceServiceRequest, Span]:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="app"))
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    span = ss.spans.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat gpt-4o")
    span.attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=12))
    return req, span


def _logs() -> tuple[ExportLogsServiceRequest, LogRecord]:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    record = rl.scope_logs.add().log_records.add(severity_text="INFO")
    return req, record


def _kv(key: str, text: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=text))


# place name -> (signal, build(text) -> request, read(request) -> the text as stored there)
Place = tuple[Signal, Callable[[str], ExportRequest], Callable[[ExportRequest], str]]


def _span_of(req: ExportRequest) -> Span:
    assert isinstance(req, ExportTraceServiceRequest)
    return req.resource_spans[0].scope_spans[0].spans[0]


def _record_of(req: ExportRequest) -> LogRecord:
    assert isinstance(req, ExportLogsServiceRequest)
    return req.resource_logs[0].scope_logs[0].log_records[0]


def _place_span(setter: Callable[[Span, str], object]) -> Callable[[str], ExportRequest]:
    def build(text: str) -> ExportRequest:
        req, span = _traces()
        setter(span, text)
        return req
    return build


def _place_log(setter: Callable[[LogRecord, str], object]) -> Callable[[str], ExportRequest]:
    def build(text: str) -> ExportRequest:
        req, record = _logs()
        setter(record, text)
        return req
    return build


def _resource_attr(text: str) -> ExportRequest:
    req, _ = _traces()
    req.resource_spans[0].resource.attributes.append(_kv("deployment.note", text))
    return req


def _scope_attr(text: str) -> ExportRequest:
    req, _ = _traces()
    req.resource_spans[0].scope_spans[0].scope.attributes.append(_kv("scope.note", text))
    return req


def _nested_body(record: LogRecord, text: str) -> None:
    inner = record.body.kvlist_value.values.add(key="request").value
    arr = inner.kvlist_value.values.add(key="args").value.array_value
    arr.values.add(int_value=1)
    arr.values.add(string_value=text)


PLACES: dict[str, Place] = {
    "span name": (Signal.TRACES, _place_span(lambda s, t: setattr(s, "name", t)),
                  lambda r: _span_of(r).name),
    "status message": (Signal.TRACES,
                       _place_span(lambda s, t: setattr(s.status, "message", t)),
                       lambda r: _span_of(r).status.message),
    "span attribute": (Signal.TRACES,
                       _place_span(lambda s, t: s.attributes.append(_kv("http.url", t))),
                       lambda r: _span_of(r).attributes[-1].value.string_value),
    "string array element": (
        Signal.TRACES,
        _place_span(lambda s, t: s.attributes.add(key="args").value.array_value.values.extend(
            [AnyValue(string_value="first"), AnyValue(string_value=t)])),
        lambda r: _span_of(r).attributes[-1].value.array_value.values[1].string_value),
    "kvlist": (Signal.TRACES,
               _place_span(lambda s, t: s.attributes.add(key="cfg").value.kvlist_value
                           .values.append(_kv("dsn", t))),
               lambda r: _span_of(r).attributes[-1].value.kvlist_value.values[0]
               .value.string_value),
    "bytes": (Signal.TRACES,
              _place_span(lambda s, t: s.attributes.add(
                  key="raw", value=AnyValue(bytes_value=t.encode()))),
              lambda r: _span_of(r).attributes[-1].value.bytes_value.decode()),
    "event attribute": (Signal.TRACES,
                        _place_span(lambda s, t: s.events.add(name="log").attributes.append(
                            _kv("message", t))),
                        lambda r: _span_of(r).events[0].attributes[0].value.string_value),
    "link attribute": (Signal.TRACES,
                       _place_span(lambda s, t: s.links.add(
                           trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.append(
                           _kv("note", t))),
                       lambda r: _span_of(r).links[0].attributes[0].value.string_value),
    "resource attribute": (Signal.TRACES, _resource_attr,
                           lambda r: r.resource_spans[0].resource.attributes[-1]  # type: ignore[union-attr]  # traces
                           .value.string_value),
    "scope attribute": (Signal.TRACES, _scope_attr,
                        lambda r: r.resource_spans[0].scope_spans[0]  # type: ignore[union-attr]  # traces
                        .scope.attributes[-1].value.string_value),
    "log body": (Signal.LOGS, _place_log(lambda rec, t: setattr(rec.body, "string_value", t)),
                 lambda r: _record_of(r).body.string_value),
    "nested log body": (Signal.LOGS, _place_log(_nested_body),
                        lambda r: _record_of(r).body.kvlist_value.values[0].value.kvlist_value
                        .values[0].value.array_value.values[1].string_value),
    "log attribute": (Signal.LOGS,
                      _place_log(lambda rec, t: rec.attributes.append(_kv("exception.message",
                                                                          t))),
                      lambda r: _record_of(r).attributes[0].value.string_value),
    "JSON text in a log body": (
        Signal.LOGS,
        _place_log(lambda rec, t: setattr(rec.body, "string_value",
                                          json.dumps({"msg": "x", "ctx": {"note": t}}))),
        lambda r: json.loads(_record_of(r).body.string_value)["ctx"]["note"]),
}


def _run(signal: Signal, req: ExportRequest, settings: RedactSettings | None = None,
         ) -> tuple[bytes, Batch | None]:
    payload = req.SerializeToString()
    stage = Stage(signal, [RedactProcessor(settings or RedactSettings())])
    return payload, stage.run(Batch.from_bytes(signal, payload))


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_value_rule_masks_only_the_secret_in_every_place(
        place: str, case: tuple[str, str, str, str]) -> None:
    _rule, text, secret, expected = case
    signal, build, read = PLACES[place]
    _, out = _run(signal, build(text))
    assert out is not None
    assert secret.encode() not in out.payload
    assert read(out.message) == expected


@pytest.mark.parametrize("place", list(PLACES))
def test_negatives_are_unchanged_byte_for_byte(place: str) -> None:
    signal, build, _ = PLACES[place]
    for text in NEGATIVES:
        payload, out = _run(signal, build(text))
        assert out is not None
        assert out.payload == payload, text


def test_negative_shapes_inside_an_agent_batch_skip_the_walk() -> None:
    from sidecar.sample import agent_runs
    processor = RedactProcessor(RedactSettings())
    for run in agent_runs(20, seed=3):
        for signal, req in ((Signal.TRACES, run.traces), (Signal.LOGS, run.logs)):
            work = Work(signal, req.SerializeToString())
            processor.process(work)
            assert not work.touched  # pre-scan said no: nothing parsed


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_key_rules_redact_the_whole_value_whatever_the_spelling(key: str) -> None:
    req, span = _traces()
    span.attributes.append(_kv(key, "opaque-value-123"))
    span.attributes.add(key=key).value.array_value.values.extend(
        [AnyValue(string_value="v1"), AnyValue(string_value="v2")])
    _, out = _run(Signal.TRACES, req)
    assert out is not None
    attrs = _span_of(out.message).attributes
    assert attrs[-2].value.string_value == "[REDACTED:secret-key]"
    assert attrs[-1].value.string_value == "[REDACTED:secret-key]"  # an array, whole
    assert b"opaque-value-123" not in out.payload
    assert b"v1" not in out.payload


@pytest.mark.parametrize("key", ALLOWED_KEYS)
def test_allowlisted_keys_are_untouched(key: str) -> None:
    req, span = _traces()
    span.attributes.add(key=key, value=AnyValue(int_value=1024))
    span.attributes.append(_kv(key + ".text", "42"))
    payload, out = _run(Signal.TRACES, req)
    assert out is not None
    assert out.payload == payload


def test_key_rules_inside_json_text_and_kvlist_log_bodies() -> None:
    req, record = _logs()
    record.body.kvlist_value.values.append(_kv("Api-Key", "abc"))
    record.attributes.append(_kv("payload", json.dumps(
        {"user": "bob", "auth": {"client_secret": "s3cr3tvalue", "scopes": ["a"]},
         "input_tokens": 5})))
    _, out = _run(Signal.LOGS, req)
    assert out is not None
    rec = _record_of(out.message)
    assert rec.body.kvlist_value.values[0].value.string_value == "[REDACTED:secret-key]"
    doc = json.loads(rec.attributes[0].value.string_value)
    assert doc == {"user": "bob", "auth": {"client_secret": "[REDACTED:secret-key]",
                                           "scopes": ["a"]}, "input_tokens": 5}


def test_a_json_key_spelt_with_unicode_escapes_is_still_found() -> None:
    req, record = _logs()
    record.body.string_value = '{"pass\\u0077ord": "hunter2hunter2"}'
    _, out = _run(Signal.LOGS, req)
    assert out is not None
    assert b"hunter2" not in out.payload


def test_a_json_text_too_deep_to_read_is_masked_whole() -> None:
    req, record = _logs()
    record.body.string_value = "[" * 100_000 + '"password"' + "]" * 100_000
    _, out = _run(Signal.LOGS, req)
    assert out is not None
    assert _record_of(out.message).body.string_value == "[REDACTED:json-too-deep]"


def test_kelvin_sign_does_not_fold_into_a_key_rule() -> None:
    # str.lower() folds U+212A to "k"; the byte pre-scan cannot see that, so the walk must
    # not either (the walk stays a subset of the pre-scan)
    req, span = _traces()
    span.attributes.append(_kv("api_\u212aey", "value"))
    payload, out = _run(Signal.TRACES, req)
    assert out is not None
    assert out.payload == payload


def test_overlapping_matches_are_masked_as_one() -> None:
    req, span = _traces()
    secret = next(c for c in CASES if c[0] == "jwt")[2]
    span.attributes.append(_kv("note", f"Bearer {secret} end"))
    _, out = _run(Signal.TRACES, req)
    assert out is not None
    assert _span_of(out.message).attributes[-1].value.string_value == (
        "Bearer [REDACTED:jwt] end")


def _sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


def test_counters_per_rule_and_signal_and_no_secret_in_metrics() -> None:
    before = _sample("sidecar_redact_redactions_total", {"signal": "logs", "rule": "github-token"})
    case = next(c for c in CASES if c[0] == "github-token")
    req, record = _logs()
    record.body.string_value = f"{case[2]} and {case[2]}"
    _run(Signal.LOGS, req)
    after = _sample("sidecar_redact_redactions_total", {"signal": "logs", "rule": "github-token"})
    assert after - before == 2
    from prometheus_client import generate_latest
    assert case[2].encode() not in generate_latest(REGISTRY)


def test_a_raise_while_redacting_refuses_the_request_without_its_content(
        monkeypatch: pytest.MonkeyPatch) -> None:
    processor = RedactProcessor(RedactSettings())
    secret = next(c for c in CASES if c[0] == "github-token")[2]
    req, record = _logs()
    record.body.string_value = secret

    def boom(signal: Signal, payload: bytes, message: ExportRequest | None) -> None:
        raise ValueError(f"cannot handle {secret}")

    monkeypatch.setattr(processor.redactor, "redact_payload", boom)
    before = _sample("sidecar_redact_failures_total", {"signal": "logs"})
    stage = Stage(Signal.LOGS, [processor])
    with pytest.raises(RedactionError) as info:
        stage.run(Batch.from_bytes(Signal.LOGS, req.SerializeToString()))
    assert secret not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert _sample("sidecar_redact_failures_total", {"signal": "logs"}) - before == 1


def test_json_text_with_a_lone_surrogate_escape_is_still_redacted() -> None:
    # json.loads turns "\ud800" into a lone surrogate, which UTF-8 cannot encode
    req, record = _logs()
    record.body.string_value = '{"password": "hunter2hunter2", "a": "\\ud800"}'
    _, out = _run(Signal.LOGS, req)
    assert out is not None
    body = _record_of(out.message).body.string_value
    assert json.loads(body) == {"password": "[REDACTED:secret-key]", "a": "\ud800"}


def test_token_counts_in_keys_json_and_prose_skip_the_walk() -> None:
    req, record = _logs()
    record.body.string_value = json.dumps(
        {"usage": {"input_tokens": 5, "output_tokens": 7}, "msg": "used 12 tokens"})
    record.attributes.add(key="llm.token_count.prompt", value=AnyValue(int_value=5))
    record.attributes.add(key="gen_ai.token.type", value=AnyValue(string_value="input"))
    work = Work(Signal.LOGS, req.SerializeToString())
    RedactProcessor(RedactSettings()).process(work)
    assert not work.touched


def test_a_request_with_too_many_candidates_is_refused_not_ground_through() -> None:
    from sidecar.processors.redact import MAX_CANDIDATES

    req, record = _logs()
    # 13-digit runs with a card prefix: each one costs a Luhn check in Python
    record.body.string_value = "4111111111111, " * (MAX_CANDIDATES + 1)
    before = _sample("sidecar_redact_failures_total", {"signal": "logs"})
    with pytest.raises(RedactionError, match="more than 50000 candidate matches"):
        _run(Signal.LOGS, req)
    assert _sample("sidecar_redact_failures_total", {"signal": "logs"}) - before == 1
    # under the budget the same shape is checked and passes unchanged
    record.body.string_value = "4111111111111, " * 1000
    payload, out = _run(Signal.LOGS, req)
    assert out is not None
    assert out.payload == payload


def test_ids_with_long_digit_runs_skip_the_walk() -> None:
    # UUIDs and vendor ids often hold 13+ decimal digits in a row; OTel's session.id is a
    # correlation id: none of them may make every request walk
    req, span = _traces()
    for key, value in (("session.id", "15392480-0600-571f-ac3a-5c1d2e3f4a5b"),
                       ("app.request_id", "2d1724ab-5b26-9106-1237-8865189000c9"),
                       ("gen_ai.tool.call.id", "call_0166262491552493e37b784"),
                       ("gen_ai.agent.id", "asst_5168406507561f6d"),
                       ("gen_ai.response.id", "chatcmpl-39798287be38915f15a6148638636231")):
        span.attributes.append(_kv(key, value))
    work = Work(Signal.TRACES, req.SerializeToString())
    RedactProcessor(RedactSettings()).process(work)
    assert not work.touched


@pytest.mark.parametrize("text", [
    "cards 4111111111111111 5500000000000004 on file",
    "cards 4111-1111-1111-1111 5500000000000004",
    "4111111111111111 340000000000009",
])
def test_every_card_number_in_one_digit_run_is_masked(text: str) -> None:
    # two cards separated by one space or dash are one candidate run of the card rule
    req, span = _traces()
    span.attributes.append(_kv("note", text))
    _, out = _run(Signal.TRACES, req)
    assert out is not None
    masked = _span_of(out.message).attributes[-1].value.string_value
    for card in ("4111111111111111", "4111-1111-1111-1111", "5500000000000004",
                 "340000000000009"):
        assert card not in masked
    assert masked.count("[REDACTED:card-number]") == 2
