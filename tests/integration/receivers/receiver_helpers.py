"""Test doubles shared by the receiver integration tests."""

from __future__ import annotations

import asyncio

from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal


class CapturingConsumer:
    """Keeps every batch. While `full_retry_after` is set it refuses with backpressure:
    `refusals_left` times, or always when that is None."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.full_retry_after: float | None = None
        self.refusals_left: int | None = None
        self.refused = 0

    async def consume(self, batch: Batch) -> None:
        if self.full_retry_after is not None and self.refusals_left != 0:
            self.refused += 1
            if self.refusals_left is not None:
                self.refusals_left -= 1
            raise PipelineFullError("test pipeline is full", self.full_retry_after)
        self.batches.append(batch)


class GatedConsumer:
    """Holds each batch until `release` is set, to have an RPC in flight at shutdown."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.entered.set()
        await self.release.wait()
        self.batches.append(batch)



class BrokenConsumer:
    """A pipeline stage with a bug."""

    async def consume(self, batch: Batch) -> None:
        raise RuntimeError("processor bug")


Consumers = dict[Signal, CapturingConsumer]
