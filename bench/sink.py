"""OTLP/gRPC sink: accepts trace exports as raw bytes and counts the spans.

Runs as its own process; every target under test exports here. Counting walks the protobuf
wire format (ExportTraceServiceRequest -> ResourceSpans -> ScopeSpans -> Span) without
building any message, which keeps the sink's own CPU small on a 2-core machine. gzip
request compression is undone by grpcio before the handler sees the bytes. OTLP/HTTP
protobuf (`POST /v1/traces`, gzip or not) is accepted on a second port.

Control on stdin/stdout, one line each:
  startup: prints {"port": N, "http_port": M}
  "stats"  -> {"spans": ..., "requests": ..., "bytes": ..., "bad": ..., "cpu_s": ...}
  "quit"   -> exits
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import zlib
from typing import Any

import grpc

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int, want: int) -> list[tuple[int, int]]:
    """(start, end) of every length-delimited field number `want` in buf[start:end]."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _varint(buf, pos)
            if key >> 3 == want:
                out.append((pos, pos + length))
            pos += length
        elif wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != end:
        raise ValueError("truncated message")
    return out


def count_spans(buf: bytes) -> int:
    """Spans in a serialized ExportTraceServiceRequest (field numbers from trace.proto)."""
    total = 0
    for rs in _fields(buf, 0, len(buf), 1):          # resource_spans = 1
        for ss in _fields(buf, rs[0], rs[1], 2):     # scope_spans = 2
            total += len(_fields(buf, ss[0], ss[1], 2))  # spans = 2
    return total


class Counter:
    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self.bytes = 0
        self.bad = 0
        self.other = 0

    async def export(self, request: bytes, context: Any) -> bytes:
        self.requests += 1
        self.bytes += len(request)
        try:
            self.spans += count_spans(request)
        except (ValueError, IndexError):
            self.bad += 1
        return b""  # an empty ExportTraceServiceResponse

    async def ignore(self, request: bytes, context: Any) -> bytes:
        self.other += 1
        return b""

    async def http_export(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        if body[:2] == b"\x1f\x8b":  # gzip that the server did not already undo
            body = zlib.decompress(body, 31)
        if request.path == "/v1/traces":
            await self.export(body, None)
        else:
            self.other += 1
        return web.Response(body=b"", content_type="application/x-protobuf")

    def stats(self) -> dict[str, Any]:
        t = os.times()
        return {"spans": self.spans, "requests": self.requests, "bytes": self.bytes,
                "bad": self.bad, "other": self.other, "cpu_s": t.user + t.system,
                "t": time.monotonic()}


def _handler(service: str, fn: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(service, {
        "Export": grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=None, response_serializer=None)})


async def serve(port: int, http_port: int | None = None) -> None:
    counter = Counter()
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 256 << 20),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((
        _handler(TRACE_SERVICE, counter.export),
        _handler(LOGS_SERVICE, counter.ignore),
        _handler(METRICS_SERVICE, counter.ignore),
    ))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()

    runner = None
    http_bound = None
    if http_port is not None:  # imported only when asked: aiohttp adds ~11 MiB of RSS
        from aiohttp import web

        app = web.Application(client_max_size=256 << 20)
        app.router.add_post("/v1/{signal}", counter.http_export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", http_port)
        await site.start()
        http_bound = runner.addresses[0][1]
    print(json.dumps({"port": bound, "http_port": http_bound}), flush=True)

    loop = asyncio.get_running_loop()
    quit_event = asyncio.Event()

    def control() -> None:  # a thread: blocks on stdin, answers from the counters
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                print(json.dumps(counter.stats()), flush=True)
            elif cmd == "quit":
                break
        loop.call_soon_threadsafe(quit_event.set)

    threading.Thread(target=control, daemon=True).start()
    await quit_event.wait()
    if runner is not None:
        await runner.cleanup()
    await server.stop(grace=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="gRPC port, 0 picks a free one")
    parser.add_argument("--http-port", type=int, default=None,
                        help="also serve OTLP/HTTP on this port (0 picks a free one)")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (as sidecar does)")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.port, args.http_port))
    else:
        asyncio.run(serve(args.port, args.http_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
