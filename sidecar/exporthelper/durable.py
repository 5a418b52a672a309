"""The durable queue: one segment log per signal, written once per accepted request, read by
one cursor per exporter of that signal.

Why one shared log and not a queue per exporter: fan-out must be all-or-nothing. With N
per-exporter files a request costs N writes in sequence on the request path, and a write
failing after the first has delivered to one exporter what the client will send again to
both (a reserve/commit step fixes the duplicate, not the N writes). Measured here: one
append of a 100-span request (75 KB) costs ~0.1 ms of CPU, nearly all of it the kernel's
page-cache write (copying the same bytes in user space: 3 µs), so N queues cost N times
that on every request. With one log per signal
the request is one `writev`; each exporter's cursor advances on its own acks, and a segment
file is deleted only once every cursor has passed it. The price is that a slow exporter
keeps the segments the fast one has already delivered (bounded: each cursor's unacked bytes
are bounded by its exporter's `queue.max_bytes`, so the log holds at most the largest bound
plus one segment).

A cursor's state is `next` (the first record never handed out) and `unacked` (handed out,
not acked yet: acks come in any order from concurrent workers). It is persisted, by
write-then-rename, every `storage.fsync_interval` and at shutdown; after a crash the
records in `unacked` and from `next` on are delivered again (at-least-once). Records in
`unacked` are counted as redelivered (`sidecar_queue_redelivered_items`); records acked
in the last interval before a `kill -9` are resent too and not counted, so the count is a
lower bound. A damaged or missing cursor file of a known log starts from the oldest record
(duplicates, never loss); a new exporter's cursor starts at the end of the log and is
written before the daemon accepts data.

Memory stays bounded while an exporter is down: payloads live in RAM only in a window of
the most recent `storage.memory_window` bytes per log and in what the workers hold; the
rest is read back from disk in a thread, up to 1 MiB at a time. The index of every record
on disk (~40 bytes each, no payload) stays in RAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import StartupError, StorageFullError
from sidecar.exporthelper.queue import Lease
from sidecar.exporthelper.wal import FsyncPolicy, Record, SegmentLog, StorageError, read_records
from sidecar.model import Batch, Signal
from sidecar.telemetry import metrics

log = logging.getLogger(__name__)

FETCH_BYTES = 1 << 20
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def cursor_file_name(exporter: str) -> str:
    if _SAFE_NAME.fullmatch(exporter) and not exporter.startswith("."):
        return f"{exporter}.json"
    return f"x-{exporter.encode().hex()[:200]}.json"


@dataclass(frozen=True, slots=True)
class LogSettings:
    segment_bytes: int
    fsync: FsyncPolicy
    fsync_interval: float
    memory_window: int


class Cursor:
    """One exporter's place in one signal's log."""

    def __init__(self, name: str, log_: SharedLog) -> None:
        self.name = name
        self.log = log_
        self.next_seq = 1
        self.redeliver: deque[int] = deque()  # unacked before the last stop, oldest first
        self.redeliver_set: set[int] = set()
        self.leased: dict[int, tuple[int, int, float]] = {}  # seq -> bytes, items, time
        self.prefetched: deque[Record] = deque()  # read from disk, not handed out yet
        self.pending_bytes = 0
        self.pending_items = 0
        self.dirty = True
        self.owner: DurableQueue | None = None

    # --- state ---------------------------------------------------------------------------
    def load(self, state: dict[str, object] | None, oldest: int, tail: int) -> None:
        if state is None:
            self.next_seq = tail
            return
        nxt = state.get("next")
        unacked = state.get("unacked")
        if not isinstance(nxt, int) or not isinstance(unacked, list) \
                or not all(isinstance(s, int) for s in unacked):
            log.warning("queue %s: cursor of %s is unreadable; delivering from the oldest "
                        "record", self.log.signal.value, self.name)
            self.next_seq = oldest
            return
        self.next_seq = max(min(nxt, tail), 1)
        self.redeliver = deque(sorted(s for s in set(unacked) if s < self.next_seq))

    def state(self) -> dict[str, object]:
        unacked = sorted({*self.leased, *(r.seq for r in self.prefetched), *self.redeliver})
        return {"version": 1, "next": self.next_seq, "unacked": unacked}

    def watermark(self) -> int:
        """Every record below this one is done with (acked or dropped)."""
        low = self.next_seq
        if self.leased:
            low = min(low, min(self.leased))
        if self.prefetched:
            low = min(low, self.prefetched[0].seq)
        if self.redeliver:
            low = min(low, self.redeliver[0])
        return low

    # --- writes --------------------------------------------------------------------------
    def on_append(self, nbytes: int, items: int) -> None:
        self.pending_bytes += nbytes
        self.pending_items += items

    def drop_oldest(self) -> tuple[int, int] | None:
        """Drop the oldest record not handed out (never the newest); (bytes, items)."""
        if self.prefetched:
            rec = self.prefetched.popleft()
            return self._forget(len(rec.payload), rec.items)
        if self.redeliver:
            seq = self.redeliver.popleft()
            meta = self.log.meta(seq)
            self.dirty = True
            return self._forget(meta[0], meta[1]) if meta else (0, 0)
        newest = self.log.wal.next_seq - 1
        while self.next_seq < newest:
            seq = self.next_seq
            self.next_seq += 1
            self.dirty = True
            meta = self.log.meta(seq)
            if meta is not None:
                return self._forget(meta[0], meta[1])
        return None

    def _forget(self, nbytes: int, items: int) -> tuple[int, int]:
        self.pending_bytes -= nbytes
        self.pending_items -= items
        return nbytes, items

    # --- reads ---------------------------------------------------------------------------
    def _lease(self, seq: int, batch: Batch, ts: float) -> Batch:
        self.leased[seq] = (batch.nbytes, batch.items, ts)
        self.dirty = True
        if seq in self.redeliver_set:
            self.redeliver_set.discard(seq)
            if self.owner is not None:
                self.owner.redelivered.inc(batch.items)
        return batch

    def take_nowait(self) -> tuple[int, Batch] | None:
        signal = self.log.signal
        if self.prefetched:
            rec = self.prefetched.popleft()
            return rec.seq, self._lease(rec.seq, Batch(signal, rec.items, rec.payload), rec.ts)
        if self.redeliver:
            return None  # only from disk
        seq = self.next_seq
        if seq >= self.log.wal.next_seq:
            return None
        hit = self.log.window.get(seq)
        if hit is None:
            return None
        self.next_seq = seq + 1
        return seq, self._lease(seq, hit[0], hit[1])

    def needs_fetch(self) -> bool:
        if self.prefetched:
            return False
        if self.redeliver:
            return True
        seq = self.next_seq
        return seq < self.log.wal.next_seq and seq not in self.log.window

    async def fetch(self) -> None:
        """Read the next records from disk into `prefetched` (in a thread)."""
        wal = self.log.wal
        single = bool(self.redeliver)
        seq = self.redeliver[0] if single else self.next_seq
        found = wal.locate(seq)
        if found is None or (single and found[0].seqs[found[1]] != seq):
            if single:  # gone (deleted or damaged): nothing to resend
                self.redeliver.popleft()
            else:
                self.next_seq = wal.next_seq
            self.dirty = True
            return
        segment, start = found
        if not single and segment.seqs[start] > seq:
            # a gap (records lost to damage): move on, the next call reads or takes it
            self.next_seq = segment.seqs[start]
            self.dirty = True
            return
        stop, total = start, 0
        window = self.log.window
        while stop < len(segment.seqs) and total < FETCH_BYTES and (stop == start or not single):
            if not single and segment.seqs[stop] in window:
                break
            total += segment.lengths[stop]
            stop += 1
        if stop == start:
            return
        try:
            records: list[Record | None] = await asyncio.to_thread(
                read_records, segment, start, stop)
        except FileNotFoundError:
            # deleted behind our back: what it held is gone (counted as corrupt)
            self.log.read_errors.inc()
            log.error("queue %s: %s vanished", self.log.signal.value, segment.path)
            records = [None] * (stop - start)
        except OSError as exc:
            self.log.read_errors.inc()
            log.error("queue %s: cannot read %s: %s", self.log.signal.value, segment.path,
                      exc.strerror)
            await asyncio.sleep(1.0)  # an I/O error may pass: try again, not in a hot loop
            return
        # the state may have moved while the thread read (drop_oldest)
        for i, rec in enumerate(records, start):
            rseq = segment.seqs[i]
            if single:
                if not self.redeliver or self.redeliver[0] != rseq:
                    break
                self.redeliver.popleft()
            else:
                if rseq < self.next_seq:
                    continue
                self.next_seq = rseq + 1
            if rec is None:  # damaged since the start-up scan
                self.log.corrupt.inc()
                self._forget(segment.lengths[i], segment.items[i])
                if self.owner is not None:
                    self.owner.on_drop(self.log.signal, segment.items[i], "corrupt")
                continue
            self.prefetched.append(rec)
        self.dirty = True

    def release(self) -> None:
        """A reload stopped this cursor's exporter: what it leased and never acked is
        delivered again by the next owner, as after a restart (counted as redelivered)."""
        if self.leased:
            self.redeliver = deque(sorted({*self.leased, *self.redeliver}))
            self.redeliver_set |= set(self.leased)
            self.leased.clear()  # still pending: the bytes stay counted
            self.dirty = True
        self.owner = None

    def ack(self, seq: int) -> None:
        nbytes, items, _ = self.leased.pop(seq)
        self._forget(nbytes, items)
        self.dirty = True

    def oldest_time(self) -> float | None:
        times = [ts for _, _, ts in self.leased.values()]
        if self.prefetched:
            times.append(self.prefetched[0].ts)
        for seq in (self.redeliver[0] if self.redeliver else None, self.next_seq):
            if seq is not None and seq < self.log.wal.next_seq:
                meta = self.log.meta(seq)
                if meta is not None:
                    times.append(meta[2])
        return min(times) if times else None


class SharedLog:
    """One signal's log and the cursors of the exporters reading it."""

    def __init__(self, signal: Signal, directory: Path, settings: LogSettings) -> None:
        self.signal = signal
        self.directory = directory
        self.settings = settings
        self.wal = SegmentLog(directory, segment_bytes=settings.segment_bytes,
                              fsync=settings.fsync, fsync_interval=settings.fsync_interval)
        self.cursors: dict[str, Cursor] = {}
        self.window: dict[int, tuple[Batch, float]] = {}
        self._window_order: deque[tuple[int, int]] = deque()
        self._window_bytes = 0
        self._tick: asyncio.Task[None] | None = None
        self._opened = False
        name = signal.value
        self.corrupt = metrics.QUEUE_CORRUPT.labels(name)
        self.read_errors = metrics.QUEUE_DISK_ERRORS.labels(name, "read")
        self._fsync_hist = metrics.QUEUE_FSYNC.labels(name)
        wal = self.wal
        metrics.QUEUE_DISK_BYTES.labels(name).set_function(lambda: wal.disk_bytes)
        metrics.QUEUE_DISK_RECORDS.labels(name).set_function(lambda: wal.disk_records)

    def cursor(self, exporter: str) -> Cursor:
        cursor = self.cursors.get(exporter)
        if cursor is None:
            cursor = self.cursors[exporter] = Cursor(exporter, self)
            if self._opened:  # added by a reload: it starts at the end, like a new exporter
                cursor.load(None, self.wal.next_seq, self.wal.next_seq)
        return cursor

    async def detach(self, exporter: str) -> None:
        """A reload removed this exporter from the signal: forget its cursor (and its file),
        so the log no longer keeps records for it."""
        if self.cursors.pop(exporter, None) is None:
            return
        path = self.cursor_dir / cursor_file_name(exporter)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)
        self.housekeep()

    @property
    def cursor_dir(self) -> Path:
        return self.directory / "cursors"

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            states = await asyncio.to_thread(self._open_sync)
        except OSError as exc:
            raise StartupError(f"storage.dir: {self.directory}: {exc.strerror}") from exc
        wal = self.wal
        if wal.corrupt:
            self.corrupt.inc(wal.corrupt)
            for problem in wal.problems:
                log.error("queue %s: skipped corrupt data: %s", self.signal.value, problem)
        oldest = min((s.seqs[0] for s in wal.segments if s.seqs), default=wal.next_seq)
        for name, cursor in self.cursors.items():
            state = states.get(name)
            if state == "bad":
                cursor.load({}, oldest, wal.next_seq)
            else:
                cursor.load(state if isinstance(state, dict) else None, oldest, wal.next_seq)
            cursor.redeliver_set = set(cursor.redeliver)
        unacked = {n: c.redeliver_set for n, c in self.cursors.items()}
        for seq, length, items, _ in wal.records():
            for name, cursor in self.cursors.items():
                if seq >= cursor.next_seq or seq in unacked[name]:
                    cursor.pending_bytes += length
                    cursor.pending_items += items
        await self.persist()
        await wal.start()
        self._tick = asyncio.create_task(self._tick_loop(), name=f"queue-{self.signal.value}")

    def _open_sync(self) -> dict[str, object]:
        self.wal.open_sync()
        self.cursor_dir.mkdir(parents=True, exist_ok=True)
        states: dict[str, object] = {}
        for name in self.cursors:
            path = self.cursor_dir / cursor_file_name(name)
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            except OSError:
                states[name] = "bad"
                continue
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            states[name] = value if isinstance(value, dict) else "bad"
        return states

    def meta(self, seq: int) -> tuple[int, int, float] | None:
        """(payload bytes, items, time) of record `seq`, from the index."""
        found = self.wal.locate(seq)
        if found is None:
            return None
        segment, i = found
        if segment.seqs[i] != seq:
            return None
        return segment.lengths[i], segment.items[i], segment.times[i]

    # --- the request path ----------------------------------------------------------------
    def append(self, batch: Batch) -> int:
        """Write `batch` once for every cursor (synchronous: one `writev`). Raises
        `StorageFullError` (the client retries) when the disk refuses it."""
        now = time.time()
        try:
            seq = self.wal.append(batch.payload, batch.items, now)
        except StorageError as exc:
            metrics.QUEUE_DISK_ERRORS.labels(self.signal.value, exc.reason).inc()
            log.error("queue %s: %s", self.signal.value, exc)
            raise StorageFullError(f"{self.signal.value} queue storage: {exc}",
                                   retry_after=5.0) from exc
        nbytes = batch.nbytes
        self.window[seq] = (batch, now)
        self._window_order.append((seq, nbytes))
        self._window_bytes += nbytes
        while self._window_bytes > self.settings.memory_window and len(self._window_order) > 1:
            old, size = self._window_order.popleft()
            self.window.pop(old, None)
            self._window_bytes -= size
        for cursor in self.cursors.values():
            cursor.on_append(nbytes, batch.items)
            if cursor.owner is not None:
                cursor.owner.appended(cursor)
        return seq

    async def committed(self, seq: int) -> None:
        try:
            await self.wal.committed(seq)
        except StorageError as exc:
            raise StorageFullError(f"{self.signal.value} queue storage: {exc}",
                                   retry_after=5.0) from exc

    # --- housekeeping --------------------------------------------------------------------
    async def persist(self) -> None:
        dirty = {n: c.state() for n, c in self.cursors.items() if c.dirty}
        for name in dirty:
            self.cursors[name].dirty = False
        if not dirty:
            return
        try:
            await asyncio.to_thread(self._write_cursors, dirty)
        except OSError as exc:
            for name in dirty:
                self.cursors[name].dirty = True
            metrics.QUEUE_DISK_ERRORS.labels(self.signal.value, "cursor").inc()
            log.error("queue %s: cannot save cursors: %s", self.signal.value, exc.strerror)

    def _write_cursors(self, states: dict[str, dict[str, object]]) -> None:
        for name, state in states.items():
            path = self.cursor_dir / cursor_file_name(name)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)

    def housekeep(self) -> None:
        wal = self.wal
        for seconds in wal.fsync_seconds:
            self._fsync_hist.observe(seconds)
        wal.fsync_seconds.clear()
        if self.cursors:
            wal.delete_before(min(c.watermark() for c in self.cursors.values()))

    async def _tick_loop(self) -> None:
        interval = max(self.settings.fsync_interval, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.persist()
                self.housekeep()
            except Exception:  # housekeeping must never end: log and go on
                log.exception("queue %s: housekeeping failed", self.signal.value)

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            await asyncio.gather(self._tick, return_exceptions=True)
            self._tick = None
        if self._opened:
            await self.wal.close()
            for cursor in self.cursors.values():
                cursor.dirty = True
            await self.persist()
            self.housekeep()


class DurableQueue:
    """One exporter's `Queue` over its cursors in the logs of its signals. The pipeline
    writes (`SharedLog.append`); this only reads, leases and acks."""

    durable = True

    def __init__(self, name: str, capacity_bytes: int, when_full: str,
                 cursors: list[Cursor]) -> None:
        if capacity_bytes <= 0:
            raise ValueError("capacity_bytes must be positive")
        self.name = name
        self._capacity = capacity_bytes
        self._when_full = when_full
        self.cursors = cursors
        for cursor in cursors:
            cursor.owner = self
        self._sealed = False
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._rr = 0
        self.redelivered = metrics.QUEUE_REDELIVERED.labels(name)
        self.on_drop: Callable[[Signal, int, str], None] = lambda _s, _n, _r: None
        metrics.QUEUE_OLDEST_AGE.labels(name).set_function(self.oldest_age)

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def size_bytes(self) -> int:
        return sum(c.pending_bytes for c in self.cursors)

    @property
    def size_items(self) -> int:
        return sum(c.pending_items for c in self.cursors)

    @property
    def drained(self) -> bool:
        # what is left stays on disk for the next start: nothing to drain
        return self._sealed

    def oldest_age(self) -> float:
        times = [t for c in self.cursors if (t := c.oldest_time()) is not None]
        return max(time.time() - min(times), 0.0) if times else 0.0

    def has_room(self, nbytes: int) -> bool:
        if self._sealed:
            return False
        size = self.size_bytes
        return self._when_full == "drop_oldest" or size == 0 or size + nbytes <= self._capacity

    async def wait_for_room(self, nbytes: int) -> None:
        while not self._sealed and not self.has_room(nbytes):
            self._room.clear()
            await self._room.wait()

    def appended(self, cursor: Cursor) -> None:
        if self._when_full == "drop_oldest":
            while self.size_bytes > self._capacity:
                dropped = cursor.drop_oldest()
                if dropped is None:
                    break
                self.on_drop(cursor.log.signal, dropped[1], "queue_full")
        self._wakeup.set()

    async def put(self, batch: Batch) -> bool:
        raise TypeError("a durable queue is written through its signal's SharedLog")

    def get_nowait(self) -> Lease | None:
        if self._sealed:
            return None
        n = len(self.cursors)
        for i in range(n):
            index = (self._rr + i) % n
            got = self.cursors[index].take_nowait()
            if got is not None:
                self._rr = index + 1
                seq, batch = got
                return Lease(batch, seq * 4 + index)
        return None

    async def get(self, timeout: float | None = None) -> Lease | None:
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        while not self._sealed:
            lease = self.get_nowait()
            if lease is not None:
                return lease
            behind = [c for c in self.cursors if c.needs_fetch()]
            if behind:
                await behind[0].fetch()
                continue
            left = None if until is None else until - loop.time()
            if left is not None and left <= 0:
                return None
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wakeup.wait()
            except TimeoutError:
                return None
        return None

    def ack(self, token: int) -> None:
        self.cursors[token % 4].ack(token // 4)
        self._room.set()

    def seal(self) -> None:
        self._sealed = True
        self._wakeup.set()
        self._room.set()

    async def close(self) -> list[Batch]:
        self.seal()
        return []  # un-acked records stay in the log for the next start

    def __repr__(self) -> str:
        return (f"DurableQueue({self.name}: bytes={self.size_bytes}/{self._capacity}, "
                f"items={self.size_items}, sealed={self._sealed})")
