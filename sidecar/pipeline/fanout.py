"""One signal's path from receivers to exporters: processors in fixed order, then fan-out.

Admission is all-or-nothing: a batch enters every exporter queue of its signal or none, so
a full queue turns into backpressure to the client (who retries) rather than a silent gap
in one destination. Enqueueing never awaits the network, so one slow exporter cannot stall
delivery to another; it only refuses new work once its own queue is full."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.component import ExporterComponent, Processor
from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal


class Fanout:
    def __init__(
        self,
        signal: Signal,
        exporters: Sequence[ExporterComponent],
        processors: Sequence[Processor] = (),
    ) -> None:
        self.signal = signal
        self.exporters = tuple(exporters)
        self.processors = tuple(processors)

    async def consume(self, batch: Batch) -> None:
        for exporter in self.exporters:
            if not exporter.has_room(batch):
                raise PipelineFullError(f"exporter {exporter.name!r} queue is full")
        for processor in self.processors:
            batch = processor.process(batch)
        # Exporters share the processed batch: nothing after the processors mutates it.
        for exporter in self.exporters:
            await exporter.consume(batch)

    async def wait_for_room(self, nbytes: int) -> None:
        for exporter in self.exporters:
            await exporter.wait_for_room(nbytes)

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self.exporters)
        return f"Fanout({self.signal.value} -> [{names}])"
