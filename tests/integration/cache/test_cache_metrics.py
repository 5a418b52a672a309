"""Cache metrics on the daemon's registry (what /metrics serves) and the /cache/stats JSON."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest

from sidecar.cache.server import CacheService
from sidecar.cache.testing import running_cache
from sidecar.errors import StartupError
from sidecar.telemetry.metrics import REGISTRY


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_counters_per_namespace_and_tier(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        await client.set("specs:a", "x" * 100)
        for _ in range(3):
            await client.get("specs:a")
        await client.get("specs:none")
        await client.delete("specs:a")
        await client.set("loose", "v")
    finally:
        await client.aclose()
    assert value("sidecar_cache_hits_total", namespace="specs", tier="l1") == 3
    assert value("sidecar_cache_hits_total", namespace="specs", tier="l2") == 0
    assert value("sidecar_cache_misses_total", namespace="specs") == 1
    assert value("sidecar_cache_sets_total", namespace="specs") == 1
    assert value("sidecar_cache_deletes_total", namespace="specs") == 1
    assert value("sidecar_cache_items", namespace="specs", tier="l1") == 0
    assert value("sidecar_cache_items", namespace="default", tier="l1") == 1
    assert value("sidecar_cache_saved_usd_total", namespace="specs") == pytest.approx(0.03)
    # memory only: no backend to be up or down
    assert value("sidecar_cache_backend_up") is None
    assert value("sidecar_cache_command_duration_seconds_count", command="get") == 4
    text = generate_latest(REGISTRY).decode()
    assert 'sidecar_cache_command_duration_seconds_bucket{command="set",le="+Inf"} 2.0' in text
    stats = cache.stats()
    assert stats["hits"] == 3
    assert stats["misses"] == 1
    assert stats["hit_ratio"] == 0.75
    assert stats["saved_usd"] == pytest.approx(0.03)
    assert stats["latency"]["GET"]["count"] == 4  # type: ignore[index]


async def test_metrics_leave_with_the_service(cache_sock: str) -> None:
    async with running_cache(cache_sock):
        assert value("sidecar_cache_connections") == 0
    assert value("sidecar_cache_connections") is None


async def test_second_instance_on_a_live_socket_fails_naming_the_setting(
        cache: CacheService, cache_sock: str, short_tmp: Path) -> None:
    with pytest.raises(StartupError, match=r"^cache\.unix: .*already listening"):
        async with running_cache(cache_sock):
            pass
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        assert await client.ping() is True  # the first one is unaffected
    finally:
        await client.aclose()


def test_describe_banner(short_tmp: Path) -> None:
    from sidecar.cache.config import CacheConfig

    service = CacheService(CacheConfig(unix="./run/cache.sock",
                                       redis="redis://:secret@cache-host:6379/0"))
    assert service.describe() == [
        "cache      unix:./run/cache.sock  (memory L1 64 MiB, L2 redis://:***@cache-host:6379/0)"]


async def test_shutdown_removes_its_socket_file(cache_sock: str) -> None:
    async with running_cache(cache_sock):
        assert await asyncio.to_thread(os.path.exists, cache_sock)
    assert not await asyncio.to_thread(os.path.exists, cache_sock)


async def test_limit_refusals_are_counted_in_metrics(cache: CacheService, cache_sock: str,
                                                      ) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        with pytest.raises(aioredis.ResponseError, match="too long"):
            await client.scan(0, match="a" * 5000)
    finally:
        await client.aclose()
    assert value("sidecar_cache_limit_errors_total") == 1
    assert cache.stats()["limit_errors"] == 1
