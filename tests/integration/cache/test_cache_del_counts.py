"""DEL/UNLINK and EXISTS count repeated keys as redis-server does (checked against one)."""

from __future__ import annotations

import redis.asyncio as aioredis

from sidecar.cache.server import CacheService
from sidecar.cache.testing import RedisServer


async def test_repeated_keys_count_as_in_redis(cache: CacheService, cache_sock: str,
                                               redis_server: RedisServer) -> None:
    ours = aioredis.Redis(unix_socket_path=cache_sock)
    theirs = aioredis.Redis(unix_socket_path=redis_server.socket)
    try:
        answers = []
        for client in (ours, theirs):
            await client.mset({"a": "1", "b": "2", "c": "3"})
            answers.append((
                await client.exists("a", "a", "b", "missing"),
                await client.delete("a", "a", "missing"),
                await client.unlink("b", "b", "c", "c"),
                await client.exists("a", "b", "c"),
            ))
        assert answers[0] == answers[1]
        assert answers[1] == (3, 1, 2, 0)
    finally:
        await ours.aclose()
        await theirs.aclose()
