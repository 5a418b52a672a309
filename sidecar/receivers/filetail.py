"""`receivers.logs.files`: JSON log lines tailed from files matching globs.

Modelled on the OTel Collector's `filelog` receiver. Every `poll_interval` one executor call
globs the patterns, opens each match and reads its device, inode, size and first
`fingerprint_size` bytes. A file is identified by device + inode *and* its first bytes:

- the same inode at another path (rotation by rename into the glob) is read on;
- a tracked inode no longer matched (renamed out of the glob, deleted) is read to its end
  through the descriptor we hold, its unfinished last line delivered, then closed;
- a tracked inode whose first bytes changed (copytruncate, then new writes; a reused
  inode) or that is shorter than what was read (truncated) is read again from 0;
- a new inode whose first bytes are those of a file we were reading and which was just
  reset (copytruncate's copy, when the glob matches it) continues at that file's offset,
  so the lines written between our last read and the copy come out once; one whose first
  bytes are a file we are still reading is a copy of it and waits (the truncate follows);
- any other new inode is read from 0 (from its end when first seen at startup and
  `start_at: end`).

Reads are bounded (`_READ`) and run in the default executor (a slow or network disk never
stalls the loop); what a read returned is parsed `_CHUNK` bytes at a time with the loop let
run in between; each file gets at most `_PER_POLL` bytes a turn so one busy file cannot
starve the others. Lines go through `LineSplitter` (the receiver's `max_line_length`) and
`LogBatchBuilder` into requests that are handed to the pipeline from this task: while the
pipeline refuses, reading waits (`wait_for_room`), nothing is dropped.

Checkpoints (`storage.dir/filetail/<receiver>.json`: device, inode, fingerprint, offset per
file) are committed only after `consume` returned for the records up to that offset, and
written atomically (temp file, fsync, rename, fsync of the directory) once per poll that
moved an offset, every 256 KiB accepted within a poll (at most every 0.2 s), and at
shutdown. A restart resumes
each file whose inode and first bytes match its checkpoint: after `kill -9` lines accepted
after the last write are read again (at least once); after a clean shutdown none are
(exactly once)."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import glob
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from sidecar.component import Consumer
from sidecar.config import LogsFilesConfig, LogsReceiverConfig
from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal
from sidecar.net.framing import LineSplitter
from sidecar.receivers.logparse import LogBatchBuilder
from sidecar.telemetry.metrics import (
    LOGS_CHECKPOINTS,
    LOGS_FILE_ERRORS,
    LOGS_FILE_RESTARTS,
    LOGS_FILES_OPEN,
    LOGS_FILES_SKIPPED,
    LOGS_LINES,
    LOGS_PARSE_ERRORS,
    LOGS_TRUNCATED,
    RECEIVER_ACCEPTED,
    RECEIVER_REFUSED,
)

log = logging.getLogger("sidecar.receivers.logs")

# bytes parsed before the loop runs other tasks (~4 ms for 64 KiB of 250-byte lines)
_CHUNK: Final = 64 * 1024
# bytes per read in the executor: each call costs ~90 µs of CPU in thread hand-offs, which at
# 64 KiB a read was ~0.4 µs per 330-byte line; a read is parsed `_CHUNK` at a time. Reads go
# into one buffer per tailer (`os.preadv`): a fresh 1 MiB `bytes` per read, made in the
# executor's thread, raised the peak RSS over a 300 MiB file (142 against 127 MiB in one
# run of bench/logs_bench.py; 135 with the buffer)
_READ: Final = 1024 * 1024
_PER_POLL: Final = 4 * 1024 * 1024  # bytes per file per turn before the next file
# checkpoints are also saved within a poll once this much more was accepted: what a crash
# re-reads stays bounded by this, however fast lines are parsed (a poll reads up to 4 MiB)
_SAVE_EVERY: Final = 256 * 1024
# ...but not more often than this: each save is two fsyncs, and reading waits for it
_SAVE_GAP: Final = 0.2
_GONE_POLLS: Final = 2  # polls a file must be unmatched (and read to its end) to be closed
_RETIRED_POLLS: Final = 3  # polls a reset file's old identity may be adopted by its copy
_RACE_BACKOFF: Final = 0.01
_CHECKPOINT_VERSION: Final = 1

FileKey = tuple[int, int]  # (st_dev, st_ino)


@dataclass(slots=True)
class _Seen:
    """One glob match as the scan found it; `fd` is open until `reconcile` takes or closes
    it."""

    path: str
    key: FileKey
    size: int
    head: bytes
    fd: int


@dataclass(slots=True)
class _Position:
    """Where reading resumes: `offset` is the start of the first line not yet accepted by
    the pipeline; `skip` says it lies inside an over-long line already delivered cut."""

    fingerprint: bytes
    offset: int
    skip: bool = False


@dataclass(slots=True)
class _File:
    path: str
    key: FileKey
    fd: int
    splitter: LineSplitter
    fingerprint: bytes = b""
    read_pos: int = 0  # bytes handed to the splitter
    committed: int = 0  # checkpoint offset
    committed_skip: bool = False
    gone_polls: int = 0
    at_eof: bool = False

    def position(self) -> _Position:
        return _Position(self.fingerprint, self.committed, self.committed_skip)


@dataclass(slots=True)
class _Retired:
    position: _Position
    polls_left: int = _RETIRED_POLLS


def _common_prefix_match(a: bytes, b: bytes, minimum: int) -> bool:
    """Whether two files' first bytes agree as far as both go, over at least `minimum`
    bytes or one whole line (short first bytes like `{"level":` would match any file)."""
    n = min(len(a), len(b))
    if n == 0 or a[:n] != b[:n]:
        return False
    return n >= minimum or b"\n" in a[:n]


def scan(include: list[str], exclude: list[str], fingerprint_size: int) -> list[_Seen]:
    """Glob, open and identify every matching regular file (blocking: run in an executor).
    The caller owns the returned descriptors."""
    paths: set[str] = set()
    for pattern in include:
        paths.update(glob.glob(os.path.expanduser(pattern), recursive=True))
    found: list[_Seen] = []
    for path in sorted(paths):
        if any(fnmatch.fnmatch(path, pattern) for pattern in exclude):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone since the glob, or not readable: next poll tries again
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                continue
            head = os.pread(fd, fingerprint_size, 0)
        except OSError:
            os.close(fd)
            continue
        found.append(_Seen(path, (st.st_dev, st.st_ino), st.st_size, head, fd))
    return found


def write_checkpoint(path: Path, entries: list[dict[str, Any]]) -> None:
    """Atomically replace `path` (blocking: run in an executor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    data = orjson.dumps({"version": _CHECKPOINT_VERSION, "files": entries})
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: Path) -> dict[FileKey, _Position]:
    """The positions saved in `path`; a missing file is none. A corrupt one is an error
    logged and counted by the caller: reading from the files' starts (or ends) again."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    doc = orjson.loads(raw)
    if type(doc) is not dict or doc.get("version") != _CHECKPOINT_VERSION:
        raise ValueError("not a version-1 checkpoint file")
    positions: dict[FileKey, _Position] = {}
    for entry in doc["files"]:
        positions[(int(entry["dev"]), int(entry["ino"]))] = _Position(
            bytes.fromhex(entry["fingerprint"]), int(entry["offset"]), bool(entry["skip"]))
    return positions


@dataclass
class FileTailer:
    """The `files` part of one logs receiver: a task that polls, reads and delivers."""

    receiver: str
    config: LogsReceiverConfig
    files_config: LogsFilesConfig
    consumer: Consumer | None
    checkpoint_path: Path
    files: dict[FileKey, _File] = field(default_factory=dict)
    _restored: dict[FileKey, _Position] = field(default_factory=dict)
    _retired: list[_Retired] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _dirty: bool = False
    _first_poll: bool = True
    _had_checkpoints: bool = False
    _save_failing: bool = False
    _unsaved: int = 0  # bytes accepted since the last checkpoint save
    _saved_at: float = 0.0  # time.monotonic() of the last save

    def __post_init__(self) -> None:
        name = self.receiver
        self._builder = LogBatchBuilder(self.config.service_name)
        self._lines = LOGS_LINES.labels(name, "file")
        self._parse_errors = LOGS_PARSE_ERRORS.labels(name, "file")
        self._truncated = LOGS_TRUNCATED.labels(name, "file")
        self._accepted = RECEIVER_ACCEPTED.labels(name, "file", Signal.LOGS.value)
        # a processor refused a batch (fail closed): nobody can retry lines of a file
        self._processing_failed = RECEIVER_REFUSED.labels(name, "file", Signal.LOGS.value,
                                                          "processing_failed")
        self._open = LOGS_FILES_OPEN.labels(name)
        self._skipped = LOGS_FILES_SKIPPED.labels(name)
        self._buffer: bytearray | None = None  # `_READ` bytes, made at the first read

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._restored = await asyncio.to_thread(read_checkpoint, self.checkpoint_path)
            self._had_checkpoints = self.checkpoint_path.exists()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            LOGS_FILE_ERRORS.labels(self.receiver, "checkpoint_read").inc()
            log.error("file-tail checkpoints %s unreadable (%s): files are read as new",
                      self.checkpoint_path, exc)
            self._restored = {}
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def shutdown(self, deadline: float) -> None:
        """Stop reading; let a delivery in progress finish until `deadline`, then save the
        checkpoints of what was accepted."""
        self._stopping.set()
        task = self._task
        if task is not None:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
            _, not_done = await asyncio.wait({task}, timeout=timeout)
            if not_done:
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._task = None
        await self._save()
        for tracked in self.files.values():
            os.close(tracked.fd)
        self._open.dec(len(self.files))
        self.files.clear()

    def abort(self) -> None:
        """Stop at once: no last delivery, no last checkpoint write (what `kill -9` leaves
        behind; for tests of the checkpoints)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for tracked in self.files.values():
            os.close(tracked.fd)
        self._open.dec(len(self.files))
        self.files.clear()

    def describe(self) -> str:
        patterns = " ".join(self.files_config.include)
        signals = "logs" if self.consumer is not None else "(no pipelines)"
        return f"{self.receiver}/files  {patterns}  {signals}"

    # --- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._poll()
            except Exception:
                # a bug in one poll must not end tailing for good: counted, next poll retries
                LOGS_FILE_ERRORS.labels(self.receiver, "internal").inc()
                log.exception("file-tail poll failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(),
                                           self.files_config.poll_interval)

    async def _poll(self) -> None:
        """One poll: match the globs, read every file its turn, save the checkpoints, then
        wait `poll_interval` unless some file has more to read."""
        files_config = self.files_config
        try:
            seen = await asyncio.to_thread(scan, files_config.include,
                                           files_config.exclude,
                                           files_config.fingerprint_size)
        except OSError as exc:  # glob itself: a directory we may not list
            LOGS_FILE_ERRORS.labels(self.receiver, "scan").inc()
            log.warning("file-tail scan failed: %s", exc)
            seen = []
        self._reconcile(seen)
        more = False
        for tracked in list(self.files.values()):
            if self._stopping.is_set():
                break
            more |= await self._read(tracked)
            if tracked.gone_polls >= _GONE_POLLS and tracked.at_eof:
                await self._close(tracked)
        await self._save()
        if not more:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), files_config.poll_interval)

    def _reconcile(self, seen: list[_Seen]) -> None:
        """Match this poll's files to the tracked ones (see the module docstring). Takes
        ownership of every descriptor in `seen`."""
        for retired in self._retired:
            retired.polls_left -= 1
        self._retired = [r for r in self._retired if r.polls_left > 0]
        matched: set[FileKey] = set()
        fresh: list[_Seen] = []
        for entry in seen:
            tracked = self.files.get(entry.key)
            if tracked is None or entry.key in matched:
                if entry.key in matched:
                    os.close(entry.fd)  # a hard link or a second pattern hit
                else:
                    fresh.append(entry)
                continue
            os.close(entry.fd)  # we read through our own descriptor
            matched.add(entry.key)
            tracked.path = entry.path
            tracked.gone_polls = 0
            n = len(tracked.fingerprint)
            if entry.size < tracked.read_pos:
                self._restart(tracked, "truncated")
            elif entry.head[:n] != tracked.fingerprint:
                self._restart(tracked, "replaced")
        for tracked in self.files.values():
            if tracked.key not in matched:
                tracked.gone_polls += 1
        limit = self.files_config.max_files
        skipped = 0
        for entry in fresh:
            if entry.key in self.files or len(self.files) >= limit:
                os.close(entry.fd)
                skipped += entry.key not in self.files
                continue
            start = self._starting_position(entry)
            if start is None:
                os.close(entry.fd)
                continue
            splitter = LineSplitter(self.config.max_line_length)
            if start.skip:
                splitter.skip_line()
            # the first bytes as the scan read them (the file's from 0, whatever the offset)
            self.files[entry.key] = _File(
                entry.path, entry.key, entry.fd, splitter, fingerprint=entry.head,
                read_pos=start.offset, committed=start.offset, committed_skip=start.skip)
            self._open.inc()
            self._dirty = True
        if skipped:
            self._skipped.inc(skipped)
            log.warning("%d matching files not tailed: max_files (%d) are open", skipped, limit)
        self._first_poll = False
        # checkpoints of files not found at startup stay adoptable by fingerprint a while
        self._retired.extend(_Retired(position) for position in self._restored.values())
        self._restored = {}

    def _starting_position(self, entry: _Seen) -> _Position | None:
        minimum = self.files_config.fingerprint_size
        restored = self._restored.pop(entry.key, None)
        if (restored is not None and restored.fingerprint
                and entry.head.startswith(restored.fingerprint)
                and entry.size >= restored.offset):
            return restored
        if restored is not None:
            # we were reading this inode and its first bytes changed while we were down
            self._retired.append(_Retired(restored))
            return _Position(b"", 0)
        for tracked in self.files.values():
            if _common_prefix_match(entry.head, tracked.fingerprint, minimum):
                return None  # a copy of a file we are reading: its truncation follows
        for index, retired in enumerate(self._retired):
            position = retired.position
            if (_common_prefix_match(entry.head, position.fingerprint, minimum)
                    and entry.size >= position.offset):
                del self._retired[index]
                return position
        # `start_at` is for files present at the very first start; with checkpoints from a
        # run before, a file we do not know appeared while we were down: all of it is new
        if (self._first_poll and not self._had_checkpoints
                and self.files_config.start_at == "end" and entry.size):
            try:
                last = os.pread(entry.fd, 1, entry.size - 1)
            except OSError:
                last = b"\n"
            return _Position(entry.head, entry.size, skip=last != b"\n")
        return _Position(b"", 0)

    def _restart(self, tracked: _File, reason: str) -> None:
        LOGS_FILE_RESTARTS.labels(self.receiver, reason).inc()
        log.info("%s %s: reading it again from the start", tracked.path, reason)
        if tracked.fingerprint:
            self._retired.append(_Retired(tracked.position()))
        tracked.splitter = LineSplitter(self.config.max_line_length)
        tracked.fingerprint = b""
        tracked.read_pos = tracked.committed = 0
        tracked.committed_skip = False
        tracked.at_eof = False
        self._dirty = True

    async def _read(self, tracked: _File) -> bool:
        """Read up to `_PER_POLL` bytes of one file and deliver its lines. True when the
        file has more to read right away."""
        loop = asyncio.get_running_loop()
        fingerprint_size = self.files_config.fingerprint_size
        builder = self._builder
        batch = self.config.batch
        budget = _PER_POLL
        tracked.at_eof = False
        if self._buffer is None:
            self._buffer = bytearray(_READ)
        buffer = memoryview(self._buffer)
        while budget > 0 and not self._stopping.is_set():
            start = tracked.read_pos
            try:
                size = await loop.run_in_executor(None, os.preadv, tracked.fd,
                                                  [buffer[:min(_READ, budget)]], start)
            except OSError as exc:
                LOGS_FILE_ERRORS.labels(self.receiver, "read").inc()
                log.warning("reading %s failed: %s", tracked.path, exc)
                break  # what was read is delivered; the next poll reads on
            if not size:
                tracked.at_eof = True
                break
            budget -= size
            known = len(tracked.fingerprint)
            if known < fingerprint_size and start <= known < start + size:
                tracked.fingerprint += buffer[known - start:min(fingerprint_size - start,
                                                                size)]
            for offset in range(0, size, _CHUNK):
                if offset:  # one chunk's parse at a time holds the loop
                    await asyncio.sleep(0)
                    if self._stopping.is_set():
                        break  # the rest was not handed to the splitter: read again
                chunk = bytes(buffer[offset:min(offset + _CHUNK, size)])
                tracked.read_pos = start + offset + len(chunk)
                lines = tracked.splitter.split(chunk)
                if lines:
                    observed = time.time_ns()
                    added = 0
                    for line in lines:
                        added += builder.add(line, observed)
                    self._lines.inc(added)
                full = builder.records >= batch.max_records or builder.bytes >= batch.max_bytes
                if full:
                    if not await self._deliver(tracked):
                        return False
                    if (self._unsaved >= _SAVE_EVERY
                            and time.monotonic() - self._saved_at >= _SAVE_GAP):
                        await self._save()
        if tracked.gone_polls >= _GONE_POLLS and tracked.at_eof:
            last = tracked.splitter.close()  # its writer has moved on: no newline comes
            if last is not None and builder.add(last):
                self._lines.inc()
        if not await self._deliver(tracked):
            return False
        return not tracked.at_eof and not self._stopping.is_set()

    async def _deliver(self, tracked: _File) -> bool:
        """Hand the records read so far to the pipeline, then move the file's checkpoint to
        the start of its unfinished line. False if stopped before the pipeline took them."""
        builder = self._builder
        if builder.parse_errors:
            self._parse_errors.inc(builder.parse_errors)
            builder.parse_errors = 0
        if builder.truncated:
            self._truncated.inc(builder.truncated)
            builder.truncated = 0
        batch = builder.take_batch()
        # no logs pipeline: the lines are read and counted, not kept
        if batch is not None and self.consumer is not None and not await self._consume(batch):
            return False
        splitter = tracked.splitter
        offset = tracked.read_pos - splitter.buffered
        if offset != tracked.committed or splitter.discarding != tracked.committed_skip:
            self._unsaved += max(offset - tracked.committed, 0)
            tracked.committed = offset
            tracked.committed_skip = splitter.discarding
            self._dirty = True
        return True

    async def _consume(self, batch: Batch) -> bool:
        assert self.consumer is not None
        refusals = 0
        while True:
            try:
                await self.consumer.consume(batch)
            except PipelineFullError as exc:
                refusals += 1
                if refusals > 1:
                    await asyncio.sleep(
                        min(_RACE_BACKOFF * 2 ** (refusals - 2), exc.retry_after))
                await self.consumer.wait_for_room(batch.nbytes)
                continue
            except Exception:
                # a pipeline bug: these records cannot be delivered; the file goes on
                log.exception("pipeline failed on a batch of tailed log lines")
                self._processing_failed.inc(batch.items)
                return True
            self._accepted.inc(batch.items)
            return True

    async def _close(self, tracked: _File) -> None:
        log.info("%s: closed (rotated away or deleted, read to its end)", tracked.path)
        del self.files[tracked.key]
        os.close(tracked.fd)
        self._open.dec()
        self._dirty = True

    async def _save(self) -> None:
        if not self._dirty:
            return
        entries = [{"path": f.path, "dev": f.key[0], "ino": f.key[1],
                    "fingerprint": f.fingerprint.hex(), "offset": f.committed,
                    "skip": f.committed_skip} for f in self.files.values()]
        self._dirty = False
        self._unsaved = 0
        self._saved_at = time.monotonic()
        try:
            await asyncio.to_thread(write_checkpoint, self.checkpoint_path, entries)
        except OSError as exc:
            self._dirty = True
            LOGS_FILE_ERRORS.labels(self.receiver, "checkpoint_write").inc()
            if not self._save_failing:  # once, not every poll (the counter counts each)
                log.error("writing file-tail checkpoints %s failed: %s (retried every "
                          "poll; a restart re-reads from the last one written)",
                          self.checkpoint_path, exc)
            self._save_failing = True
            return
        if self._save_failing:
            log.warning("file-tail checkpoints %s written again", self.checkpoint_path)
            self._save_failing = False
        LOGS_CHECKPOINTS.labels(self.receiver).inc()
