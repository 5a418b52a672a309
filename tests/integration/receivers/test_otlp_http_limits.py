"""OTLP/HTTP uploads that stall, stop half-way or pile up, from raw sockets: the body
timeout (408), the in-flight byte budget (503 + Retry-After), a client gone mid-body
(`truncated`, no traceback), and bodies freed by reference counting, not the collector."""

from __future__ import annotations

import asyncio
import gc
import gzip
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from receiver_helpers import Consumers

from sidecar.config import HttpListenerConfig
from sidecar.model import Signal
from sidecar.receivers.otlp_http import OtlpHttpReceiver
from sidecar.testing import traces_batch

BAD = "sidecar_receiver_bad_requests_total"
LIMIT = 1024 * 1024


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def head(length: int | None, *, extra: str = "", path: str = "/v1/traces") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/x-protobuf\r\n"
            f"{framing}\r\n{extra}\r\n").encode()


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10) -> Answer:
    async with asyncio.timeout(timeout):
        lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
    return Answer(status, headers, body)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def start(consumers: Consumers, **settings: object) -> OtlpHttpReceiver:
    config = HttpListenerConfig.model_validate(
        {"endpoint": "127.0.0.1:0", "max_body_size": LIMIT, **settings})
    receiver = OtlpHttpReceiver("otlp", config, consumers)
    await receiver.start()
    return receiver


@pytest.fixture
async def receiver(consumers: Consumers) -> AsyncIterator[OtlpHttpReceiver]:
    receiver = await start(consumers, body_timeout=0.5, max_in_flight_bytes=2 * LIMIT)
    yield receiver
    await receiver.shutdown(asyncio.get_running_loop().time() + 1)


def bad(metric: Callable[..., float], reason: str) -> float:
    return metric(BAD, receiver="otlp", transport="http", reason=reason)


def body_of(size: int) -> bytes:
    """A valid traces request of exactly `size` bytes (one span with a long name)."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(name="x")
    span.name = "x" * (size - request.ByteSize() + 1)
    while request.ByteSize() > size:  # the length prefix grew with the name
        span.name = span.name[:-1]
    assert request.ByteSize() == size
    return request.SerializeToString()


async def post_ok(port: int, body: bytes) -> Answer:
    reader, writer = await connect(port)
    try:
        writer.write(head(len(body)) + body)
        return await read_answer(reader)
    finally:
        writer.close()


# --- body timeout -----------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_stalled_body_gets_408_and_close(
    receiver: OtlpHttpReceiver, metric: Callable[..., float], consumers: Consumers,
    chunked: bool,
) -> None:
    before = bad(metric, "timeout")
    reader, writer = await connect(receiver.bound_port)
    try:
        if chunked:
            writer.write(head(None) + b"400\r\n" + b"\0" * 100)
        else:
            writer.write(head(1000) + b"\0" * 100)
        answer = await read_answer(reader, timeout=5)
    finally:
        writer.close()
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert "within 0.5s" in status_pb2.Status.FromString(answer.body).message
    assert bad(metric, "timeout") == before + 1
    assert consumers[Signal.TRACES].batches == []


async def test_a_slow_but_steady_body_is_still_cut_at_the_timeout(
    receiver: OtlpHttpReceiver,
) -> None:
    """The timeout bounds the whole body, so trickling a byte now and then does not hold
    a request (and its share of the budget) open for ever."""
    reader, writer = await connect(receiver.bound_port)
    try:
        writer.write(head(1000))
        answer_task = asyncio.ensure_future(read_answer(reader, timeout=5))
        for _ in range(50):
            if answer_task.done():
                break
            writer.write(b"\0")
            await asyncio.sleep(0.05)
        answer = await answer_task
    finally:
        writer.close()
    assert answer.status == 408


# --- client gone mid-body ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["content-length", "chunked", "gzip"])
async def test_client_gone_mid_body_is_truncated_without_a_traceback(
    receiver: OtlpHttpReceiver, metric: Callable[..., float], caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = bad(metric, "truncated")
    _, writer = await connect(receiver.bound_port)
    if kind == "chunked":
        writer.write(head(None) + b"10000\r\n" + b"\0" * 1000)
    elif kind == "gzip":
        body = gzip.compress(b"\0" * 100_000)
        writer.write(head(len(body), extra="Content-Encoding: gzip\r\n") + body[:len(body) // 2])
    else:
        writer.write(head(100_000) + b"\0" * 1000)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()
    await wait_for(lambda: bad(metric, "truncated") == before + 1)
    await asyncio.sleep(0.05)  # anything the server would log about it, it has logged now
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    # and the receiver serves the next client
    assert (await post_ok(receiver.bound_port, traces_batch(1).payload)).status == 200


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """Run with the cycle collector off, as it effectively is in the daemon between rare
    full collections (`gc.freeze()` at startup, few allocations while clients stall)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("no_cycle_collector")
