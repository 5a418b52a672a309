"""Fixtures: a cache service on a temporary unix socket, a private redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sidecar.cache.server import CacheService
from sidecar.cache.testing import RedisServer, running_cache


@pytest.fixture
def cache_sock(short_tmp: Path) -> str:
    return str(short_tmp / "cache.sock")


@pytest.fixture
async def cache(cache_sock: str) -> AsyncIterator[CacheService]:
    async with running_cache(cache_sock) as service:
        yield service


@pytest.fixture
def redis_server(short_tmp: Path) -> Iterator[RedisServer]:
    """A real redis-server on a private unix socket; missing binary = failure, not skip."""
    directory = short_tmp / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.close()
