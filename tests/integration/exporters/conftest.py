"""Helpers for exporter tests: a sink per test, metric deltas, a sleep that records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sidecar.telemetry.metrics import REGISTRY
from sidecar.testing import OtlpSink


@pytest.fixture
async def sink() -> AsyncIterator[OtlpSink]:
    async with OtlpSink() as s:
        yield s


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class RecordingSleep:
    """Stands in for asyncio.sleep in retry waits: records the delay, yields once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