@pytest.mark.parametrize("kind", ["content-length", "chunked", "gzip", "timeout"])
async def test_a_body_cut_off_is_freed_without_the_cycle_collector(
    receiver: OtlpHttpReceiver, metric: Callable[..., float], kind: str,
) -> None:
    """Measures what the Python heap still holds after three clients each sent 900 KB of a
    body and vanished (or stalled until the 408): before the fix, aiohttp's stored
    disconnect exception and our frames kept each partial body alive in a reference cycle
    until a full collection."""
    sent = 900 * 1024
    gzipped = gzip.compress(bytes(range(256)) * (LIMIT // 256), compresslevel=1)
    reason = "timeout" if kind == "timeout" else "truncated"
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        before = bad(metric, reason)
        for _ in range(3):
            reader, writer = await connect(receiver.bound_port)
            if kind == "chunked":
                writer.write(head(None) + b"%x\r\n" % LIMIT + b"\0" * sent)
            elif kind == "gzip":
                extra = "Content-Encoding: gzip\r\n"
                writer.write(head(len(gzipped), extra=extra) + gzipped[:len(gzipped) * 9 // 10])
            else:
                writer.write(head(LIMIT) + b"\0" * sent)
            await writer.drain()
            if kind == "timeout":
                assert (await read_answer(reader, timeout=5)).status == 408
            else:
                await asyncio.sleep(0.1)
            writer.transport.abort()
            await asyncio.sleep(0.05)
        await wait_for(lambda: bad(metric, reason) == before + 3)
        await asyncio.sleep(0.1)
        held = tracemalloc.get_traced_memory()[0] - baseline
        gc.collect()
        held_after_collect = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    # three partial bodies are 2.7 MB; what is left is sockets and small bookkeeping
    assert held < 512 * 1024, (held, held_after_collect)
    assert held - held_after_collect < 256 * 1024


# --- in-flight budget -------------------------------------------------------------------------

async def test_budget_refuses_a_declared_body_before_reading_it(
    receiver: OtlpHttpReceiver, metric: Callable[..., float], consumers: Consumers,
) -> None:
    before = bad(metric, "in_flight_limit")
    truncated = bad(metric, "truncated")
    port = receiver.bound_port
    stalled = []
    for _ in range(2):  # two bodies declared just under LIMIT fill most of the 2 * LIMIT
        reader, writer = await connect(port)
        writer.write(head(LIMIT - 64 * 1024) + b"\0" * 1000)
        stalled.append((reader, writer))
    await asyncio.sleep(0.1)
    reader, writer = await connect(port)
    try:
        # the third is told to come back, from its headers alone: no 100 Continue
        writer.write(head(LIMIT, extra="Expect: 100-continue\r\n"))
        answer = await read_answer(reader, timeout=2)
    finally:
        writer.close()
    assert answer.status == 503
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["connection"] == "close"
    status = status_pb2.Status.FromString(answer.body)
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 1
    assert bad(metric, "in_flight_limit") == before + 1
    # a small body still fits beside the stalled ones
    assert (await post_ok(port, traces_batch(1).payload)).status == 200
    for _, w in stalled:
        w.transport.abort()
    await wait_for(lambda: bad(metric, "truncated") == truncated + 2)
    # their shares are back: a body of nearly LIMIT fits again
    assert (await post_ok(port, body_of(LIMIT - 100))).status == 200
    assert len(consumers[Signal.TRACES].batches) == 2


async def test_budget_refuses_a_chunked_body_once_it_crosses(
    receiver: OtlpHttpReceiver, metric: Callable[..., float],
) -> None:
    before = bad(metric, "in_flight_limit")
    port = receiver.bound_port
    holders = []
    for length in (LIMIT, LIMIT // 2):  # together they hold 1.5 LIMIT of the 2 LIMIT
        _, w = await connect(port)
        w.write(head(length) + b"\0" * 1000)
        holders.append(w)
    await asyncio.sleep(0.1)
    reader, writer = await connect(port)
    try:
        chunk = 64 * 1024
        writer.write(head(None))
        answer_task = asyncio.ensure_future(read_answer(reader, timeout=5))
        sent = 0
        while not answer_task.done() and sent < LIMIT:
            writer.write(b"%x\r\n" % chunk + b"\0" * chunk + b"\r\n")
            await writer.drain()
            sent += chunk
            await asyncio.sleep(0.005)
        answer = await answer_task
    finally:
        writer.close()
        for w in holders:
            w.transport.abort()
    assert answer.status == 503
    assert bad(metric, "in_flight_limit") == before + 1
    # refused once past the half LIMIT that was left, well before its own size limit
    assert sent < 0.9 * LIMIT


def test_budget_must_fit_the_largest_body() -> None:
    with pytest.raises(ValueError, match=r"max_in_flight_bytes .* must be at least max_body_size"):
        HttpListenerConfig(max_body_size=LIMIT, max_in_flight_bytes=LIMIT - 1)
