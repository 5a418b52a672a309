"""CPU per span of the Datadog native encoding against OTLP pass-through, in-process.

Both on the same requests: bench/loadgen.py's span shape (~740 B, 15 attributes, 100 spans
per request), merged into export requests of 2,000 spans as the chain sends them.

- otlp: what the otlp exporter does per request with `compression: gzip` (the request
  bytes go out as they are, gzipped);
- datadog: parse the OTLP bytes, map every span (datadog_mapping), serialize the
  AgentPayload, gzip it - the datadog exporter's `encode` and `gzip_compress`.

- rotel: the same requests through rotel's Datadog exporter (`rotel-agent` from the
  PyPI package, custom Datadog endpoint = a local 202 intake, OTLP/HTTP in): its process
  CPU time (psutil, user + system) over the spans its intake received. It includes rotel
  receiving and decoding the OTLP/HTTP requests, which the in-process numbers above do
  not (the sidecar's receiver costs extra): the comparison favours us by that much.

Method: CPU time (`time.process_time` for ours), one pass over all requests per repeat,
the three measured interleaved (otlp, datadog, rotel, otlp, ...) so machine load hits
them alike; medians (and minimums) of `--repeats` passes. Not a test: prints numbers only.
`make bench` runs it through bench/run.py (`--quick` there: 3 requests, 3 repeats).

    .venv/bin/python bench/datadog_encoding.py [--requests 10] [--repeats 7] [--no-rotel]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import statistics
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
from sidecar.exporthelper.body import NO_LIMITS
from sidecar.exporthelper.compression import gzip_compress, gzip_decompress
from sidecar.model import Batch, Signal

SPANS_PER_EXPORT = 2000


def cpu_per_span(work: Callable[[], None], spans: int) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) / spans * 1e6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rotel:
    """rotel-agent with its Datadog exporter pointed at a local intake; `cpu_per_span`
    sends every request once and returns its process CPU µs per span received."""

    def __init__(self) -> None:
        self.received = 0
        self.changed = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    async def _intake(self, request: web.Request) -> web.Response:
        payload = AgentPayload.FromString(gzip_decompress(await request.read()))
        self.received += sum(len(c.spans) for tp in payload.tracerPayloads for c in tp.chunks)
        self.changed.set()
        return web.Response(status=202, text="{}")

    async def __aenter__(self) -> Rotel:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/v0.2/traces", self._intake)
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        http_port = _free_port()
        tmp = self._stack.enter_context(tempfile.TemporaryDirectory())
        proc = await asyncio.create_subprocess_exec(
            str(Path(rotel.__file__).parent / "rotel-agent"), "start", "--exporter", "datadog",
            "--datadog-exporter-custom-endpoint", f"http://127.0.0.1:{port}",
            "--datadog-exporter-api-key", "bench", "--otlp-http-endpoint",
            f"127.0.0.1:{http_port}", "--otlp-grpc-endpoint", f"127.0.0.1:{_free_port()}",
            "--pid-file", f"{tmp}/rotel.pid", stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

        async def stop() -> None:
            proc.terminate()
            await proc.wait()

        self._stack.push_async_callback(stop)
        self.cpu = psutil.Process(proc.pid)
        self.session = await self._stack.enter_async_context(aiohttp.ClientSession())
        self.url = f"http://127.0.0.1:{http_port}/v1/traces"
        async with asyncio.timeout(60):
            while True:  # until rotel listens
                try:
                    async with self.session.post(self.url, data=b"", headers=_PB):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def cpu_per_span(self, exports: list[Batch]) -> float:
        start = self.received
        before = self.cpu.cpu_times()
        async with asyncio.timeout(120):
            for batch in exports:
                async with self.session.post(self.url, data=batch.payload, headers=_PB) as r:
                    assert r.status == 200, r.status
            want = start + sum(b.items for b in exports)
            while self.received < want:
                self.changed.clear()
                await self.changed.wait()
        after = self.cpu.cpu_times()
        used = (after.user - before.user) + (after.system - before.system)
        return used / (self.received - start) * 1e6


_PB = {"Content-Type": "application/x-protobuf"}


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
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
            body = sender.encode(batch, NO_LIMITS)
            assert body.items
            gzip_compress(body.data)

    results: dict[str, list[float]] = {"otlp": [], "datadog": [], "rotel": []}
    async with contextlib.AsyncExitStack() as stack:
        peer = None if args.no_rotel else await stack.enter_async_context(Rotel())
        datadog()  # warm caches (lru, generated classes) before measuring
        for _ in range(args.repeats):
            results["otlp"].append(cpu_per_span(otlp, spans))
            results["datadog"].append(cpu_per_span(datadog, spans))
            if peer is not None:
                results["rotel"].append(await peer.cpu_per_span(exports))
    otlp_bytes = sum(b.nbytes for b in exports) / spans
    dd_bytes = sum(len(sender.encode(b, NO_LIMITS).data) for b in exports) / spans
    print(f"{spans} spans in {len(exports)} requests of {SPANS_PER_EXPORT}, "
          f"{args.repeats} interleaved passes (median, min)")
    o, d = results["otlp"], results["datadog"]
    print(f"otlp pass-through (gzip)        {_median(o):7.2f} {min(o):7.2f} us/span  "
          f"{otlp_bytes:6.0f} B/span")
    print(f"datadog native (map+pb+gzip)    {_median(d):7.2f} {min(d):7.2f} us/span  "
          f"{dd_bytes:6.0f} B/span (APM stats extraction included)")
    print(f"ratio datadog / otlp            {_median(d) / _median(o):7.1f}x")
    if results["rotel"]:
        r = results["rotel"]
        print(f"rotel-agent datadog exporter    {_median(r):7.2f} {min(r):7.2f} us/span "
              "(process CPU, its OTLP/HTTP receive included)")
        print(f"ratio datadog / rotel           {_median(d) / _median(r):7.2f}x")
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10, help="export requests per run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-rotel", action="store_true", help="skip the rotel-agent peer")
    parser.add_argument("--quick", action="store_true", help="3 requests, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeats = 3, 3
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
