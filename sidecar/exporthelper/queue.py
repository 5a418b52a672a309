"""The queue between the pipeline and an exporter's workers.

`Queue` is shaped so a durable on-disk queue can implement it: admission is by bytes and
never blocks (a full queue answers `False`, the chain turns that into backpressure), and
every `get` hands out a `Lease` that stays counted against the bound until it is acked.
A durable queue deletes data only on `ack`; whatever was never acked survives `close()`
(and `kill -9`) and is delivered again after a restart, so delivery is at-least-once.
`DurableQueue` (durable.py) is that queue; the pipeline writes it once per request through
its signal's `SharedLog`, so its `put` is not used.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sidecar.model import Batch, Signal


@dataclass(frozen=True, slots=True)
class Lease:
    """A batch handed to a consumer; `token` acks it."""

    batch: Batch
    token: int


class Queue(Protocol):
    # True: what is left at close stays stored for the next start (nothing to drain)
    durable: bool
    # told about data dropped to make room (when_full: drop_oldest): signal, items, reason
    on_drop: Callable[[Signal, int, str], None]

    @property
    def capacity_bytes(self) -> int: ...

    @property
    def size_bytes(self) -> int:
        """Bytes admitted and not yet acked (queued plus leased)."""
        ...

    @property
    def size_items(self) -> int: ...

    @property
    def drained(self) -> bool:
        """Sealed and nothing left to hand out: `get` will only return None."""
        ...

    def has_room(self, nbytes: int) -> bool: ...

    async def wait_for_room(self, nbytes: int) -> None:
        """Return once `has_room(nbytes)` is true, or the queue is sealed."""

    async def put(self, batch: Batch) -> bool:
        """Admit `batch` or return False at once when full. A durable queue returns only
        once the batch is safely stored, so the caller may acknowledge its client."""
        ...

    async def get(self, timeout: float | None = None) -> Lease | None:
        """The oldest batch not yet handed out; None on timeout or once drained."""
        ...

    def get_nowait(self) -> Lease | None: ...

    def ack(self, token: int) -> None:
        """Done with the leased batch (delivered or deliberately dropped): forget it.
        Acks arrive in any order: several workers deliver concurrently."""

    def seal(self) -> None:
        """Admit nothing more; `get` keeps handing out what is left, then returns None."""

    async def close(self) -> list[Batch]:
        """Release resources. Returns the un-acked batches this close loses (never any
        for a durable queue, which keeps them for the next start)."""
        ...


class MemoryQueue:
    """A FIFO bounded in bytes. Lost on exit, so the chain counts leftovers as dropped."""

    durable = False

    def __init__(self, capacity_bytes: int, when_full: str = "block") -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self._capacity = capacity_bytes
        self._drop_oldest = when_full == "drop_oldest"
        self.on_drop: Callable[[Signal, int, str], None] = lambda _s, _n, _r: None
        self._ready: deque[Lease] = deque()
        self._leased: dict[int, Lease] = {}
        self._tokens = itertools.count()
        self._bytes = 0
        self._items = 0
        self._sealed = False
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()  # set whenever bytes are freed or the queue is sealed

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def size_items(self) -> int:
        return self._items

    @property
    def drained(self) -> bool:
        return self._sealed and not self._ready

    def has_room(self, nbytes: int) -> bool:
        # An empty queue takes any one batch, so a batch larger than the whole bound is
        # still delivered instead of being refused forever (memory: capacity + one batch).
        return not self._sealed and (self._drop_oldest or self._bytes == 0
                                     or self._bytes + nbytes <= self._capacity)

    def _fits(self, nbytes: int) -> bool:
        return self._bytes == 0 or self._bytes + nbytes <= self._capacity

    async def wait_for_room(self, nbytes: int) -> None:
        while not self._sealed and not self.has_room(nbytes):
            self._room.clear()
            await self._room.wait()

    async def put(self, batch: Batch) -> bool:
        return self.put_nowait(batch)

    def put_nowait(self, batch: Batch) -> bool:
        nbytes = batch.nbytes
        if not self.has_room(nbytes):
            return False
        while self._drop_oldest and self._ready and not self._fits(nbytes):
            old = self._ready.popleft().batch
            self._bytes -= old.nbytes
            self._items -= old.items
            self.on_drop(old.signal, old.items, "queue_full")
        self._ready.append(Lease(batch, next(self._tokens)))
        self._bytes += nbytes
        self._items += batch.items
        self._wakeup.set()
        return True

    def get_nowait(self) -> Lease | None:
        if not self._ready:
            return None
        lease = self._ready.popleft()
        self._leased[lease.token] = lease
        return lease

    async def get(self, timeout: float | None = None) -> Lease | None:
        if not self._ready and not self._sealed and timeout != 0:
            self._wakeup.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                return None
        return self.get_nowait()

    def ack(self, token: int) -> None:
        lease = self._leased.pop(token)
        self._bytes -= lease.batch.nbytes
        self._items -= lease.batch.items
        self._room.set()

    def seal(self) -> None:
        self._sealed = True
        self._wakeup.set()
        self._room.set()

    async def close(self) -> list[Batch]:
        self.seal()
        lost = [lease.batch for lease in self._leased.values()]
        lost.extend(lease.batch for lease in self._ready)
        self._leased.clear()
        self._ready.clear()
        self._bytes = self._items = 0
        return lost

    def __repr__(self) -> str:
        return (f"MemoryQueue(bytes={self._bytes}/{self._capacity}, items={self._items}, "
                f"ready={len(self._ready)}, leased={len(self._leased)}, sealed={self._sealed})")
