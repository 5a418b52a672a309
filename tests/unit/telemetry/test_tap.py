"""The tail feed's taps: bounded per-subscriber buffers, filters, nothing done unsubscribed."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

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
