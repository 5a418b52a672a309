"""Run one fuzz target coverage-guided under atheris (libFuzzer):

    python -m tests.fuzz.run TARGET [libFuzzer flags, e.g. -max_total_time=60]

Seeds (valid requests, log lines, RESP commands and configs) are written to a temporary
corpus directory first, so the fuzzer starts from inputs that get deep into each parser.
Exit code 0: no finding; a finding leaves its input under -artifact_prefix."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["sidecar"]):
    from tests.fuzz.targets import TARGETS


def _seeds(target: str) -> list[bytes]:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    attrs = [KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=12)),
             KeyValue(key="http.request.header.authorization",
                      value=AnyValue(string_value="Bearer abcdefghijklmnopqrstuvwxyz012345")),
             KeyValue(key="body", value=AnyValue(string_value='{"password": "hunter22"}'))]
    traces = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(
        spans=[Span(name="chat gpt-4o", trace_id=b"\1" * 16, span_id=b"\2" * 8,
                    attributes=attrs)])])]).SerializeToString()
    logs = ExportLogsServiceRequest(resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(
        log_records=[LogRecord(body=AnyValue(string_value="card 4111 1111 1111 1111"),
                               attributes=attrs)])])]).SerializeToString()
    if target == "otlp_protobuf":
        return [b"\0" + traces, b"\1" + logs]
    if target == "spanwalk":  # raw trace requests (the C walks read any bytes)
        return [traces]
    if target == "otlp_json":
        return [b'\0{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"x","traceId":'
                b'"01010101010101010101010101010101","spanId":"0202020202020202",'
                b'"attributes":[{"key":"api_key","value":{"stringValue":"sk-abc"}}]}]}]}]}',
                b'\1{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"kvlistValue":'
                b'{"values":[{"key":"k","value":{"arrayValue":{"values":[{"intValue":"5"}]}}}]}}'
                b'}]}]}]}']
    if target == "ndjson":
        return [b'\x10{"level":30,"time":1700000000000,"msg":"hi","traceId":"0af7651916cd43dd'
                b'8448eb211c80319c","usage":{"prompt_tokens":3}}\n{"ts":1.5,"level":"warn"}\n'
                b'not json\n{"event":"x","logger":"a","level":"error","exc_info":"Tb"}\n']
    if target == "resp":
        return [b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
                b"PING\r\nHELLO 3\r\n*4\r\n$4\r\nSCAN\r\n$1\r\n0\r\n$5\r\nMATCH\r\n$3\r\na*[b\r\n",
                b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*3\r\n$6\r\nEXPIRE\r\n$1\r\nn\r\n$2\r\n10\r\n"]
    if target == "config":
        return [b"receivers:\n  otlp:\n    grpc: {endpoint: 127.0.0.1:4317}\nexporters:\n"
                b"  up: {type: otlp, endpoint: 'http://x:4318', protocol: http}\n"
                b"processors: {redact: {rules: [{name: r, value: 'ab+c'}]}}\n",
                b"a: &x [*x]\nservice: {shutdown_timeout: ${env:NOPE:-5s}}\n"]
    return []


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = sys.argv[1]
    corpus = Path(tempfile.mkdtemp(prefix=f"sc-fuzz-{target}-"))
    for index, seed in enumerate(_seeds(target)):
        (corpus / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
