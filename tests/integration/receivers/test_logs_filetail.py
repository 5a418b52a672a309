"""`receivers.logs.files`: real files written by a real writer thread (O_APPEND, as loggers
open them), rotated by rename and by copytruncate while it writes, truncated, deleted; the
tailer restarted from its checkpoints after a crash (task killed without shutdown) and
after a clean shutdown. Every line carries a sequence number; the tests count them."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.component import BuildContext
from sidecar.config import LogsReceiverConfig
from sidecar.errors import PipelineFullError
from sidecar.model import Batch, Signal
from sidecar.receivers.filetail import read_checkpoint
from sidecar.receivers.ndjson import LogsReceiver
from sidecar.telemetry.metrics import REGISTRY


class Pipeline:
    """Keeps batches; refuses while `full`, with `wait_for_room` saying when room is back."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.full = False
        self._room = asyncio.Event()
        self._room.set()

    def block(self) -> None:
        self.full = True
        self._room.clear()

    def unblock(self) -> None:
        self.full = False
        self._room.set()

    async def consume(self, batch: Batch) -> None:
        if self.full:
            raise PipelineFullError("full", 1.0)
        self.batches.append(batch)

    async def wait_for_room(self, nbytes: int) -> None:
        await self._room.wait()

    def seqs(self) -> list[int]:
        out = []
        for batch in self.batches:
            for resource in batch.message.resource_logs:  # type: ignore[union-attr]
                for scope in resource.scope_logs:
                    for record in scope.log_records:
                        for kv in record.attributes:
                            if kv.key == "seq":
                                out.append(kv.value.int_value)
        return out

    def bodies(self) -> list[str]:
        return [record.body.string_value
                for batch in self.batches
                for resource in batch.message.resource_logs  # type: ignore[union-attr]
                for scope in resource.scope_logs for record in scope.log_records]


def line(seq: int, pad: int = 0) -> bytes:
    return orjson.dumps({"level": 30, "time": 1_700_000_000_000 + seq, "pid": 7,
                         "hostname": "box", "msg": "tick" + "x" * pad, "seq": seq}) + b"\n"


