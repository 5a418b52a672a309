"""A loop held by synchronous work shows in sidecar_event_loop_lag_seconds."""

from __future__ import annotations

import asyncio
import time

from sidecar.telemetry import looplag
from sidecar.telemetry.metrics import REGISTRY


def lag() -> float:
    return REGISTRY.get_sample_value("sidecar_event_loop_lag_seconds") or 0.0


async def test_a_held_loop_is_measured() -> None:
    task = looplag.start()
    try:
        await asyncio.sleep(0.25)  # a few ticks
        time.sleep(0.4)  # noqa: ASYNC251 - holding the loop on purpose: the next tick is ~0.4 s late
        for _ in range(50):  # bounded: 5 s for the tick after the hold to be measured
            if lag() >= 0.3:
                break
            await asyncio.sleep(0.1)
        assert lag() >= 0.3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
