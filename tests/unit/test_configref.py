"""docs/configuration.md is what `make docs` generates from the config models now."""

from __future__ import annotations

from pathlib import Path

from sidecar import configref

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text() == configref.render(), "run `make docs` and commit the result"


def test_it_names_keys_of_every_part() -> None:
    text = configref.render()
    for key in ("`storage.fsync`", "`receivers.otlp.grpc.tls.client_ca_file`",
                "`receivers.logs.files`", "`cache.unix`", "`admin.auth.bearer_tokens`",
                "`service.memory.soft_limit`", "### `type: datadog`", "### `type: otlp`",
                "### `processors.redact`", "### `processors.cost`"):
        assert key in text, key
    assert "| `service.shutdown_timeout` | duration | `30s` |" in text
