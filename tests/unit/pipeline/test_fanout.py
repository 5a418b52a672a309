from __future__ import annotations

import pytest

from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal
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


async def test_processors_run_in_order_before_exporters() -> None:
    seen: list[str] = []

    class Tag:
        def __init__(self, name: str) -> None:
            self.name = name

        def process(self, batch: Batch) -> Batch:
            seen.append(self.name)
            return batch

    sink = BoundedCollector("sink", 10**6)
    await Fanout(Signal.TRACES, [sink], [Tag("redact"), Tag("cost")]).consume(traces_batch())
    assert seen == ["redact", "cost"]
    assert len(sink.batches) == 1
