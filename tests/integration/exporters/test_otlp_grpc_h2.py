"""The gRPC gzip path (`sidecar.exporthelper.grpc_h2`) against a real grpc.aio OtlpSink,
through a loopback TCP proxy that counts connections and keeps the client's HTTP/2
frames, so the tests see what went over the wire. Checks that hold for both gRPC
transports are in test_otlp_grpc_transports.py."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import hpack
import pytest
from export_helpers import TcpProxy, h2_frames
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from raw_h2 import Peer, RawH2Server, Stream

from sidecar.errors import PermanentError, RetryableError
from sidecar.exporters.otlp import GrpcSender, OtlpConfig
from sidecar.exporthelper.compression import gzip_decompress
from sidecar.exporthelper.grpc_h2 import GrpcH2Client, GrpcStatusError, Keepalive, frame_message
from sidecar.model import Batch, Signal
from sidecar.testing import OtlpSink, traces_batch

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def client_requests(proxy: TcpProxy) -> list[tuple[dict[str, str], bytes]]:
    """(headers, DATA bytes) of every stream the client opened, in stream order."""
    out: list[tuple[dict[str, str], bytes]] = []
    for raw in proxy.to_server:
        assert raw.startswith(_PREFACE)
        decoder = hpack.Decoder()
        headers: dict[int, dict[str, str]] = {}
        data: dict[int, bytearray] = {}
        for kind, _flags, stream, payload in h2_frames(raw[len(_PREFACE):]):
            if kind == 1:  # HEADERS (our client sends neither padding nor priority)
                headers[stream] = dict(decoder.decode(payload, raw=False))
            elif kind == 0:
                data.setdefault(stream, bytearray()).extend(payload)
        out.extend((headers[s], bytes(data.get(s, b""))) for s in sorted(headers))
    return out


def sender(endpoint: str, **overrides: Any) -> GrpcSender:
    return GrpcSender(OtlpConfig.model_validate(
        {"type": "otlp", "endpoint": endpoint, "timeout": 10, **overrides}))


def incompressible_batch(seed: int, size: int) -> Batch:
    """One span carrying `size` random bytes: gzip cannot shrink it, so each message is
    far larger than HTTP/2's initial 64 KiB flow-control window."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=(seed + 1).to_bytes(16, "big"), span_id=(seed + 1).to_bytes(8, "big"),
        name=f"blob {seed}")
    span.attributes.append(KeyValue(key="blob", value=AnyValue(
        bytes_value=random.Random(seed).randbytes(size))))
    return Batch.from_message(Signal.TRACES, request)


async def test_messages_go_out_gzip_compressed_by_us(sink: OtlpSink) -> None:
    batch = traces_batch(200, attrs=10)
    async with TcpProxy(sink.grpc_port) as relay:
        s = sender(relay.endpoint)
        await s.start()
        try:
            assert await s.send(batch) == 0
        finally:
            await s.close()
        ((headers, data),) = client_requests(relay)
    assert headers["grpc-encoding"] == "gzip"
    assert headers[":path"] == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    assert headers["user-agent"].startswith("sidecar/")
    assert headers["grpc-timeout"] == "10000m"
    assert data[0] == 1  # the compressed flag of the gRPC message prefix
    assert int.from_bytes(data[1:5], "big") == len(data) - 5
    assert len(data) < batch.nbytes // 3
    assert gzip_decompress(data[5:]) == batch.payload
    # and the real grpc server inflated it to the identical request
    assert [r.body for r in sink.requests] == [batch.payload]


async def test_many_concurrent_large_sends_share_one_connection(sink: OtlpSink) -> None:
    batches = [incompressible_batch(seed, 1_000_000) for seed in range(20)]
    async with TcpProxy(sink.grpc_port) as relay:
        s = sender(relay.endpoint)
        await s.start()
        try:
            async with asyncio.timeout(60):
                rejected = await asyncio.gather(*(s.send(b) for b in batches))
        finally:
            await s.close()
        assert relay.connections == 1
        assert len(client_requests(relay)) == 20
    assert rejected == [0] * 20
    assert sorted(r.body for r in sink.requests) == sorted(b.payload for b in batches)
    assert all(r.outcome == "ok" for r in sink.requests)


async def test_trailers_only_error_carries_code_and_decoded_message(sink: OtlpSink) -> None:
    message = "bad span: 100% wrong, naïve"  # percent-encoded on the wire
    sink.fail_next(1, grpc_code=grpc.StatusCode.INVALID_ARGUMENT, message=message)
    sink.fail_next(1, grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=2.5)
    s = sender(sink.grpc_endpoint)
    await s.start()
    try:
        with pytest.raises(PermanentError) as permanent:
            await s.send(traces_batch(1))
        with pytest.raises(RetryableError) as retryable:
            await s.send(traces_batch(1))
        await s.send(traces_batch(2))  # the connection survives error answers
    finally:
        await s.close()
    assert str(permanent.value) == f"gRPC INVALID_ARGUMENT: {message}"
    assert retryable.value.retry_after == 2.5
    assert [r.outcome for r in sink.requests] == ["failed", "failed", "ok"]


