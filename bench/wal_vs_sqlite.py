"""Storage engine choice for the durable queue (see sidecar/exporthelper/wal.py): cost of
storing one 10 KiB request in the segment log vs SQLite in WAL mode, page cache only (no
fsync in either), median of 5 interleaved runs of 20k requests."""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.exporthelper.wal import encode_header

N = 20_000
PAYLOAD = os.urandom(10 * 1024)


def segment_log(directory: str) -> float:
    fd = os.open(os.path.join(directory, "x.seg"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    started = time.perf_counter()
    for i in range(N):
        os.writev(fd, [encode_header(i, 0.0, 100, PAYLOAD), PAYLOAD])
    elapsed = time.perf_counter() - started
    os.close(fd)
    return elapsed / N * 1e6


def sqlite_wal(directory: str, per_transaction: int) -> float:
    db = sqlite3.connect(os.path.join(directory, "q.db"), isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=off")
    db.execute("create table q(seq integer primary key, items int, payload blob)")
    started = time.perf_counter()
    for i in range(0, N, per_transaction):
        if per_transaction > 1:
            db.execute("begin")
        for j in range(i, i + per_transaction):
            db.execute("insert into q values(?, ?, ?)", (j, 100, PAYLOAD))
        if per_transaction > 1:
            db.execute("commit")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed / N * 1e6


def main() -> None:
    cases: dict[str, Callable[[str], float]] = {
        "segment log": segment_log,
        "sqlite wal, 1/txn": lambda d: sqlite_wal(d, 1),
        "sqlite wal, 100/txn": lambda d: sqlite_wal(d, 100),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(5):
        for name, case in cases.items():
            with tempfile.TemporaryDirectory() as directory:
                results[name].append(case(directory))
    for name, values in results.items():
        print(f"{name:22s} median {statistics.median(values):6.1f} µs/request "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
