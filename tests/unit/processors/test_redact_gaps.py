"""Regressions: places and spellings the redactor once missed. Each test failed on the code
before its fix: card numbers run on in one digit run, bytes that are not UTF-8, secrets
spelled with JSON escapes, user key patterns with characters JSON escapes, the prompts
policy on a request nothing else hit, and a processor's failure refusing the request."""

from __future__ import annotations

import json
import random

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from sidecar import config as config_module
from sidecar.errors import ProcessingError
from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import RedactProcessor, RedactSettings
from tests.unit.processors.redact_corpus import secrets

TOKEN = secrets(random.Random(31))["github-token"]
# Visa, Mastercard and Amex test numbers (Luhn valid)
CARDS = ("4111 1111 1111 1111", "5500 0000 0000 0004", "3782 822463 10005")


def _settings(tree: dict[str, object] | None = None) -> RedactSettings:
    cfg = config_module.from_tree({"processors": {"redact": tree or {}}})
    s = cfg.processors["redact"]
    assert isinstance(s, RedactSettings)
    return s


def _log(body: AnyValue, tree: dict[str, object] | None = None,
         attrs: dict[str, str] | None = None) -> LogRecord:
    req = ExportLogsServiceRequest()
    record = req.resource_logs.add().scope_logs.add().log_records.add()
    record.body.CopyFrom(body)
    for k, v in (attrs or {}).items():
        record.attributes.add(key=k, value=AnyValue(string_value=v))
    stage = Stage(Signal.LOGS, [RedactProcessor(_settings(tree))])
    out = stage.run(Batch.from_bytes(Signal.LOGS, req.SerializeToString()))
    assert out is not None
    logs = out.message
    assert isinstance(logs, ExportLogsServiceRequest)
    return logs.resource_logs[0].scope_logs[0].log_records[0]


def _text(text: str, **kw: object) -> LogRecord:
    return _log(AnyValue(string_value=text), **kw)  # type: ignore[arg-type]


def test_every_card_in_one_spaced_digit_run_is_masked() -> None:
    body = _text("cards " + " ".join(CARDS) + " end").body.string_value
    assert body == "cards " + " ".join(["[REDACTED:card-number]"] * 3) + " end"


def test_a_long_dash_separated_run_that_is_its_whole_string_is_masked() -> None:
    # 55 bytes: its length byte is `7`, which the pre-scan's context arms do not take;
    # the attribute after it puts a digit-like tag byte right behind it
    run = "-".join(c.replace(" ", "-") for c in CARDS)
    assert 38 <= len(run) < 128
    record = _text(run, attrs={"x": "y"})
    assert record.body.string_value == "-".join(["[REDACTED:card-number]"] * 3)


def test_bytes_that_are_not_utf8_are_scanned_as_they_are() -> None:
    raw = b"\xff\xfe\x00 pushed " + TOKEN.encode() + b" \xc3("
    body = _log(AnyValue(bytes_value=raw)).body.bytes_value
    assert body == b"\xff\xfe\x00 pushed [REDACTED:github-token] \xc3("


def test_a_secret_spelled_with_json_escapes_inside_json_text_is_masked() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in TOKEN[:4]) + TOKEN[4:]
    text = '{"note": "pushed with ' + escaped + '", "n": 1}'
    assert TOKEN not in text
    body = _text(text).body.string_value
    assert json.loads(body) == {"note": "pushed with [REDACTED:github-token]", "n": 1}


def test_a_url_with_escaped_slashes_inside_json_text_is_masked() -> None:
    hook = secrets(random.Random(32))["slack-webhook"]
    text = json.dumps({"hook": hook}).replace("/", "\\/")
    assert hook not in text
    body = _text(text).body.string_value
    assert hook not in body
    assert json.loads(body) == {"hook": "[REDACTED:slack-webhook]"}


@pytest.mark.parametrize("key", ["team/key", 'say"x', "back\\slash"])
def test_a_user_key_pattern_with_characters_json_escapes_matches_in_json_text(
        key: str) -> None:
    rule = {"name": "odd-key", "key": "^" + key.replace("\\", "\\\\") + "$"}
    text = json.dumps({key: "s3cr3t-value"}).replace("/", "\\/")
    body = _text(text, tree={"rules": [rule]}).body.string_value
    assert json.loads(body) == {key: "[REDACTED:odd-key]"}


def test_prompts_drop_removes_prompts_in_a_request_nothing_else_hit() -> None:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="chat")
    span.attributes.add(key="gen_ai.input.messages",
                        value=AnyValue(string_value='[{"role":"user","content":"hi"}]'))
    span.attributes.add(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o"))
    stage = Stage(Signal.TRACES, [RedactProcessor(_settings({"prompts": "drop"}))])
    out = stage.run(Batch.from_bytes(Signal.TRACES, req.SerializeToString()))
    assert out is not None
    traces = out.message
    assert isinstance(traces, ExportTraceServiceRequest)
    kept = [kv.key for kv in traces.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert kept == ["gen_ai.request.model"]


class _Broken:
    name = "broken"
    mutates = False
    signals = frozenset(Signal)

    def process(self, work: Work) -> None:
        raise KeyError(f"cannot handle {TOKEN}")


def test_a_processor_that_raises_refuses_the_request_without_its_content() -> None:
    req = ExportLogsServiceRequest()
    req.resource_logs.add().scope_logs.add().log_records.add().body.string_value = TOKEN
    stage = Stage(Signal.LOGS, [_Broken()])
    with pytest.raises(ProcessingError) as info:
        stage.run(Batch.from_bytes(Signal.LOGS, req.SerializeToString()))
    assert TOKEN not in str(info.value)
    assert str(info.value) == "broken processor failed on a logs request (KeyError)"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert info.value.retry_after >= 1