async def test_unknown_method_maps_to_unimplemented(sink: OtlpSink) -> None:
    client = GrpcH2Client("127.0.0.1", sink.grpc_port, ssl_context=None, user_agent="t/1")
    try:
        with pytest.raises(GrpcStatusError) as info:
            await client.unary("/no.Such/Method", frame_message(b"", False), timeout=5,
                               gzip=False)
    finally:
        await client.close()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- GOAWAY: h2 closes its state machine on one (python-hyper/h2#1181), so the client
# keeps GOAWAY frames away from h2 and drains the connection itself

def client(server: RawH2Server) -> GrpcH2Client:
    port = int(server.endpoint.rsplit(":", 1)[1])
    return GrpcH2Client("127.0.0.1", port, ssl_context=None, user_agent="t/1")


async def unary(c: GrpcH2Client, timeout: float = 10) -> bytes | None:
    return await c.unary("/x.Service/Export", frame_message(b"", False), timeout=timeout,
                         gzip=False)


async def test_goaway_fails_only_streams_above_its_last_stream_id() -> None:
    held: list[tuple[Peer, Stream]] = []

    def respond(peer: Peer, stream: Stream) -> None:
        if peer.number > 0:
            peer.ok(stream.stream_id)
        else:
            held.append((peer, stream))
            if len(held) == 2:
                peer.goaway(last_stream_id=held[0][1].stream_id)

    async with RawH2Server(respond) as server:
        c = client(server)
        try:
            taken = asyncio.create_task(unary(c))
            await server.wait_for_streams(1)
            # not taken by the peer: fails at once (retryable), not at the 10 s deadline
            with pytest.raises(GrpcStatusError, match="not processed") as refused:
                async with asyncio.timeout(5):
                    await unary(c)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # the draining connection takes no new call; a new connection does
            assert await unary(c) == b""
            assert len(server.peers) == 2
            assert not taken.done()
            peer, stream = held[0]
            peer.ok(stream.stream_id)  # answered after the GOAWAY
            assert await taken == b""
            # drained: the client closes the old connection
            async with asyncio.timeout(5):
                await server.peers[0].closed.wait()
            assert await unary(c) == b""
            assert len(server.peers) == 2
        finally:
            await c.close()
    assert [s.connection for s in server.streams] == [0, 0, 1, 1]


async def test_goaway_then_close_fails_the_rest_retryable() -> None:
    def respond(peer: Peer, stream: Stream) -> None:
        peer.goaway(last_stream_id=stream.stream_id)
        peer.writer.close()  # and never answers the stream it said it may process

    async with RawH2Server(respond) as server:
        c = client(server)
        try:
            with pytest.raises(GrpcStatusError) as info:
                await unary(c)
        finally:
            await c.close()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("frame", [
    b"\x00\x00\x02\x07\x00\x00\x00\x00\x00\x00\x00",  # GOAWAY with a 2-byte body
    b"\x00\x00\x08\x07\x00\x00\x00\x00\x03" + bytes(8),  # GOAWAY on a stream
    b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",  # announces a 16 MiB frame
], ids=["short-goaway", "goaway-on-stream", "huge-frame"])
async def test_hostile_frames_drop_the_connection_not_the_client(frame: bytes) -> None:
    def respond(peer: Peer, stream: Stream) -> None:
        if peer.number == 0:
            peer.writer.write(frame)
        else:
            peer.ok(stream.stream_id)

    async with RawH2Server(respond) as server:
        c = client(server)
        try:
            with pytest.raises(GrpcStatusError) as info:
                async with asyncio.timeout(5):
                    await unary(c)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert await unary(c) == b""  # reconnects
        finally:
            await c.close()


async def test_too_many_pings_doubles_the_keepalive_time(sink: OtlpSink) -> None:
    """A grpc server takes a PING on an idle connection only every 2 hours by default and
    answers more with GOAWAY too_many_pings; grpc-core then doubles its keepalive time,
    and so does the h2 client."""
    c = GrpcH2Client("127.0.0.1", sink.grpc_port, ssl_context=None, user_agent="t/1",
                     keepalive=Keepalive(time=0.1, timeout=5))
    path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    message = frame_message(traces_batch(1).payload, False)
    try:
        await c.unary(path, message, timeout=5, gzip=False)
        for _ in range(200):  # bounded: 10 s
            if c.keepalive.time != 0.1:
                break
            await asyncio.sleep(0.05)
        assert c.keepalive.time == 0.2
        await c.unary(path, message, timeout=5, gzip=False)  # on a new connection
    finally:
        await c.close()
    assert sink.items(Signal.TRACES) == 2
