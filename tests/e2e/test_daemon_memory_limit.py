"""`service.memory` on the real daemon: a stalled exporter and a flood of large requests.
RSS stays under the hard limit, clients get retryable RESOURCE_EXHAUSTED answers, and
everything acknowledged is delivered once the exporter's destination answers again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess

MiB = 1024 * 1024
SOFT = 200 * MiB
HARD = 320 * MiB
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MAX_REQUESTS = 1200  # bounded: 600 MiB if nothing were refused


def request(n: int) -> bytes:
    span = Span(name="big", trace_id=b"\x07" * 16, span_id=n.to_bytes(8, "big"),
                attributes=[KeyValue(key="blob", value=AnyValue(bytes_value=os.urandom(MiB // 2)))])
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=[span])])]).SerializeToString()


async def test_soft_limit_refuses_and_nothing_acknowledged_is_lost(short_tmp: Path) -> None:
    async with OtlpSink(grpc_max_receive=64 * MiB) as sink:
        sink.stall()  # the destination takes requests and never answers, until resume()
        daemon = DaemonProcess(short_tmp, exporters={"up": {
            "type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
            "timeout": "2s", "retry": {"initial_interval": "200ms", "max_interval": "1s",
                                       "max_elapsed": 0},
            "queue": {"type": "memory", "max_bytes": "4GiB"}}})
        daemon.extra = {
            "service": {"shutdown_timeout": "10s", "log_format": "text",
                        "memory": {"soft_limit": SOFT, "hard_limit": HARD,
                                   "check_interval": "50ms"}},
            "processors": {"redact": {"enabled": False}, "cost": {"enabled": False}},
        }
        await daemon.start()
        assert daemon.proc is not None
        process = psutil.Process(daemon.proc.pid)
        acked: set[int] = set()
        refusals: list[grpc.StatusCode] = []
        peak = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.02)

        async def client(first: int, channel: grpc.aio.Channel) -> None:
            rpc = channel.unary_unary(EXPORT)
            for n in range(first, MAX_REQUESTS, 4):
                if len(refusals) >= 40:
                    return
                try:
                    await rpc(request(n), timeout=30)
                    acked.add(n)
                except grpc.aio.AioRpcError as exc:
                    refusals.append(exc.code())
                    await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            async with grpc.aio.insecure_channel(daemon.grpc_endpoint, options=[
                    ("grpc.max_send_message_length", 64 * MiB)]) as channel:
                await asyncio.gather(*(client(i, channel) for i in range(4)))
            refused_metric = await daemon.metric("sidecar_memory_refused_requests_total")
            sink.resume()
            for _ in range(1200):  # bounded: 60 s for the backlog to drain
                delivered = {int.from_bytes(s.span_id, "big") for s in sink.spans()}
                if acked <= delivered:
                    break
                await asyncio.sleep(0.05)
        finally:
            done.set()
            await sampler
            await daemon.stop()
    assert refusals, "the soft limit never refused anything"
    assert set(refusals) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert refused_metric >= len(refusals)
    # the daemon got to the soft limit (so the limit, not something else, refused) and
    # stayed under the hard one
    assert SOFT * 0.9 <= peak < HARD, f"peak RSS {peak / MiB:.0f} MiB"
    delivered = {int.from_bytes(s.span_id, "big") for s in sink.spans()}
    assert acked <= delivered, f"{len(acked - delivered)} acknowledged spans lost"
    assert sink.items(Signal.TRACES) >= len(acked)
