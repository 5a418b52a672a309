"""redis-py (asyncio and sync) against the cache over its unix socket: what real clients do."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sidecar.cache.server import CacheService
from sidecar.cache.testing import running_cache

# redis-py retries AuthenticationError (a ConnectionError) with backoff by default
NO_RETRY = Retry(NoBackoff(), 0)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_asyncio_client_basics(cache: CacheService, cache_sock: str, protocol: int) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock, protocol=protocol)
    try:
        assert await client.ping() is True
        assert await client.set("app:a", "hello", ex=100) is True
        assert await client.get("app:a") == b"hello"
        assert 99 <= await client.ttl("app:a") <= 100
        assert await client.get("app:missing") is None
        await client.set("app:b", b"world")
        assert await client.mget("app:a", "app:b", "app:none") == [b"hello", b"world", None]
        assert await client.incr("app:n") == 1
        assert await client.incrby("app:n", 41) == 42
        assert await client.decr("app:n") == 41
        assert await client.exists("app:a", "app:b", "app:none") == 2
        assert await client.type("app:a") == b"string"
        assert await client.delete("app:a", "app:none") == 1
        assert await client.get("app:a") is None
        assert await client.dbsize() == 2
    finally:
        await client.aclose()


async def test_pipeline_of_1000_commands(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(500):
            pipe.set(f"p:{i}", f"v{i}")
        for i in range(500):
            pipe.get(f"p:{i}")
        results = await pipe.execute()
        assert results[:500] == [True] * 500
        assert results[500:] == [f"v{i}".encode() for i in range(500)]
    finally:
        await client.aclose()


async def test_binary_keys_and_values(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        key = b"\x00\xff\r\nkey"
        value = bytes(range(256)) * 64
        await client.set(key, value)
        assert await client.get(key) == value
        assert await client.mget(key, b"nope") == [value, None]
    finally:
        await client.aclose()


def test_sync_client_in_a_thread_basics(cache_sock: str) -> None:
    async def scenario() -> None:
        async with running_cache(cache_sock):
            await asyncio.to_thread(sync_checks, cache_sock)

    asyncio.run(scenario())


def sync_checks(path: str) -> None:
    client = redis.Redis(unix_socket_path=path, client_name="sync-test")
    try:
        assert client.set("s:a", "1", ex=50)
        assert client.get("s:a") == b"1"
        binary = bytes(range(256))
        assert client.set(b"s:\x00bin\r\n", binary)
        assert client.mget("s:a", b"s:\x00bin\r\n", "s:none") == [b"1", binary, None]
        assert client.client_getname() == "sync-test"
        assert isinstance(client.client_id(), int)
        pipe = client.pipeline(transaction=False)
        for _ in range(1000):
            pipe.incr("s:counter")
        assert pipe.execute()[-1] == 1000
        assert 0 < client.pttl("s:a") <= 50_000
        assert client.persist("s:a") is True
        assert client.ttl("s:a") == -1
        assert client.expire("s:a", 10) is True
        assert client.ttl("s:a") == 10
    finally:
        client.close()


async def test_set_options(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        assert await client.set("o:k", "1", nx=True) is True
        assert await client.set("o:k", "2", nx=True) is None
        assert await client.set("o:none", "2", xx=True) is None
        assert await client.set("o:k", "3", xx=True, get=True) == b"1"
        assert await client.set("o:k", "4", px=100_000) is True
        assert await client.set("o:k", "5", keepttl=True) is True
        assert 99 <= await client.ttl("o:k") <= 100
        assert await client.get("o:k") == b"5"
        assert await client.getex("o:k", ex=500) == b"5"
        assert 499 <= await client.ttl("o:k") <= 500
        assert await client.getdel("o:k") == b"5"
        assert await client.get("o:k") is None
        assert await client.set("o:past", "x", exat=1) is True  # an expiry in the past
        assert await client.get("o:past") is None
        await client.mset({"o:m1": "a", "o:m2": "b"})
        assert await client.mget("o:m1", "o:m2") == [b"a", b"b"]
        assert await client.pexpire("o:m1", 60_000) is True
        assert 59_000 < await client.pttl("o:m1") <= 60_000
        assert await client.ttl("o:nothing") == -2
        assert await client.unlink("o:m1", "o:m2") == 2
    finally:
        await client.aclose()


async def test_errors_worded_as_redis(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        with pytest.raises(redis.ResponseError) as info:
            await client.execute_command("HSET", "h", "f", "v")
        assert str(info.value) == "unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "
        with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
            await client.execute_command("GET")
        await client.set("e:str", "abc")
        with pytest.raises(redis.ResponseError, match="not an integer or out of range"):
            await client.incr("e:str")
        with pytest.raises(redis.ResponseError, match="invalid expire time in 'set'"):
            await client.execute_command("SET", "e:k", "v", "EX", "0")
        with pytest.raises(redis.ResponseError, match="syntax error"):
            await client.execute_command("SET", "e:k", "v", "NX", "XX")
        with pytest.raises(redis.ResponseError, match="MULTI is not supported"):
            await client.execute_command("MULTI")
        with pytest.raises(redis.ResponseError, match="SUBSCRIBE is not supported"):
            await client.execute_command("SUBSCRIBE", "ch")
        with pytest.raises(redis.ResponseError, match="EVAL is not supported"):
            await client.execute_command("EVAL", "return 1", "0")
        with pytest.raises(redis.ResponseError, match="FLUSHDB is disabled"):
            await client.flushdb()
        with pytest.raises(redis.ResponseError, match="DB index is out of range"):
            await client.execute_command("SELECT", "1")
        assert await client.execute_command("SELECT", "0") is True
        assert await client.get("e:str") == b"abc"  # still serving after all that
    finally:
        await client.aclose()


async def test_namespace_policies(cache_sock: str) -> None:
    settings = {"namespaces": {"embeddings": {"ttl": "24h", "max_value_size": 100},
                               "capped": {"ttl": "10s", "max_ttl": "60s", "value_usd": 0.5}}}
    async with running_cache(cache_sock, **settings) as service:
        client = aioredis.Redis(unix_socket_path=cache_sock)
        try:
            await client.set("embeddings:a", "v")
            assert 86_399 <= await client.ttl("embeddings:a") <= 86_400
            with pytest.raises(redis.ResponseError, match="value too large for namespace"):
                await client.set("embeddings:b", "x" * 101)
            await client.set("capped:a", "v", ex=3600)
            assert 59 <= await client.ttl("capped:a") <= 60
            await client.set("plain", "v")
            assert await client.ttl("plain") == -1
            for _ in range(4):
                assert await client.get("capped:a") == b"v"
            await client.get("capped:none")
        finally:
            await client.aclose()
        stats = service.stats()
        capped = stats["namespaces"]["capped"]  # type: ignore[index]
        assert capped["hits"] == {"l1": 4, "l2": 0}
        assert capped["misses"] == 1
        assert capped["saved_usd"] == 2.0
        assert capped["hit_ratio"] == 0.8


async def test_scan_returns_every_key_once(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        keys = {f"scan:{i}".encode() for i in range(250)}
        await client.mset(dict.fromkeys(keys, b"v"))
        await client.set("other", "v")
        found = [k async for k in client.scan_iter(match="scan:*", count=17)]
        assert sorted(found) == sorted(keys)
    finally:
        await client.aclose()


async def test_protocol_violation_closes_only_that_connection(
        cache: CacheService, cache_sock: str) -> None:
    reader, writer = await asyncio.open_unix_connection(cache_sock)
    writer.write(b"*1\r\n$-5\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)  # read to EOF: the server closed it
    assert reply == b"-ERR Protocol error: invalid bulk length\r\n"
    writer.close()
    assert cache.protocol_errors == 1
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_oversized_bulk_refused_before_buffering(cache_sock: str) -> None:
    async with running_cache(cache_sock, limits={"max_bulk": 1024}):
        reader, writer = await asyncio.open_unix_connection(cache_sock)
        writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == (
            b"-ERR Protocol error: invalid bulk length\r\n")
        writer.close()


async def test_raw_inline_and_quit(cache: CacheService, cache_sock: str) -> None:
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(cache_sock)
        raw.sendall(b"PING\r\nSET k v\r\nGET k\r\nQUIT\r\n")
        raw.settimeout(5)
        data = b""
        while chunk := await asyncio.to_thread(raw.recv, 4096):
            data += chunk
        assert data == b"+PONG\r\n+OK\r\n$1\r\nv\r\n+OK\r\n"


async def test_tcp_listener_requires_auth(cache_sock: str) -> None:
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"tcp": {"endpoint": f"127.0.0.1:{port}", "password": "pw"}}
    async with running_cache(cache_sock, **settings):
        anonymous = aioredis.Redis(port=port, retry=NO_RETRY)
        try:
            with pytest.raises(redis.AuthenticationError):
                await anonymous.get("k")
        finally:
            await anonymous.aclose()
        wrong = aioredis.Redis(port=port, password="nope", retry=NO_RETRY)
        try:
            with pytest.raises(redis.AuthenticationError):
                await wrong.ping()
        finally:
            await wrong.aclose()
        client = aioredis.Redis(port=port, password="pw", protocol=3)
        try:
            assert await client.set("k", "v") is True
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()
        # the unix socket (file permissions guard it) needs no password
        local = aioredis.Redis(unix_socket_path=cache_sock)
        try:
            assert await local.get("k") == b"v"
        finally:
            await local.aclose()


async def test_hello_and_client_commands(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock, protocol=3)
    try:
        hello = await client.execute_command("HELLO", "3")
        assert hello[b"proto"] == 3
        assert hello[b"server"] == b"redis"
        with pytest.raises(redis.ResponseError, match="NOPROTO"):
            await client.execute_command("HELLO", "4")
        assert await client.client_setname("worker-1") is True
        assert await client.client_getname() == b"worker-1"  # RESP3: no str callback
        info = await client.client_info()
        assert info["name"] == "worker-1"
        assert await client.execute_command("CLIENT", "SETINFO", "LIB-NAME", "x") == b"OK"
        assert await client.command_count() > 20
        server_info = await client.info()
        assert server_info["redis_version"] == "7.2.0"
        assert server_info["loading"] == 0
    finally:
        await client.aclose()


async def test_flushdb_when_allowed(cache_sock: str) -> None:
    async with running_cache(cache_sock, allow_flush=True):
        client = aioredis.Redis(unix_socket_path=cache_sock)
        try:
            await client.set("a", "1")
            assert await client.flushdb() is True
            assert await client.dbsize() == 0
        finally:
            await client.aclose()


async def test_expire_options(cache: CacheService, cache_sock: str) -> None:
    client = aioredis.Redis(unix_socket_path=cache_sock)
    try:
        await client.set("x:persistent", "v")
        assert await client.expire("x:persistent", 100, xx=True) is False  # no TTL yet
        assert await client.expire("x:persistent", 100, gt=True) is False  # no TTL = infinite
        assert await client.expire("x:persistent", 100, nx=True) is True
        assert await client.expire("x:persistent", 50, nx=True) is False
        assert await client.expire("x:persistent", 50, gt=True) is False
        assert await client.expire("x:persistent", 200, gt=True) is True
        assert await client.expire("x:persistent", 300, lt=True) is False
        assert await client.expire("x:persistent", 30, lt=True) is True
        assert 29 <= await client.ttl("x:persistent") <= 30
        with pytest.raises(redis.ResponseError, match="not compatible"):
            await client.execute_command("EXPIRE", "x:persistent", "10", "NX", "GT")
        with pytest.raises(redis.ResponseError, match="Unsupported option"):
            await client.execute_command("EXPIRE", "x:persistent", "10", "SOON")
    finally:
        await client.aclose()
