"""Spans through the real daemon come out priced, and /metrics totals equal the sum of the
span costs per model."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from prometheus_client.parser import text_string_to_metric_families

from sidecar.model import Signal
from sidecar.sample import agent_run, attrs
from sidecar.testing import OtlpSink
from tests.helpers.daemon import SIDECAR, DaemonProcess
from tests.helpers.otlp import py_attrs


def dialect_request() -> ExportTraceServiceRequest:
    """An OpenInference call and a Vercel AI SDK v6 outer span with its inner call."""
    usage = {"ai.model.id": "house-llama", "ai.model.provider": "vllm",
             "ai.usage.inputTokens": 1_000, "ai.usage.outputTokens": 100}
    spans = [
        Span(trace_id=b"a" * 16, span_id=b"1" * 8, name="ChatCompletion", attributes=attrs({
            "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
            "llm.provider": "openai", "llm.token_count.prompt": 900,
            "llm.token_count.completion": 90})),
        Span(trace_id=b"b" * 16, span_id=b"2" * 8, name="ai.generateText",
             attributes=attrs({**usage, "ai.operationId": "ai.generateText"})),
        Span(trace_id=b"b" * 16, span_id=b"3" * 8, name="ai.generateText.doGenerate",
             attributes=attrs({**usage, "ai.operationId": "ai.generateText.doGenerate"})),
    ]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=attrs({"service.name": "dialects"})),
        scope_spans=[ScopeSpans(spans=spans)])])


async def test_spans_come_out_priced_and_metrics_match_them(short_tmp: Path) -> None:
    rng = random.Random(5)
    requests = [agent_run(rng=rng).traces for _ in range(4)] + [dialect_request()]
    sent_spans = sum(len(ss.spans) for r in requests for rs in r.resource_spans
                     for ss in rs.scope_spans)
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={"upstream": {
            "type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint,
            "batch": {"max_delay": 0}}},
            extra={"processors": {"cost": {"enabled": True, "prices": [
                {"provider": "vllm", "model": "house-llama", "input": 2, "output": 6}]}}})
        await daemon.start()
        try:
            async with aiohttp.ClientSession() as session:
                for req in requests:
                    async with session.post(
                            f"{daemon.http_endpoint}/v1/traces", data=req.SerializeToString(),
                            headers={"Content-Type": "application/x-protobuf"}) as response:
                        assert response.status == 200
                await sink.wait_for_items(Signal.TRACES, sent_spans, timeout=20)
                async with session.get(f"{daemon.admin_url}/metrics") as response:
                    text = await response.text()
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err
        spans = sink.spans()

    span_costs: dict[str, float] = defaultdict(float)
    priced = 0
    for s in spans:
        values = py_attrs(s.attributes)
        if "gen_ai.usage.cost" in values:
            priced += 1
            assert values["gen_ai.usage.cost.currency"] == "USD"
            assert values["gen_ai.usage.cost.source"] == "local"
            span_costs[str(values["gen_ai.request.model"])] += float(values["gen_ai.usage.cost"])
    # 3 calls per agent run, the OpenInference call, the Vercel inner call (not its outer)
    assert priced == 4 * 3 + 2
    assert span_costs["house-llama"] == pytest.approx((1_000 * 2 + 100 * 6) / 1e6)

    metric_costs: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name == "sidecar_llm_cost_usd":
            for sample in family.samples:
                metric_costs[sample.labels["model"]] += sample.value
    assert set(metric_costs) == set(span_costs)
    for model, total in span_costs.items():
        assert metric_costs[model] == pytest.approx(total, rel=1e-9), model


async def test_send_test_shows_what_the_daemon_charged(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={"upstream": {
            "type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint,
            "batch": {"max_delay": 0}}}, extra={"processors": {"cost": {"enabled": True}}})
        await daemon.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                SIDECAR, "send-test", "--endpoint", daemon.http_endpoint, "--runs", "2",
                "--admin", daemon.admin_url, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, err
            await sink.wait_for_items(Signal.TRACES, 12, timeout=20)
        finally:
            code, _, stderr = await daemon.stop()
        assert code == 0, stderr
        spans = sink.spans()
    total = sum(float(py_attrs(s.attributes).get("gen_ai.usage.cost", 0.0)) for s in spans)
    assert total > 0
    line = out.decode().splitlines()[-1]
    assert line.startswith("the daemon priced their model calls at $")
    assert float(line.split("$")[1].split()[0]) == pytest.approx(total, abs=1e-6)
