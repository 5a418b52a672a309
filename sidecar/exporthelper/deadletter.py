"""Dead letters: batches a destination refused for good, kept for an operator.

The chain writes a batch here when it drops it as `permanent` (4xx other than 408/429,
or a refusal the exporter classified as permanent) or `malformed` (our encoding of it
failed). Not written: partial-success rejections (the vendor does not say which items it
refused, so a replay would duplicate the accepted ones), and anything dropped at shutdown
(a durable queue keeps that). `sidecar dlq list|show|replay|purge` reads the directory.

Layout: `<storage.dir>/deadletter/<exporter>/<time ns>-<n>.dlq`, each file one JSON header
line (exporter, signal, items, reason, the vendor's answer, time) and the OTLP protobuf
request after it. Bounded by `storage.deadletter_max_bytes` per exporter: the oldest
letters are deleted to make room (counted).

Writes are synchronous on the event loop: this is the rare path of a refused batch, one
file of at most a batch (`batch.max_bytes`), no fsync.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.model import Batch, Signal
from sidecar.telemetry import metrics

log = logging.getLogger(__name__)

SUFFIX = ".dlq"
MAX_ANSWER = 4096


@dataclass(frozen=True, slots=True)
class Letter:
    path: Path
    exporter: str
    signal: Signal
    items: int
    reason: str
    answer: str
    time: float
    size: int

    @property
    def id(self) -> str:
        return self.path.name.removesuffix(SUFFIX)


def exporter_dir(root: Path, exporter: str) -> Path:
    from sidecar.exporthelper.durable import cursor_file_name

    return root / cursor_file_name(exporter).removesuffix(".json")


class DeadLetterBox:
    def __init__(self, root: Path, exporter: str, max_bytes: int) -> None:
        self.directory = exporter_dir(root, exporter)
        self.exporter = exporter
        self.max_bytes = max_bytes
        self._n = itertools.count()
        self._sizes: dict[Path, int] | None = None  # read on first use
        self._items = {s: metrics.DEADLETTER_ITEMS.labels(exporter, s.value) for s in Signal}
        self._full = metrics.DEADLETTER_DROPPED.labels(exporter, "full")
        self._failed = metrics.DEADLETTER_DROPPED.labels(exporter, "write_error")

    def _known(self) -> dict[Path, int]:
        if self._sizes is None:
            self._sizes = {p: p.stat().st_size for p in sorted(self.directory.glob("*" + SUFFIX))}
        return self._sizes

    def write(self, batch: Batch, reason: str, answer: str) -> None:
        header = {"exporter": self.exporter, "signal": batch.signal.value,
                  "items": batch.items, "reason": reason, "answer": answer[:MAX_ANSWER],
                  "time": time.time()}
        data = json.dumps(header).encode() + b"\n" + batch.payload
        if len(data) > self.max_bytes:
            self._full.inc(batch.items)
            log.error("exporter %s: dead letter of %d bytes exceeds "
                      "storage.deadletter_max_bytes; not kept", self.exporter, len(data))
            return
        name = f"{time.time_ns():020d}-{next(self._n):06d}{SUFFIX}"
        path = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            known = self._known()
            self._make_room(known, len(data))
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            self._failed.inc(batch.items)
            log.error("exporter %s: cannot write dead letter %s: %s", self.exporter, path,
                      exc.strerror)
            return
        known[path] = len(data)
        self._items[batch.signal].inc(batch.items)

    def _make_room(self, known: dict[Path, int], nbytes: int) -> None:
        while known and sum(known.values()) + nbytes > self.max_bytes:
            oldest = min(known)
            known.pop(oldest)
            try:
                letter = read_header(oldest)
                oldest.unlink()
                self._full.inc(letter.items)
            except (OSError, ValueError):
                oldest.unlink(missing_ok=True)
            log.warning("exporter %s: dead-letter directory full; deleted %s",
                        self.exporter, oldest.name)


def read_header(path: Path) -> Letter:
    """The header of one letter file. Raises ValueError when it is not one."""
    with path.open("rb") as f:
        line = f.readline(MAX_ANSWER * 8)
    try:
        header = json.loads(line)
        return Letter(path, str(header["exporter"]), Signal(header["signal"]),
                      int(header["items"]), str(header["reason"]), str(header["answer"]),
                      float(header["time"]), path.stat().st_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: not a dead letter ({exc})") from exc


def read_payload(path: Path) -> bytes:
    data = path.read_bytes()
    return data[data.index(b"\n") + 1:]


def list_letters(root: Path) -> tuple[list[Letter], list[str]]:
    """Every letter under `root` (all exporters), oldest first, and unreadable files."""
    letters, problems = [], []
    if root.is_dir():
        for path in sorted(root.glob("*/*" + SUFFIX)):
            try:
                letters.append(read_header(path))
            except (OSError, ValueError) as exc:
                problems.append(str(exc))
    letters.sort(key=lambda letter: letter.path.name)
    return letters, problems
