from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.fanout import Fanout
from sidecar.sample import agent_run


class BoundedCollector:
    """An exporter stand-in with a byte bound, for the fan-out's admission rule."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.batches: list[Batch] = []

    def has_room(self, batch: Batch) -> bool:
        return sum(b.nbytes for b in self.batches) + batch.nbytes <= self.capacity

    async def consume(self, batch: Batch) -> None:
        if not self.has_room(batch):
            raise PipelineFullError("full")
        self.batches.append(batch)

    async def start(self) -> None: ...

    async def shutdown(self, deadline: float) -> None: ...

    def describe(self) -> str:
        return self.name


def traces_batch() -> Batch:
    return Batch.from_bytes(Signal.TRACES, agent_run().traces.SerializeToString())


async def test_every_exporter_gets_the_batch() -> None:
    a, b = BoundedCollector("a", 10**6), BoundedCollector("b", 10**6)
    fanout = Fanout(Signal.TRACES, [a, b])
    batch = traces_batch()
    await fanout.consume(batch)
    assert a.batches == [batch]
    assert b.batches == [batch]


async def test_admission_is_all_or_nothing() -> None:
    batch = traces_batch()
    roomy, tight = BoundedCollector("roomy", 10**6), BoundedCollector("tight", batch.nbytes)
    fanout = Fanout(Signal.TRACES, [roomy, tight])
    await fanout.consume(batch)
    with pytest.raises(PipelineFullError, match="tight"):
        await fanout.consume(traces_batch())
    assert len(roomy.batches) == 1  # the roomy exporter did not get a copy the other lacks
    assert len(tight.batches) == 1


class Rename:
    """A mutating processor: appends its tag to every span name."""

    mutates = True
    signals = frozenset({Signal.TRACES})

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def process(self, work: Work) -> None:
        self.seen.append(self.name)
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.name += f"+{self.name}"


async def test_processors_run_in_order_before_exporters() -> None:
    seen: list[str] = []
    sink = BoundedCollector("sink", 10**6)
    fanout = Fanout(Signal.TRACES, [sink], [Rename("redact", seen), Rename("cost", seen)])
    await fanout.consume(traces_batch())
    assert seen == ["redact", "cost"]
    (delivered,) = sink.batches
    message = delivered.message
    assert isinstance(message, ExportTraceServiceRequest)
    names = {s.name for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert names
    assert all(n.endswith("+redact+cost") for n in names)


async def test_a_processed_batch_that_grew_past_the_room_goes_nowhere() -> None:
    batch = traces_batch()
    roomy = BoundedCollector("roomy", 10**6)
    exact = BoundedCollector("exact", batch.nbytes)  # room for the request as sent, not more
    fanout = Fanout(Signal.TRACES, [roomy, exact], [Rename("longer-names", [])])
    with pytest.raises(PipelineFullError, match="exact"):
        await fanout.consume(batch)
    assert roomy.batches == []
    assert exact.batches == []
