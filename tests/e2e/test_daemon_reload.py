"""Hot reload on the real daemon under load: SIGHUP and POST /-/reload. A valid change (a
new exporter, a changed batch size) applies without losing a span; an invalid one is
refused with the old config still serving; a change that needs a restart is refused."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "reload-admin-token-77"


def request(n: int) -> bytes:
    spans = [Span(name="work", trace_id=b"\x05" * 16, span_id=(n * 10 + i).to_bytes(8, "big"))
             for i in range(10)]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()


def ids(sink: OtlpSink) -> set[int]:
    return {int.from_bytes(s.span_id, "big") for s in sink.spans()}


class Load:
    """A raw gRPC client sending 10-span requests until stopped; remembers what was acked
    (RESOURCE_EXHAUSTED is retried, as SDKs do)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.acked: set[int] = set()
        self.stop = asyncio.Event()
        self.refusals = 0

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            rpc = channel.unary_unary(EXPORT)
            n = 0
            while not self.stop.is_set() and n < 20_000:  # bounded
                n += 1
                for _ in range(200):  # bounded retries of one request
                    try:
                        await rpc(request(n), timeout=10)
                        self.acked.update(n * 10 + i for i in range(10))
                        break
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              grpc.StatusCode.UNAVAILABLE):
                            raise  # anything but backpressure fails the test
                        self.refusals += 1
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.005)


async def wait_for(condition: Any, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):  # bounded
        if condition():
            return
        await asyncio.sleep(0.05)
    assert condition()


async def admin_reload(daemon: DaemonProcess, token: str | None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.post(
            f"{daemon.admin_url}/-/reload", headers=headers) as response:
        body = await response.json() if response.status != 401 else {}
        return response.status, body


async def test_reload_under_load_loses_nothing(short_tmp: Path) -> None:
    async with OtlpSink() as first, OtlpSink() as second:
        exporters: dict[str, Any] = {"first": {
            "type": "otlp", "protocol": "grpc", "endpoint": first.grpc_endpoint}}
        daemon = DaemonProcess(short_tmp, exporters=exporters)
        daemon.extra = {
            "admin": {"endpoint": f"127.0.0.1:{daemon.admin_port}",
                      "auth": {"bearer_tokens": [TOKEN]}},
            "processors": {"cost": {"enabled": False}},
        }
        await daemon.start()
        assert daemon.proc is not None
        path = short_tmp / "sidecar.yaml"
        load = Load(daemon.grpc_endpoint)
        sender = asyncio.create_task(load.run())
        try:
            await wait_for(lambda: len(load.acked) >= 200)

            # 1. SIGHUP with a valid change: a new exporter, a changed batch size
            tree = daemon.config()
            tree["exporters"]["first"]["batch"] = {"max_items": 50}
            tree["exporters"]["second"] = {"type": "otlp", "protocol": "grpc",
                                           "endpoint": second.grpc_endpoint}
            path.write_text(yaml.safe_dump(tree))
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_for(lambda: len(second.spans()) >= 100)
            assert await daemon_reloads(daemon, "success") == 1

            # 2. an invalid file: refused, the old config keeps serving both exporters
            path.write_text("exporters: {first: {type: otlp, endpoint: 42, colour: red}}\n")
            status, body = await admin_reload(daemon, TOKEN)
            assert status == 400
            assert body["status"] == "refused"
            assert "colour" in body["detail"]
            before = len(second.spans())
            await wait_for(lambda: len(second.spans()) >= before + 100)

            # 3. a change that needs a restart is refused too; the endpoint needs the token
            tree["cache"] = {"unix": str(short_tmp / "other-cache.sock")}
            path.write_text(yaml.safe_dump(tree))
            assert (await admin_reload(daemon, None))[0] == 401
            status, body = await admin_reload(daemon, TOKEN)
            assert status == 400
            assert "restart required: cache" in body["detail"]

            # 4. remove the second exporter again over HTTP
            del tree["exporters"]["second"]
            del tree["cache"]
            tree["cache"] = daemon.config()["cache"]
            path.write_text(yaml.safe_dump(tree))
            status, body = await admin_reload(daemon, TOKEN)
            assert (status, body["status"]) == (200, "reloaded"), body
            assert "exporters removed: second" in body["detail"]
            assert await daemon_reloads(daemon, "success") == 2
            assert await daemon_reloads(daemon, "failure") == 2
            await asyncio.sleep(0.3)
        finally:
            load.stop.set()
            await sender
        await wait_for(lambda: load.acked <= ids(first), 30)
        stopped = len(second.spans())
        await asyncio.sleep(0.5)
        code, _, err = await daemon.stop()
    assert code == 0, err
    assert load.acked <= ids(first), f"{len(load.acked - ids(first))} acked spans lost"
    assert len(second.spans()) == stopped  # removed: it gets nothing more
    assert "config reloaded" in err
    assert "config reload refused" in err


async def daemon_reloads(daemon: DaemonProcess, result: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as session, session.get(
            f"{daemon.admin_url}/metrics",
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sidecar_config_reload_total" and sample.labels == {
                    "result": result}:
                return sample.value
    return 0.0


async def test_a_listener_that_cannot_rebind_keeps_its_old_address(short_tmp: Path) -> None:
    """The new gRPC address is taken by another process: the reload is reported as failed
    and the receiver is back on its old address, still taking data."""
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={"up": {
            "type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint}})
        daemon.extra = {"processors": {"cost": {"enabled": False}}}
        await daemon.start()
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            tree = daemon.config()
            port = taken.getsockname()[1]
            tree["receivers"]["otlp"]["grpc"]["endpoint"] = f"127.0.0.1:{port}"
            (short_tmp / "sidecar.yaml").write_text(yaml.safe_dump(tree))
            async with aiohttp.ClientSession() as session, session.post(
                    f"{daemon.admin_url}/-/reload") as response:
                status, body = response.status, await response.json()
            assert status == 400
            assert "receivers kept on their previous settings" in body["detail"]
            async with grpc.aio.insecure_channel(daemon.grpc_endpoint) as channel:
                await channel.unary_unary(EXPORT)(request(1), timeout=10)
            await wait_for(lambda: ids(sink) >= set(range(10, 20)))
            # what runs is what the daemon reports (its config follows the fallback)
            assert await grpc_listener(daemon) == daemon.grpc_endpoint
            # ...so reloading the same file once the address is free applies it
            taken.close()
            async with aiohttp.ClientSession() as session, session.post(
                    f"{daemon.admin_url}/-/reload") as response:
                status, body = response.status, await response.json()
            assert status == 200, body
            assert "receivers restarted: otlp" in body["detail"]
            assert await grpc_listener(daemon) == f"127.0.0.1:{port}"
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await channel.unary_unary(EXPORT)(request(2), timeout=10)
            await wait_for(lambda: ids(sink) >= set(range(20, 30)))
        finally:
            taken.close()
            code, _, err = await daemon.stop()
    assert code == 0, err


async def grpc_listener(daemon: DaemonProcess) -> str:
    """The otlp/grpc TCP address on GET /listeners."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{daemon.admin_url}/listeners") as response:
        rows = (await response.json())["listeners"]
    (address,) = [r["address"] for r in rows
                  if (r["component"], r["transport"]) == ("otlp/grpc", "tcp")]
    return str(address)
