"""Configured secrets never reach the daemon's own output."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from sidecar import config
from sidecar.telemetry.logs import JsonFormatter, MaskingFormatter, TextFormatter
from sidecar.telemetry.secrets import MASK, SecretMask, configured_secrets

DD_KEY = "0123456789abcdef0123456789abcdef"
HC_KEY = "hcaik_01hqz-honeycomb-key"
TOKEN = "admin-token-\"quoted\\slash"
URL_PASS = "url-pass-w0rd"


def loaded() -> config.Config:
    return config.from_tree({
        "exporters": {
            "dd": {"type": "datadog", "api_key": DD_KEY},
            "hc": {"type": "honeycomb", "api_key": HC_KEY},
            "up": {"type": "otlp", "endpoint": f"https://agent:{URL_PASS}@collector.example:4318",
                   "protocol": "http"},
            "hdr": {"type": "otlp", "endpoint": "https://collector.example:4318",
                    "protocol": "http", "headers": {"authorization": "Bearer hdr-token-123"}},
        },
        "admin": {"auth": {"bearer_tokens": [TOKEN]}},
        "processors": {"redact": {"hash_key": "hmac-key-material"}},
    })


def test_every_kind_of_configured_secret_is_collected() -> None:
    secrets = configured_secrets(loaded())
    for expected in (DD_KEY, HC_KEY, TOKEN, URL_PASS, "Bearer hdr-token-123", "hdr-token-123",
                     "hmac-key-material"):
        assert expected in secrets
    # names, endpoints and patterns are not secrets
    assert "collector.example" not in " ".join(secrets)
    assert "dd" not in secrets


def test_the_default_config_has_no_secrets() -> None:
    assert configured_secrets(config.from_tree({})) == frozenset()


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_log_lines_and_tracebacks_are_masked(formatter: logging.Formatter) -> None:
    mask = SecretMask(configured_secrets(loaded()))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(MaskingFormatter(formatter, mask))
    logger = logging.getLogger("tests.secret_mask")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sending with key %s to %s", DD_KEY, "https://x")
        logger.warning("token", extra={"auth": TOKEN})
        try:
            raise RuntimeError(f"refused key {HC_KEY}")
        except RuntimeError:
            logger.exception("export failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    for secret in (DD_KEY, HC_KEY, TOKEN, orjson.dumps(TOKEN).decode()[1:-1]):
        assert secret not in out
    assert out.count(MASK) >= 3
    assert "sending with key" in out
    assert "https://x" in out


def test_a_secret_inside_another_is_masked_whole() -> None:
    mask = SecretMask(["abcdef", "abcdefghij"])
    assert mask("x abcdefghij y abcdef") == f"x {MASK} y {MASK}"
    assert SecretMask([])("unchanged") == "unchanged"


def test_a_reload_adds_secrets_and_keeps_the_old_ones() -> None:
    mask = SecretMask(["first-secret"])
    mask.extend(["second-secret"])
    assert mask("first-secret second-secret") == f"{MASK} {MASK}"


def test_the_daemons_own_lines_go_through_the_redaction_engine() -> None:
    from sidecar.cli import _own_output_scrubber

    scrub = _own_output_scrubber(loaded(), SecretMask(configured_secrets(loaded())))
    openai_key = "sk-proj-" + "Ab1" * 16
    line = f"upstream said: bad key {openai_key} for {DD_KEY} at https://api.example.com"
    out = scrub(line)
    assert openai_key not in out
    assert DD_KEY not in out
    assert "upstream said: bad key" in out
    assert "https://api.example.com" in out
    assert scrub("nothing secret here: 42 spans") == "nothing secret here: 42 spans"
