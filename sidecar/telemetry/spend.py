"""Today's LLM spend by model: a per-UTC-day ledger fed by the cost counter, kept on disk.

The cost processor adds each priced call to `sidecar_llm_cost_usd` (a counter since the
process started). The ledger samples it (every `SAMPLE_INTERVAL` on a supervised task, and
whenever it is read), adds each model's increase since the last sample to the current UTC
day, and writes `<storage.dir>/spend.json` when it changed (tmp + fsync + rename), so a
restart on the same day keeps the day's spend. At the first sample of a new UTC day the
previous day is dropped; an increase sampled just after midnight counts for the new day
(at most one interval of it). The shutdown writes a last sample; a `kill -9` loses what came
since the last write (at most one interval).

Bounded: at most `MAX_MODELS` models by name, the smallest folded into `other`. The file is
ours but read defensively: larger than `_MAX_FILE`, not JSON, or not the shape we write
(names, finite non-negative amounts, a bounded count) -> a warning and an empty day; a read
or write error is logged, never raised into the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from sidecar.telemetry import metrics

log = logging.getLogger("sidecar.spend")

FILE_NAME = "spend.json"
MAX_MODELS = 20
OTHER = "other"
SAMPLE_INTERVAL = 10.0  # seconds
_MAX_FILE = 64 * 1024
_MAX_NAME = 256
_VERSION = 1
_MODEL = metrics.LLM_LABELS.index("model")

Totals = Callable[[], Mapping[str, float]]


def cost_counter_by_model() -> dict[str, float]:
    """The cost counter's totals since process start, summed over every label but model."""
    totals: dict[str, float] = {}
    for key, value in metrics.LLM_COST.totals().items():
        model = key[_MODEL]
        totals[model] = totals.get(model, 0.0) + value
    return totals


def utc_day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).date().isoformat()


class SpendLedger:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time,
                 totals: Totals = cost_counter_by_model, max_models: int = MAX_MODELS) -> None:
        self.path = path
        self._clock = clock
        self._totals = totals
        self._max_models = max_models
        self.day = utc_day(clock())
        self.by_model: dict[str, float] = {}
        # counter totals at the last sample: increases since then are new spend
        self._seen: dict[str, float] = dict(totals())
        self._generation = 0  # bumped by every change; the writer skips stale snapshots
        self._written = 0
        self._write_lock = threading.Lock()
        self._write_failed = False
        self._load()

    # --- reading the counter --------------------------------------------------------------
    def sample(self) -> None:
        day = utc_day(self._clock())
        if day != self.day:
            if self.by_model:
                log.info("new UTC day %s: spend of %s dropped", day, self.day)
            self.day, self.by_model = day, {}
            self._generation += 1
        now = dict(self._totals())
        seen = self._seen
        changed = False
        for model, total in now.items():
            before = seen.get(model, 0.0)
            increase = total - before if total >= before else total  # a reset counter
            if increase > 0 and math.isfinite(increase):
                name = model if len(model) <= _MAX_NAME else OTHER
                self.by_model[name] = self.by_model.get(name, 0.0) + increase
                changed = True
        self._seen = now
        if changed:
            self._fold()
            self._generation += 1

    def _fold(self) -> None:
        named = [(m, v) for m, v in self.by_model.items() if m != OTHER]
        if len(named) <= self._max_models:
            return
        named.sort(key=lambda kv: -kv[1])
        other = self.by_model.get(OTHER, 0.0) + sum(v for _, v in named[self._max_models:])
        self.by_model = dict(named[:self._max_models])
        self.by_model[OTHER] = other

    def today(self) -> dict[str, Any]:
        """`GET /spend`: a fresh sample of today's spend, largest first, `other` last."""
        self.sample()
        ordered = dict(sorted(self.by_model.items(), key=lambda kv: (kv[0] == OTHER, -kv[1])))
        return {"day": self.day, "total_usd": sum(ordered.values()), "by_model": ordered}

    # --- the file ---------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                blob = f.read(_MAX_FILE + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("spend ledger %s unreadable (%s): starting today from zero",
                        self.path, exc.strerror or exc)
            return
        problem, day, by_model = _parse(blob, self._max_models)
        if problem is not None:
            log.warning("spend ledger %s ignored (%s): starting today from zero",
                        self.path, problem)
        elif day == self.day:
            self.by_model = by_model
        else:
            log.info("spend ledger %s is of %s: dropped (today is %s)", self.path, day,
                     self.day)

    def snapshot(self) -> tuple[int, bytes]:
        return self._generation, orjson.dumps(
            {"version": _VERSION, "day": self.day, "by_model": self.by_model})

    def write(self, generation: int, blob: bytes) -> None:
        """Atomic replace (blocking I/O: called in a thread by `save`). Logs failures."""
        with self._write_lock:
            if generation <= self._written:
                return  # a newer snapshot is on disk already
            try:
                _atomic_write(self.path, blob)
            except OSError as exc:
                if not self._write_failed:  # once per run of failures, not every interval
                    log.warning("spend ledger %s not written: %s", self.path,
                                exc.strerror or exc)
                self._write_failed = True
                return
            self._written, self._write_failed = generation, False

    async def save(self) -> None:
        generation, blob = self.snapshot()
        if generation > self._written:
            await asyncio.to_thread(self.write, generation, blob)

    async def run(self, interval: float = SAMPLE_INTERVAL) -> None:
        """The periodic task (under `health.supervised`)."""
        while True:
            await asyncio.sleep(interval)
            self.sample()
            await self.save()

    async def close(self) -> None:
        """Last sample and write, at shutdown."""
        self.sample()
        await self.save()


def _parse(blob: bytes, max_models: int) -> tuple[str | None, str, dict[str, float]]:
    """(problem or None, day, by_model) of a ledger file's bytes."""
    if len(blob) > _MAX_FILE:
        return f"larger than {_MAX_FILE} bytes", "", {}
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}", "", {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return "not a version 1 ledger", "", {}
    day, by_model = data.get("day"), data.get("by_model")
    try:
        if not isinstance(day, str):
            raise ValueError
        datetime.date.fromisoformat(day)
    except ValueError:
        return "no valid day", "", {}
    if not isinstance(by_model, dict) or len(by_model) > max_models + 1:
        return "by_model is not a small object", "", {}
    out: dict[str, float] = {}
    for model, usd in by_model.items():
        if (len(model) > _MAX_NAME or isinstance(usd, bool)
                or not isinstance(usd, int | float) or not math.isfinite(usd) or usd < 0):
            return f"bad entry for model {model[:40]!r}", "", {}
        out[model] = float(usd)
    return None, day, out


def _atomic_write(path: Path, blob: bytes) -> None:
    """tmp in the same directory, fsync, rename over, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
