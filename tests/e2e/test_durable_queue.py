"""Fault injection against the real daemon: the durable queue keeps every acknowledged span
through exporter outages, SIGTERM, `kill -9`, a full disk and damaged queue files.

Producers are a raw gRPC client (each request carries spans with unique ids, so delivery
is checked span by span) and the real OpenTelemetry SDK; the destination is a recording
OTLP sink on loopback, "down" meaning nothing listens on its port."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.conftest import free_port
from tests.helpers.daemon import SIDECAR, DaemonProcess

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SPANS = 20  # per request


def request(first: int, spans: int = SPANS, pad: int = 0) -> bytes:
    message = ExportTraceServiceRequest()
    scope = message.resource_spans.add().scope_spans.add()
    for k in range(first, first + spans):
        span = scope.spans.add()
        span.trace_id = struct.pack(">QQ", 1, k)
        span.span_id = struct.pack(">Q", k)
        span.name = "op"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + k
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
        if pad:
            attr = span.attributes.add()
            attr.key = "pad"
            attr.value.string_value = "x" * pad
    return message.SerializeToString()


def span_ids(sink: OtlpSink) -> list[int]:
    return [struct.unpack(">Q", s.span_id)[0] for s in sink.spans()]


def exporter(port: int, **extra: Any) -> dict[str, Any]:
    return {"type": "otlp", "protocol": "grpc", "endpoint": f"http://127.0.0.1:{port}",
            "compression": "none", "timeout": "2s",
            "retry": {"initial_interval": "50ms", "max_interval": "200ms", "max_elapsed": 0},
            "batch": {"max_delay": "20ms"}, **extra}


async def send(endpoint: str, first: int, count: int, pad: int = 0) -> list[int]:
    """Send `count` requests; the first span id of each the daemon acknowledged."""
    acked = []
    async with grpc.aio.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        for i in range(count):
            start = first + i * SPANS
            await export(request(start, pad=pad), timeout=10)
            acked.append(start)
    return acked


async def send_retrying(endpoint: str, first: int, count: int, pad: int = 0) -> list[int]:
    """`send`, retrying a refused request (as an SDK does), for at most ~10 s in all."""
    acked = []
    async with grpc.aio.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        for i in range(count):
            start = first + i * SPANS
            for attempt in range(50):
                try:
                    await export(request(start, pad=pad), timeout=10)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
            acked.append(start)
    return acked


def expected(acked: list[int]) -> set[int]:
    return {k for start in acked for k in range(start, start + SPANS)}


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while not predicate():
        if loop.time() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_exporter_down_then_up_delivers_everything_from_disk(short_tmp: Path) -> None:
    """Down long enough for the backlog to outgrow the in-memory window (it is read back
    from disk) and for many retries; then up: everything arrives."""
    port = free_port()
    daemon = DaemonProcess(short_tmp, exporters={"up": exporter(port)},
                           extra={"storage": {"dir": str(short_tmp / "data"),
                                              "memory_window": "64KiB",
                                              "segment_bytes": "64KiB"}})
    await daemon.start()
    try:
        acked = await send(daemon.grpc_endpoint, 0, 300, pad=100)
        # the real OTel SDK as a second producer, through the same outage
        provider = TracerProvider(resource=Resource.create({"service.name": "sdk"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=daemon.grpc_endpoint, insecure=True)))
        tracer = provider.get_tracer("t")
        for i in range(200):
            with tracer.start_as_current_span(f"sdk-{i}"):
                pass
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        provider.shutdown()
        await asyncio.sleep(3.0)  # down: retries keep failing, the data stays on disk
        assert await daemon.metric("sidecar_queue_disk_records", log="traces") >= 300
        assert await daemon.metric("sidecar_exporter_retries_total", exporter="up") > 0
        assert await daemon.metric("sidecar_queue_oldest_item_age_seconds", exporter="up") > 2
        async with OtlpSink(grpc_port=port) as sink:
            total = len(expected(acked)) + 200
            await sink.wait_for_items(Signal.TRACES, total, timeout=60)
            ids = span_ids(sink)
            assert expected(acked) <= set(ids)
            assert sum(1 for s in sink.spans() if s.name.startswith("sdk-")) >= 200
    finally:
        code, _, err = await daemon.stop()
    assert code == 0, err


async def test_sigterm_while_down_keeps_the_queue_and_restart_delivers(short_tmp: Path) -> None:
    port = free_port()
    daemon = DaemonProcess(short_tmp, exporters={"up": exporter(port)})
    await daemon.start()
    acked = await send(daemon.grpc_endpoint, 0, 100)
    code, _, err = await daemon.stop(timeout=20)
    assert code == 0, err
    assert "dropped undelivered" not in err
    segments = list((short_tmp / "data" / "queue" / "traces").glob("*.seg"))
    assert segments
    assert sum(p.stat().st_size for p in segments) > 0
    stats = await asyncio.to_thread(
        subprocess.run, [SIDECAR, "queue", "stats", "--dir", str(short_tmp / "data")],
        capture_output=True, text=True, check=True)
    assert "up: {'records': 100" in stats.stdout, stats.stdout
    async with OtlpSink(grpc_port=port) as sink:
        again = DaemonProcess(short_tmp, exporters={"up": exporter(port)})
        await again.start()
        try:
            await sink.wait_for_items(Signal.TRACES, len(expected(acked)), timeout=30)
            assert set(span_ids(sink)) == expected(acked)
        finally:
            code, _, err = await again.stop()
        assert code == 0, err


async def test_kill_9_under_load_loses_no_acknowledged_span(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.stall()  # deliveries hang, so most acknowledged data is only on disk
        exporters = {"up": exporter(sink.grpc_port)}
        daemon = DaemonProcess(short_tmp, exporters=exporters)
        await daemon.start()
        acked: list[int] = []

        async def producer(n: int) -> None:
            async with grpc.aio.insecure_channel(daemon.grpc_endpoint) as channel:
                export = channel.unary_unary(TRACE_EXPORT)
                for i in range(10_000):
                    start = (n * 10_000 + i) * SPANS
                    try:
                        await export(request(start), timeout=5)
                    except grpc.aio.AioRpcError:
                        return  # the daemon died mid-request: not acknowledged
                    acked.append(start)

        producers = [asyncio.create_task(producer(n)) for n in range(4)]
        await wait_for(lambda: len(acked) >= 400, 30, "load")
        sink.resume()  # some deliveries complete, some are in flight at the kill
        await asyncio.sleep(0.2)
        daemon.kill()  # SIGKILL
        await asyncio.gather(*producers)
        assert len(acked) >= 400
        again = DaemonProcess(short_tmp, exporters=exporters)
        await again.start()
        try:
            await wait_for(lambda: expected(acked) <= set(span_ids(sink)), 60,
                           "every acknowledged span")
            ids = span_ids(sink)
            duplicates = len(ids) - len(set(ids))
            redelivered = await again.metric("sidecar_queue_redelivered_items_total")
            print(f"kill -9: {len(expected(acked))} acknowledged spans, {len(ids)} delivered, "
                  f"{duplicates} duplicates, {redelivered:.0f} counted as redelivered")
        finally:
            code, _, err = await again.stop()
        assert code == 0, err


async def test_two_exporters_one_down_other_keeps_delivering(short_tmp: Path) -> None:
    down_port = free_port()
    async with OtlpSink() as live:
        daemon = DaemonProcess(short_tmp, exporters={
            "live": exporter(live.grpc_port), "late": exporter(down_port)})
        await daemon.start()
        try:
            acked = await send(daemon.grpc_endpoint, 0, 100)
            await live.wait_for_items(Signal.TRACES, len(expected(acked)), timeout=20)
            assert set(span_ids(live)) == expected(acked)
            async with OtlpSink(grpc_port=down_port) as late:
                await late.wait_for_items(Signal.TRACES, len(expected(acked)), timeout=30)
                assert set(span_ids(late)) == expected(acked)
            assert len(span_ids(live)) == len(expected(acked))  # once: one write, two reads
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err


async def test_damaged_queue_files_are_skipped_counted_and_the_rest_delivered(
        short_tmp: Path) -> None:
    port = free_port()
    daemon = DaemonProcess(short_tmp, exporters={"up": exporter(port)})
    await daemon.start()
    acked = await send(daemon.grpc_endpoint, 0, 50)
    code, _, err = await daemon.stop(timeout=20)
    assert code == 0, err
    [segment] = sorted((short_tmp / "data" / "queue" / "traces").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    size = len(data) // 50  # requests are all the same size
    data[size * 10 + size // 2] ^= 0x01  # a flipped bit in the 11th record's payload
    segment.write_bytes(bytes(data[:-size // 3]))  # and a torn tail: the 50th record
    check = await asyncio.to_thread(
        subprocess.run, [SIDECAR, "queue", "check", "--dir", str(short_tmp / "data")],
        capture_output=True, text=True)
    assert check.returncode == 1, check.stdout
    assert "damaged record" in check.stdout
    assert "torn tail" in check.stdout
    assert "48 good records" in check.stdout
    lost = expected([acked[10], acked[49]])
    async with OtlpSink(grpc_port=port) as sink:
        again = DaemonProcess(short_tmp, exporters={"up": exporter(port)})
        await again.start()
        try:
            assert await again.metric("sidecar_queue_corrupt_records_total", log="traces") == 2
            await sink.wait_for_items(Signal.TRACES, len(expected(acked)) - len(lost), 30)
            assert set(span_ids(sink)) == expected(acked) - lost
        finally:
            code, _, err = await again.stop()
        assert code == 0, err


async def test_disk_full_answers_retryable_errors_and_recovers(short_tmp: Path) -> None:
    """The queue directory is a 1 MiB tmpfs mounted by the test (needs root, as the test
    machine runs; it fails, not skips, without)."""
    mount = short_tmp / "small"
    mount.mkdir()
    await asyncio.to_thread(subprocess.run, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                                             str(mount)], check=True)
    try:
        async with OtlpSink() as sink:
            sink.stall()  # nothing is delivered, so nothing is freed: the disk fills
            daemon = DaemonProcess(short_tmp, exporters={"up": exporter(sink.grpc_port)},
                                   extra={"storage": {"dir": str(mount / "data")}})
            await daemon.start()
            try:
                acked: list[int] = []
                refused = None
                async with grpc.aio.insecure_channel(daemon.grpc_endpoint) as channel:
                    export = channel.unary_unary(TRACE_EXPORT)
                    for i in range(200):  # 200 x 12 KiB > 1 MiB
                        try:
                            await export(request(i * SPANS, pad=600), timeout=10)
                        except grpc.aio.AioRpcError as exc:
                            refused = exc
                            break
                        acked.append(i * SPANS)
                assert refused is not None, "the disk never filled"
                assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                async with aiohttp.ClientSession() as session, session.post(
                        f"{daemon.http_endpoint}/v1/traces", data=request(10**6, pad=600),
                        headers={"Content-Type": "application/x-protobuf"}) as response:
                    assert response.status == 503
                    assert int(response.headers["Retry-After"]) >= 1
                assert daemon.proc is not None
                assert daemon.proc.poll() is None
                assert await daemon.metric("sidecar_queue_disk_errors_total",
                                           reason="disk_full") >= 2
                sink.resume()  # space comes back as deliveries free segments
                await sink.wait_for_items(Signal.TRACES, len(expected(acked)), timeout=30)
                # delivered and acked: the segments go, and the space with them; a client
                # retrying as told gets in again
                more = await send_retrying(daemon.grpc_endpoint, 10**7, 20, pad=600)
                await sink.wait_for_items(Signal.TRACES, len(expected(acked + more)), 30)
                assert expected(acked + more) <= set(span_ids(sink))
            finally:
                code, _, err = await daemon.stop()
            assert code == 0, err
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mount)], check=False)


async def test_refused_batches_become_dead_letters_that_replay_after_the_fix(
        short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT,
                       message="vendor says: bad attribute")
        exporters = {"up": exporter(sink.grpc_port, batch={"max_delay": "0s"})}
        daemon = DaemonProcess(short_tmp, exporters=exporters)
        await daemon.start()
        try:
            refused = await send(daemon.grpc_endpoint, 0, 1)
            await wait_for(lambda: len(sink.requests) >= 1, 10, "the refused request")
            for _ in range(100):
                if await daemon.metric("sidecar_deadletter_items_total", exporter="up") > 0:
                    break
                await asyncio.sleep(0.05)
            assert await daemon.metric("sidecar_deadletter_items_total",
                                       exporter="up", signal="traces") == SPANS
            accepted = await send(daemon.grpc_endpoint, 1000, 2)
            await sink.wait_for_items(Signal.TRACES, len(expected(accepted)), 10)
        finally:
            code, _, err = await daemon.stop()
        assert code == 0, err
        config = str(short_tmp / "sidecar.yaml")

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([SIDECAR, "dlq", *args, "--config", config],
                                  capture_output=True, text=True, check=False)

        listed = await asyncio.to_thread(cli, "list")
        assert listed.returncode == 0, listed.stderr
        [line] = listed.stdout.splitlines()
        ident = line.split()[0]
        assert f"up  traces  {SPANS} items  permanent" in line
        shown = await asyncio.to_thread(cli, "show", ident)
        assert "vendor says: bad attribute" in shown.stdout
        assert '"spanId"' in shown.stdout
        replayed = await asyncio.to_thread(cli, "replay")
        assert replayed.returncode == 0, replayed.stderr
        assert set(span_ids(sink)) == expected(accepted) | expected(refused)
        assert (await asyncio.to_thread(cli, "list")).stdout == ""
        purged = await asyncio.to_thread(cli, "purge", "--yes")
        assert "deleted 0" in purged.stdout
