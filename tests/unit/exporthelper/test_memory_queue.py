from __future__ import annotations

import asyncio

import pytest

from sidecar.exporthelper.queue import MemoryQueue
from sidecar.model import Batch, Signal
from sidecar.testing import logs_batch, traces_batch


async def test_admission_is_bounded_in_bytes_and_never_blocks() -> None:
    batch = traces_batch(5)
    queue = MemoryQueue(capacity_bytes=batch.nbytes * 3)
    admitted = [await queue.put(traces_batch(5)) for _ in range(5)]
    assert admitted == [True, True, True, False, False]
    assert queue.size_bytes == 3 * batch.nbytes
    assert queue.size_items == 15
    assert not queue.has_room(1)


async def test_an_empty_queue_takes_one_batch_larger_than_its_bound() -> None:
    big = traces_batch(50)
    queue = MemoryQueue(capacity_bytes=big.nbytes // 4)
    assert queue.has_room(big.nbytes)
    assert await queue.put(big)
    assert not await queue.put(traces_batch(1))


async def test_leased_batches_count_until_acked() -> None:
    first, second = traces_batch(3, seed=1), logs_batch(2)
    queue = MemoryQueue(capacity_bytes=first.nbytes + second.nbytes)
    assert await queue.put(first)
    assert await queue.put(second)
    lease = await queue.get()
    assert lease is not None
    assert lease.batch is first
    assert not queue.has_room(1)  # still counted while leased
    queue.ack(lease.token)
    assert queue.size_bytes == second.nbytes
    assert queue.size_items == 2
    assert queue.has_room(first.nbytes)


async def test_get_times_out_with_none_and_wakes_on_put() -> None:
    queue = MemoryQueue(1 << 20)
    assert await queue.get(timeout=0.01) is None
    assert not queue.drained
    assert await queue.get(timeout=0) is None
    waiter = asyncio.create_task(queue.get(timeout=10))
    await asyncio.sleep(0)
    batch = traces_batch(1)
    await queue.put(batch)
    lease = await waiter
    assert lease is not None
    assert lease.batch is batch


async def test_seal_refuses_new_data_then_drains() -> None:
    queue = MemoryQueue(1 << 20)
    await queue.put(traces_batch(1))
    queue.seal()
    assert not await queue.put(traces_batch(1))
    assert not queue.drained
    assert await queue.get() is not None
    assert queue.drained
    assert await queue.get() is None  # returns at once, no timeout needed


async def test_close_returns_everything_not_acked() -> None:
    queue = MemoryQueue(1 << 20)
    batches = [traces_batch(1, seed=i) for i in range(3)]
    for b in batches:
        await queue.put(b)
    done = queue.get_nowait()
    leased = queue.get_nowait()
    assert done is not None
    assert leased is not None
    queue.ack(done.token)
    lost = await queue.close()
    assert sorted(id(b) for b in lost) == sorted(id(b) for b in batches[1:])
    assert queue.size_bytes == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryQueue(0)


async def test_wait_for_room_resolves_when_an_ack_frees_enough_bytes() -> None:
    batch = traces_batch(5)
    queue = MemoryQueue(capacity_bytes=batch.nbytes * 2)
    assert await queue.put(traces_batch(5))
    assert await queue.put(traces_batch(5))
    waiter = asyncio.create_task(queue.wait_for_room(batch.nbytes))
    first = await queue.get()
    assert first is not None
    await asyncio.sleep(0.01)
    assert not waiter.done()  # leased is still counted
    queue.ack(first.token)
    await asyncio.wait_for(waiter, 1)
    assert queue.has_room(batch.nbytes)


async def test_wait_for_room_returns_once_sealed() -> None:
    queue = MemoryQueue(capacity_bytes=10)
    assert await queue.put(traces_batch(5))
    waiter = asyncio.create_task(queue.wait_for_room(10_000))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    queue.seal()
    await asyncio.wait_for(waiter, 1)


def test_drop_oldest_makes_room_and_reports_what_it_dropped() -> None:
    queue = MemoryQueue(250, when_full="drop_oldest")
    dropped: list[tuple[int, str]] = []
    queue.on_drop = lambda _signal, items, reason: dropped.append((items, reason))
    for i in range(5):
        assert queue.has_room(100)
        assert queue.put_nowait(Batch(Signal.TRACES, 1, bytes([i]) * 100))
    assert queue.size_bytes == 200
    assert dropped == [(1, "queue_full")] * 3
    lease = queue.get_nowait()
    assert lease is not None
    assert lease.batch.payload[0] == 3
