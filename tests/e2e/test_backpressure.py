"""A stalled destination fills the exporter queue; then receivers refuse with
RESOURCE_EXHAUSTED / 429 + Retry-After instead of buffering without bound."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc

from sidecar.model import Signal
from sidecar.sample import agent_runs
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
QUEUE_BYTES = 64 * 1024


async def test_stalled_exporter_turns_into_backpressure(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.stall()
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
                         "queue": {"max_bytes": QUEUE_BYTES},
                         "batch": {"max_items": 50},
                         "retry": {"initial_interval": "50ms", "max_interval": "100ms"}}})
        await daemon.start()
        try:
            runs = list(agent_runs(400, seed=3))
            acknowledged = 0
            grpc_refusal = None
            async with grpc.aio.insecure_channel(daemon.grpc_endpoint) as channel:
                export = channel.unary_unary(TRACE_EXPORT)
                for run in runs:  # bounded: 400 requests of ~4 KiB against a 64 KiB queue
                    try:
                        await export(run.traces.SerializeToString(), timeout=10)
                        acknowledged += run.spans
                    except grpc.aio.AioRpcError as exc:
                        grpc_refusal = exc
                        break
            assert grpc_refusal is not None, "a full queue must refuse"
            assert grpc_refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            async with aiohttp.ClientSession() as session, session.post(
                f"{daemon.http_endpoint}/v1/traces",
                data=runs[-1].traces.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            ) as response:
                assert response.status == 429
                assert int(response.headers["Retry-After"]) >= 1

            queued = await daemon.metric("sidecar_exporter_queue_size_bytes", exporter="upstream")
            assert 0 < queued <= QUEUE_BYTES
            refused = await daemon.metric("sidecar_receiver_refused_items_total",
                                          signal="traces")
            assert refused > 0

            sink.resume()  # the destination returns: everything acknowledged is delivered
            await sink.wait_for_items(Signal.TRACES, acknowledged, timeout=30)
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err
        assert sink.items(Signal.TRACES) == acknowledged
