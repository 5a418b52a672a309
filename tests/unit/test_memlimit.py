"""The memory limiter's levels and what each does, with RSS readings fed in; the real RSS
path is tests/e2e/test_daemon_memory_limit.py."""

from __future__ import annotations

import asyncio

import pytest

from sidecar import config
from sidecar.errors import ConfigError, PipelineFullError
from sidecar.memlimit import GuardedConsumer, Level, MemoryConfig, MemoryLimiter, read_rss
from sidecar.model import Batch, Signal


class Recorder:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.waits = 0

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def wait_for_room(self, nbytes: int) -> None:
        self.waits += 1


def limiter(readings: list[int], shed_log: list[int]) -> MemoryLimiter:
    def shed() -> int:
        shed_log.append(1)
        return 1000

    cfg = MemoryConfig(soft_limit=100, hard_limit=200)
    return MemoryLimiter(cfg, shed=shed, rss=lambda: readings[0])


async def test_levels_refuse_shed_and_recover() -> None:
    readings = [50]
    shed: list[int] = []
    mem = limiter(readings, shed)
    inner = Recorder()
    guarded = GuardedConsumer(Signal.TRACES, inner, mem)
    batch = Batch(Signal.TRACES, 1, b"")

    assert mem.check() is Level.OK
    await guarded.consume(batch)
    readings[0] = 100
    assert mem.check() is Level.SOFT
    with pytest.raises(PipelineFullError) as info:
        await guarded.consume(batch)
    assert info.value.retry_after == 1.0
    assert shed == []
    readings[0] = 250
    assert mem.check() is Level.HARD
    assert shed == [1]

    waiter = asyncio.create_task(guarded.wait_for_room(10))
    await asyncio.sleep(0.01)
    assert not waiter.done()  # a stream receiver stays paused while over the limit
    readings[0] = 99
    assert mem.check() is Level.OK
    await asyncio.wait_for(waiter, 1)
    assert inner.waits == 1
    await guarded.consume(batch)
    assert len(inner.batches) == 2


def test_rss_is_read_on_linux() -> None:
    rss = read_rss()
    assert rss is not None
    assert rss > 10 * 1024 * 1024


@pytest.mark.parametrize(("memory", "message"), [
    ({"hard_limit": "1GiB"}, "hard_limit needs a soft_limit"),
    ({"soft_limit": "1GiB", "hard_limit": "512MiB"}, "must be above soft_limit"),
    ({"soft_limit": 0}, "greater than 0"),
])
def test_config_problems(memory: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree({"service": {"memory": memory}})
    assert message in str(info.value)
    assert info.value.problems[0].path.startswith("service.memory")


def test_off_by_default() -> None:
    assert not config.from_tree({}).service.memory.enabled
