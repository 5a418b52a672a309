"""Coalescing (`pipelines.coalesce`): requests of one signal that arrive close together go
through the processing stage and into the queue as one request.

Why: at a steady rate each request alone finds the processors' code and data gone cold from
the CPU's caches since the one before. On the 2-vCPU bench VM the default processors cost
4.3 µs a span on 100-span requests 10 ms apart (10,000 spans/s), 1.6 back to back; five
such requests taken together 50 ms apart cost 2.4 (bench/README.md, "Coalescing"). One
group is also one stage run, one durable write and one set of queue puts.

How, like Nagle's algorithm: a request that arrives when nothing went through for
`max_delay` goes on at once (sparse traffic waits for nothing); one that arrives sooner
waits for the others until `max_delay` after the last group went, or until the group holds
`max_items` items or `max_bytes`. Every client is still answered only once its request is
in the queue (as durable as `storage.fsync` says), so a request's answer waits at most
`max_delay` longer. A client whose request is cancelled while it waits is left out of its
group (it will send it again).

Holding only pays when others join: a client that sends one request at a time, each once
the last was answered, never has company and would only be slowed (to one request per
`max_delay`). So after `ALONE_LIMIT` held groups in a row of one request each, requests go
on at once for a while (`PAUSE_FIRST`, doubling up to `PAUSE_MAX` while holding keeps not
paying), then holding is tried again.

The requests' bytes are concatenated (`model.merge`: repeated fields merge, so the bytes
of two requests are one valid request); nothing is parsed for it. If the group is refused
as a whole before anything of it was kept (a full queue, a processor failing on it, the
disk), each request is tried on its own and answered with its own outcome: one client's
content or size never costs another client its place. (A read-only processor that ran
before the failing one then sees those requests twice, as it would when a refused client
retries.)"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sidecar.config import CoalesceConfig
from sidecar.model import Batch, Signal, merge
from sidecar.telemetry.metrics import PIPELINE_GROUP_REQUESTS

A = TypeVar("A")  # what `admit` hands to `settle`

ALONE_LIMIT = 4  # held groups of one request in a row before holding pauses
PAUSE_FIRST = 1.0  # seconds; doubled each time holding is tried again without company
PAUSE_MAX = 30.0


class Coalescer(Generic[A]):
    """Groups requests for `admit` (which must not suspend between its checks and its
    puts, and keeps nothing when it raises; None: nothing to settle) and `settle` (the wait
    for durability after it)."""

    __slots__ = ("_admit", "_alone", "_bytes", "_groups", "_hold_from", "_items", "_last",
                 "_max_bytes", "_max_delay", "_max_items", "_pause", "_pending", "_settle",
                 "_tasks", "_timer")

    def __init__(self, signal: Signal, config: CoalesceConfig,
                 admit: Callable[[Batch], Awaitable[A | None]],
                 settle: Callable[[A], Awaitable[None]]) -> None:
        self._max_delay = config.max_delay
        self._max_items = config.max_items
        self._max_bytes = config.max_bytes
        self._admit = admit
        self._settle = settle
        self._pending: list[tuple[Batch, asyncio.Future[None]]] = []
        self._items = 0
        self._bytes = 0
        self._last = -math.inf  # loop time the last group went
        self._timer: asyncio.TimerHandle | None = None
        self._alone = 0  # held groups of one request in a row
        self._hold_from = -math.inf  # loop time holding starts again
        self._pause = PAUSE_FIRST
        self._tasks: set[asyncio.Task[None]] = set()
        self._groups = PIPELINE_GROUP_REQUESTS.labels(signal.value)

    async def consume(self, batch: Batch) -> None:
        """Return once `batch` went through with its group; raises what refused it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((batch, future))
        self._items += batch.items
        self._bytes += batch.nbytes
        now = loop.time()
        if (self._items >= self._max_items or self._bytes >= self._max_bytes
                or now - self._last >= self._max_delay or now < self._hold_from):
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_at(self._last + self._max_delay, self._held)
        await future

    def _held(self) -> None:
        """The timer's flush: a held group goes; was it worth holding?"""
        self._timer = None
        if len(self._pending) > 1:
            self._alone = 0
            self._pause = PAUSE_FIRST
        else:
            self._alone += 1
            if self._alone >= ALONE_LIMIT:
                self._alone = 0
                self._hold_from = asyncio.get_running_loop().time() + self._pause
                self._pause = min(self._pause * 2, PAUSE_MAX)
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group = [(batch, future) for batch, future in self._pending if not future.done()]
        self._pending = []
        self._items = self._bytes = 0
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        if group:
            # a task of its own: no waiter's cancellation can stop the group half way
            task = loop.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[tuple[Batch, asyncio.Future[None]]]) -> None:
        self._groups.observe(len(group))
        futures = [future for _, future in group]
        parts: list[tuple[A | None, list[asyncio.Future[None]]]]
        try:
            parts = [(await self._admit(merge([batch for batch, _ in group])), futures)]
        except Exception as exc:
            if len(group) == 1:
                _fail(futures, exc)
                return
            parts = []  # refused whole, nothing of it kept: each request on its own
            for batch, future in group:
                try:
                    parts.append((await self._admit(batch), [future]))
                except Exception as alone:
                    _fail([future], alone)
        for admitted, waiting in parts:
            try:
                if admitted is not None:
                    await self._settle(admitted)
            except Exception as exc:
                _fail(waiting, exc)
                continue
            for future in waiting:
                if not future.done():
                    future.set_result(None)

    async def drain(self) -> None:
        """Send what waits now and return once every group went through."""
        self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(futures: list[asyncio.Future[None]], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
