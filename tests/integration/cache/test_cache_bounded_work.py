"""Commands whose work depends on the client's arguments do it in bounded pieces: SCAN
visits at most 1000 keys per call, multi-key commands run in slices of 1024 keys (same
answers as in one piece), with redis-py against a real cache (and a real Redis as L2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sidecar.cache.commands import SCAN_MAX_COUNT, SLICE_KEYS
from sidecar.cache.server import CacheService
from sidecar.cache.testing import RedisServer, running_cache, wait_until

N = 3 * SLICE_KEYS + 17  # several slices and a partial one


async def test_scan_count_is_capped(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        await client.mset({b"k%d" % i: b"v" for i in range(3000)})
        cursor, keys = await client.scan(0, count=1_000_000)
        assert cursor != 0
        assert len(keys) == SCAN_MAX_COUNT
        seen = {k async for k in client.scan_iter(count=1_000_000)}
        assert seen == {b"k%d" % i for i in range(3000)}
    finally:
        await client.aclose()


async def test_multi_key_commands_in_slices_answer_as_one(
        cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        keys = [b"m%d" % i for i in range(N)]
        assert await client.mset({k: b"v" + k for k in keys[::2]}) is True
        assert await client.mget(keys) == [b"v" + k if i % 2 == 0 else None
                                           for i, k in enumerate(keys)]
        assert await client.exists(*keys) == (N + 1) // 2
        assert await client.mset(dict.fromkeys(keys, b"w")) is True
        assert await client.exists(*keys) == N
        assert await client.delete(*keys[:-5]) == N - 5
        assert await client.unlink(*keys) == 5
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


async def test_sliced_mset_with_one_value_too_large_writes_nothing(short_tmp: Path) -> None:
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock, namespaces={"small": {"max_value_size": 8}}):
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            mapping = {b"small:%d" % i: b"v" for i in range(N)}
            mapping[b"small:last"] = b"x" * 9  # the very end of the last slice
            with pytest.raises(aioredis.ResponseError, match="value too large"):
                await client.mset(mapping)
            assert await client.dbsize() == 0
        finally:
            await client.aclose()


async def test_scan_through_l2_caps_count_and_refuses_long_patterns(
        short_tmp: Path, redis_server: RedisServer) -> None:
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock, redis=redis_server.url) as svc:
        l2 = svc.tiers.l2
        assert l2 is not None
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            await client.mset({b"k%d" % i: b"v" for i in range(3000)})
            await wait_until(lambda: not l2.pending, "writes reached Redis")
            cursor, keys = await client.scan(0, count=1_000_000)
            assert cursor != 0
            # Redis returns about COUNT keys per call: the capped COUNT reached it
            assert len(keys) < 2 * SCAN_MAX_COUNT
            found = {k async for k in client.scan_iter(match="k1*", count=1_000_000)}
            assert found == {b"k%d" % i for i in range(3000) if str(i).startswith("1")}
            with pytest.raises(aioredis.ResponseError, match="pattern too long"):
                await client.scan(0, match=b"*" * 5000)
            assert l2.up
        finally:
            await client.aclose()
