"""Metrics pass through unchanged; the daemon's own logs are JSON lines by default."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess
from tests.helpers.otlp import py_attrs


def record_metrics(provider: MeterProvider) -> None:
    meter = provider.get_meter("e2e.metrics", "0.3")
    tokens = meter.create_counter("gen_ai.client.token.usage.total", unit="{token}")
    latency = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    for model, count in (("gpt-4o", 120), ("claude-3-5-sonnet", 80), ("gpt-4o", 30)):
        tokens.add(count, {"gen_ai.request.model": model})
        latency.record(count / 100, {"gen_ai.request.model": model})


async def test_sdk_metrics_are_forwarded_unchanged(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint}},
            extra={"service": {"log_format": "json", "shutdown_timeout": "10s"}})
        await daemon.start()
        try:
            exporter = OTLPMetricExporter(endpoint=daemon.grpc_endpoint, insecure=True)
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
            provider = MeterProvider(resource=Resource.create({"service.name": "metered"}),
                                     metric_readers=[reader])
            await asyncio.to_thread(record_metrics, provider)
            await asyncio.to_thread(provider.force_flush, 10_000)
            await asyncio.to_thread(provider.shutdown)
            # two series per instrument: one point per model
            await sink.wait_for_items(Signal.METRICS, 4, timeout=20)
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err

    sums: dict[str, int] = {}
    counts: dict[str, int] = {}
    for request in (r.message for r in sink.accepted if r.signal is Signal.METRICS):
        for rm in request.resource_metrics:
            assert py_attrs(rm.resource.attributes)["service.name"] == "metered"
            for sm in rm.scope_metrics:
                assert sm.scope.name == "e2e.metrics"
                for metric in sm.metrics:
                    if metric.name == "gen_ai.client.token.usage.total":
                        for point in metric.sum.data_points:
                            model = py_attrs(point.attributes)["gen_ai.request.model"]
                            sums[model] = point.as_int
                    elif metric.name == "gen_ai.client.operation.duration":
                        for hp in metric.histogram.data_points:
                            model = py_attrs(hp.attributes)["gen_ai.request.model"]
                            counts[model] = hp.count
    assert sums == {"gpt-4o": 150, "claude-3-5-sonnet": 80}
    assert counts == {"gpt-4o": 2, "claude-3-5-sonnet": 1}

    # the daemon's own log lines: JSON objects with the documented keys
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines
    for line in lines:
        event = orjson.loads(line)
        assert {"ts", "level", "logger", "msg"} <= set(event)
    assert any(orjson.loads(line)["msg"] == "sidecar started" for line in lines)
