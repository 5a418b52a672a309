"""`StreamDelivery` on a real unix socket in front of a real pipeline (fan-out, export chain,
memory queue) whose sender is held: the client's `drain()` blocks while the pipeline is
full, nothing is polled meanwhile, and every line arrives, once and in order, after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sidecar.errors import PipelineFullError
from sidecar.exporthelper.chain import ExportChain
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Batch, Signal
from sidecar.net.delivery import StreamDelivery
from sidecar.net.framing import LineSplitter
from sidecar.pipeline.fanout import Fanout

LINES = 100_000  # 5 MB: far more than socket buffers, queue and read-ahead hold
PAD = b" " + b"." * 36


def lines_batch(lines: list[bytes]) -> Batch:
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    for line in lines:
        records.add().body.string_value = line.decode()
    return Batch.from_message(Signal.LOGS, request)


class HeldSender:
    """The exporter's far end: holds every send until `release` is set, then records."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.lines: list[str] = []

    async def start(self) -> None: ...

    async def send(self, batch: Batch) -> int:
        await self.release.wait()
        for resource in batch.message.resource_logs:  # type: ignore[union-attr]
            for scope in resource.scope_logs:
                self.lines.extend(r.body.string_value for r in scope.log_records)
        return 0

    async def close(self) -> None: ...

    def describe(self) -> str:
        return "held"


@dataclass
class Counting:
    """Passes through to the pipeline, counting the calls a receiver makes."""

    inner: Fanout
    consumed: int = 0
    refused: int = 0
    waits: int = 0

    async def consume(self, batch: Batch) -> None:
        self.consumed += 1
        try:
            await self.inner.consume(batch)
        except PipelineFullError:
            self.refused += 1
            raise

    async def wait_for_room(self, nbytes: int) -> None:
        self.waits += 1
        await self.inner.wait_for_room(nbytes)


@dataclass
class LineServer:
    """The smallest stream receiver: each read's complete lines become one logs batch."""

    consumer: Counting
    deliveries: list[StreamDelivery] = field(default_factory=list)
    transports: list[asyncio.BaseTransport] = field(default_factory=list)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()

    def protocol(self) -> asyncio.Protocol:
        server = self

        class LineProtocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                assert isinstance(transport, asyncio.ReadTransport)
                server.transports.append(transport)
                self.splitter = LineSplitter(1024)
                self.delivery = StreamDelivery(transport, server.consumer,
                                               max_pending_bytes=64 * 1024)
                server.deliveries.append(self.delivery)

            def data_received(self, data: bytes) -> None:
                lines = [line.data for line in self.splitter.feed(data)]
                if lines:
                    self.delivery.submit(lines_batch(lines))

            def eof_received(self) -> bool:
                last = self.splitter.close()
                if last is not None:
                    self.delivery.submit(lines_batch([last.data]))
                return False

        return LineProtocol()


async def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def pipeline() -> AsyncIterator[tuple[ExportChain, HeldSender]]:
    settings = ExporterSettings.model_validate({
        "type": "held", "queue": {"max_bytes": 32 * 1024, "concurrency": 1},
        "batch": {"max_delay": 0}, "retry": {"enabled": False}, "timeout": 60})
    sender = HeldSender()
    chain = ExportChain("stream-test", settings, sender)
    await chain.start()
    yield chain, sender
    sender.release.set()
    await chain.shutdown(asyncio.get_running_loop().time() + 5)


async def test_full_pipeline_blocks_the_writer_and_loses_nothing(
        pipeline: tuple[ExportChain, HeldSender], short_tmp: Path) -> None:
    chain, sender = pipeline
    consumer = Counting(Fanout(Signal.LOGS, [chain]))
    receiver = LineServer(consumer)
    path = str(short_tmp / "lines.sock")
    server = await asyncio.get_running_loop().create_unix_server(receiver.protocol, path)
    written = 0
    try:
        _, writer = await asyncio.open_unix_connection(path)

        async def write_all() -> None:
            nonlocal written
            for start in range(0, LINES, 500):
                writer.write(b"".join(b"line %06d%s\n" % (i, PAD)
                                      for i in range(start, start + 500)))
                await writer.drain()
                written = start + 500
            writer.write_eof()

        writing = asyncio.ensure_future(write_all())
        await wait_for(lambda: bool(receiver.deliveries) and receiver.deliveries[0].paused)
        delivery = receiver.deliveries[0]
        refused = consumer.refused
        await asyncio.sleep(0.5)
        # The pipeline is full: reading stopped, so the writer is stuck in drain() with most
        # of its lines unsent; and in that half second the receiver did not poll.
        assert not writing.done()
        assert written < LINES / 2, written
        assert delivery.paused
        assert consumer.refused - refused <= 1
        assert consumer.waits <= consumer.refused

        sender.release.set()
        await asyncio.wait_for(writing, 20)
        await wait_for(lambda: len(sender.lines) >= LINES)
        await wait_for(lambda: chain.queue.size_bytes == 0)
        writer.close()
        await writer.wait_closed()
    finally:
        receiver.close()
        server.close()
        await server.wait_closed()
    assert sender.lines == [f"line {i:06d}{PAD.decode()}" for i in range(LINES)]
    assert not delivery.paused
    assert delivery.pending_bytes == 0
    assert await delivery.close(asyncio.get_running_loop().time() + 1) == 0
    assert delivery.failed_items == 0


