"""Test doubles shared by the receiver integration tests."""

from __future__ import annotations

import asyncio

from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal


class CapturingConsumer:
    """Keeps every batch; refuses with backpressure while `full_retry_after` is set."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.full_retry_after: float | None = None
        self.arrived = asyncio.Event()

    async def consume(self, batch: Batch) -> None:
        if self.full_retry_after is not None:
            raise PipelineFullError("test pipeline is full", self.full_retry_after)
        self.batches.append(batch)
        self.arrived.set()

    async def wait_items(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(b.items for b in self.batches) < n:
                self.arrived.clear()
                await self.arrived.wait()


Consumers = dict[Signal, CapturingConsumer]
