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


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return [str(p) for p in info.value.problems]


def test_a_file_that_is_not_utf8_is_one_problem_with_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("service:\n  log_level: d\xe9bug\n".encode("latin-1"))
    assert problems_of(path) == [
        f"{path}:2: not UTF-8: byte 0xe9 at offset 23 (invalid continuation byte)"]


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfservice: {log_level: debug}\n")
    assert config.load(path).service.log_level == "debug"


def test_a_yaml_syntax_error_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("admin:\n  endpoint: a: b\n")
    assert problems_of(path) == [f"{path}:2:14: invalid YAML: mapping values are not allowed here"]


def test_a_yaml_error_names_where_the_unclosed_construct_began(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pipelines:\n  traces: [local\n")
    [line] = problems_of(path)
    assert line.startswith(f"{path}:3:1: invalid YAML: ")
    assert "while parsing a flow sequence at line 2, column 11" in line


def test_a_control_character_in_the_file_is_a_positioned_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("service:\n  log_level: in\x07fo\n")
    [line] = problems_of(path)
    assert line.startswith(f"{path}:2:16: invalid YAML: unacceptable character #x0007")


def test_duplicate_keys_are_errors_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("admin:\n  endpoint: 127.0.0.1:1\n  endpoint: 127.0.0.1:2\n"
                    "service: {}\nservice: {}\n")
    assert problems_of(path) == [
        f"{path}:3:3: admin.endpoint: duplicate key (first at line 2)",
        f"{path}:5:1: service: duplicate key (first at line 4)",
    ]


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("x-retry: &retry {initial_interval: 1s, max_interval: 9s}\n"
                    "exporters:\n  local:\n    type: file\n"
                    "    retry: {<<: *retry, max_interval: 2s}\n")
    # x-retry is not a known key, but the override is not a duplicate
    assert problems_of(path) == [f"{path}: x-retry: unknown key"]


@pytest.mark.parametrize(("value", "expected"), [
    ("${env:}", "'${env:}': empty environment variable name"),
    ("${file:}", "'${file:}': empty file path"),
    ("${env:A", "'${env:A': reference is not closed with '}'"),
    ("x ${env:A:-1", "'${env:A:-1': reference is not closed with '}'"),
    ("${foo:X}", "'${foo:X}': unknown reference scheme 'foo' (known: env, file)"),
    ("${ENV:HOME}", "'${ENV:HOME}': unknown reference scheme 'ENV' (known: env, file)"),
    ("${env:${env:HOME}}", "'${env:${env:HOME}': nested references are not supported"),
    ("${HOME}", "'${HOME}': reference needs a scheme, e.g. ${env:HOME}"),
    ("${}", "'${}': reference needs a scheme, e.g. ${env:NAME}"),
    ("${env:1X}", "'${env:1X}': invalid environment variable name '1X'"),
    ("${env:A B}", "'${env:A B}': invalid environment variable name 'A B'"),
])
def test_malformed_references_are_one_error_naming_the_key(
        tmp_path: Path, value: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"admin: {{endpoint: {value!r}}}\n")
    # one line: the endpoint check does not also complain about what the reference left
    assert problems_of(path) == [f"{path}: admin.endpoint: {expected}"]


def test_dollar_dollar_escapes_a_reference(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache: {tcp: {password: 'p$${env:HOME}$$x$'}}\n")
    cfg = config.load(path)
    assert cfg.cache.tcp is not None
    assert cfg.cache.tcp.password == "p${env:HOME}$$x$"


def test_env_default_and_values_are_not_expanded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_PASSWORD", "${env:HOME}")
    monkeypatch.delenv("SC_SURELY_UNSET_VAR", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("cache: {tcp: {password: '${env:SC_PASSWORD}/${env:SC_SURELY_UNSET_VAR:-}'}}\n")
    cfg = config.load(path)
    assert cfg.cache.tcp is not None
    assert cfg.cache.tcp.password == "${env:HOME}/"


def test_file_reference_problems_name_the_key(tmp_path: Path) -> None:
    binary = tmp_path / "secret"
    binary.write_bytes(b"\xff\xfe")
    path = tmp_path / "c.yaml"
    path.write_text(f"cache: {{tcp: {{password: '${{file:{binary}}}'}}}}\n"
                    f"admin: {{endpoint: '${{file:{tmp_path}/missing}}'}}\n")
    assert problems_of(path) == [
        f"{path}: cache.tcp.password: {binary}:1: not UTF-8: byte 0xff at offset 0 "
        "(invalid start byte)",
        f"{path}: admin.endpoint: {tmp_path}/missing: cannot read: No such file or directory",
    ]


def test_a_huge_file_reference_is_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge"
    with huge.open("wb") as f:
        f.truncate(2 * 1024 * 1024)  # sparse; a regression reads it, not /dev/zero forever
    path = tmp_path / "c.yaml"
    path.write_text(f"cache: {{tcp: {{password: '${{file:{huge}}}'}}}}\n")
    assert problems_of(path) == [f"{path}: cache.tcp.password: {huge}: larger than 1 MiB"]


def test_alias_bombs_cycles_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 7)]
    bomb.write_text("\n".join(levels) + "\n")  # 10^7 strings once the aliases are copied
    assert problems_of(bomb) == [f"{bomb}: more than 100000 values (after expanding YAML aliases)"]

    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("admin: &a\n  x: [*a]\n")
    assert problems_of(cycle) == [
        f"{cycle}: admin.x.0: a YAML alias refers to a value that contains it"]

    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    [line] = problems_of(deep)
    assert line.startswith(f"{deep}:1:")
    assert line.endswith(": invalid YAML: nested deeper than 64 levels")


def test_deep_set_paths_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, [".".join(["a"] * 5000) + "=1"])
    assert [p.message for p in info.value.problems] == ["nested deeper than 64 levels"]


def test_set_with_invalid_yaml_is_a_problem_not_a_crash() -> None:
    with pytest.raises(ConfigError) as info:
        config.load(None, ["admin.endpoint=[1", "service.log_level=debug", "nokey"])
    assert [(p.source, p.path) for p in info.value.problems] == [
        ("--set", "admin.endpoint"), ("--set", "nokey")]
    assert info.value.problems[0].message.startswith("invalid YAML: ")


def test_control_characters_in_keys_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('"\\e[2Jx\\ny": 1\n')
    assert problems_of(path) == [f"{path}: \\x1b[2Jx\\x0ay: unknown key"]


def test_value_errors_read_without_pydantic_prefix(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("admin: {endpoint: nope}\n")
    assert problems_of(path) == [f"{path}: admin.endpoint: not a host:port endpoint: 'nope'"]


def test_unhashable_pipeline_entries_are_type_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pipelines: {traces: [[local]]}\n")
    assert problems_of(path) == [f"{path}: pipelines.traces.0: Input should be a valid string"]
