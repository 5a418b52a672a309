"""`type: datadog` with `mode: otlp` (Datadog's agentless OTLP intake) and `mode: agent`
(OTLP to a local Datadog Agent) against a real OTLP sink."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.component import BuildContext, ExporterComponent, exporter_factories
from sidecar.model import Signal
from sidecar.testing import OtlpSink, logs_batch, traces_batch

KEY = "dd-otlp-key"


def build(name: str, **raw: Any) -> ExporterComponent:
    factory = exporter_factories()["datadog"]
    cfg = factory.config_type.model_validate({
        "type": "datadog", "batch": {"max_delay": 0},
        "retry": {"initial_interval": 0.01, "jitter": 0}, **raw})
    return factory.create(name, cfg, BuildContext())


async def stop(exporter: ExporterComponent) -> None:
    await exporter.shutdown(asyncio.get_running_loop().time() + 10)


async def test_mode_otlp_sends_the_key_and_compute_stats_on_traces() -> None:
    async with OtlpSink(require_headers={"dd-api-key": KEY}) as sink:
        exporter = build("dd-otlp", mode="otlp", api_key=KEY, endpoint=sink.http_endpoint)
        await exporter.start()
        await exporter.consume(traces_batch(3))
        await exporter.consume(logs_batch(2))
        await stop(exporter)
        assert sorted((r.path, r.outcome) for r in sink.requests) == [
            ("/v1/logs", "ok"), ("/v1/traces", "ok")]
        by_path = {r.path: r for r in sink.requests}
        assert by_path["/v1/traces"].headers["compute_stats"] == "true"
        assert "compute_stats" not in by_path["/v1/logs"].headers
        assert by_path["/v1/traces"].headers["content-type"] == "application/x-protobuf"
        assert sink.items(Signal.TRACES) == 3
        assert sink.items(Signal.LOGS) == 2


async def test_mode_otlp_wrong_key_is_dropped() -> None:
    async with OtlpSink(require_headers={"dd-api-key": "another"}) as sink:
        exporter = build("dd-otlp-403", mode="otlp", api_key=KEY, endpoint=sink.http_endpoint)
        await exporter.start()
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["failed"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_mode_agent_sends_plain_otlp(protocol: str) -> None:
    async with OtlpSink() as sink:
        endpoint = sink.grpc_endpoint if protocol == "grpc" else sink.http_endpoint
        exporter = build(f"dd-agent-{protocol}", mode="agent", agent_endpoint=endpoint,
                         agent_protocol=protocol)
        await exporter.start()
        await exporter.consume(traces_batch(4))
        await stop(exporter)
        assert sink.items(Signal.TRACES) == 4
        assert "dd-api-key" not in sink.requests[0].headers
