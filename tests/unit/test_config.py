from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import config
from sidecar.errors import ConfigError


def test_empty_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = config.load(path)
    assert cfg.receivers.otlp.grpc is not None
    assert cfg.receivers.otlp.grpc.endpoint == "127.0.0.1:4317"
    assert cfg.admin.endpoint == "127.0.0.1:9464"


def test_unknown_keys_and_wrong_types_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "receivers:\n  otlp:\n    grpc: {endpoint: 'nope', colour: red}\n"
        "service: {shutdown_timeout: soon}\nbogus: 1\n"
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    paths = {p.path for p in info.value.problems}
    assert {"receivers.otlp.grpc.endpoint", "receivers.otlp.grpc.colour",
            "service.shutdown_timeout", "bogus"} <= paths
    assert all(p.source == str(path) for p in info.value.problems)
    assert "unknown key" in str(info.value)


def test_env_and_file_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "port"
    secret.write_text("9999\n")
    monkeypatch.setenv("SC_HOST", "127.0.0.2")
    path = tmp_path / "c.yaml"
    path.write_text("admin: {endpoint: '${env:SC_HOST}:${file:%s}'}\n" % secret)
    assert config.load(path).admin.endpoint == "127.0.0.2:9999"


def test_missing_env_is_an_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("admin: {endpoint: '${env:SC_SURELY_UNSET_VAR}'}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert any(p.path == "admin.endpoint" and "SC_SURELY_UNSET_VAR" in p.message
               for p in info.value.problems)


def test_set_overrides_typed_values() -> None:
    cfg = config.load(None, ["service.shutdown_timeout=250ms", "receivers.otlp.http=null"])
    assert cfg.service.shutdown_timeout == pytest.approx(0.25)
    assert cfg.receivers.otlp.http is None
