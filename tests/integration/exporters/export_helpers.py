"""Helpers for exporter tests: metric values and a sleep that records instead of waiting.
(A uniquely named module: `from conftest import ...` is ambiguous across test dirs.)"""

from __future__ import annotations

import asyncio

from sidecar.telemetry.metrics import REGISTRY


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class RecordingSleep:
    """Stands in for asyncio.sleep in retry waits: records the delay, yields once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
