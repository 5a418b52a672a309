"""L2 with a real redis-server: sharing between sidecars, outages, replay, coalescing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import redis.asyncio as aioredis

from sidecar.cache.server import CacheService
from sidecar.cache.testing import RedisServer, running_cache, wait_until
from sidecar.telemetry.metrics import REGISTRY

FAST = {"backoff_min": 0.05, "backoff_max": 0.2, "timeout": 0.5}


def flushed(service: CacheService) -> Callable[[], bool]:
    l2 = service.tiers.l2
    assert l2 is not None
    return lambda: l2.up and not l2.pending


async def test_written_by_one_sidecar_read_by_another(
        short_tmp: Path, redis_server: RedisServer) -> None:
    settings = {"redis": redis_server.url, "l2": FAST}
    async with running_cache(short_tmp / "a.sock", **settings) as a, \
            running_cache(short_tmp / "b.sock", **settings) as b:
        ca = aioredis.Redis(unix_socket_path=str(short_tmp / "a.sock"))
        cb = aioredis.Redis(unix_socket_path=str(short_tmp / "b.sock"))
        direct = aioredis.Redis(unix_socket_path=redis_server.socket)
        try:
            await ca.set("embeddings:doc1", b"\x00vector\r\n", ex=300)
            await wait_until(flushed(a), "A's write reached Redis")
            assert await direct.get("embeddings:doc1") == b"\x00vector\r\n"
            assert 299 <= await direct.ttl("embeddings:doc1") <= 300
            assert await cb.get("embeddings:doc1") == b"\x00vector\r\n"
            assert 299 <= await cb.ttl("embeddings:doc1") <= 300
            assert await cb.get("embeddings:doc1") == b"\x00vector\r\n"
            ns = b.stats()["namespaces"]["embeddings"]  # type: ignore[index]
            assert ns["hits"] == {"l1": 1, "l2": 1}
            # a delete through A removes the key from Redis too
            assert await ca.delete("embeddings:doc1") == 1
            await wait_until(flushed(a), "A's delete reached Redis")
            assert await direct.exists("embeddings:doc1") == 0
        finally:
            for client in (ca, cb, direct):
                await client.aclose()


async def test_l1_copy_never_outlives_the_l2_ttl(
        short_tmp: Path, redis_server: RedisServer) -> None:
    direct = aioredis.Redis(unix_socket_path=redis_server.socket)
    async with running_cache(short_tmp / "c.sock", redis=redis_server.url, l2=FAST) as service:
        client = aioredis.Redis(unix_socket_path=str(short_tmp / "c.sock"))
        try:
            await direct.set("specs:x", "v", px=30_000)
            assert await client.get("specs:x") == b"v"
            entry = service.tiers.l1.peek(b"specs:x", time.monotonic())
            assert entry is not None
            remaining_l2 = await direct.pttl("specs:x")
            assert entry.expire_at - time.monotonic() <= remaining_l2 / 1000 + 0.05
        finally:
            await client.aclose()
            await direct.aclose()


async def test_update_by_another_sidecar_seen_within_the_staleness_cap(
        short_tmp: Path, redis_server: RedisServer) -> None:
    settings = {"redis": redis_server.url, "l2": {**FAST, "max_staleness": 0.2}}
    async with running_cache(short_tmp / "a.sock", **settings) as a, \
            running_cache(short_tmp / "b.sock", **settings):
        ca = aioredis.Redis(unix_socket_path=str(short_tmp / "a.sock"))
        cb = aioredis.Redis(unix_socket_path=str(short_tmp / "b.sock"))
        try:
            await ca.set("sentiment:t", "old")
            await wait_until(flushed(a), "first write in Redis")
            assert await cb.get("sentiment:t") == b"old"  # now cached in B's L1
            await ca.set("sentiment:t", "new")
            await wait_until(flushed(a), "second write in Redis")

            async def b_sees_new() -> bool:
                return await cb.get("sentiment:t") == b"new"

            await wait_until(b_sees_new, "B serves the new value once its copy is stale")
        finally:
            await ca.aclose()
            await cb.aclose()


async def test_concurrent_misses_share_one_redis_read(
        short_tmp: Path, redis_server: RedisServer) -> None:
    direct = aioredis.Redis(unix_socket_path=redis_server.socket)
    await direct.set("competitive:report", "x" * 1000)
    async with running_cache(short_tmp / "c.sock", redis=redis_server.url, l2=FAST) as service:
        clients = [aioredis.Redis(unix_socket_path=str(short_tmp / "c.sock")) for _ in range(20)]
        try:
            for client in clients:
                await client.ping()  # connected before the burst
            results = await asyncio.gather(*(c.get("competitive:report") for c in clients))
            assert results == [b"x" * 1000] * 20
            l2 = service.tiers.l2
            assert l2 is not None
            assert l2.reads == 1  # the others shared the read or hit the copy it left in L1
        finally:
            for client in clients:
                await client.aclose()
            await direct.aclose()


async def test_redis_killed_mid_load_then_restarted(
        short_tmp: Path, redis_server: RedisServer) -> None:
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock, redis=redis_server.url, l2=FAST) as service:
        l2 = service.tiers.l2
        assert l2 is not None
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            for i in range(200):
                await client.set(f"categorization:k{i}", f"v{i}", ex=600)
            await wait_until(flushed(service), "initial writes in Redis")
            assert REGISTRY.get_sample_value("sidecar_cache_backend_up") == 1.0

            errors: list[BaseException] = []
            wrong: list[str] = []
            stop = asyncio.Event()

            async def load(worker: int) -> None:
                # bounded: at most 5,000 rounds per worker, and stops when told
                load_client = aioredis.Redis(unix_socket_path=sock)
                try:
                    for n in range(5000):
                        if stop.is_set():
                            return
                        i = (n * 7 + worker) % 200
                        try:
                            value = await load_client.get(f"categorization:k{i}")
                            if value != f"v{i}".encode():
                                wrong.append(f"k{i}={value!r}")
                            await load_client.set(f"categorization:w{worker}:{n % 50}", n)
                        except Exception as exc:  # any client-visible error fails the test
                            errors.append(exc)
                        await asyncio.sleep(0)
                finally:
                    await load_client.aclose()

            workers = [asyncio.create_task(load(w)) for w in range(4)]
            await asyncio.sleep(0.2)
            redis_server.stop()  # kill -9, mid-load
            await wait_until(lambda: not l2.up, "outage detected")
            assert REGISTRY.get_sample_value("sidecar_cache_backend_up") == 0.0
            hits_before = service.stats()["namespaces"]["categorization"]["hits"]["l1"]  # type: ignore[index]
            # writes during the outage, acknowledged from L1
            for i in range(50):
                assert await client.set(f"categorization:outage{i}", f"o{i}") is True
            assert await client.get("categorization:outage7") == b"o7"
            await asyncio.sleep(0.3)  # keep the load running through the outage
            hits_during = service.stats()["namespaces"]["categorization"]["hits"]["l1"]  # type: ignore[index]
            assert hits_during > hits_before
            assert l2.pending  # waiting for Redis

            redis_server.start()  # empty (no persistence): everything must come from replay
            await wait_until(flushed(service), "replayed after Redis came back")
            stop.set()
            await asyncio.gather(*workers)
            assert errors == []
            assert wrong == []
            assert l2.replayed >= 50
            assert REGISTRY.get_sample_value("sidecar_cache_backend_up") == 1.0
            direct = aioredis.Redis(unix_socket_path=redis_server.socket)
            try:
                assert await direct.get("categorization:outage49") == b"o49"
                assert await direct.get("categorization:outage0") == b"o0"
                # written before the kill, lost with Redis, but not replayed: not pending
                assert await direct.exists("categorization:k0") == 0
                assert 3500 <= await direct.ttl("categorization:outage0") <= 3600
            finally:
                await direct.aclose()
        finally:
            await client.aclose()


async def test_outage_queue_is_bounded_oldest_dropped(
        short_tmp: Path, redis_server: RedisServer) -> None:
    sock = str(short_tmp / "c.sock")
    settings = {"redis": redis_server.url, "l2": {**FAST, "replay_max_items": 10}}
    async with running_cache(sock, **settings) as service:
        l2 = service.tiers.l2
        assert l2 is not None
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            redis_server.stop()
            await client.set("probe", "1")
            await wait_until(lambda: not l2.up, "outage detected")
            for i in range(25):
                await client.set(f"q:{i}", i)
            assert len(l2.pending) == 10
            assert l2.dropped == 16  # 26 writes, 10 kept
            assert await client.get("q:0") == b"0"  # still served from L1
            redis_server.start()
            await wait_until(flushed(service), "replayed")
            direct = aioredis.Redis(unix_socket_path=redis_server.socket)
            try:
                assert await direct.get("q:24") == b"24"
                assert await direct.get("q:15") == b"15"
                assert await direct.exists("q:14") == 0
            finally:
                await direct.aclose()
            sample = REGISTRY.get_sample_value("sidecar_cache_l2_dropped_writes_total")
            assert sample == 16
        finally:
            await client.aclose()


async def test_redis_unreachable_at_start_serves_from_memory(short_tmp: Path) -> None:
    sock = str(short_tmp / "c.sock")
    settings = {"redis": f"unix://{short_tmp}/nothing.sock", "l2": FAST}
    async with running_cache(sock, **settings) as service:
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            assert await client.set("k", "v") is True
            assert await client.get("k") == b"v"
            assert await client.get("other") is None
            assert REGISTRY.get_sample_value("sidecar_cache_backend_up") == 0.0
            assert service.stats()["l2"]["up"] is False  # type: ignore[index]
        finally:
            await client.aclose()


async def test_tracking_invalidates_copies_beyond_the_cap(
        short_tmp: Path, redis_server: RedisServer) -> None:
    # a staleness cap of an hour: only an invalidation from Redis can refresh B's copy
    settings = {"redis": redis_server.url,
                "l2": {**FAST, "max_staleness": "1h", "tracking": True}}
    async with running_cache(short_tmp / "a.sock", **settings) as a, \
            running_cache(short_tmp / "b.sock", **settings) as b:
        l2b = b.tiers.l2
        assert l2b is not None
        await wait_until(lambda: l2b.tracking_ok, "B's tracking connection is on")
        ca = aioredis.Redis(unix_socket_path=str(short_tmp / "a.sock"))
        cb = aioredis.Redis(unix_socket_path=str(short_tmp / "b.sock"))
        direct = aioredis.Redis(unix_socket_path=redis_server.socket)
        try:
            await ca.set("sentiment:t", "old")
            await wait_until(flushed(a), "first write in Redis")
            assert await cb.get("sentiment:t") == b"old"
            reads = l2b.reads
            assert await cb.get("sentiment:t") == b"old"
            assert l2b.reads == reads  # served from L1, no Redis round trip
            await ca.set("sentiment:t", "new")
            await wait_until(flushed(a), "second write in Redis")

            async def b_sees_new() -> bool:
                return await cb.get("sentiment:t") == b"new"

            await wait_until(b_sees_new, "B's copy invalidated by Redis")
            await direct.set("sentiment:t", "direct")  # a writer that is not a sidecar
            await wait_until(lambda: l2b.invalidations >= 3, "invalidation for the direct write")
            assert await cb.get("sentiment:t") == b"direct"
        finally:
            for client in (ca, cb, direct):
                await client.aclose()


async def test_foreign_key_type_in_redis_is_a_miss_not_an_outage(
        short_tmp: Path, redis_server: RedisServer) -> None:
    direct = aioredis.Redis(unix_socket_path=redis_server.socket)
    await direct.hset("specs:hash", "f", "v")  # another program's data in the shared Redis
    async with running_cache(short_tmp / "c.sock", redis=redis_server.url, l2=FAST) as service:
        client = aioredis.Redis(unix_socket_path=str(short_tmp / "c.sock"))
        try:
            assert await client.get("specs:hash") is None
            l2 = service.tiers.l2
            assert l2 is not None
            assert l2.up
            assert l2.outages == 0
        finally:
            await client.aclose()
            await direct.aclose()


async def test_redis_killed_while_reads_are_in_flight(
        short_tmp: Path, redis_server: RedisServer) -> None:
    direct = aioredis.Redis(unix_socket_path=redis_server.socket)
    await direct.mset({f"embeddings:r{i}": f"v{i}" for i in range(3000)})
    await direct.aclose()
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock, redis=redis_server.url, l2=FAST) as service:
        l2 = service.tiers.l2
        assert l2 is not None
        errors: list[BaseException] = []
        wrong: list[str] = []

        async def reader(worker: int) -> None:
            client = aioredis.Redis(unix_socket_path=sock)
            try:
                for n in range(750):  # every key once over 4 workers: all L1 misses
                    i = worker * 750 + n
                    try:
                        value = await client.get(f"embeddings:r{i}")
                    except Exception as exc:
                        errors.append(exc)
                        continue
                    if value not in (f"v{i}".encode(), None):  # a miss is fine, a lie is not
                        wrong.append(f"r{i}={value!r}")
            finally:
                await client.aclose()

        workers = [asyncio.create_task(reader(w)) for w in range(4)]
        await wait_until(lambda: l2.reads > 200, "reads under way")
        redis_server.stop()
        await asyncio.gather(*workers)
        assert errors == []
        assert wrong == []
        assert not l2.up
        redis_server.start()  # empty now; the reader must work again after the outage
        await wait_until(lambda: l2.up, "reconnected")
        client = aioredis.Redis(unix_socket_path=sock)
        direct = aioredis.Redis(unix_socket_path=redis_server.socket)
        try:
            await direct.set("embeddings:new", "fresh")
            assert await client.get("embeddings:new") == b"fresh"  # an L2 read again
        finally:
            await client.aclose()
            await direct.aclose()


async def test_shutdown_delivers_pending_writes(
        short_tmp: Path, redis_server: RedisServer) -> None:
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock, redis=redis_server.url, l2=FAST):
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            pipe = client.pipeline(transaction=False)
            for i in range(2000):
                pipe.set(f"specs:s{i}", i)
            await pipe.execute()
        finally:
            await client.aclose()
        # leaving the block shuts the service down at once: the queue must still land
    direct = aioredis.Redis(unix_socket_path=redis_server.socket)
    try:
        assert await direct.dbsize() == 2000
        assert await direct.get("specs:s1999") == b"1999"
    finally:
        await direct.aclose()


async def test_slow_redis_counts_as_down_and_l1_answers(
        short_tmp: Path, redis_server: RedisServer) -> None:
    sock = str(short_tmp / "c.sock")
    settings = {"redis": redis_server.url, "l2": {**FAST, "timeout": 0.2}}
    async with running_cache(sock, **settings) as service:
        l2 = service.tiers.l2
        assert l2 is not None
        client = aioredis.Redis(unix_socket_path=sock)
        blocker = aioredis.Redis(unix_socket_path=redis_server.socket, socket_timeout=10)
        try:
            await client.set("sentiment:a", "kept")
            await wait_until(flushed(service), "first write in Redis")
            sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "1.5"))
            await asyncio.sleep(0.1)
            await client.set("sentiment:b", "during")  # the writer's send times out
            await wait_until(lambda: not l2.up, "slow Redis marked down")
            assert await client.get("sentiment:a") == b"kept"  # L1, no waiting on Redis
            assert await client.get("sentiment:b") == b"during"
            await sleeping
            await wait_until(flushed(service), "replayed once Redis answers again")
            direct = aioredis.Redis(unix_socket_path=redis_server.socket)
            try:
                assert await direct.get("sentiment:b") == b"during"
            finally:
                await direct.aclose()
        finally:
            await client.aclose()
            await blocker.aclose()
