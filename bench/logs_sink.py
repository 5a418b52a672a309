"""OTLP/HTTP logs sink for bench/logs_bench.py: counts the log records of every
`POST /v1/logs` (protobuf, gzip or not) and answers 200.

Control on stdin/stdout, one line each: startup prints {"port": N}; "stats" ->
{"records": ..., "requests": ..., "bad": ...}; "reset" zeroes the counts; "quit" exits."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import zlib
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest


class Counts:
    def __init__(self) -> None:
        self.records = 0
        self.requests = 0
        self.bad = 0

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if body[:2] == b"\x1f\x8b":  # aiohttp undoes Content-Encoding itself
            body = zlib.decompress(body, 31)
        self.requests += 1
        try:
            message = ExportLogsServiceRequest.FromString(body)
        except Exception:
            self.bad += 1
            return web.Response(status=400)
        self.records += sum(len(scope.log_records) for resource in message.resource_logs
                            for scope in resource.scope_logs)
        return web.Response(body=b"", content_type="application/x-protobuf")

    def stats(self) -> dict[str, Any]:
        return {"records": self.records, "requests": self.requests, "bad": self.bad}


async def serve() -> None:
    counts = Counts()
    app = web.Application(client_max_size=256 << 20)
    app.router.add_post("/v1/logs", counts.export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def control() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                print(json.dumps(counts.stats()), flush=True)
            elif command == "reset":
                counts.records = counts.requests = counts.bad = 0
                print("{}", flush=True)
            elif command == "quit":
                break
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=control, daemon=True).start()
    await done.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
