"""A real daemon's memory while 20 clients stall just under the HTTP body limit, and after
they disconnect (RSS of the subprocess, with uvloop and `gc.freeze()` as in production).

Before the fix all 20 bodies were held (20 x 8 MiB) and stayed held after the clients
left: each disconnect left its partial body in a reference cycle that the collector, which
runs by object count, did not get to while the daemon was idle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.daemon import DaemonProcess

MIB = 1024 * 1024
LIMIT = 8 * MIB
BUDGET = 4 * LIMIT  # room for 4 stalled bodies just under the limit; 16 of 20 refused
CLIENTS = 20


def head(length: int) -> bytes:
    return (f"POST /v1/traces HTTP/1.1\r\nHost: sidecar\r\n"
            f"Content-Type: application/x-protobuf\r\nContent-Length: {length}\r\n\r\n").encode()


async def rss_settled(process: psutil.Process) -> int:
    """RSS once two samples 0.2 s apart differ by less than 256 KiB (at most 5 s)."""
    last = process.memory_info().rss
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = process.memory_info().rss
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


async def stall(port: int) -> tuple[asyncio.StreamWriter, bytes | None]:
    """Declare LIMIT - 1 bytes, send all but the last KiB, and wait. Returns the writer and
    the status line, if the daemon answered (refused) within 3 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(LIMIT - 1) + b"\0" * (LIMIT - 1 - 1024))
    await writer.drain()
    try:
        async with asyncio.timeout(3):
            return writer, await reader.readline()
    except TimeoutError:
        return writer, None


async def test_stalled_uploads_are_bounded_and_their_memory_comes_back(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # glibc raises its mmap threshold as large blocks are freed, and then keeps freed heap
    # pages for reuse: 0-9.5 MiB of RSS in 10 runs here, whatever Python did. A fixed
    # threshold takes the allocator's choice out of the measurement, so RSS shows what the
    # daemon itself still holds (the bodies before the fix: +160 MiB either way).
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    daemon = DaemonProcess(short_tmp, {"local": {"type": "file", "path": str(short_tmp / "out")}})
    daemon.extra = {"receivers": {"otlp": {"grpc": None, "http": {
        "endpoint": f"127.0.0.1:{daemon.http_port}", "max_body_size": LIMIT,
        "max_in_flight_bytes": BUDGET, "body_timeout": "60s"}}}}
    await daemon.start()
    try:
        assert daemon.proc is not None
        process = psutil.Process(daemon.proc.pid)
        before = await rss_settled(process)

        clients = await asyncio.gather(*(stall(daemon.http_port) for _ in range(CLIENTS)))
        during = await rss_settled(process)
        answers = [line for _, line in clients]
        for writer, _ in clients:
            writer.transport.abort()
        truncated = 0.0
        deadline = time.monotonic() + 10
        while truncated < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            truncated = await daemon.metric("sidecar_receiver_bad_requests_total",
                                            reason="truncated")
        after = await rss_settled(process)
        refused = await daemon.metric("sidecar_receiver_bad_requests_total",
                                      reason="in_flight_limit")
    finally:
        _, _, stderr = await daemon.stop()

    # the budget admitted 4 bodies and refused the other 16 from their headers
    assert answers.count(None) == 4
    assert answers.count(b"HTTP/1.1 503 Service Unavailable\r\n") == 16
    assert refused == 16
    assert truncated == 4
    held, kept = (during - before) / MIB, (after - before) / MIB
    # While stalled the daemon holds the 4 admitted bodies (so the sample means something),
    # and not much more: without the budget it was all 20 (+160 MiB).
    assert BUDGET / 2 / MIB < held < (BUDGET + LIMIT) / MIB, (held, kept)
    # Once they are gone, less than half of one body is left: none of the 4 partial bodies
    # is still held (before the fix all 20, +160 MiB). Measured: +0.1 MiB.
    assert kept < LIMIT / 2 / MIB, (held, kept)
    assert "Traceback" not in stderr
