"""`sidecar validate` warns about valid but unsafe configs, without printing secrets."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.daemon import SIDECAR

KEY = "dd-literal-key-0123456789abcdef"


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SIDECAR, "validate", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=config.parent)


def write(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


UNSAFE = f"""
receivers:
  otlp:
    grpc: {{endpoint: "0.0.0.0:4317", allow_remote: true}}
    http: null
admin: {{endpoint: "0.0.0.0:9464", allow_remote: true,
         auth: {{bearer_tokens: ["admin-literal-token"]}}}}
exporters:
  dd: {{type: datadog, api_key: "{KEY}", endpoint: "https://intake.example.com",
        tls: {{insecure_skip_verify: true}}}}
  plain: {{type: otlp, endpoint: "http://collector.example.com:4318", protocol: http,
           tls: {{insecure: true}}}}
"""


def test_unsafe_settings_are_warned_about_and_secrets_never_printed(tmp_path: Path) -> None:
    result = validate(write(tmp_path, UNSAFE, 0o644))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("receivers.otlp.grpc: allow_remote is on without auth" in w for w in warnings)
    assert any("receivers.otlp.grpc: allow_remote is on without tls" in w for w in warnings)
    assert not any("admin: allow_remote is on without auth" in w for w in warnings)
    assert any("exporters.dd.tls.insecure_skip_verify" in w for w in warnings)
    assert any("exporters.plain.tls.insecure" in w and "collector.example.com" in w
               for w in warnings)
    assert any("exporters.dd.api_key holds a secret inline" in w and "everyone" in w
               for w in warnings)
    assert any("admin.auth.bearer_tokens holds a secret inline" in w for w in warnings)
    for secret in (KEY, "admin-literal-token"):
        assert secret not in result.stdout + result.stderr


def test_a_private_file_or_references_do_not_warn(tmp_path: Path) -> None:
    private = validate(write(tmp_path, UNSAFE, 0o600))
    assert "holds a secret inline" not in private.stderr
    token = tmp_path / "token"
    token.write_text("from-a-file-token\n")
    referenced = UNSAFE.replace(f'"{KEY}"', '"${env:DD_API_KEY:-x}"').replace(
        '"admin-literal-token"', f'"${{file:{token}}}"')
    result = validate(write(tmp_path, referenced, 0o644))
    assert result.returncode == 0, result.stderr
    assert "holds a secret inline" not in result.stderr


def test_the_default_config_has_no_warnings(tmp_path: Path) -> None:
    result = validate(write(tmp_path, "", 0o644))
    assert result.returncode == 0
    assert "warning:" not in result.stderr
