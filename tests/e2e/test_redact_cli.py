"""`sidecar redact` on stdin, from the real binary."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sidecar.model import Signal
from sidecar.otlp_json import request_from_json_bytes, request_to_json_bytes
from tests.helpers.daemon import SIDECAR
from tests.unit.processors.redact_corpus import secrets

TOKEN = secrets(random.Random(4))["github-token"]


def run(stdin: bytes, *args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([SIDECAR, "redact", *args], input=stdin, capture_output=True,
                          timeout=60, cwd=cwd)


def test_otlp_json_and_ndjson_lines_come_out_redacted(tmp_path: Path) -> None:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat")
    span.attributes.add(key="note", value=AnyValue(string_value=f"uses {TOKEN}"))
    span.attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=7))
    otlp = request_to_json_bytes(Signal.TRACES, req)
    ndjson = json.dumps({"level": 30, "msg": f"push {TOKEN}", "apiKey": "k-1"}).encode()
    result = run(otlp + b"\n" + ndjson + b"\nplain text\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, second, third = result.stdout.splitlines()
    out = request_from_json_bytes(Signal.TRACES, first)
    assert isinstance(out, ExportTraceServiceRequest)
    attrs = {kv.key: kv.value for kv in out.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert attrs["note"].string_value == "uses [REDACTED:github-token]"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 7
    assert json.loads(second) == {"level": 30, "msg": "push [REDACTED:github-token]",
                                  "apiKey": "[REDACTED:secret-key]"}
    assert third == b"plain text"
    assert TOKEN.encode() not in result.stdout + result.stderr
    assert b"github-token: 2" in result.stderr


def test_user_rules_from_the_config_apply(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text("processors:\n  redact:\n    rules:\n"
                      "      - {name: ticket, value: 'TCK-[0-9]{6}'}\n")
    result = run(b"see TCK-123456\n", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"see [REDACTED:ticket]\n"


def test_an_invalid_otlp_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    result = run(b'ok\n{"resourceSpans": 3}\n', cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == b"ok\n"
    assert b"error: line 2: " in result.stderr


def test_a_refused_line_is_an_error_and_the_other_lines_still_come_out(tmp_path: Path) -> None:
    # more than 50,000 candidate card numbers: the redactor refuses that line (fail closed)
    many = b", ".join([b"4111111111111111"] * 60_000)
    result = run(b"before " + TOKEN.encode() + b"\n" + many + b"\nafter\n", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == b"before [REDACTED:github-token]\nafter\n"
    assert b"error: line 2: redaction refused" in result.stderr
    assert b"Traceback" not in result.stderr
    assert b"4111111111111111" not in result.stdout + result.stderr
