"""The tail feed's taps: bounded per-subscriber buffers, filters, nothing done unsubscribed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sidecar.admin import AdminServer
from sidecar.model import Batch, Signal
from sidecar.net.framing import Line
from sidecar.receivers.logparse import LogBatchBuilder
from sidecar.telemetry.tap import Filter, Subscriber, Taps


def logs_batch(lines: list[bytes]) -> Batch:
    builder = LogBatchBuilder("svc")
    for line in lines:
        builder.add(Line(line))
    request = builder.take()
    assert isinstance(request, ExportLogsServiceRequest)
    return Batch.from_message(Signal.LOGS, request)


def test_a_full_subscriber_buffer_drops_and_counts() -> None:
    taps = Taps()
    assert not taps
    slow = Subscriber(frozenset({Signal.LOGS}), capacity=3)
    taps.subscribe(slow)
    assert taps
    taps.publish(logs_batch([b'{"msg":"m%d","seq":%d}' % (i, i) for i in range(10)]))
    assert [item["attributes"]["seq"] for item in slow.buffer] == [0, 1, 2]
    assert slow.dropped == 7
    assert slow.ready.is_set()
    taken = slow.take()
    assert len(taken) == 3
    assert not slow.buffer
    assert not slow.ready.is_set()
    taps.unsubscribe(slow)
    assert not taps


def test_subscribers_of_another_signal_get_nothing() -> None:
    taps = Taps()
    traces = Subscriber(frozenset({Signal.TRACES}))
    taps.subscribe(traces)
    taps.publish(logs_batch([b'{"msg":"x"}']))
    assert not traces.buffer
    assert traces.dropped == 0


@pytest.mark.parametrize(("expr", "expected"), [
    ("level>=warn", ["b", "c"]),
    ("level=ERROR", ["c"]),
    ("agent=planner", ["a", "c"]),
    ("agent!=planner", ["b"]),
    ("body~FAIL level>=error", ["c"]),
    ("service=svc", ["a", "b", "c"]),
])
def test_filter_terms_all_hold(expr: str, expected: list[str]) -> None:
    taps = Taps()
    subscriber = Subscriber(frozenset({Signal.LOGS}), Filter.parse(expr))
    taps.subscribe(subscriber)
    taps.publish(logs_batch([
        b'{"level":"info","msg":"ok","agent":"planner","k":"a"}',
        b'{"level":"warn","msg":"slow","agent":"coder","k":"b"}',
        b'{"level":"error","msg":"it failed","agent":"planner","k":"c"}']))
    assert [item["attributes"]["k"] for item in subscriber.buffer] == expected


@pytest.mark.parametrize("expr", ["level>=loud", "name>=x", "just-a-word", "a="])
def test_filter_refuses_what_it_cannot_read(expr: str) -> None:
    with pytest.raises(ValueError, match=r"filter term|compares levels"):
        Filter.parse(expr)


def test_a_filter_has_a_bounded_number_of_terms() -> None:
    assert len(Filter.parse(" ".join(f"k{i}=v" for i in range(16))).terms) == 16
    with pytest.raises(ValueError, match="at most 16 terms"):
        Filter.parse(" ".join(f"k{i}=v" for i in range(17)))


async def test_the_admin_feed_refuses_readers_past_its_limit() -> None:
    """Each exported batch costs `publish` items x readers x terms on the event loop, so the
    ninth reader is refused (503), and a reader that leaves frees its place."""
    admin = AdminServer("127.0.0.1:0")
    await admin.start()
    url = f"http://127.0.0.1:{admin.bound_port}/tail"
    try:
        async with aiohttp.ClientSession() as session:
            feeds = [await session.get(url) for _ in range(8)]
            for feed in feeds:
                assert feed.status == 200
                assert b"subscribed" in await feed.content.readline()
            async with session.get(url) as refused:
                assert refused.status == 503
                assert refused.headers["Retry-After"] == "5"
                assert "8 tail readers" in (await refused.json())["error"]
            feeds.pop().close()
            for _ in range(100):  # the server notices the closed connection
                async with session.get(url) as again:
                    if again.status == 200:
                        break
                await asyncio.sleep(0.05)
            assert again.status == 200
            for feed in feeds:
                feed.close()
    finally:
        await admin.shutdown(0)
