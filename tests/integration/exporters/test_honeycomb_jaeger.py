"""`type: honeycomb` and `type: jaeger` through the whole chain against strict fake
intakes: headers, both transports, vendor faults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from export_helpers import RecordingSleep, metric

from sidecar.component import BuildContext, ExporterComponent, exporter_factories
from sidecar.exporters import otlp_vendor
from sidecar.exporters.honeycomb import HoneycombConfig
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Signal
from sidecar.testing import Fault, OtlpSink, logs_batch, metrics_batch, traces_batch
from tests.helpers.intakes import honeycomb_sink, jaeger_sink

KEY = "hcaik_01hxyzexampleenvironmentkey"
TRANSPORTS = {
    "grpc-h2": {"protocol": "grpc", "compression": "gzip"},
    "grpc-aio": {"protocol": "grpc", "compression": "none"},
    "http": {"protocol": "http"},
}


def build(type_name: str, name: str, sink: OtlpSink, transport: str, sleep: Any = None,
          **raw: Any) -> ExporterComponent:
    factory = exporter_factories()[type_name]
    endpoint = sink.http_endpoint if transport == "http" else sink.grpc_endpoint
    config = factory.config_type.model_validate({
        "type": type_name, "endpoint": endpoint, **TRANSPORTS[transport],
        "batch": {"max_delay": 0}, "retry": {"initial_interval": 0.01, "jitter": 0}, **raw})
    if sleep is None:
        return factory.create(name, config, BuildContext())
    assert isinstance(config, HoneycombConfig)
    return ExportChain(name, config, otlp_vendor.sender_for(config.otlp()), sleep=sleep)


async def stop(exporter: ExporterComponent) -> None:
    await exporter.shutdown(asyncio.get_running_loop().time() + 10)


def dropped(name: str, signal: str = "traces", reason: str = "permanent") -> float:
    return metric("sidecar_exporter_dropped_items_total", exporter=name, signal=signal,
                  reason=reason)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_honeycomb_sends_team_and_dataset(transport: str) -> None:
    async with honeycomb_sink(KEY, "llm-apps") as sink:
        exporter = build("honeycomb", f"hc-{transport}", sink, transport, api_key=KEY,
                         dataset="llm-apps")
        await exporter.start()
        await exporter.consume(traces_batch(3))
        await exporter.consume(logs_batch(2))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["ok", "ok"]
        assert sink.items(Signal.TRACES) == 3
        assert sink.items(Signal.LOGS) == 2
        assert {r.path for r in sink.requests} == (
            {"/v1/traces", "/v1/logs"} if transport == "http" else
            {"/opentelemetry.proto.collector.trace.v1.TraceService/Export",
             "/opentelemetry.proto.collector.logs.v1.LogsService/Export"})


async def test_honeycomb_environment_key_sends_no_dataset_header() -> None:
    async with honeycomb_sink(KEY) as sink:
        exporter = build("honeycomb", "hc-env", sink, "http", api_key=KEY)
        await exporter.start()
        await exporter.consume(traces_batch(1))
        await stop(exporter)
        (request,) = sink.requests
        assert request.outcome == "ok"
        assert request.headers["x-honeycomb-team"] == KEY
        assert "x-honeycomb-dataset" not in request.headers


@pytest.mark.parametrize("transport", ["grpc-h2", "http"])
async def test_honeycomb_wrong_key_is_dropped_once_and_counted(transport: str) -> None:
    async with honeycomb_sink("the-right-key") as sink:
        name = f"hc-wrong-{transport}"
        exporter = build("honeycomb", name, sink, transport, api_key=KEY)
        await exporter.start()
        await exporter.consume(traces_batch(4))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["failed"]
        assert dropped(name) == 4


async def test_honeycomb_429_with_retry_after_waits_what_it_says() -> None:
    sleep = RecordingSleep()
    async with honeycomb_sink(KEY) as sink:
        exporter = build("honeycomb", "hc-429", sink, "http", sleep=sleep, api_key=KEY)
        await exporter.start()
        sink.fail_next(2, Fault(http_status=429, retry_after=3))
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["failed", "failed", "ok"]
        assert sleep.delays == [3.0, 3.0]


async def test_honeycomb_partial_success_is_counted_not_retried() -> None:
    async with honeycomb_sink(KEY) as sink:
        exporter = build("honeycomb", "hc-partial", sink, "http", api_key=KEY)
        await exporter.start()
        sink.partial_next(1, rejected=3)
        await exporter.consume(traces_batch(5))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["partial"]
        assert dropped("hc-partial", reason="rejected") == 3
        assert metric("sidecar_exporter_sent_items_total", exporter="hc-partial",
                      signal="traces") == 2


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_jaeger_delivers_traces_without_auth(transport: str) -> None:
    async with jaeger_sink() as sink:
        exporter = build("jaeger", f"jaeger-{transport}", sink, transport)
        await exporter.start()
        await exporter.consume(traces_batch(3))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["ok"]
        assert sink.items(Signal.TRACES) == 3
        assert "x-honeycomb-team" not in sink.requests[0].headers


async def test_jaeger_drops_logs_and_metrics_without_a_request() -> None:
    async with jaeger_sink() as sink:
        exporter = build("jaeger", "jaeger-traces-only", sink, "http")
        await exporter.start()
        await exporter.consume(logs_batch(2))
        await exporter.consume(metrics_batch(3))
        await exporter.consume(traces_batch(1))
        await stop(exporter)
        assert [r.signal for r in sink.requests] == [Signal.TRACES]
        assert dropped("jaeger-traces-only", "logs") == 2
        assert dropped("jaeger-traces-only", "metrics") == 3


async def test_jaeger_unavailable_is_retried() -> None:
    async with jaeger_sink() as sink:
        exporter = build("jaeger", "jaeger-retry", sink, "grpc-h2")
        await exporter.start()
        sink.fail_next(2)
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["failed", "failed", "ok"]
