"""The real daemon with bearer auth on its OTLP and admin listeners: the SDK with the
token gets through, without it nothing is accepted, and the token never shows in what the
daemon prints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess

TOKEN = "e2e-bearer-0f9a8b7c6d5e"


def spans() -> tuple[object, ...]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("e2e").start_as_current_span("auth.check"):
        pass
    return tuple(memory.get_finished_spans())


async def test_tokens_guard_otlp_and_admin(short_tmp: Path) -> None:
    token_file = short_tmp / "token"
    token_file.write_text(TOKEN + "\n")
    auth = {"bearer_tokens": [f"${{file:{token_file}}}"]}
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint}})
        daemon.extra = {
            "receivers": {"otlp": {
                "grpc": {"endpoint": daemon.grpc_endpoint, "auth": auth},
                "http": {"endpoint": f"127.0.0.1:{daemon.http_port}", "auth": auth}}},
            "admin": {"endpoint": f"127.0.0.1:{daemon.admin_port}", "auth": auth},
            "processors": {"cost": {"enabled": False}},
        }
        await daemon.start()
        try:
            batch = spans()
            grpc_ok = GrpcSpans(endpoint=daemon.grpc_endpoint, insecure=True,
                                headers=(("authorization", f"Bearer {TOKEN}"),))
            http_ok = HttpSpans(endpoint=f"{daemon.http_endpoint}/v1/traces",
                                headers={"Authorization": f"Bearer {TOKEN}"})
            grpc_no = GrpcSpans(endpoint=daemon.grpc_endpoint, insecure=True)
            http_no = HttpSpans(endpoint=f"{daemon.http_endpoint}/v1/traces",
                                headers={"Authorization": "Bearer nope"})
            results = []
            for exporter in (grpc_ok, http_ok, grpc_no, http_no):
                results.append(await asyncio.to_thread(exporter.export, batch))  # type: ignore[arg-type]
                exporter.shutdown()
            assert results == [SpanExportResult.SUCCESS] * 2 + [SpanExportResult.FAILURE] * 2
            for _ in range(100):  # bounded: 5 s
                if sum(r.items for r in sink.accepted if r.signal is Signal.TRACES) >= 2:
                    break
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{daemon.admin_url}/metrics") as response:
                    assert response.status == 401
                async with session.get(f"{daemon.admin_url}/healthz") as response:
                    assert response.status == 200
                async with session.get(f"{daemon.admin_url}/metrics", headers={
                        "Authorization": f"Bearer {TOKEN}"}) as response:
                    assert response.status == 200
                    metrics = await response.text()
        finally:
            code, out, err = await daemon.stop()
    assert sum(r.items for r in sink.accepted if r.signal is Signal.TRACES) == 2
    assert 'reason="unauthenticated"' in metrics
    assert code == 0, err
    assert "[bearer]" in out
    assert TOKEN not in out + err + metrics
