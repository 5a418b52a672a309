"""`protocol: grpc` has two transports, picked by `compression`: gzip goes through the h2
client (sidecar/exporthelper/grpc_h2.py), none through grpc.aio. Every option must behave
the same on both, so each check here runs on both against a real peer: the grpc.aio
OtlpSink, or a raw HTTP/2 server for answers a grpc server never gives."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import grpc.aio
import h2.errors
import pytest
from export_helpers import RecordingSleep, TcpProxy, goaway_last_ids, metric
from raw_h2 import Peer, RawH2Server, Stream

from sidecar.errors import PermanentError, RetryableError
from sidecar.exporters.otlp import GrpcSender, OtlpConfig
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Signal
from sidecar.testing import OtlpSink, traces_batch

TRANSPORTS = {"h2": "gzip", "aio": "none"}
# fast keepalive so a dead peer shows within a second or two (grpc-core pings at most
# once a second)
KEEPALIVE = {"time": 0.2, "timeout": 0.5}


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def config(endpoint: str, transport: str, **overrides: Any) -> OtlpConfig:
    return OtlpConfig.model_validate({
        "type": "otlp", "endpoint": endpoint, "protocol": "grpc",
        "compression": TRANSPORTS[transport], "timeout": 10, **overrides})


def sender(endpoint: str, transport: str, **overrides: Any) -> GrpcSender:
    return GrpcSender(config(endpoint, transport, **overrides))


async def send_one(endpoint: str, transport: str, **overrides: Any) -> int:
    s = sender(endpoint, transport, **overrides)
    await s.start()
    try:
        async with asyncio.timeout(20):
            return await s.send(traces_batch(1))
    finally:
        await s.close()


# --- endpoint, metadata, deadline ------------------------------------------------------

async def test_ipv6_literal_endpoints(transport: str) -> None:
    async with OtlpSink(host="::1") as sink:
        for host in ("[::1]", "[0:0:0:0:0:0:0:1]"):
            assert await send_one(f"http://{host}:{sink.grpc_port}", transport) == 0
        assert sink.items(Signal.TRACES) == 2


async def test_localhost_reaches_a_server_on_ipv6_loopback(transport: str) -> None:
    # grpc-core resolves "localhost" to both loopback addresses whatever /etc/hosts says
    async with OtlpSink(host="::1") as sink:
        assert await send_one(f"http://localhost:{sink.grpc_port}", transport) == 0
        assert sink.items(Signal.TRACES) == 1


async def test_user_agent_header_replaces_ours(sink: OtlpSink, transport: str) -> None:
    await send_one(sink.grpc_endpoint, transport, headers={"User-Agent": "acme-agent/2.0"})
    (request,) = sink.requests
    # grpc.aio appends its own product tokens after the configured one
    assert request.headers["user-agent"].split()[0] == "acme-agent/2.0"
    assert "sidecar" not in request.headers["user-agent"]


async def test_metadata_values_are_trimmed(sink: OtlpSink, transport: str) -> None:
    # e.g. a secret read with ${file:...} that ends in a newline
    await send_one(sink.grpc_endpoint, transport, headers={"x-api-key": " s3cret\n"})
    (request,) = sink.requests
    assert request.headers["x-api-key"] == "s3cret"


async def test_timeout_reaches_the_peer_as_the_deadline(sink: OtlpSink, transport: str) -> None:
    await send_one(sink.grpc_endpoint, transport, timeout=7)
    (request,) = sink.requests
    assert request.deadline is not None
    assert 5 < request.deadline <= 7.1  # grpc-core rounds the grpc-timeout header up


# --- answers ---------------------------------------------------------------------------

def _headers_only(status: int) -> Any:
    def respond(peer: Peer, stream: Stream) -> None:
        peer.h2.send_headers(stream.stream_id, [(":status", str(status))], end_stream=True)
    return respond


def _reset(code: h2.errors.ErrorCodes) -> Any:
    def respond(peer: Peer, stream: Stream) -> None:
        peer.h2.reset_stream(stream.stream_id, code)
    return respond


def _no_grpc_status(peer: Peer, stream: Stream) -> None:
    peer.h2.send_headers(stream.stream_id, [(":status", "200"),
                                            ("content-type", "application/grpc")])
    peer.h2.send_data(stream.stream_id, b"\0\0\0\0\0", end_stream=True)


@pytest.mark.parametrize(("answer", "error", "code"), [
    (_headers_only(503), RetryableError, "UNAVAILABLE"),
    (_headers_only(429), RetryableError, "UNAVAILABLE"),
    (_headers_only(404), PermanentError, "UNIMPLEMENTED"),
    (_headers_only(500), PermanentError, "UNKNOWN"),
    (_reset(h2.errors.ErrorCodes.REFUSED_STREAM), RetryableError, "UNAVAILABLE"),
    (_reset(h2.errors.ErrorCodes.CANCEL), RetryableError, "CANCELLED"),
    (_reset(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM), PermanentError, "RESOURCE_EXHAUSTED"),
    (_reset(h2.errors.ErrorCodes.INTERNAL_ERROR), PermanentError, "INTERNAL"),
    (_no_grpc_status, PermanentError, "UNKNOWN"),
], ids=["http-503", "http-429", "http-404", "http-500", "rst-refused", "rst-cancel",
        "rst-calm", "rst-internal", "no-grpc-status"])
async def test_non_grpc_answers_classify_alike(
        transport: str, answer: Any, error: type[Exception], code: str) -> None:
    async with RawH2Server(answer) as server:
        with pytest.raises(error, match=f"^gRPC {code}:"):
            await send_one(server.endpoint, transport)


def _ok_without_message(peer: Peer, stream: Stream) -> None:
    peer.h2.send_headers(stream.stream_id, [(":status", "200"),
                                            ("content-type", "application/grpc"),
                                            ("grpc-status", "0")], end_stream=True)


def _ok_with_malformed_message(peer: Peer, stream: Stream) -> None:
    peer.h2.send_headers(stream.stream_id, [(":status", "200"),
                                            ("content-type", "application/grpc")])
    peer.h2.send_data(stream.stream_id, b"\0\0\0\0\x09abc")  # says 9 bytes, has 3
    peer.h2.send_headers(stream.stream_id, [("grpc-status", "0")], end_stream=True)


@pytest.mark.parametrize("answer", [_ok_without_message, _ok_with_malformed_message],
                         ids=["no-message", "malformed-message"])
async def test_ok_without_a_readable_answer_counts_as_delivered(
        transport: str, answer: Any) -> None:
    async with RawH2Server(answer) as server:
        assert await send_one(server.endpoint, transport) == 0


async def test_an_answer_over_the_size_limit_is_dropped_not_split(transport: str) -> None:
    """The peer took the data (it answered), so splitting and sending again would
    deliver it twice."""
    calls = 0

    async def export(_body: bytes, _context: object) -> bytes:
        nonlocal calls
        calls += 1
        return b"\x0a" + b"x" * (5 * 1024 * 1024)  # 5 MiB, over grpc's 4 MiB default

    server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        name = f"big-answer-{transport}"
        cfg = config(f"http://127.0.0.1:{port}", transport, batch={"max_delay": 0})
        exporter = ExportChain(name, cfg, GrpcSender(cfg))
        await exporter.start()
        await exporter.consume(traces_batch(8, resources=2))
        await exporter.shutdown(asyncio.get_running_loop().time() + 10)
    finally:
        await server.stop(grace=None)
    assert calls == 1
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="permanent") == 16


# --- reconnect -------------------------------------------------------------------------

async def test_reconnects_after_the_server_restarts(transport: str) -> None:
    async with OtlpSink() as first, TcpProxy(first.grpc_port) as proxy:
        s = sender(proxy.endpoint, transport)
        await s.start()
        try:
            await s.send(traces_batch(3, seed=1))
            await first.stop()  # GOAWAY and close: the client's connection is gone
            async with OtlpSink() as second:
                proxy.upstream_port = second.grpc_port
                # the call may meet the dying connection once (UNAVAILABLE: retryable);
                # then it must reconnect
                for _attempt in range(2):
                    try:
                        await s.send(traces_batch(4, seed=2))
                        break
                    except RetryableError:
                        continue
                assert second.items(Signal.TRACES) == 4
                await s.send(traces_batch(5, seed=3))
                assert second.items(Signal.TRACES) == 9
        finally:
            await s.close()
        assert first.items(Signal.TRACES) == 3
        assert proxy.connections == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_reconnect_waits_no_longer_than_the_retry_backoff(transport: str) -> None:
    """grpc.aio has a reconnect backoff of its own (1 s growing to 120 s) behind the
    exporter's retries; it must not hold the exporter back once the peer is up again."""
    async with OtlpSink() as sink, TcpProxy(_closed_port()) as proxy:
        s = sender(proxy.endpoint, transport, timeout=2,
                   retry={"initial_interval": 0.05, "max_interval": 0.2})
        await s.start()
        try:
            loop = asyncio.get_running_loop()
            outage_ends = loop.time() + 3.3  # grpc's own backoff has grown past 2 s by then
            while loop.time() < outage_ends:
                with pytest.raises(RetryableError):
                    await s.send(traces_batch(1))
                await asyncio.sleep(0.05)
            proxy.upstream_port = sink.grpc_port
            back = loop.time()
            for _attempt in range(100):  # bounded: 100 x 50 ms
                try:
                    await s.send(traces_batch(1))
                    break
                except RetryableError:
                    await asyncio.sleep(0.05)
            recovered_after = loop.time() - back
        finally:
            await s.close()
    assert sink.items(Signal.TRACES) == 1
    assert recovered_after < 0.8  # 0.2 s max_interval plus connect time, with room


