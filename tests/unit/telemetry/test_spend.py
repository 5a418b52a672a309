"""The spend ledger: counter increases per model into the current UTC day, kept on disk,
dropped at the day change, bounded in models; a damaged file never stops the daemon."""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import os
from pathlib import Path

import pytest

from sidecar.telemetry import metrics
from sidecar.telemetry.spend import OTHER, SpendLedger, cost_counter_by_model


def at(day: str, hour: int = 12) -> float:
    year, month, date = map(int, day.split("-"))
    return float(calendar.timegm((year, month, date, hour, 0, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counter:
    """Stands for the cost counter: totals since process start by model."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, model: str, usd: float) -> None:
        self.totals[model] = self.totals.get(model, 0.0) + usd

    def __call__(self) -> dict[str, float]:
        return dict(self.totals)


def ledger(path: Path, clock: Clock, counter: Counter, **kw: int) -> SpendLedger:
    return SpendLedger(path, clock=clock, totals=counter, **kw)


def test_increases_since_start_are_todays_spend(tmp_path: Path) -> None:
    counter, clock = Counter(), Clock(at("2026-03-01"))
    counter.add("gpt-4o", 5.0)  # before the ledger: another daemon's run in this process
    book = ledger(tmp_path / "spend.json", clock, counter)
    counter.add("gpt-4o", 0.25)
    counter.add("claude", 1.5)
    book.sample()
    counter.add("gpt-4o", 0.5)
    today = book.today()
    assert today == {"day": "2026-03-01", "total_usd": 2.25,
                     "by_model": {"claude": 1.5, "gpt-4o": 0.75}}


def test_the_day_rolls_over_at_utc_midnight(tmp_path: Path) -> None:
    counter, clock = Counter(), Clock(at("2026-03-01", hour=23))
    book = ledger(tmp_path / "spend.json", clock, counter)
    counter.add("gpt-4o", 2.0)
    assert book.today()["total_usd"] == 2.0
    clock.now = at("2026-03-02", hour=0) + 5
    counter.add("gpt-4o", 0.125)
    assert book.today() == {"day": "2026-03-02", "total_usd": 0.125,
                            "by_model": {"gpt-4o": 0.125}}


async def test_a_restart_the_same_day_keeps_it_and_the_next_day_drops_it(
        tmp_path: Path) -> None:
    path = tmp_path / "spend.json"
    counter, clock = Counter(), Clock(at("2026-03-01", hour=9))
    book = ledger(path, clock, counter)
    counter.add("gpt-4o", 1.25)
    await book.close()
    assert json.loads(path.read_text())["by_model"] == {"gpt-4o": 1.25}
    assert os.listdir(tmp_path) == ["spend.json"]  # no tmp left behind

    fresh = Counter()  # a new process: its counter starts at zero
    again = ledger(path, Clock(at("2026-03-01", hour=18)), fresh)
    fresh.add("gpt-4o", 0.5)
    assert again.today()["by_model"] == {"gpt-4o": 1.75}

    tomorrow = ledger(path, Clock(at("2026-03-02", hour=1)), Counter())
    assert tomorrow.today() == {"day": "2026-03-02", "total_usd": 0, "by_model": {}}


def test_models_beyond_the_bound_fold_into_other(tmp_path: Path) -> None:
    counter, clock = Counter(), Clock(at("2026-03-01"))
    book = ledger(tmp_path / "spend.json", clock, counter, max_models=3)
    for i in range(1, 7):  # m1 .. m6 cost 1 .. 6
        counter.add(f"m{i}", float(i))
    today = book.today()
    assert today["by_model"] == {"m6": 6.0, "m5": 5.0, "m4": 4.0, OTHER: 6.0}
    assert today["total_usd"] == 21.0
    counter.add("m1", 100.0)  # a folded model that grows comes back, the total stays right
    today = book.today()
    assert list(today["by_model"]) == ["m1", "m6", "m5", OTHER]
    assert today["by_model"][OTHER] == 10.0  # m1..m3 and now m4
    assert today["total_usd"] == 121.0


def test_a_counter_that_went_down_counts_from_zero(tmp_path: Path) -> None:
    counter, clock = Counter(), Clock(at("2026-03-01"))
    book = ledger(tmp_path / "spend.json", clock, counter)
    counter.add("m", 3.0)
    book.sample()
    counter.totals["m"] = 1.0  # reset, then 1.0 new
    assert book.today()["by_model"] == {"m": 4.0}


@pytest.mark.parametrize("content", [
    b"{not json",
    b"[]",
    b'{"version": 2, "day": "2026-03-01", "by_model": {}}',
    b'{"version": 1, "day": "yesterday", "by_model": {}}',
    b'{"version": 1, "day": "2026-03-01", "by_model": {"m": -1}}',
    b'{"version": 1, "day": "2026-03-01", "by_model": {"m": "1"}}',
    b'{"version": 1, "day": "2026-03-01", "by_model": {"m": true}}',
    b'{"version": 1, "day": "2026-03-01", "by_model": {"m": 1e999}}',
    b'{"version": 1, "day": "2026-03-01", "by_model": [1]}',
    json.dumps({"version": 1, "day": "2026-03-01",
                "by_model": {f"m{i}": 1 for i in range(50)}}).encode(),
    json.dumps({"version": 1, "day": "2026-03-01", "by_model": {"m" * 300: 1}}).encode(),
    b" " * (200 * 1024),
    b"\xff\xfe\x00garbage",
], ids=lambda c: repr(c[:24]))
def test_a_damaged_file_starts_the_day_fresh(tmp_path: Path, content: bytes,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spend.json"
    path.write_bytes(content)
    counter = Counter()
    with caplog.at_level(logging.WARNING, "sidecar.spend"):
        book = ledger(path, Clock(at("2026-03-01")), counter)
    assert "ignored" in caplog.text
    counter.add("m", 0.5)
    assert book.today()["by_model"] == {"m": 0.5}


async def test_an_unreadable_or_unwritable_path_is_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spend.json"
    path.mkdir()  # a directory where the file should be
    counter = Counter()
    with caplog.at_level(logging.WARNING, "sidecar.spend"):
        book = ledger(path, Clock(at("2026-03-01")), counter)
        counter.add("m", 0.5)
        await book.close()
    assert "unreadable" in caplog.text
    assert "not written" in caplog.text
    assert book.today()["total_usd"] == 0.5  # still counting in memory


async def test_the_periodic_task_writes_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "spend.json"
    counter = Counter()
    book = ledger(path, Clock(at("2026-03-01")), counter)
    task = asyncio.create_task(book.run(interval=0.01))
    try:
        counter.add("m", 0.75)
        for _ in range(500):  # bounded: 5 s
            if path.exists():
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert json.loads(path.read_text()) == {"version": 1, "day": "2026-03-01",
                                            "by_model": {"m": 0.75}}
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)  # mkstemp's mode


def test_the_real_counter_is_summed_by_model() -> None:
    model = "spend-test-model-x"
    labels = ["provider", "model", "service", "agent", "tenant"]
    assert labels == metrics.LLM_LABELS
    before = cost_counter_by_model().get(model, 0.0)
    metrics.LLM_COST.add(("openai", model, "svc-a", "", ""), 0.25)
    metrics.LLM_COST.add(("openai", model, "svc-b", "planner", "acme"), 0.5)
    assert cost_counter_by_model()[model] - before == 0.75
