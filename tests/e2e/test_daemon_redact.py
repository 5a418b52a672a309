"""The real OpenTelemetry SDK sends spans and logs carrying secrets to the real daemon with
its default processors; neither the OTLP upstream nor the file exporter receives any of
them, the rest arrives intact, and the counters say what was redacted."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import SIDECAR, DaemonProcess
from tests.helpers.otlp import py_attrs
from tests.unit.processors.redact_corpus import secrets

SPANS = 10


def _pieces(secret: str) -> list[bytes]:
    return [secret[i:i + 12].encode() for i in range(len(secret) - 11)
            if not secret[i:i + 12].startswith(("-----", "PRIVATE KEY", "eyJhbGciOiJI"))]


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
async def test_no_secret_reaches_an_exporter(short_tmp: Path) -> None:
    s = secrets(random.Random(11))
    pw = "Tr0ub4dor-and-3"
    plain = [s["github-token"], s["anthropic-key"], s["aws-access-key-id"], s["jwt"],
             s["stripe-key"], s["private-key"], s["card-number"], pw, "opaque-cookie-value"]
    export_dir = short_tmp / "export"
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint},
            "local": {"type": "file", "path": str(export_dir)}})
        await daemon.start()
        try:
            tracer_provider = TracerProvider(resource=Resource.create(
                {"service.name": "agent", "deploy.token": s["slack-token"]}))
            tracer_provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=True)))
            tracer = tracer_provider.get_tracer("e2e.redact")
            for i in range(SPANS):
                with tracer.start_as_current_span(f"chat gpt-4o #{i}") as span:
                    span.set_attributes({
                        "gen_ai.usage.input_tokens": 100 + i,
                        "http.request.header.authorization": (f"Bearer {s['jwt']}",),
                        "http.request.header.cookie": ("opaque-cookie-value",),
                        "db.url": f"postgres://app:{pw}@db:5432/orders",
                        "note": f"key {s['github-token']} used",
                    })
                    span.add_event("tool.call", {"args": json.dumps(
                        {"q": "weather", "auth": {"api_key": s["anthropic-key"]}})})
            await asyncio.to_thread(tracer_provider.force_flush, 10_000)
            await asyncio.to_thread(tracer_provider.shutdown)

            log_provider = LoggerProvider(resource=Resource.create({"service.name": "agent"}))
            log_provider.add_log_record_processor(BatchLogRecordProcessor(
                OTLPLogExporter(endpoint=daemon.grpc_endpoint, insecure=True)))
            logger = logging.getLogger("e2e.redact")
            logger.propagate = False
            logger.addHandler(LoggingHandler(logger_provider=log_provider))
            logger.setLevel(logging.INFO)
            logger.warning("charging %s with %s", s["card-number"], s["stripe-key"],
                           extra={"aws": s["aws-access-key-id"],
                                  "pem": s["private-key"], "client_secret": "abc"})
            await asyncio.to_thread(log_provider.force_flush, 10_000)
            await asyncio.to_thread(log_provider.shutdown)

            await sink.wait_for_items(Signal.TRACES, SPANS, timeout=20)
            await sink.wait_for_items(Signal.LOGS, 1, timeout=20)
            for _ in range(100):  # the file exporter writes on its own schedule
                files = list(export_dir.rglob("*")) if export_dir.exists() else []
                data = b"".join(f.read_bytes() for f in files if f.is_file())
                if data.count(b"chat gpt-4o") >= SPANS and b"charging" in data:
                    break
                await asyncio.sleep(0.1)
            upstream = b"".join(r.body for r in sink.accepted)
            for secret in [*plain, s["slack-token"]]:
                for piece in _pieces(secret):
                    assert piece not in upstream
                    assert piece not in data
            # not a secret: unchanged
            spans = sink.spans()
            assert len(spans) == SPANS
            attrs = py_attrs(spans[0].attributes)
            assert attrs["db.url"] == "postgres://app:[REDACTED:url-credentials]@db:5432/orders"
            assert attrs["note"] == "key [REDACTED:github-token] used"
            assert attrs["http.request.header.authorization"] == "[REDACTED:secret-key]"
            assert isinstance(attrs["gen_ai.usage.input_tokens"], int)
            (record,) = sink.log_records()
            assert record.body.string_value == (
                "charging [REDACTED:card-number] with [REDACTED:stripe-key]")

            async def redactions(signal: str, rule: str) -> float:
                return await daemon.metric("sidecar_redact_redactions_total",
                                           signal=signal, rule=rule)
            # per span: authorization, cookie, and the api_key in the event's JSON
            resources = sum(len(r.message.resource_spans)  # type: ignore[union-attr]  # traces
                            for r in sink.accepted if r.signal is Signal.TRACES)
            # + the resource's deploy.token, once per request
            assert await redactions("traces", "secret-key") == 3 * SPANS + resources
            assert await redactions("traces", "github-token") == SPANS
            assert await redactions("traces", "url-credentials") == SPANS
            assert await redactions("logs", "card-number") == 1
            assert await redactions("logs", "secret-key") == 1
            assert await redactions("logs", "private-key") == 1
            assert await daemon.metric("sidecar_exporter_sent_items_total",
                                       exporter="upstream", signal="traces") == SPANS
            # each default processor is charged the CPU it used, per signal it ran on
            for processor, signal in (("redact", "traces"), ("redact", "logs"),
                                      ("cost", "traces"), ("spanmetrics", "traces")):
                assert await daemon.metric("sidecar_processor_cpu_seconds_total",
                                           processor=processor, signal=signal) > 0
        finally:
            code, out, err = await daemon.stop()
        assert code == 0, err
        for secret in plain:
            assert secret not in out
            assert secret not in err


def test_sidecar_validate_names_the_rule_with_the_bad_pattern(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("processors:\n  redact:\n    rules:\n"
                    "      - name: ticket\n        value: '[a-'\n")
    result = subprocess.run([SIDECAR, "validate", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "processors.redact" in result.stderr
    assert "rule 'ticket': invalid value pattern" in result.stderr