# --- GOAWAY ----------------------------------------------------------------------------

async def test_graceful_server_stop_lets_calls_in_flight_finish(transport: str) -> None:
    """A collector that drains sends GOAWAY and still answers the calls it took: those
    must succeed, not fail and be sent again (a duplicate delivery)."""
    async with OtlpSink() as sink, TcpProxy(sink.grpc_port) as proxy:
        s = sender(proxy.endpoint, transport)
        await s.start()
        try:
            sink.stall()
            sends = [asyncio.create_task(s.send(traces_batch(2, seed=i))) for i in range(3)]
            await sink.wait_for_requests(3)
            stopping = asyncio.create_task(sink.stop_grpc(grace=10))
            # grpc servers drain in two steps: GOAWAY(2^31-1) and a PING, then
            # GOAWAY(last stream id); answer only once the client has both
            await proxy.wait_until(
                lambda: any(i < 2**31 - 1 for i in goaway_last_ids(proxy.to_client[0])))
            sink.resume()
            async with asyncio.timeout(10):
                results = await asyncio.gather(*sends, return_exceptions=True)
                await stopping
        finally:
            await s.close()
    assert results == [0, 0, 0]
    assert [r.outcome for r in sink.requests] == ["ok"] * 3
    assert proxy.connections == 1