class Writer:
    """A logger appending numbered lines; rotations happen between two of its writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.seq = 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, n: int, pad: int = 0) -> None:
        for _ in range(n):
            with self.lock:
                os.write(self.fd, line(self.seq, pad))
                self.seq += 1

    def rename_to(self, target: Path) -> None:
        with self.lock:
            os.rename(self.path, target)
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def copytruncate(self, target: Path) -> None:
        with self.lock:
            shutil.copyfile(self.path, target)
            os.truncate(self.path, 0)

    def close(self) -> None:
        os.close(self.fd)


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """start(pipeline, name, **files config) -> a started LogsReceiver tailing files, its
    checkpoints in tmp_path/data; stopped at the end (unless the test crashed it)."""
    started: list[LogsReceiver] = []

    async def start(pipeline: Pipeline, name: str, **files: Any) -> LogsReceiver:
        tree = {"unix": None, "batch": {"max_delay": "10ms", "max_records": 200},
                "files": {"poll_interval": "20ms", **files}}
        config = LogsReceiverConfig.model_validate(tree)
        receiver = LogsReceiver(name, config, {Signal.LOGS: pipeline},
                                BuildContext(storage_dir=tmp_path / "data"))
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.shutdown(asyncio.get_running_loop().time() + 2)


def crash(receiver: LogsReceiver) -> None:
    """Stop the tailer as kill -9 would: no last delivery, no last checkpoint write."""
    assert receiver.files is not None
    receiver.files.abort()
    receiver.files = None  # its shutdown at the end of the test must not save


def exactly_once(seqs: list[int], n: int) -> None:
    counts = collections.Counter(seqs)
    missing = [s for s in range(n) if s not in counts]
    doubled = [s for s, c in counts.items() if c > 1]
    assert not missing, f"{len(missing)} lines lost, first {missing[:5]}"
    assert not doubled, f"{len(doubled)} lines twice, first {doubled[:5]}"
    assert len(seqs) == n


async def test_new_lines_partial_line_waits_for_its_newline(start: Start,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(line(0) + line(1))
    pipeline = Pipeline()
    await start(pipeline, "ft-basic", include=[str(tmp_path / "*.log")], start_at="beginning")
    await wait_for(lambda: len(pipeline.seqs()) == 2)
    half = line(2)
    with path.open("ab") as f:
        f.write(half[:10])
        f.flush()
        await asyncio.sleep(0.2)  # ten polls: the half line must not come out as a record
        assert pipeline.seqs() == [0, 1]
        f.write(half[10:] + line(3))
    await wait_for(lambda: len(pipeline.seqs()) == 4)
    assert pipeline.seqs() == [0, 1, 2, 3]
    assert sample("sidecar_logs_lines_total", receiver="ft-basic", transport="file") == 4
    assert sample("sidecar_logs_files_open", receiver="ft-basic") == 1


async def test_start_at_end_skips_what_was_there_and_an_unfinished_last_line(
        start: Start, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(line(0) + line(1) + line(2)[:15])
    pipeline = Pipeline()
    # start_at: end is the default
    await start(pipeline, "ft-end", include=[str(tmp_path / "*.log")])
    await asyncio.sleep(0.1)
    with path.open("ab") as f:
        f.write(line(2)[15:] + line(3))
    await wait_for(lambda: len(pipeline.seqs()) == 1)
    await asyncio.sleep(0.1)
    assert pipeline.seqs() == [3]  # not 0 and 1, and not the tail of 2 as a fake record
    # a file that appears later is read from its start
    (tmp_path / "later.log").write_bytes(line(4) + line(5))
    await wait_for(lambda: len(pipeline.seqs()) == 3)
    assert pipeline.seqs() == [3, 4, 5]


@pytest.mark.parametrize("pattern", ["app.log", "app.log*"])
async def test_rotation_by_rename_under_continuous_writing(
        start: Start, tmp_path: Path, pattern: str) -> None:
    """`app.log` only: the renamed file leaves the glob and is read to its end through the
    open descriptor; `app.log*`: it is found again by inode at its new name, so rotations
    may come faster than polls. With `app.log` only, a file created and renamed away
    between two polls is never seen (as with any polling tailer): there the test rotates
    only once the tailer has opened the current file."""
    path = tmp_path / "app.log"
    writer = Writer(path)
    pipeline = Pipeline()
    name = f"ft-rename-{pattern}"
    receiver = await start(pipeline, name, include=[str(tmp_path / pattern)],
                           start_at="beginning")
    total = 6000
    thread = threading.Thread(target=writer.write, args=(total,))
    thread.start()
    tailer = receiver.files
    assert tailer is not None

    def tailing(inode: int) -> bool:
        return any(key[1] == inode for key in tailer.files)

    for generation in range(1, 6):
        await asyncio.sleep(0.05)
        if pattern == "app.log":
            inode = path.stat().st_ino
            await wait_for(lambda: tailing(inode))  # noqa: B023 - awaited right here
        await asyncio.to_thread(writer.rename_to, tmp_path / f"app.log.{generation}")
    await asyncio.to_thread(thread.join)
    writer.close()
    await wait_for(lambda: len(pipeline.seqs()) >= total)
    await asyncio.sleep(0.2)
    exactly_once(pipeline.seqs(), total)
    if pattern == "app.log":  # the rotated files were closed once read
        await wait_for(lambda: sample("sidecar_logs_files_open", receiver=name) == 1)


async def test_rotation_by_copytruncate_under_continuous_writing(
        start: Start, tmp_path: Path) -> None:
    """The copy (matched by the glob) carries on at the offset read in the original, whose
    truncation restarts it at 0: each line exactly once."""
    path = tmp_path / "app.log"
    writer = Writer(path)
    pipeline = Pipeline()
    name = "ft-copytruncate"
    await start(pipeline, name, include=[str(tmp_path / "app.log*")], start_at="beginning")
    total = 6000
    thread = threading.Thread(target=writer.write, args=(total,))
    thread.start()
    for generation in range(1, 6):
        await asyncio.sleep(0.05)
        await asyncio.to_thread(writer.copytruncate, tmp_path / f"app.log.{generation}")
    await asyncio.to_thread(thread.join)
    writer.close()
    await wait_for(lambda: len(pipeline.seqs()) >= total)
    await asyncio.sleep(0.2)
    exactly_once(pipeline.seqs(), total)
    restarts = (sample("sidecar_logs_file_restarts_total", receiver=name, reason="replaced")
                + sample("sidecar_logs_file_restarts_total", receiver=name,
                         reason="truncated"))
    assert restarts >= 1


async def test_truncated_to_a_shorter_length_restarts_from_zero(
        start: Start, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(line(i, pad=50) for i in range(100)))
    pipeline = Pipeline()
    name = "ft-truncate"
    await start(pipeline, name, include=[str(path)], start_at="beginning")
    await wait_for(lambda: len(pipeline.seqs()) == 100)
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(line(100) + line(101))  # far shorter than what was read
    await wait_for(lambda: len(pipeline.seqs()) == 102)
    assert pipeline.seqs()[100:] == [100, 101]
    assert sample("sidecar_logs_file_restarts_total", receiver=name,
                  reason="truncated") == 1


async def test_deleted_file_is_read_to_its_end_then_closed(start: Start,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(line(0))
    pipeline = Pipeline()
    name = "ft-delete"
    await start(pipeline, name, include=[str(path)], start_at="beginning")
    await wait_for(lambda: len(pipeline.seqs()) == 1)
    with path.open("ab") as f:
        f.write(line(1) + b'{"msg":"no newline","seq":2}')
        path.unlink()
    await wait_for(lambda: sample("sidecar_logs_files_open", receiver=name) == 0)
    assert pipeline.seqs() == [0, 1, 2]  # the last line had no newline: it came at close


async def test_crash_then_restart_delivers_every_line_at_least_once(
        start: Start, tmp_path: Path) -> None:
    """Checkpoints lag the pipeline, never lead it: kill the tailer at several points
    while it reads; the restarted one reads on from its checkpoint."""
    path = tmp_path / "app.log"
    total = 20000
    path.write_bytes(b"".join(line(i) for i in range(total)))
    pipeline = Pipeline()
    pattern = [str(path)]
    for round_ in range(4):
        receiver = await start(pipeline, "ft-crash", include=pattern, start_at="beginning")
        target = (round_ + 1) * total // 5
        await wait_for(lambda t=target: len(pipeline.seqs()) >= t)  # type: ignore[misc]
        crash(receiver)
    receiver = await start(pipeline, "ft-crash", include=pattern, start_at="beginning")
    await wait_for(lambda: len(set(pipeline.seqs())) == total)
    assert set(pipeline.seqs()) == set(range(total))
    # what a crash re-reads is bounded by what one poll reads, not the whole file
    assert len(pipeline.seqs()) < 2 * total


async def test_clean_shutdown_then_restart_is_exactly_once(start: Start,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    writer = Writer(path)
    pipeline = Pipeline()
    for _ in range(3):
        receiver = await start(pipeline, "ft-clean", include=[str(path)],
                               start_at="beginning")
        thread = threading.Thread(target=writer.write, args=(3000,))
        thread.start()
        await asyncio.sleep(0.05)
        await receiver.shutdown(asyncio.get_running_loop().time() + 5)  # mid-file
        await asyncio.to_thread(thread.join)
    writer.write(1, pad=10)
    receiver = await start(pipeline, "ft-clean", include=[str(path)], start_at="beginning")
    await wait_for(lambda: len(pipeline.seqs()) >= writer.seq)
    await asyncio.sleep(0.2)
    writer.close()
    exactly_once(pipeline.seqs(), writer.seq)
    positions = read_checkpoint(tmp_path / "data" / "filetail" / "ft-clean.json")
    assert [p.offset for p in positions.values()] == [path.stat().st_size]


async def test_a_file_of_many_reads_stopped_while_read_is_exactly_once_and_in_order(
        start: Start, tmp_path: Path) -> None:
    """Reads are 1 MiB, parsed 64 KiB at a time with the loop let run in between: lines
    across both boundaries come out whole, and a shutdown between two chunks of a read
    checkpoints only what reached the pipeline."""
    path = tmp_path / "app.log"
    total = 24000  # ~6 MiB, lines of 80-380 bytes
    path.write_bytes(b"".join(line(i, pad=(i * 37) % 300) for i in range(total)))
    pipeline = Pipeline()
    for stop_at in (2000, 9000, 15000):
        receiver = await start(pipeline, "ft-reads", include=[str(path)],
                               start_at="beginning")
        await wait_for(lambda s=stop_at: len(pipeline.seqs()) >= s)  # type: ignore[misc]
        await receiver.shutdown(asyncio.get_running_loop().time() + 5)
    receiver = await start(pipeline, "ft-reads", include=[str(path)], start_at="beginning")
    await wait_for(lambda: len(pipeline.seqs()) >= total)
    await receiver.shutdown(asyncio.get_running_loop().time() + 5)
    seqs = pipeline.seqs()
    exactly_once(seqs, total)
    assert seqs == sorted(seqs)
    assert sample("sidecar_logs_parse_errors_total", receiver="ft-reads",
                  transport="file") == 0


async def test_full_pipeline_pauses_reading_and_checkpoints_stay_behind(
        start: Start, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    total = 5000
    path.write_bytes(b"".join(line(i) for i in range(total)))
    pipeline = Pipeline()
    pipeline.block()
    name = "ft-full"
    receiver = await start(pipeline, name, include=[str(path)], start_at="beginning")
    await asyncio.sleep(0.3)
    # one request read and held, the rest of the file not read
    lines = sample("sidecar_logs_lines_total", receiver=name, transport="file")
    assert 0 < lines <= 200 + 64 * 1024 // len(line(0))
    assert not (tmp_path / "data" / "filetail" / f"{name}.json").exists() or all(
        p.offset == 0 for p in read_checkpoint(
            tmp_path / "data" / "filetail" / f"{name}.json").values())
    pipeline.unblock()
    await wait_for(lambda: len(pipeline.seqs()) == total)
    await receiver.shutdown(asyncio.get_running_loop().time() + 2)
    exactly_once(pipeline.seqs(), total)


async def test_max_files_skips_and_counts(start: Start, tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.log").write_bytes(line(i))
    pipeline = Pipeline()
    name = "ft-max"
    await start(pipeline, name, include=[str(tmp_path / "*.log")],
                exclude=[str(tmp_path / "2.log")], start_at="beginning", max_files=1)
    await wait_for(lambda: sample("sidecar_logs_files_skipped_total", receiver=name) >= 1)
    await wait_for(lambda: bool(pipeline.seqs()))  # the skip may be counted before 0.log is read
    assert pipeline.seqs() == [0]


async def test_a_checkpoint_that_cannot_be_written_is_counted_and_retried(
        start: Start, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(line(0))
    (tmp_path / "data").mkdir()
    blocker = tmp_path / "data" / "filetail"
    blocker.write_bytes(b"a file where the checkpoint directory should be")
    pipeline = Pipeline()
    name = "ft-ckpt-error"
    await start(pipeline, name, include=[str(path)], start_at="beginning")
    await wait_for(lambda: sample("sidecar_logs_file_errors_total", receiver=name,
                                  operation="checkpoint_write") >= 2)
    assert pipeline.seqs() == [0]  # reading goes on
    blocker.unlink()
    await wait_for(lambda: (blocker / f"{name}.json").exists())
    positions = read_checkpoint(blocker / f"{name}.json")
    assert [p.offset for p in positions.values()] == [len(line(0))]