async def test_a_pipeline_that_shut_down_is_not_polled_in_a_busy_loop(
        pipeline: tuple[ExportChain, HeldSender], short_tmp: Path) -> None:
    """A sealed queue's `wait_for_room` returns at once and `consume` keeps refusing: the
    delivery backs off instead of spinning, and `close` gives the batch up, counted."""
    chain, _ = pipeline
    await chain.shutdown(asyncio.get_running_loop().time())
    consumer = Counting(Fanout(Signal.LOGS, [chain]))
    receiver = LineServer(consumer)
    path = str(short_tmp / "lines.sock")
    server = await asyncio.get_running_loop().create_unix_server(receiver.protocol, path)
    try:
        _, writer = await asyncio.open_unix_connection(path)
        writer.write(b"a\nb\n")
        await writer.drain()
        await wait_for(lambda: consumer.refused > 0)
        await asyncio.sleep(0.5)
        delivery = receiver.deliveries[0]
        assert delivery.paused
        # 10 ms doubling: about six attempts in half a second, not thousands
        assert consumer.consumed <= 10, consumer.consumed
        assert await delivery.close(asyncio.get_running_loop().time()) == 2
        writer.close()
        await writer.wait_closed()
    finally:
        receiver.close()
        server.close()
        await server.wait_closed()


async def test_lines_sent_before_the_client_left_are_still_delivered(
        pipeline: tuple[ExportChain, HeldSender], short_tmp: Path) -> None:
    """The client writes into a full pipeline and goes away. What it wrote waits in the
    socket (read or not) and arrives once there is room, the unterminated last line too."""
    chain, sender = pipeline
    fanout = Fanout(Signal.LOGS, [chain])
    await fanout.consume(lines_batch([b"x" * 40_000]))  # held by the sender: queue full
    consumer = Counting(fanout)
    receiver = LineServer(consumer)
    path = str(short_tmp / "lines.sock")
    server = await asyncio.get_running_loop().create_unix_server(receiver.protocol, path)
    try:
        _, writer = await asyncio.open_unix_connection(path)
        for i in range(5):
            writer.write(b"early %d\n" % i)
            await writer.drain()
            await asyncio.sleep(0.02)  # separate reads
        writer.write(b"last, no newline")
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: consumer.refused > 0)
        sender.release.set()
        await wait_for(lambda: len(sender.lines) == 7)
    finally:
        receiver.close()
        server.close()
        await server.wait_closed()
    assert sender.lines[1:] == [f"early {i}" for i in range(5)] + ["last, no newline"]


class SlowStage:
    """A stage that accepts every batch but only when `go` is set (a durable queue waiting
    for its disk, say): the backlog is the delivery's own, bounded by max_pending_bytes."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        await self.go.wait()
        self.batches.append(batch)

    async def wait_for_room(self, nbytes: int) -> None:
        raise AssertionError("never refused, so never asked")


async def test_a_slow_stage_pauses_reading_at_the_pending_bound(short_tmp: Path) -> None:
    stage = SlowStage()
    path = str(short_tmp / "lines.sock")
    deliveries: list[StreamDelivery] = []
    transports: list[asyncio.BaseTransport] = []

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.ReadTransport)
            transports.append(transport)
            self.delivery = StreamDelivery(transport, stage, max_pending_bytes=16 * 1024)
            deliveries.append(self.delivery)
            self.splitter = LineSplitter(1024)

        def data_received(self, data: bytes) -> None:
            lines = [line.data for line in self.splitter.feed(data)]
            if lines:
                self.delivery.submit(lines_batch(lines))

    server = await asyncio.get_running_loop().create_unix_server(Protocol, path)
    try:
        _, writer = await asyncio.open_unix_connection(path)
        total = 0
        for i in range(200):
            writer.write(b"slow %06d%s\n" % (i, PAD * 20))
            total += 1
        await wait_for(lambda: bool(deliveries) and deliveries[0].paused)
        delivery = deliveries[0]
        # paused by its backlog alone; one read past the bound at most
        assert 16 * 1024 < delivery.pending_bytes < 16 * 1024 + 300 * 1024
        stage.go.set()
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        await wait_for(lambda: sum(b.items for b in stage.batches) == total)
        assert not delivery.paused
    finally:
        for transport in transports:
            transport.close()
        server.close()
        await server.wait_closed()
