"""`rules_file:` with gitleaks' real default config (tests/fixtures/gitleaks.toml, MIT, from
the gitleaks repository): every rule compiles or is listed as skipped, its secrets are
masked where the built-in rules would not, keywords/entropy/allowlists are honoured, the
pre-scan stays a superset of the walk, and a bad rule fails validation naming it."""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sidecar import config as config_module
from sidecar.errors import ConfigError
from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import Redactor, RedactProcessor, RedactSettings
from sidecar.processors.redact_gitleaks import load_gitleaks

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "gitleaks.toml"
RNG = random.Random(41)


def _pick(alphabet: str, n: int) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


AGE = "AGE-SECRET-KEY-1" + _pick("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
SHOPIFY = "shpat_" + _pick("0123456789abcdef", 32)
DOPPLER = "dp.pt." + _pick(string.ascii_lowercase + string.digits, 43)
ADAFRUIT = _pick(string.ascii_lowercase + string.digits, 32)
AIRTABLE_PAT = ("pat" + _pick(string.ascii_letters + string.digits, 14) + "."
                + _pick("0123456789abcdef", 64))


def _settings(tree: dict[str, object]) -> RedactSettings:
    cfg = config_module.from_tree({"processors": {"redact": tree}})
    s = cfg.processors["redact"]
    assert isinstance(s, RedactSettings)
    return s


GITLEAKS = _settings({"rules_file": str(FIXTURE)})


def _body(text: str, s: RedactSettings = GITLEAKS) -> str:
    req = ExportLogsServiceRequest()
    req.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    out = Stage(Signal.LOGS, [RedactProcessor(s)]).run(
        Batch.from_bytes(Signal.LOGS, req.SerializeToString()))
    assert out is not None
    logs = out.message
    assert isinstance(logs, ExportLogsServiceRequest)
    return logs.resource_logs[0].scope_logs[0].log_records[0].body.string_value


def test_every_rule_of_the_default_config_compiles_or_is_listed_as_skipped() -> None:
    loaded = load_gitleaks(FIXTURE)
    text = FIXTURE.read_text()
    assert text.count("[[rules]]") == len(loaded.rules) + len(loaded.skipped)
    assert len(loaded.rules) >= 200
    skipped = {note.split(":")[0].removeprefix("rule ") for note in loaded.skipped}
    assert skipped == {"freemius-secret-key", "hashicorp-tf-password",
                       "kubernetes-secret-yaml", "nuget-config-password", "pkcs12-file"}
    Redactor(GITLEAKS)  # every form compiles into the scans


@pytest.mark.parametrize(("text", "rule", "secret"), [
    (f"key file: {AGE}", "age-secret-key", AGE),
    (f"shop {SHOPIFY} ok", "shopify-access-token", SHOPIFY),
    (f"doppler {DOPPLER}", "doppler-api-token", DOPPLER),
    (f"Airtable: using {AIRTABLE_PAT} now", "airtable-personnal-access-token", AIRTABLE_PAT),
    (f"ADAFRUIT_IO_KEY = '{ADAFRUIT}'", "adafruit-api-key", ADAFRUIT),
])
def test_a_gitleaks_rule_masks_its_secret_the_built_in_rules_miss(
        text: str, rule: str, secret: str) -> None:
    assert _body(text, _settings({})) == text  # not a built-in's
    out = _body(text)
    assert secret not in out
    # where gitleaks' generic-api-key rule overlaps, the first of the two names the mask
    assert out in (text.replace(secret, f"[REDACTED:{rule}]"),
                   text.replace(secret, "[REDACTED:generic-api-key]"))


def test_keywords_entropy_and_allowlists_leave_lookalikes_alone() -> None:
    lookalikes = [
        "shpat_" + "0" * 32,  # entropy 0, at or below the rule's 2
        f"using {AIRTABLE_PAT} now",  # airtable's rule runs only where its keyword is
        "api_key = ${API_KEY}",  # global allowlist: `^\$(?:[A-Z_]+|[a-z_]+)$`
        "version 1.4.2 of gpt-4o-mini, trace 4bf92f3577b34da6a3ce929d0e0e4736",
    ]
    for text in lookalikes:
        assert _body(text) == text


def test_a_rule_re2_rejects_fails_validation_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nid = "ok-rule"\nregex = \'\'\'ok_[a-z]{8}\'\'\'\n'
                   '[[rules]]\nid = "lookbehind"\nregex = \'\'\'(?<=x)secret\'\'\'\n')
    with pytest.raises(ConfigError, match="rule lookbehind: regex"):
        _settings({"rules_file": str(bad)})
    with pytest.raises(ConfigError, match="rules_file"):
        _settings({"rules_file": str(tmp_path / "missing.toml")})


FRAGMENTS = [AGE, SHOPIFY, DOPPLER, ADAFRUIT, "adafruit", "ADAFRUIT_KEY=", "shpat_", "AGE-",
             " = '", '"', "=", "\n", "\\n", "x", "0" * 12, "abcdefghij" * 3, "{", "}", "ltai",
             "LTAI" + "a1" * 10, "p8e-", "glpat-", "xoxb-", "sk-", "\u212a", "é"]
text = st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join)
REDACTOR = Redactor(GITLEAKS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(text, text), max_size=4), text)
def test_the_prescan_is_a_superset_of_the_walk_with_the_gitleaks_rules(
        attrs: list[tuple[str, str]], body: str) -> None:
    req = ExportLogsServiceRequest()
    record = req.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = body
    for k, v in attrs:
        record.attributes.add(key=k, value=AnyValue(string_value=v))
    payload = req.SerializeToString()
    full = Batch.from_bytes(Signal.LOGS, payload).message
    REDACTOR.counts = {}
    REDACTOR.redact_request(Signal.LOGS, full)
    walked = REDACTOR.counts
    if not REDACTOR.can_match(payload):
        assert walked == {}
    REDACTOR.counts = {}
    _, out = REDACTOR.redact_payload(Signal.LOGS, payload, None)
    assert REDACTOR.counts == walked
    assert Batch.from_bytes(Signal.LOGS, out or payload).message == full
