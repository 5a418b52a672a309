"""What a user sees from the real `sidecar` binary when the config file is wrong."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers.daemon import SIDECAR


def sidecar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SIDECAR, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"service:\n  log_level: \xff\n")
    result = sidecar(command, "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path}:2: not UTF-8: byte 0xff at offset 22 (invalid start byte)"]


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_yaml_syntax_error_is_one_line_with_file_line_column(
        tmp_path: Path, command: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("admin:\n  endpoint: 127.0.0.1:9464\n\tservice: {}\n")
    result = sidecar(command, "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path}:3:1: invalid YAML: found character '\\t' that cannot start any token"]


def test_validate_reports_three_different_problems_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "admin: {endpoint: 127.0.0.1:9464, colour: red}\n"  # unknown key
        "service: {shutdown_timeout: [5s]}\n"  # wrong type
        "exporters: {local: {type: file}}\n"
        "pipelines: {traces: [local, nowhere]}\n"  # dangling exporter name
    )
    result = sidecar("validate", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert sorted(result.stderr.splitlines()) == sorted([
        f"error: {path}: admin.colour: unknown key",
        f"error: {path}: service.shutdown_timeout: Input should be a valid number",
        f"error: {path}: pipelines.traces: unknown exporter 'nowhere'",
    ])


def test_empty_and_unknown_references_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    path.write_text("admin: {endpoint: '${env:}'}\n"
                    "cache: {tcp: {password: '${vault:db/pass}'}}\n")
    result = sidecar("validate", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path}: admin.endpoint: '${{env:}}': empty environment variable name",
        f"error: {path}: cache.tcp.password: '${{vault:db/pass}}': unknown reference scheme "
        "'vault' (known: env, file)",
    ]


def test_hostile_yaml_gets_one_line_not_a_traceback_or_a_hang(tmp_path: Path) -> None:
    bomb = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    cases = {
        "bomb.yaml": "\n".join(bomb) + "\n",
        "cycle.yaml": "admin: &a {x: *a}\n",
        "deep.yaml": "a: " + "[" * 3000 + "]" * 3000 + "\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        result = sidecar("validate", "--config", str(tmp_path / name), cwd=tmp_path)
        assert result.returncode == 1, name
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: {tmp_path / name}"), line


def test_file_exporter_compression_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("exporters: {local: {type: file, compression: gzip}}\n")
    result = sidecar("validate", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {path}: exporters.local.compression: 'gzip' is not supported")
