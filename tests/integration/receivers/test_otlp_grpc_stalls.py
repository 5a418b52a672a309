"""Clients that start gRPC calls and never finish their requests: grpc holds a call's
request until it is whole, so the receiver bounds how many calls it takes at once (the rest
are refused before their request is read) and how long a connection lives (a stalled call
is closed with it), after which other clients are served again. Raw HTTP/2 frames (`h2`)
play the stalling client; the real OTel SDK exporter plays the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_helpers import Consumers

from sidecar.config import GrpcListenerConfig
from sidecar.model import Signal
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver

PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LIMIT = 4


@pytest.fixture
async def receiver(consumers: Consumers) -> AsyncIterator[OtlpGrpcReceiver]:
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(
        endpoint="127.0.0.1:0", max_concurrent_rpcs=LIMIT, max_connection_age=1.5,
        max_connection_age_grace=1.0), consumers)
    await receiver.start()
    yield receiver
    await receiver.shutdown(asyncio.get_running_loop().time() + 1.0)


class StallingClient:
    """Opens calls whose request says 1 MiB and sends 64 KiB of it, then nothing more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.statuses: dict[int, str] = {}  # stream -> grpc-status of its trailers
        self.goaway = False  # the server announced it is closing the connection
        self.closed = False

    async def open_calls(self, n: int) -> list[int]:
        streams = []
        for _ in range(n):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, [
                (":method", "POST"), (":scheme", "http"), (":path", PATH),
                (":authority", "sidecar"), ("content-type", "application/grpc"),
                ("te", "trailers")])
            streams.append(sid)
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()
        return streams

    async def send_part(self, sid: int) -> None:
        part = b"\x00" + (1024 * 1024).to_bytes(4, "big") + b"\x0a" * (64 * 1024 - 5)
        sent = 0
        while sent < len(part):
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                await self.pump(0.05)
                continue
            self.h2.send_data(sid, part[sent:sent + room])
            sent += room
            self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def pump(self, seconds: float) -> None:
        """Read what the server sends for `seconds` (or until it closes the connection)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not self.closed and (left := until - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return
            if not data:
                self.closed = True
                return
            if self.goaway:
                continue  # after GOAWAY only the end of the connection matters
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                # h2 refuses frames after the server's GOAWAY (grpc pings to learn what
                # the client got) and, in the same read, drops the GOAWAY's event
                assert self.h2.state_machine.state is h2.connection.ConnectionState.CLOSED
                self.goaway = True
                continue
            for event in events:
                if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    for key, value in event.headers:
                        if key == b"grpc-status":
                            self.statuses[event.stream_id] = value.decode()
                self.goaway = self.goaway or isinstance(event, h2.events.ConnectionTerminated)
            self.writer.write(self.h2.data_to_send())


def export(port: int, spans: tuple[ReadableSpan, ...]) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=2)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


async def test_stalled_calls_are_bounded_and_end_with_their_connection(
    receiver: OtlpGrpcReceiver, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.bound_port)
    client = StallingClient(reader, writer)
    try:
        streams = await client.open_calls(LIMIT + 3)
        await client.pump(0.5)
        # the calls past the limit are refused at once, before any of their request is sent
        refused = [sid for sid in streams if client.statuses.get(sid) == "8"]
        assert len(refused) == 3, client.statuses
        held = [sid for sid in streams if sid not in refused]
        for sid in held:
            await client.send_part(sid)
        await client.pump(0.2)
        assert all(sid not in client.statuses for sid in held)  # still waiting for the rest

        # while they hold every place, another client is refused (retryable)...
        assert await asyncio.to_thread(export, receiver.bound_port, sdk_spans) is (
            SpanExportResult.FAILURE)
        # ...until the stalling connection reaches its age and grace and is closed
        await client.pump(4.0)
        assert client.goaway
        assert client.closed
    finally:
        writer.close()
    assert await asyncio.to_thread(export, receiver.bound_port, sdk_spans) is (
        SpanExportResult.SUCCESS)
    assert len(consumers[Signal.TRACES].batches) == 1
