"""Event-loop lag: how late a timer fires. Anything that holds the loop (a slow parse, a
blocking call) delays every client at once, so it is the daemon's first health signal.

A task sleeps `TICK` and measures how much later than asked it woke; the gauge holds the
worst lag of the last `WINDOW` seconds, so a scrape every 15 s still sees a 200 ms stall."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from sidecar.telemetry.health import supervised
from sidecar.telemetry.metrics import EVENT_LOOP_LAG

TICK: Final = 0.1
WINDOW: Final = 15.0


async def _measure() -> None:
    loop = asyncio.get_running_loop()
    recent: deque[tuple[float, float]] = deque()
    while True:
        asked = loop.time() + TICK
        await asyncio.sleep(TICK)
        now = loop.time()
        lag = max(0.0, now - asked)
        recent.append((now, lag))
        while recent and recent[0][0] < now - WINDOW:
            recent.popleft()
        EVENT_LOOP_LAG.set(max(v for _, v in recent))


def start() -> asyncio.Task[None]:
    return supervised("daemon", "event-loop-lag", _measure)
