"""The otlp exporter (gRPC and HTTP) through the whole chain against a real OtlpSink."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest
from export_helpers import RecordingSleep, metric

from sidecar.errors import PipelineFullError, RetryableError
from sidecar.exporters.otlp import GrpcSender, HttpSender, OtlpConfig
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Batch, Signal
from sidecar.testing import Fault, OtlpSink, logs_batch, metrics_batch, traces_batch

# protocol grpc has two transports, picked by `compression`: gzip goes through the h2
# client (sidecar/exporthelper/grpc_h2.py), none through grpc.aio. Both get every check.
TRANSPORTS: dict[str, dict[str, str]] = {
    "grpc-h2": {"protocol": "grpc", "compression": "gzip"},
    "grpc-aio": {"protocol": "grpc", "compression": "none"},
    "http": {"protocol": "http"},
}
PROTOCOLS = list(TRANSPORTS)
GRPC = ["grpc-h2", "grpc-aio"]


def config(protocol: str, endpoint: str, **overrides: Any) -> OtlpConfig:
    raw: dict[str, Any] = {
        "type": "otlp", "endpoint": endpoint, **TRANSPORTS[protocol], "timeout": 5,
        "batch": {"max_delay": 0}, "retry": {"initial_interval": 0.5, "multiplier": 2,
                                             "jitter": 0.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw[key] = {**raw.get(key, {}), **value}
        else:
            raw[key] = value
    return OtlpConfig.model_validate(raw)


def chain(name: str, protocol: str, sink: OtlpSink, sleep: Any = asyncio.sleep,
          **overrides: Any) -> ExportChain:
    endpoint = sink.http_endpoint if protocol == "http" else sink.grpc_endpoint
    cfg = config(protocol, endpoint, **overrides)
    sender = GrpcSender(cfg) if cfg.protocol == "grpc" else HttpSender(cfg)
    return ExportChain(name, cfg, sender, sleep=sleep, rand=lambda: 0.5)


async def stop(exporter: ExportChain, within: float = 10.0) -> None:
    await exporter.shutdown(asyncio.get_running_loop().time() + within)


@pytest.mark.parametrize(("protocol", "compression"), [
    ("grpc-h2", "gzip"), ("grpc-aio", "none"), ("http", "gzip"), ("http", "none")])
async def test_each_batch_arrives_with_identical_bytes(
        sink: OtlpSink, protocol: str, compression: str) -> None:
    exporter = chain(f"ident-{protocol}-{compression}", protocol, sink, compression=compression)
    await exporter.start()
    batches = [traces_batch(5, seed=1), logs_batch(4, seed=2), metrics_batch(3, seed=3)]
    for batch in batches:
        await exporter.consume(batch)
    await stop(exporter)
    assert sorted(r.body for r in sink.requests) == sorted(b.payload for b in batches)
    assert {r.signal for r in sink.requests} == set(Signal)
    assert all(r.outcome == "ok" for r in sink.requests)
    if protocol == "http":
        assert {r.path for r in sink.requests} == {"/v1/traces", "/v1/logs", "/v1/metrics"}
        assert all(r.compressed == (compression == "gzip") for r in sink.requests)
        assert all(r.headers["content-type"] == "application/x-protobuf"
                   for r in sink.requests)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_small_batches_merge_up_to_max_items(sink: OtlpSink, protocol: str) -> None:
    exporter = chain(f"merge-{protocol}", protocol, sink,
                     batch={"max_delay": 60, "max_items": 30}, queue={"concurrency": 1})
    await exporter.start()
    batches = [traces_batch(10, seed=i) for i in range(7)]
    for batch in batches:
        await exporter.consume(batch)
    await sink.wait_for_items(Signal.TRACES, 60, timeout=10)
    # 30 items make a full request; the 7th batch waits for max_delay or shutdown
    assert [r.items for r in sink.requests] == [30, 30]
    assert sink.requests[0].body == b"".join(b.payload for b in batches[:3])
    await stop(exporter)
    assert [r.items for r in sink.requests] == [30, 30, 10]
    assert sink.requests[2].body == batches[6].payload


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_oversize_batch_is_split_and_fully_delivered(
        sink: OtlpSink, protocol: str) -> None:
    exporter = chain(f"split-{protocol}", protocol, sink, batch={"max_items": 40})
    await exporter.start()
    big = traces_batch(25, resources=4, seed=5)
    await exporter.consume(big)
    await sink.wait_for_items(Signal.TRACES, 100)
    # the batch leaves the queue only once all four requests are answered (bounded wait:
    # the sink records a request just before the client reads the answer)
    for _ in range(200):
        if exporter.queue.size_bytes == 0:
            break
        await asyncio.sleep(0.01)
    assert exporter.queue.size_bytes == 0
    await stop(exporter)
    # whole resources travel together when they fit: 25 + 25 > 40, so one per request
    assert [r.items for r in sink.requests] == [25, 25, 25, 25]
    expected = big.message
    got = sink.merged(Signal.TRACES)
    assert sorted(s.SerializeToString() for s in sink.spans()) == sorted(
        s.SerializeToString() for rs in expected.resource_spans  # type: ignore[union-attr]
        for ss in rs.scope_spans for s in ss.spans)
    assert len(got.resource_spans) >= 4  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_configured_headers_reach_the_peer(protocol: str) -> None:
    async with OtlpSink(require_headers={"x-api-key": "s3cret"}) as sink:
        exporter = chain(f"hdr-{protocol}", protocol, sink, headers={"X-Api-Key": "s3cret"})
        await exporter.start()
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        (request,) = sink.requests
        assert request.outcome == "ok"
        assert request.headers["x-api-key"] == "s3cret"
        assert request.headers["user-agent"].startswith("sidecar/")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_missing_credentials_are_a_permanent_drop(protocol: str) -> None:
    async with OtlpSink(require_headers={"x-api-key": "s3cret"}) as sink:
        name = f"auth-{protocol}"
        exporter = chain(name, protocol, sink)
        await exporter.start()
        await exporter.consume(traces_batch(6))
        await stop(exporter)
        assert [r.outcome for r in sink.requests] == ["failed"]
        assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                      reason="permanent") == 6


@pytest.mark.parametrize(("protocol", "fault"), [
    *((t, Fault(grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=3)) for t in GRPC),
    *((t, Fault(grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=3)) for t in GRPC),
    ("http", Fault(http_status=429, retry_after=3)),
    ("http", Fault(http_status=503, retry_after=3)),
])
async def test_retries_wait_what_the_peer_asked(
        sink: OtlpSink, protocol: str, fault: Fault) -> None:
    sleep = RecordingSleep()
    name = f"hint-{protocol}-{fault.grpc_code.name}-{fault.http_status}"
    exporter = chain(name, protocol, sink, sleep=sleep)
    await exporter.start()
    sink.fail_next(2, fault)
    await exporter.consume(traces_batch(4))
    await sink.wait_for_items(Signal.TRACES, 4)
    await stop(exporter)
    assert [r.outcome for r in sink.requests] == ["failed", "failed", "ok"]
    assert sleep.delays == [3.0, 3.0]  # the hint, not the 0.5 s / 1 s backoff
    assert metric("sidecar_exporter_retries_total", exporter=name, signal="traces") == 2
    assert metric("sidecar_exporter_send_failed_items_total", exporter=name,
                  signal="traces") == 8
    assert metric("sidecar_exporter_sent_items_total", exporter=name, signal="traces") == 4


async def test_retry_after_as_http_date(sink: OtlpSink) -> None:
    sleep = RecordingSleep()
    exporter = chain("hint-date", "http", sink, sleep=sleep)
    await exporter.start()
    sink.fail_next(1, http_status=429, retry_after=5, retry_after_http_date=True)
    await exporter.consume(traces_batch(1))
    await sink.wait_for_items(Signal.TRACES, 1)
    await stop(exporter)
    (delay,) = sleep.delays
    # an HTTP-date has one-second resolution; anything but the 0.5 s backoff proves the hint
    assert 3.0 <= delay <= 5.0


@pytest.mark.parametrize(("protocol", "fault"), [
    *((t, Fault(grpc_code=grpc.StatusCode.UNAVAILABLE)) for t in GRPC),
    ("http", Fault(http_status=502)),
    ("http", Fault(http_status=429)),
])
async def test_retries_back_off_exponentially_without_a_hint(
        sink: OtlpSink, protocol: str, fault: Fault) -> None:
    sleep = RecordingSleep()
    exporter = chain(f"backoff-{protocol}-{fault.http_status}", protocol, sink, sleep=sleep)
    await exporter.start()
    sink.fail_next(3, fault)
    await exporter.consume(traces_batch(1))
    await sink.wait_for_items(Signal.TRACES, 1)
    await stop(exporter)
    assert len(sink.requests) == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


@pytest.mark.parametrize(("protocol", "fault"), [
    *((t, Fault(grpc_code=code)) for t in GRPC for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # no RetryInfo
        grpc.StatusCode.UNAUTHENTICATED)),
    ("http", Fault(http_status=400)),
    ("http", Fault(http_status=403)),
    ("http", Fault(http_status=500)),
])
async def test_permanent_errors_drop_once_and_count(
        sink: OtlpSink, protocol: str, fault: Fault) -> None:
    sleep = RecordingSleep()
    name = f"perm-{protocol}-{fault.grpc_code.name}-{fault.http_status}"
    # one worker: the fault must meet the traces request, which is sent first
    exporter = chain(name, protocol, sink, sleep=sleep, queue={"concurrency": 1})
    await exporter.start()
    sink.fail_next(1, fault)
    await exporter.consume(traces_batch(7))
    await exporter.consume(logs_batch(2))  # the next request still goes out
    await sink.wait_for_items(Signal.LOGS, 2)
    await stop(exporter)
    assert [(r.signal, r.outcome) for r in sink.requests] == [
        (Signal.TRACES, "failed"), (Signal.LOGS, "ok")]
    assert sleep.delays == []
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="permanent") == 7
    assert metric("sidecar_exporter_sent_items_total", exporter=name, signal="traces") == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_partial_success_is_counted_not_retried(sink: OtlpSink, protocol: str) -> None:
    name = f"partial-{protocol}"
    exporter = chain(name, protocol, sink)
    await exporter.start()
    sink.partial_next(1, rejected=3, message="3 spans had no name")
    await exporter.consume(traces_batch(10))
    await stop(exporter)
    assert [r.outcome for r in sink.requests] == ["partial"]
    assert metric("sidecar_exporter_sent_items_total", exporter=name, signal="traces") == 7
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="rejected") == 3


@pytest.mark.parametrize("protocol", GRPC)
async def test_retries_stop_after_max_elapsed(sink: OtlpSink, protocol: str) -> None:
    sleep = RecordingSleep()
    name = f"elapsed-{protocol}"
    # the recording sleep does not move the loop clock, so bound by attempts: 0.5+1+2 > 3
    exporter = chain(name, protocol, sink, sleep=sleep, retry={"max_elapsed": 3})
    sink.fail_next(100, grpc_code=grpc.StatusCode.UNAVAILABLE)
    await exporter.start()
    await exporter.consume(traces_batch(3))
    await sink.wait_for_requests(1)
    await stop(exporter)
    assert sink.accepted == []
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="retries_exhausted") == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_full_queue_refuses_without_blocking_then_delivers(
        sink: OtlpSink, protocol: str) -> None:
    one = traces_batch(10)
    exporter = chain(f"full-{protocol}", protocol, sink,
                     queue={"max_bytes": one.nbytes * 3, "concurrency": 1})
    await exporter.start()
    sink.stall()
    admitted = 0
    refused: PipelineFullError | None = None
    for seed in range(50):
        try:
            await exporter.consume(traces_batch(10, seed=seed))
        except PipelineFullError as exc:
            refused = exc
            break
        admitted += 1
    assert refused is not None
    assert refused.retry_after > 0
    assert 1 <= admitted <= 3
    assert not exporter.has_room(one)
    sink.resume()
    await stop(exporter)
    assert sink.items(Signal.TRACES) == admitted * 10


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_shutdown_flushes_pending_and_queued_data(sink: OtlpSink, protocol: str) -> None:
    name = f"drain-{protocol}"
    exporter = chain(name, protocol, sink, batch={"max_delay": 60, "max_items": 25})
    await exporter.start()
    for seed in range(12):
        await exporter.consume(traces_batch(10, seed=seed))
    await stop(exporter)
    assert sink.items(Signal.TRACES) == 120
    assert metric("sidecar_exporter_sent_items_total", exporter=name, signal="traces") == 120
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="shutdown") == 0
    with pytest.raises(PipelineFullError):
        await exporter.consume(traces_batch(1))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_shutdown_deadline_drops_and_counts_what_is_left(
        sink: OtlpSink, protocol: str) -> None:
    name = f"deadline-{protocol}"
    exporter = chain(name, protocol, sink, queue={"concurrency": 1})
    await exporter.start()
    sink.stall()
    for seed in range(3):
        await exporter.consume(traces_batch(5, seed=seed))
    await sink.wait_for_requests(1)
    await stop(exporter, within=0.3)
    sink.resume()
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="shutdown") == 15
    assert metric("sidecar_exporter_queue_size_bytes", exporter=name) == 0


@pytest.mark.parametrize("protocol", GRPC)
async def test_a_slow_exporter_does_not_hold_up_another(protocol: str) -> None:
    async with OtlpSink() as slow_sink, OtlpSink() as fast_sink:
        slow = chain(f"slow-{protocol}", protocol, slow_sink)
        fast = chain(f"fast-{protocol}", "http", fast_sink)
        await slow.start()
        await fast.start()
        slow_sink.stall()
        for seed in range(5):
            batch = traces_batch(4, seed=seed)
            await slow.consume(batch)
            await fast.consume(batch)
        await fast_sink.wait_for_items(Signal.TRACES, 20)
        assert slow_sink.accepted == []
        slow_sink.resume()
        await slow_sink.wait_for_items(Signal.TRACES, 20)
        await stop(slow)
        await stop(fast)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_unanswered_attempt_times_out_and_is_retried(
        sink: OtlpSink, protocol: str) -> None:
    exporter = chain(f"timeout-{protocol}", protocol, sink, timeout=0.2,
                     retry={"initial_interval": 0.01})
    await exporter.start()
    sink.stall()
    await exporter.consume(traces_batch(2))
    await sink.wait_for_requests(2)  # a second attempt only follows a timeout
    sink.resume()
    await sink.wait_for_items(Signal.TRACES, 2)
    await stop(exporter)
    # attempts the client gave up on are not counted as received, even once released
    assert sink.items(Signal.TRACES) == 2
    assert sink.requests[0].outcome == "abandoned"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_refused_connection_is_retryable(protocol: str) -> None:
    cfg = config(protocol, f"http://127.0.0.1:{closed_port()}", timeout=2)
    sender = GrpcSender(cfg) if cfg.protocol == "grpc" else HttpSender(cfg)
    await sender.start()
    try:
        with pytest.raises(RetryableError):
            await sender.send(traces_batch(1))
    finally:
        await sender.close()


async def test_grpc_gzip_shrinks_the_bytes_on_the_wire(sink: OtlpSink) -> None:
    """grpc hides the encoding from the server API, so count bytes through a relay."""
    batch = Batch.from_message(Signal.TRACES, traces_batch(200, attrs=10).message)
    wire: dict[str, int] = {}
    for compression in ("gzip", "none"):
        counted = [0]

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        counted: list[int] = counted) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", sink.grpc_port)

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                           count: bool) -> None:
                while data := await src.read(65536):
                    if count:
                        counted[0] += len(data)
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False),
                                 return_exceptions=True)

        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = config("grpc-h2", f"http://127.0.0.1:{port}", compression=compression)
        sender = GrpcSender(cfg)
        await sender.start()
        await sender.send(batch)
        await sender.close()
        server.close()
        wire[compression] = counted[0]
    assert wire["none"] > batch.nbytes
    assert wire["gzip"] < batch.nbytes // 3
    assert [r.body for r in sink.requests] == [batch.payload, batch.payload]


async def test_http_413_splits_the_request_in_halves(sink: OtlpSink) -> None:
    name = "too-large-http"
    exporter = chain(name, "http", sink, queue={"concurrency": 1})
    await exporter.start()
    sink.fail_next(1, http_status=413)
    batch = traces_batch(10, resources=2)
    await exporter.consume(batch)
    await stop(exporter)
    assert [(r.items, r.outcome) for r in sink.requests] == [
        (20, "failed"), (10, "ok"), (10, "ok")]
    assert metric("sidecar_exporter_sent_items_total", exporter=name, signal="traces") == 20


@pytest.mark.parametrize("protocol", GRPC)
async def test_grpc_message_over_the_peer_limit_is_split(protocol: str) -> None:
    one_span = traces_batch(1).nbytes
    async with OtlpSink(grpc_max_receive=one_span * 12) as sink:
        exporter = chain(f"too-large-{protocol}", protocol, sink)
        await exporter.start()
        await exporter.consume(traces_batch(40))
        await stop(exporter)
        # the server refuses before the handler runs, so only accepted requests appear
        assert sink.items(Signal.TRACES) == 40
        assert all(r.items <= 12 for r in sink.requests)


async def test_a_single_item_over_the_limit_is_dropped_not_split_forever(sink: OtlpSink) -> None:
    name = "too-large-single"
    exporter = chain(name, "http", sink)
    await exporter.start()
    sink.fail_next(1, http_status=413)
    await exporter.consume(traces_batch(1))
    await stop(exporter)
    assert len(sink.requests) == 1
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="permanent") == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_requests_in_flight_are_bounded_by_concurrency(
        sink: OtlpSink, protocol: str) -> None:
    exporter = chain(f"conc-{protocol}", protocol, sink, queue={"concurrency": 3})
    await exporter.start()
    sink.stall()
    for seed in range(10):
        await exporter.consume(traces_batch(1, seed=seed))
    await sink.wait_for_requests(3)
    for _ in range(5):  # give a 4th request every chance to start
        await asyncio.sleep(0.01)
    assert len(sink.requests) == 3
    sink.resume()
    await stop(exporter)
    assert sink.items(Signal.TRACES) == 10
