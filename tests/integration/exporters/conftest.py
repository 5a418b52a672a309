"""A fresh OtlpSink per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sidecar.testing import OtlpSink


@pytest.fixture
async def sink() -> AsyncIterator[OtlpSink]:
    async with OtlpSink() as s:
        yield s
