"""CPU per span of the Datadog native encoding against OTLP pass-through, in-process.

Both on the same requests: bench/loadgen.py's span shape (~740 B, 15 attributes, 100 spans
per request), merged into export requests of 2,000 spans as the chain sends them.

- otlp: what the otlp exporter does per request with `compression: gzip` (the request
  bytes go out as they are, gzipped);
- datadog: parse the OTLP bytes, map every span (datadog_mapping), serialize the
  AgentPayload, gzip it - the datadog exporter's `encode` and `gzip_compress`.

CPU time (`time.process_time`), the minimum of `--repeats` runs. With `--rotel`, the same
requests also go through rotel's Datadog exporter (`rotel-agent` from the PyPI package,
OTLP/HTTP in, a local 202 intake out) and its process CPU time (psutil, user + system,
receiving included) is divided by the spans its intake received. Not a test: prints
numbers only.

    .venv/bin/python bench/datadog_encoding.py [--requests 10] [--repeats 5] [--rotel]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psutil
import rotel
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import build_request

from sidecar._proto.datadog_trace_pb2 import AgentPayload
from sidecar.exporters.datadog import DatadogConfig, NativeTracesSender
from sidecar.exporthelper.compression import gzip_compress, gzip_decompress
from sidecar.model import Batch, Signal

SPANS_PER_EXPORT = 2000


def cpu_per_span(work: Callable[[], None], spans: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / spans * 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def rotel_cpu_per_span(exports: list[Batch]) -> float:
    """rotel-agent's CPU µs per span for the same requests, sent one at a time."""
    received = 0
    changed = asyncio.Event()

    async def intake(request: web.Request) -> web.Response:
        nonlocal received
        payload = AgentPayload.FromString(gzip_decompress(await request.read()))
        received += sum(len(c.spans) for tp in payload.tracerPayloads for c in tp.chunks)
        changed.set()
        return web.Response(status=202, text="{}")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/api/v0.2/traces", intake)
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    http_port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.create_subprocess_exec(
            str(Path(rotel.__file__).parent / "rotel-agent"), "start", "--exporter", "datadog",
            "--datadog-exporter-custom-endpoint", f"http://127.0.0.1:{port}",
            "--datadog-exporter-api-key", "bench", "--otlp-http-endpoint",
            f"127.0.0.1:{http_port}", "--otlp-grpc-endpoint", f"127.0.0.1:{_free_port()}",
            "--pid-file", f"{tmp}/rotel.pid", stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            cpu = psutil.Process(proc.pid)
            async with aiohttp.ClientSession() as session, asyncio.timeout(120):
                url = f"http://127.0.0.1:{http_port}/v1/traces"
                headers = {"Content-Type": "application/x-protobuf"}
                while True:  # until rotel listens
                    try:
                        async with session.post(url, data=b"", headers=headers):
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
                before = cpu.cpu_times()
                for batch in exports:
                    async with session.post(url, data=batch.payload, headers=headers) as r:
                        assert r.status == 200, r.status
                want = sum(b.items for b in exports)
                while received < want:
                    changed.clear()
                    await changed.wait()
                after = cpu.cpu_times()
        finally:
            proc.terminate()
            await proc.wait()
            await runner.cleanup()
    used = (after.user - before.user) + (after.system - before.system)
    return used / received * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10, help="export requests per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rotel", action="store_true", help="also measure rotel-agent")
    args = parser.parse_args()
    rng = random.Random(7)
    exports = []
    for _ in range(args.requests):
        # 20 SDK requests of 100 spans, concatenated as the batcher merges them
        payload = b"".join(build_request(rng) for _ in range(SPANS_PER_EXPORT // 100))
        exports.append(Batch.from_bytes(Signal.TRACES, payload))
    spans = sum(b.items for b in exports)
    sender = NativeTracesSender(DatadogConfig.model_validate(
        {"type": "datadog", "api_key": "bench", "env": "bench", "hostname": "bench"}))

    def otlp() -> None:
        for batch in exports:
            gzip_compress(batch.payload)

    def datadog() -> None:
        for batch in exports:
            body, _skipped, _languages, _stats = sender.encode(batch)
            assert body is not None
            gzip_compress(body)

    def datadog_map_only() -> None:
        for batch in exports:
            sender.encode(batch)

    otlp_us = cpu_per_span(otlp, spans, args.repeats)
    dd_us = cpu_per_span(datadog, spans, args.repeats)
    map_us = cpu_per_span(datadog_map_only, spans, args.repeats)
    otlp_bytes = sum(b.nbytes for b in exports) / spans
    dd_bytes = sum(len(sender.encode(b)[0] or b"") for b in exports) / spans
    print(f"{spans} spans in {len(exports)} requests of {SPANS_PER_EXPORT}")
    print(f"otlp pass-through (gzip)       {otlp_us:7.2f} us/span  {otlp_bytes:6.0f} B/span")
    print(f"datadog native (map+pb+gzip)   {dd_us:7.2f} us/span  {dd_bytes:6.0f} B/span")
    print(f"  of which map + serialize     {map_us:7.2f} us/span")
    print(f"ratio datadog / otlp           {dd_us / otlp_us:7.1f}x")
    if args.rotel:
        rotel_us = asyncio.run(rotel_cpu_per_span(exports))
        print(f"rotel-agent datadog exporter   {rotel_us:7.2f} us/span (process CPU, "
              "OTLP/HTTP receive included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
