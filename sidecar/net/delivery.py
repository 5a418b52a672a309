"""Backpressure for stream receivers: stop reading a socket while the pipeline is full.

A client writing NDJSON to a unix or TCP socket gets no answer per record, so a full
pipeline cannot tell it to retry. Instead the receiver stops reading: the kernel's socket
buffers fill, the client's writes block (its `drain()` waits), and nothing is dropped.
Reading resumes once `Consumer.wait_for_room` says there is room again: no polling."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from sidecar.component import Consumer
from sidecar.errors import PipelineFullError
from sidecar.model import Batch

log = logging.getLogger("sidecar.net")

# A refusal right after the room was there means another connection took it first, or the
# pipeline is shutting down (its wait then returns at once). Wait this long, doubling up to
# the pipeline's retry hint, before waiting for room again, so that is never a busy loop.
_RACE_BACKOFF: Final = 0.01


class StreamDelivery:
    """Hands one connection's batches to `consumer` in order, one at a time, from a task of
    its own, so `data_received` never awaits. Reading is paused while the pipeline refuses
    a batch or while more than `max_pending_bytes` wait here, and resumed once neither holds.

    The protocol calls `submit` from `data_received` and `close` when the receiver stops;
    batches already read are delivered even after the client has gone."""

    __slots__ = (
        "_blocked",
        "_closed",
        "_consumer",
        "_max_pending",
        "_on_failed",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_task",
        "_transport",
        "failed_items",
    )

    def __init__(self, transport: asyncio.ReadTransport, consumer: Consumer, *,
                 max_pending_bytes: int = 1024 * 1024,
                 on_failed: Callable[[int], None] | None = None) -> None:
        self._transport = transport
        self._consumer = consumer
        self._max_pending = max_pending_bytes
        self._pending: deque[Batch] = deque()
        self._pending_bytes = 0
        self._blocked = False  # the pipeline refused the oldest pending batch
        self._paused = False  # we paused the transport
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.failed_items = 0  # dropped because a pipeline stage raised (logged)
        # told the item count of each batch dropped so (the receiver's refused counter)
        self._on_failed = on_failed

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def submit(self, batch: Batch) -> None:
        if self._closed:
            raise RuntimeError("submit after close")
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        self._update_reading()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, deadline: float) -> int:
        """Take no more batches; deliver the pending ones until `deadline` (loop time).
        Returns how many items were given up."""
        self._closed = True
        task = self._task
        if task is not None:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
            _done, not_done = await asyncio.wait({task}, timeout=timeout)
            if not_done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        lost = sum(batch.items for batch in self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return lost

    async def _run(self) -> None:
        refusals = 0
        try:
            while self._pending:
                batch = self._pending[0]
                try:
                    await self._consumer.consume(batch)
                except PipelineFullError as exc:
                    self._blocked = True
                    self._update_reading()
                    refusals += 1
                    if refusals > 1:
                        await asyncio.sleep(
                            min(_RACE_BACKOFF * 2 ** (refusals - 2), exc.retry_after))
                    await self._consumer.wait_for_room(batch.nbytes)
                    continue
                except Exception:
                    # a pipeline bug: the batch cannot be delivered, the stream goes on
                    self.failed_items += batch.items
                    if self._on_failed is not None:
                        self._on_failed(batch.items)
                    log.exception("pipeline failed on a %s batch from a stream",
                                  batch.signal.value)
                refusals = 0
                self._blocked = False
                self._pending.popleft()
                self._pending_bytes -= batch.nbytes
                self._update_reading()
        finally:
            self._task = None

    def _update_reading(self) -> None:
        want_pause = self._blocked or self._pending_bytes > self._max_pending
        if want_pause == self._paused:
            return
        transport = self._transport
        if transport.is_closing():
            return
        if want_pause:
            transport.pause_reading()
        else:
            transport.resume_reading()
        self._paused = want_pause

    def __repr__(self) -> str:
        return (f"StreamDelivery(pending={len(self._pending)}, bytes={self._pending_bytes}, "
                f"blocked={self._blocked}, paused={self._paused}, closed={self._closed})")
