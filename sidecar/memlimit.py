"""`service.memory`: a limit on the daemon's resident memory (RSS), checked every
`check_interval`.

- Above `soft_limit` every receiver is refused new work with the same retryable answer a
  full queue gives (gRPC RESOURCE_EXHAUSTED + RetryInfo, HTTP 429 + Retry-After; stream
  receivers stop reading their sockets until memory is back under the limit). Work already
  accepted goes on: nothing acknowledged is dropped.
- Above `hard_limit` the cache's memory tier (L1) is also shed, oldest entries first, down
  to half of what it held (the cache is a cache: a miss costs a recomputation, while
  telemetry would be lost), and a full garbage collection runs.

It wraps each signal's consumer (the pipeline), so receivers need no code of their own, and
it costs one attribute read per request. RSS is read from `/proc/self/statm` (one small
read; Linux only: elsewhere the limiter is off with a warning)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable, Mapping
from enum import IntEnum
from pathlib import Path
from typing import Final

from pydantic import Field, model_validator

from sidecar.component import Consumer
from sidecar.configtypes import ByteSize, Duration, Strict
from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal
from sidecar.telemetry import metrics

log = logging.getLogger(__name__)

_STATM: Final = Path("/proc/self/statm")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
RETRY_AFTER: Final = 1.0


class MemoryConfig(Strict):
    """Both limits are optional; `hard_limit` needs `soft_limit` below it."""

    soft_limit: ByteSize | None = Field(default=None, gt=0)
    hard_limit: ByteSize | None = Field(default=None, gt=0)
    check_interval: Duration = Field(default=0.1, gt=0, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> MemoryConfig:
        if self.hard_limit is not None:
            if self.soft_limit is None:
                raise ValueError("hard_limit needs a soft_limit (the level where receivers "
                                 "start refusing)")
            if self.hard_limit <= self.soft_limit:
                raise ValueError(f"hard_limit ({self.hard_limit}) must be above soft_limit "
                                 f"({self.soft_limit})")
        return self

    @property
    def enabled(self) -> bool:
        return self.soft_limit is not None


class Level(IntEnum):
    OK = 0
    SOFT = 1
    HARD = 2


def read_rss() -> int | None:
    try:
        fields = _STATM.read_bytes().split()
    except OSError:
        return None
    return int(fields[1]) * _PAGE


class MemoryLimiter:
    def __init__(self, config: MemoryConfig, shed: Callable[[], int] | None = None,
                 rss: Callable[[], int | None] = read_rss) -> None:
        assert config.soft_limit is not None
        self.soft = config.soft_limit
        self.hard = config.hard_limit
        self.interval = config.check_interval
        self.level = Level.OK
        self._shed = shed
        self._rss = rss
        self._below = asyncio.Event()
        self._below.set()
        self._task: asyncio.Task[None] | None = None
        metrics.MEMORY_SOFT_LIMIT.set(self.soft)
        if self.hard is not None:
            metrics.MEMORY_HARD_LIMIT.set(self.hard)

    @property
    def limited(self) -> bool:
        return self.level is not Level.OK

    def check(self) -> Level:
        """Read RSS once and act on it; the loop calls this every interval."""
        rss = self._rss()
        if rss is None:
            return self.level
        metrics.MEMORY_RSS.set(rss)
        level = (Level.HARD if self.hard is not None and rss >= self.hard
                 else Level.SOFT if rss >= self.soft else Level.OK)
        if level is not self.level:
            log.warning("memory %s: rss %d bytes (soft_limit %d, hard_limit %s)",
                        level.name.lower(), rss, self.soft, self.hard)
        self.level = level
        metrics.MEMORY_LEVEL.set(int(level))
        if level is Level.HARD:
            freed = self._shed() if self._shed is not None else 0
            if freed:
                metrics.MEMORY_CACHE_SHED_BYTES.inc(freed)
            gc.collect()
        if level is Level.OK:
            self._below.set()
        else:
            self._below.clear()
        return level

    async def wait_below_soft(self) -> None:
        await self._below.wait()

    async def _loop(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._rss() is None:
            log.warning("service.memory: cannot read this process's RSS here (%s is "
                        "missing): the memory limiter is off", _STATM)
            return
        self.check()
        self._task = asyncio.get_running_loop().create_task(self._loop(),
                                                           name="memory-limiter")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._below.set()  # nobody waits on a limiter that no longer checks


class GuardedConsumer:
    """A signal's consumer behind the limiter: refused while memory is over the soft
    limit, exactly as a full pipeline refuses."""

    __slots__ = ("_inner", "_limiter", "_refused")

    def __init__(self, signal: Signal, inner: Consumer, limiter: MemoryLimiter) -> None:
        self._inner = inner
        self._limiter = limiter
        self._refused = metrics.MEMORY_REFUSED.labels(signal.value)

    async def consume(self, batch: Batch) -> None:
        if self._limiter.level is not Level.OK:
            self._refused.inc()
            raise PipelineFullError("memory limit: the sidecar is above service.memory."
                                    "soft_limit; retry shortly", retry_after=RETRY_AFTER)
        await self._inner.consume(batch)

    async def wait_for_room(self, nbytes: int) -> None:
        await self._limiter.wait_below_soft()
        await self._inner.wait_for_room(nbytes)


def guard(consumers: Mapping[Signal, Consumer],
          limiter: MemoryLimiter | None) -> Mapping[Signal, Consumer]:
    if limiter is None:
        return consumers
    return {s: GuardedConsumer(s, c, limiter) for s, c in consumers.items()}
