"""Coalescing in the fan-out (`pipelines.coalesce`, pipeline/coalesce.py): which requests
go through together, and that a group never costs one request another's outcome.

Whether a request was held is told by the event loop, not the clock: a request that goes at
once is through after a few loop turns (`turns`); a held one only after its timer."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.config import CoalesceConfig
from sidecar.errors import PipelineFullError, ProcessingError
from sidecar.model import Batch, Signal, Work
from sidecar.pipeline import coalesce
from sidecar.pipeline.fanout import Fanout
from sidecar.pipeline.graph import Graph
from sidecar.sample import agent_run
from tests.unit.pipeline.test_fanout import BoundedCollector


class Recorder:
    """A read-only processor: the span count of every request it is given; raises on a
    request holding a span named `poison`."""

    name = "recorder"
    mutates = False
    signals = frozenset({Signal.TRACES})

    def __init__(self) -> None:
        self.runs: list[int] = []

    def process(self, work: Work) -> None:
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        names = [s.name for rs in message.resource_spans for ss in rs.scope_spans
                 for s in ss.spans]
        self.runs.append(len(names))
        if "poison" in names:
            raise ValueError("poisoned request")


def request(seed: int, poison: bool = False) -> Batch:
    message = agent_run(rng=random.Random(seed)).traces
    if poison:
        message.resource_spans[0].scope_spans[0].spans[0].name = "poison"
    return Batch.from_bytes(Signal.TRACES, message.SerializeToString())


def fanout(sink: BoundedCollector, recorder: Recorder, max_delay: float = 0.2,
           max_items: int = 512) -> Fanout:
    return Fanout(Signal.TRACES, [sink], [recorder],
                  coalesce=CoalesceConfig(max_delay=max_delay, max_items=max_items))


async def turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def start(awaitable: Awaitable[None]) -> asyncio.Future[None]:
    return asyncio.ensure_future(awaitable)


async def test_requests_close_together_go_through_as_one() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder)
    first = start(pipe.consume(request(1)))
    await turns()
    assert first.done(), "a request after a quiet spell goes at once"
    batches = [request(n) for n in (2, 3, 4)]
    held = [start(pipe.consume(b)) for b in batches]
    await turns()
    assert not any(t.done() for t in held), "requests right after a group wait for others"
    await asyncio.gather(*held)
    assert recorder.runs == [request(1).items, sum(b.items for b in batches)]
    assert [b.payload for b in sink.batches[1:]] == [b"".join(b.payload for b in batches)]
    assert sink.batches[1].items == sum(b.items for b in batches)


async def test_a_group_goes_once_it_holds_max_items() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    one = request(1)
    pipe = fanout(sink, recorder, max_delay=1.0, max_items=2 * one.items)
    await pipe.consume(one)
    waiting = start(pipe.consume(request(2)))
    await turns()
    assert not waiting.done()
    filled = start(pipe.consume(request(3)))
    await turns()
    assert waiting.done(), "the group went when it reached max_items"
    assert filled.done()
    assert len(sink.batches) == 2


async def test_one_request_failing_a_processor_costs_the_others_nothing() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder)
    await pipe.consume(request(1))
    good_a, poisoned, good_b = request(2), request(3, poison=True), request(4)
    results = await asyncio.gather(*(pipe.consume(b) for b in (good_a, poisoned, good_b)),
                                   return_exceptions=True)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], ProcessingError)
    # the group failed whole, then each request went on its own
    assert recorder.runs[1:] == [good_a.items + poisoned.items + good_b.items,
                                 good_a.items, poisoned.items, good_b.items]
    assert [b.payload for b in sink.batches[1:]] == [good_a.payload, good_b.payload]


async def test_a_group_too_big_for_the_queue_goes_request_by_request() -> None:
    batches = [request(n) for n in (2, 3, 4)]
    first = request(1)
    # room for the first request and two of the group, never for the group together
    room = first.nbytes + batches[0].nbytes + batches[1].nbytes
    sink, recorder = BoundedCollector("sink", room), Recorder()
    pipe = fanout(sink, recorder)
    await pipe.consume(first)
    results = await asyncio.gather(*(pipe.consume(b) for b in batches), return_exceptions=True)
    assert results[:2] == [None, None]
    assert isinstance(results[2], PipelineFullError)
    assert [b.payload for b in sink.batches] == [first.payload, batches[0].payload,
                                                 batches[1].payload]


async def test_a_client_that_waits_for_each_answer_is_soon_not_held() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder, max_delay=0.05)
    held = []
    for n in range(1 + coalesce.ALONE_LIMIT + 5):
        task = start(pipe.consume(request(n)))
        await turns()
        held.append(not task.done())
        await task
    # the first after a quiet spell goes at once; ALONE_LIMIT held alone; then not held
    # (for PAUSE_FIRST, far longer than these few requests take)
    assert held == [False] + [True] * coalesce.ALONE_LIMIT + [False] * 5
    assert recorder.runs == [request(n).items for n in range(len(held))]


async def test_drain_sends_what_waits() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder, max_delay=1.0)
    await pipe.consume(request(1))
    waiting = start(pipe.consume(request(2)))
    await turns()
    assert not waiting.done()
    await pipe.drain()  # sends the held group now (without it, drain has nothing to wait for)
    assert waiting.done()
    assert waiting.exception() is None
    assert len(sink.batches) == 2


async def test_a_request_cancelled_while_it_waits_is_left_out() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder)
    await pipe.consume(request(1))
    kept_a, cancelled, kept_b = request(2), request(3), request(4)
    tasks = [start(pipe.consume(b)) for b in (kept_a, cancelled, kept_b)]
    await turns()
    tasks[1].cancel()
    await asyncio.gather(tasks[0], tasks[2])
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert [b.payload for b in sink.batches[1:]] == [kept_a.payload + kept_b.payload]


async def test_max_delay_0_takes_each_request_on_its_own() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder, max_delay=0)
    batches = [request(n) for n in (1, 2, 3)]
    await asyncio.gather(*(pipe.consume(b) for b in batches))
    assert [b.payload for b in sink.batches] == [b.payload for b in batches]


async def test_graph_shutdown_sends_what_waits_before_the_exporters_stop() -> None:
    sink, recorder = BoundedCollector("sink", 10**7), Recorder()
    pipe = fanout(sink, recorder, max_delay=1.0)
    stopped_with: list[int] = []

    async def shutdown(deadline: float) -> None:
        stopped_with.append(len(sink.batches))

    sink.shutdown = shutdown  # type: ignore[method-assign]
    graph = Graph({"sink": sink}, {Signal.TRACES: pipe})  # type: ignore[dict-item]
    await pipe.consume(request(1))
    waiting = start(pipe.consume(request(2)))
    await turns()
    assert not waiting.done()
    await graph.shutdown(asyncio.get_running_loop().time() + 5)
    assert waiting.done()
    assert waiting.exception() is None
    assert stopped_with == [2], "the held request was in the queue before the exporter stopped"
