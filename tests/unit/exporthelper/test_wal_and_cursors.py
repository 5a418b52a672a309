"""The durable queue below the daemon: segment log framing and recovery, cursors with
out-of-order acks across a restart, drop_oldest, and the group commit of `always`."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.exporthelper.durable import DurableQueue, LogSettings, SharedLog
from sidecar.exporthelper.wal import SegmentLog, list_segments, scan
from sidecar.model import Batch, Signal


def settings(**kw: object) -> LogSettings:
    base: dict[str, object] = {"segment_bytes": 1 << 20, "fsync": "interval",
                               "fsync_interval": 0.05, "memory_window": 1 << 20}
    base.update(kw)
    return LogSettings(**base)  # type: ignore[arg-type]


def batch(n: int, size: int = 100) -> Batch:
    return Batch(Signal.TRACES, 1, bytes([n % 256]) * size)


async def open_queue(directory: Path, name: str = "a", capacity: int = 1 << 20,
                     when_full: str = "block", **kw: object) -> tuple[SharedLog, DurableQueue]:
    log = SharedLog(Signal.TRACES, directory, settings(**kw))
    queue = DurableQueue(name, capacity, when_full, [log.cursor(name)])
    await log.open()
    return log, queue


async def test_scan_skips_a_flipped_bit_and_a_torn_tail(tmp_path: Path) -> None:
    wal = SegmentLog(tmp_path, segment_bytes=1 << 20, fsync="never", fsync_interval=1)
    wal.open_sync()
    for i in range(10):
        wal.append(bytes([i]) * 50, 1)
    await wal.close()
    [(first, path)] = list_segments(tmp_path)
    data = bytearray(path.read_bytes())
    record = len(data) // 10
    data[record * 3 + 40] ^= 0x10
    path.write_bytes(bytes(data[:-7]))
    result = scan(path, first)
    assert list(result.segment.seqs) == [1, 2, 3, 5, 6, 7, 8, 9]
    assert result.corrupt == 2
    assert "torn tail" in result.problems[-1]


async def test_unacked_records_come_back_after_a_restart_and_acked_ones_do_not(
        tmp_path: Path) -> None:
    log, queue = await open_queue(tmp_path)
    for i in range(5):
        log.append(batch(i))
    leases = [queue.get_nowait() for _ in range(4)]
    assert all(lease is not None for lease in leases)
    queue.ack(leases[3].token)  # type: ignore[union-attr]  # out of order
    queue.ack(leases[1].token)  # type: ignore[union-attr]
    assert queue.size_items == 3
    await log.close()
    state = json.loads((tmp_path / "cursors" / "a.json").read_text())
    assert state == {"version": 1, "next": 5, "unacked": [1, 3]}

    log2, queue2 = await open_queue(tmp_path)
    assert queue2.size_items == 3
    got = []
    while (lease := await queue2.get(timeout=0.5)) is not None:
        got.append(lease.batch.payload[0])
        queue2.ack(lease.token)
    assert got == [0, 2, 4]  # records 1 and 3 (payloads 0, 2) again, then the unread 5
    assert queue2.size_bytes == 0
    await log2.close()


async def test_backlog_beyond_the_memory_window_is_read_from_disk(tmp_path: Path) -> None:
    log, queue = await open_queue(tmp_path, memory_window=500, segment_bytes=4096)
    for i in range(100):
        log.append(batch(i))
    assert len(log.window) <= 5
    got = []
    while (lease := await queue.get(timeout=0.2)) is not None:
        got.append(lease.batch.payload[0])
        queue.ack(lease.token)
    assert got == list(range(100))
    log.housekeep()
    assert len(list_segments(tmp_path)) <= 1  # passed segments are deleted
    await log.close()


async def test_drop_oldest_keeps_the_bound_and_counts(tmp_path: Path) -> None:
    log, queue = await open_queue(tmp_path, capacity=350, when_full="drop_oldest")
    dropped: list[int] = []
    queue.on_drop = lambda _s, n, reason: dropped.append(n) if reason == "queue_full" else None
    for i in range(10):
        assert queue.has_room(100)
        log.append(batch(i))
    assert queue.size_bytes <= 350
    assert sum(dropped) == 7
    lease = queue.get_nowait()
    assert lease is not None
    assert lease.batch.payload[0] == 7
    await log.close()


async def test_block_refuses_once_full(tmp_path: Path) -> None:
    log, queue = await open_queue(tmp_path, capacity=250)
    log.append(batch(0))
    log.append(batch(1))
    assert not queue.has_room(100)
    await log.close()


async def test_always_acks_after_the_fsync_that_covers_the_record(tmp_path: Path) -> None:
    log, _queue = await open_queue(tmp_path, fsync="always")
    seqs = [log.append(batch(i)) for i in range(20)]
    await log.committed(seqs[-1])
    assert log.wal.fsync_seconds  # at least one fsync ran and covered all twenty
    assert log.wal.synced_seq >= seqs[-1]
    await log.close()
