"""One signal's path from receivers to exporters: the processing stage, then fan-out.

Admission is all-or-nothing: a batch enters every exporter queue of its signal or none, so
a full queue turns into backpressure to the client (who retries) rather than a silent gap
in one destination. Room is checked before processing (no work for a request that cannot
be taken) and again on the processed batch, whose size may differ, right before the puts.
Enqueueing never awaits the network, so one slow exporter cannot stall delivery to another;
it only refuses new work once its own queue is full.

Exporters with a durable queue share the signal's log (`exporthelper/durable.py`): the
processed batch is written to it once, for all of them, before any memory queue takes it,
and nothing yields between the room check and the last put, so the admission stays
all-or-nothing. `consume` returns only once the batch is as durable as `storage.fsync`
promises, so the receiver (and a file checkpoint) may acknowledge after it.

With `pipelines.coalesce` (on by default) requests that arrive close together go through
all of this as one (`coalesce.py`); each is still checked for room as it arrives."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sidecar.component import ExporterComponent, Processor
from sidecar.config import CoalesceConfig
from sidecar.errors import PipelineFullError
from sidecar.exporthelper.durable import SharedLog
from sidecar.model import Batch, Signal
from sidecar.pipeline.coalesce import Coalescer
from sidecar.pipeline.stage import Stage
from sidecar.telemetry.tap import TAPS


class Fanout:
    def __init__(
        self,
        signal: Signal,
        exporters: Sequence[ExporterComponent],
        processors: Sequence[Processor] = (),
        log: SharedLog | None = None,
        durable: Collection[str] = (),
        coalesce: CoalesceConfig | None = None,
    ) -> None:
        self.signal = signal
        self.exporters = tuple(exporters)
        self.stage = Stage(signal, processors)
        self.log = log if durable else None
        # exporters whose queue takes the batch through `consume` (memory queues)
        self.direct = tuple(e for e in self.exporters if e.name not in durable)
        self._coalescer = (Coalescer(signal, coalesce, self._admit, self._settle)
                           if coalesce is not None and coalesce.max_delay > 0 else None)

    def _check_room(self, batch: Batch) -> None:
        for exporter in self.exporters:
            if not exporter.has_room(batch):
                raise PipelineFullError(f"exporter {exporter.name!r} queue is full")

    async def consume(self, batch: Batch) -> None:
        if self._coalescer is not None:
            self._check_room(batch)  # refused at once, not after waiting for company
            await self._coalescer.consume(batch)
            return
        admitted = await self._admit(batch)
        if admitted is not None:
            await self._settle(admitted)

    async def _admit(self, batch: Batch) -> tuple[Batch, int] | None:
        """Process `batch` and put it in every queue, or raise with nothing kept; the
        processed batch and its place in the log (None: the processors left no items)."""
        self._check_room(batch)
        processed = self.stage.run(batch)
        if processed is None:
            return None  # the processors removed every item: nothing to deliver
        if processed is not batch:
            self._check_room(processed)
        log = self.log
        # one write for every durable exporter; raises StorageFullError with nothing kept
        seq = log.append(processed) if log is not None else 0
        # Exporters share the processed batch: it is immutable bytes.
        for exporter in self.direct:
            await exporter.consume(processed)
        return processed, seq

    async def _settle(self, admitted: tuple[Batch, int]) -> None:
        """Return once the admitted batch is as durable as `storage.fsync` promises."""
        processed, seq = admitted
        if self.log is not None:
            await self.log.committed(seq)
        if TAPS:  # `sidecar tail` is watching (telemetry/tap.py)
            TAPS.publish(processed)

    async def drain(self) -> None:
        """Send on the requests that wait to be coalesced, and wait until they went."""
        if self._coalescer is not None:
            await self._coalescer.drain()

    async def wait_for_room(self, nbytes: int) -> None:
        for exporter in self.exporters:
            await exporter.wait_for_room(nbytes)

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self.exporters)
        return f"Fanout({self.signal.value} -> [{names}])"
