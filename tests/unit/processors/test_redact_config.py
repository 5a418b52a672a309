"""`processors.redact` settings: actions per rule, user rules, the prompts policy, opt-in
PII, and config errors that name the rule."""

from __future__ import annotations

import random
import re

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sidecar import config as config_module
from sidecar.errors import ConfigError
from sidecar.model import Batch, Signal
from sidecar.pipeline.graph import build_processors
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import RedactProcessor, RedactSettings
from tests.unit.processors.redact_corpus import secrets

SECRET = secrets(random.Random(9))
TOKEN = SECRET["github-token"]


def settings(tree: dict[str, object]) -> RedactSettings:
    cfg = config_module.from_tree({"processors": {"redact": tree}})
    s = cfg.processors["redact"]
    assert isinstance(s, RedactSettings)
    return s


def redact(attrs: dict[str, str], tree: dict[str, object] | None = None,
           name: str = "span") -> Span:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name=name)
    for k, v in attrs.items():
        span.attributes.add(key=k, value=AnyValue(string_value=v))
    stage = Stage(Signal.TRACES, [RedactProcessor(settings(tree or {}))])
    out = stage.run(Batch.from_bytes(Signal.TRACES, req.SerializeToString()))
    assert out is not None
    message = out.message
    assert isinstance(message, ExportTraceServiceRequest)
    return message.resource_spans[0].scope_spans[0].spans[0]


def values(span: Span) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in span.attributes}


def test_hash_gives_equal_pseudonyms_for_equal_secrets_keyed_by_hash_key() -> None:
    tree = {"actions": {"github-token": "hash", "secret-key": "hash"}, "hash_key": "k1"}
    got = values(redact({"a": f"x {TOKEN}", "b": TOKEN, "password": "pw1", "pwd": "pw1"}, tree))
    pseudonym = re.fullmatch(r"x (\[REDACTED:github-token:[0-9a-f]{16}\])", got["a"])
    assert pseudonym is not None
    assert got["b"] == pseudonym.group(1)
    assert got["password"] == got["pwd"]
    assert got["password"].startswith("[REDACTED:secret-key:")
    other = values(redact({"b": TOKEN}, {**tree, "hash_key": "k2"}))
    assert other["b"] != got["b"]


def test_hash_without_a_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="hash_key is required"):
        settings({"actions": {"jwt": "hash"}})


def test_drop_removes_the_attribute_and_masks_where_nothing_can_be_removed() -> None:
    tree = {"actions": {"github-token": "drop", "secret-key": "drop"}}
    span = redact({"a": f"x {TOKEN}", "keep": "ok", "api_key": "v"}, tree,
                  name=f"push {TOKEN}")
    assert values(span) == {"keep": "ok"}
    assert span.name == "push [REDACTED:github-token]"


def test_unknown_rule_in_actions_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown rule 'jwtt'"):
        settings({"actions": {"jwtt": "mask"}})


def test_user_rules_by_value_by_key_and_by_both() -> None:
    tree = {"rules": [
        {"name": "internal-ticket", "value": r"\bTCK-[0-9]{6}\b"},
        {"name": "tenant-key", "key": r"^tenant\.key$", "action": "drop"},
        {"name": "db-host", "key": r"host", "value": r"^db-[a-z]+\.internal$"},
    ]}
    got = values(redact({"note": "see TCK-123456 now", "tenant.key": "x",
                         "net.host": "db-main.internal", "other.host": "web.internal"}, tree))
    assert got == {"note": "see [REDACTED:internal-ticket] now",
                   "net.host": "[REDACTED:db-host]", "other.host": "web.internal"}


def test_an_invalid_user_pattern_is_a_config_error_naming_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"rule 'broken'.*invalid value pattern"):
        settings({"rules": [{"name": "broken", "value": "(unclosed"}]})
    with pytest.raises(ConfigError, match=r"rule 'lookbehind'.*invalid key pattern"):
        settings({"rules": [{"name": "lookbehind", "key": "(?<=a)b"}]})


def test_prompts_drop_removes_genai_content_and_the_default_scans_it() -> None:
    attrs = {"gen_ai.input.messages": f'[{{"role":"user","content":"use {TOKEN}"}}]',
             "gen_ai.prompt.0.content": "hello", "gen_ai.request.model": "gpt-4o"}
    assert values(redact(attrs, {"prompts": "drop"})) == {"gen_ai.request.model": "gpt-4o"}
    kept = values(redact(attrs))
    assert kept["gen_ai.input.messages"] == (
        '[{"role":"user","content":"use [REDACTED:github-token]"}]')
    assert kept["gen_ai.prompt.0.content"] == "hello"


def test_pii_rules_are_opt_in() -> None:
    attrs = {"user": "mail alice+tag@example.co.uk or call +44 20 7946 0958"}
    assert values(redact(attrs)) == attrs
    assert values(redact(attrs, {"pii": ["email", "phone"]})) == {
        "user": "mail [REDACTED:email] or call [REDACTED:phone]"}


def test_enabled_false_builds_no_processor() -> None:
    cfg = config_module.from_tree({"processors": {"redact": {"enabled": False}}})
    assert "redact" not in [p.name for p in build_processors(cfg)]
    assert "redact" in [p.name for p in build_processors(config_module.from_tree({}))]


def test_summary_attributes_on_the_redacted_item() -> None:
    attrs = {"note": f"x {TOKEN} y {TOKEN}", "password": "p", "ok": "fine",
             "card": SECRET["card-number"]}
    tree: dict[str, object] = {"actions": {"card-number": "drop"}}
    assert "redaction.masked.count" not in values(redact(attrs, tree))  # silent by default
    info = redact(attrs, {**tree, "summary": "info"})
    ints = {kv.key: kv.value.int_value for kv in info.attributes}
    assert ints["redaction.masked.count"] == 3
    assert ints["redaction.redacted.count"] == 1
    assert "redaction.masked.keys" not in ints
    debug = values(redact(attrs, {**tree, "summary": "debug"}))
    assert debug["redaction.masked.keys"] == "note,password"
    assert debug["redaction.redacted.keys"] == "card"
    assert "redaction.masked.count" not in values(redact({"ok": "fine"}, {"summary": "debug"}))
