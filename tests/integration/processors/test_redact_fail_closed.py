"""Through the real OTLP/HTTP receiver: OTLP/JSON is redacted like protobuf; and fail
closed: when redaction raises, the receiver answers 503 with Retry-After (the client keeps
the data and retries), nothing of the request reaches the exporter, the failure is
counted, and neither the answer nor the log quotes it."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sidecar import config as config_module
from sidecar.config import HttpListenerConfig
from sidecar.model import ExportRequest, Signal
from sidecar.pipeline.graph import build_graph
from sidecar.processors.redact import RedactProcessor
from sidecar.receivers.otlp_http import OtlpHttpReceiver
from sidecar.telemetry.metrics import REGISTRY
from tests.unit.processors.redact_corpus import secrets


def _failures() -> float:
    return REGISTRY.get_sample_value("sidecar_redact_failures_total", {"signal": "logs"}) or 0.0


async def test_a_raise_in_redaction_exports_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    secret = secrets(random.Random(3))["github-token"]
    cfg = config_module.from_tree({"storage": {"dir": str(tmp_path / "data")}, "exporters": {
        "local": {"type": "file", "path": str(tmp_path / "out"), "batch": {"max_delay": 0}}}})
    graph = build_graph(cfg)
    (processor,) = [p for p in graph.processors if isinstance(p, RedactProcessor)]

    def broken(signal: Signal, payload: bytes, message: ExportRequest | None) -> None:
        raise ValueError(f"cannot handle {secret}")

    monkeypatch.setattr(processor.redactor, "redact_payload", broken)
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = f"pushing with {secret}"
    receiver = OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint="127.0.0.1:0"),
                                graph.consumers)
    await graph.start()
    await receiver.start()
    before = _failures()
    try:
        url = f"http://127.0.0.1:{receiver.bound_port}/v1/logs"
        with caplog.at_level(logging.DEBUG):
            async with aiohttp.ClientSession() as session, session.post(
                    url, data=request.SerializeToString(),
                    headers={"Content-Type": "application/x-protobuf"}) as response:
                status, body = response.status, await response.read()
                retry_after = response.headers.get("Retry-After")
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
        await graph.shutdown(asyncio.get_running_loop().time() + 5)
    assert status == 503
    assert retry_after == "1"
    assert secret.encode() not in body
    assert _failures() - before == 1
    out = tmp_path / "out"
    exported = b"".join(f.read_bytes() for f in out.rglob("*") if f.is_file()) \
        if out.exists() else b""
    assert b"pushing with" not in exported
    assert caplog.records, "the failure is logged"
    assert secret not in caplog.text


async def test_otlp_json_is_redacted_like_protobuf(tmp_path: Path) -> None:
    import json

    from sidecar.otlp_json import request_to_json_bytes

    secret = secrets(random.Random(5))["stripe-key"]
    cfg = config_module.from_tree({"storage": {"dir": str(tmp_path / "data")}, "exporters": {
        "local": {"type": "file", "path": str(tmp_path / "out"), "batch": {"max_delay": 0}}}})
    graph = build_graph(cfg)
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.body.kvlist_value.values.add(key="msg").value.string_value = f"charge {secret}"
    receiver = OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint="127.0.0.1:0"),
                                graph.consumers)
    await graph.start()
    await receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.bound_port}/v1/logs"
        async with aiohttp.ClientSession() as session, session.post(
                url, data=request_to_json_bytes(Signal.LOGS, request),
                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200
        path = tmp_path / "out" / "logs.jsonl"
        for _ in range(100):
            if path.exists() and path.read_bytes().endswith(b"\n"):
                break
            await asyncio.sleep(0.05)
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
        await graph.shutdown(asyncio.get_running_loop().time() + 5)
    data = path.read_bytes()
    assert secret.encode() not in data
    (line,) = data.splitlines()
    body = json.loads(line)["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"]
    assert body["kvlistValue"]["values"][0]["value"]["stringValue"] == (
        "charge [REDACTED:stripe-key]")