async def test_goaway_fails_only_the_streams_the_peer_did_not_take(transport: str) -> None:
    taken: list[int] = []

    def respond(peer: Peer, stream: Stream) -> None:
        if peer.number > 0:
            peer.ok(stream.stream_id)
            return
        taken.append(stream.stream_id)
        if len(taken) == 2:  # GOAWAY naming the first stream, then answer that one
            peer.goaway(last_stream_id=taken[0])
            peer.ok(taken[0])

    async with RawH2Server(respond) as server:
        name = f"goaway-last-{transport}"
        sleep = RecordingSleep()
        cfg = config(server.endpoint, transport, batch={"max_delay": 0},
                     queue={"concurrency": 2})
        exporter = ExportChain(name, cfg, GrpcSender(cfg), sleep=sleep)
        await exporter.start()
        await exporter.consume(traces_batch(1, seed=1))
        await server.wait_for_streams(1)
        await exporter.consume(traces_batch(1, seed=2))
        await exporter.shutdown(asyncio.get_running_loop().time() + 10)
        delivered = sorted(s.message for s in server.streams if s.connection > 0
                           or s.stream_id == taken[0])
    # each batch reached the peer exactly once: the first on the old connection, after
    # the GOAWAY; the second (not taken) again on a new one
    assert delivered == sorted([traces_batch(1, seed=1).payload,
                                traces_batch(1, seed=2).payload])
    assert len(server.peers) == 2
    assert metric("sidecar_exporter_sent_items_total", exporter=name, signal="traces") == 2
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="permanent") == 0


# --- keepalive -------------------------------------------------------------------------

async def test_unanswered_keepalive_fails_the_call_in_flight(
        sink: OtlpSink, transport: str) -> None:
    async with TcpProxy(sink.grpc_port) as proxy:
        s = sender(proxy.endpoint, transport, timeout=30, keepalive=KEEPALIVE)
        await s.start()
        try:
            await s.send(traces_batch(1, seed=1))
            sink.stall()
            call = asyncio.create_task(s.send(traces_batch(1, seed=2)))
            await sink.wait_for_requests(2)
            proxy.pause()  # the peer hangs: no answer, no close
            # far sooner than the 30 s call timeout, and not DEADLINE_EXCEEDED
            with pytest.raises(RetryableError, match=r"^gRPC UNAVAILABLE:"):
                async with asyncio.timeout(10):
                    await call
            proxy.resume()
            sink.resume()
            # on a new connection; grpc-core may route one more call to the transport it
            # is still closing (UNAVAILABLE, retried by the chain)
            for _attempt in range(2):
                try:
                    await s.send(traces_batch(1, seed=3))
                    break
                except RetryableError:
                    continue
        finally:
            await s.close()
        assert proxy.connections == 2
    assert traces_batch(1, seed=3).payload in [r.body for r in sink.accepted]


async def test_unanswered_keepalive_drops_an_idle_connection(
        sink: OtlpSink, transport: str) -> None:
    async with TcpProxy(sink.grpc_port) as proxy:
        s = sender(proxy.endpoint, transport, keepalive=KEEPALIVE)
        await s.start()
        try:
            await s.send(traces_batch(1, seed=1))
            proxy.pause()
            await proxy.wait_until(lambda: proxy.client_closed == 1)
            proxy.resume()
            await s.send(traces_batch(1, seed=2))
        finally:
            await s.close()
        assert proxy.connections == 2
    assert sink.items(Signal.TRACES) == 2
