"""The real daemon tails log files (`receivers.logs.files`) and sends the lines on to a real
OTLP/HTTP server; killed with SIGKILL or stopped with SIGTERM mid-file and restarted on the
same `storage.dir`, it reads on from its checkpoints. Lines carry sequence numbers."""

from __future__ import annotations

import asyncio
import collections
import os
from pathlib import Path
from typing import Any

import orjson

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import DaemonProcess


def line(seq: int) -> bytes:
    return orjson.dumps({"level": 30, "time": 1_700_000_000_000 + seq, "pid": 42,
                         "hostname": "box", "msg": "step", "agent": "planner",
                         "seq": seq}) + b"\n"


def seqs(sink: OtlpSink) -> list[int]:
    return [kv.value.int_value for record in sink.log_records()
            for kv in record.attributes if kv.key == "seq"]


def daemon_for(workdir: Path, sink: OtlpSink, logs_dir: Path) -> DaemonProcess:
    daemon = DaemonProcess(workdir, exporters={
        "upstream": {"type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint,
                     "batch": {"max_delay": "10ms"},
                     # what these tests count is the tail's re-reading; the durable queue
                     # would add its own at-least-once redelivery after a SIGKILL (records
                     # whose acks were not on disk yet), tested in test_durable_queue.py
                     "queue": {"type": "memory"}}})
    files: dict[str, Any] = {"include": [str(logs_dir / "app.log*")],
                             "start_at": "beginning", "poll_interval": "50ms"}
    daemon.extra["receivers"] = {
        "otlp": {"grpc": {"endpoint": daemon.grpc_endpoint},
                 "http": {"endpoint": f"127.0.0.1:{daemon.http_port}"}},
        "logs": {"unix": None, "service_name": "agent-app", "files": files}}
    return daemon


async def wait_seqs(sink: OtlpSink, n: int, timeout: float = 60) -> None:
    """Until `n` distinct sequence numbers arrived."""
    async with asyncio.timeout(timeout):
        while len(set(seqs(sink))) < n:
            await sink.wait_for_items(Signal.LOGS, sink.items(Signal.LOGS) + 1, timeout)


async def test_sigkill_mid_line_then_restart_loses_nothing(short_tmp: Path) -> None:
    """Killed with half a line written and the file renamed away while it was down: the
    restarted daemon finds the old inode at its new name, reads the line's other half from
    there and the new file from its start."""
    logs = short_tmp / "logs"
    logs.mkdir()
    path = logs / "app.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    async with OtlpSink() as sink:
        daemon = daemon_for(short_tmp, sink, logs)
        await daemon.start()
        try:
            os.write(fd, b"".join(line(i) for i in range(3000)))
            half = line(3000)
            os.write(fd, half[:20])
            await wait_seqs(sink, 3000)
            daemon.kill()
            os.write(fd, half[20:] + b"".join(line(i) for i in range(3001, 4000)))
            os.close(fd)
            os.rename(path, logs / "app.log.1")
            path.write_bytes(b"".join(line(i) for i in range(4000, 5000)))
            daemon = daemon_for(short_tmp, sink, logs)
            await daemon.start()
            await wait_seqs(sink, 5000)
            await asyncio.sleep(0.3)
        finally:
            code, _, stderr = await daemon.stop()
    assert code == 0, stderr
    counts = collections.Counter(seqs(sink))
    assert set(counts) == set(range(5000))
    assert sum(counts.values()) < 5000 + 3000  # a re-read is what the last poll read


async def test_sigterm_mid_file_then_restart_is_exactly_once(short_tmp: Path) -> None:
    logs = short_tmp / "logs"
    logs.mkdir()
    total = 60000
    (logs / "app.log").write_bytes(b"".join(line(i) for i in range(total)))
    async with OtlpSink() as sink:
        stops = 0
        for _ in range(3):
            daemon = daemon_for(short_tmp, sink, logs)
            await daemon.start()
            await sink.wait_for_items(Signal.LOGS, sink.items(Signal.LOGS) + 1000, 30)
            code, _, stderr = await daemon.stop()
            assert code == 0, stderr
            stops += len(seqs(sink)) < total
        assert stops >= 1, "the file was read whole before the first stop: no mid-file stop"
        daemon = daemon_for(short_tmp, sink, logs)
        await daemon.start()
        try:
            await wait_seqs(sink, total)
            await asyncio.sleep(0.3)
        finally:
            code, _, stderr = await daemon.stop()
    assert code == 0, stderr
    counts = collections.Counter(seqs(sink))
    assert set(counts) == set(range(total))
    assert [s for s, c in counts.items() if c > 1] == []
    assert sink.items(Signal.LOGS) == total
