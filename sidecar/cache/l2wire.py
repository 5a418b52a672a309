"""How the L2 tier talks to Redis: redis-py for every URL form, and the few commands it
sends often packed and read by hand on its own connections (see l2conn.py).

redis-py parses the URL, builds the pools (TLS, AUTH, Sentinel discovery) for health pings
and rare commands, and routes Redis Cluster; the writer and the reader pack their batches
with one format call per command and count replies (writes) or parse them with two
`readuntil` calls (reads), on connections opened by `l2conn.RawConnection`."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.cache.config import CacheConfig
from sidecar.cache.l2conn import Endpoint, Locate, endpoint_from_pool, pack

__all__ = ["GET_PTTL", "READ_BATCH", "SET", "SET_PX", "Backend", "build_backend",
           "build_client", "count_replies", "pack"]


@dataclass
class Backend:
    """The redis-py client and where the fast path connects (None: Redis Cluster, whose
    keys live on several nodes: redis-py routes every command)."""

    client: Any
    locate: Locate | None
    sentinel: Any = None  # its connections to the Sentinels close with the client

    async def aclose(self) -> None:
        clients = [self.client, *(self.sentinel.sentinels if self.sentinel else [])]
        for client in clients:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await client.aclose()


def build_client(config: CacheConfig, protocol: int = 2) -> Any:
    """The redis-py client for `cache.redis` (see build_backend)."""
    return build_backend(config, protocol).client


def build_backend(config: CacheConfig, protocol: int = 2) -> Backend:
    """One client object for every URL form; pool and timeouts from `cache.l2`."""
    assert config.redis is not None
    l2 = config.l2
    url = config.redis
    # fail fast: a retry inside redis-py would hold a client request while L1 could answer
    common: dict[str, Any] = {
        "socket_timeout": l2.timeout,
        "socket_connect_timeout": l2.connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "protocol": protocol,
    }
    scheme = url.partition("://")[0]
    if scheme in ("redis+sentinel", "redis+cluster"):
        parts = urlsplit(url)
        hosts = [_host_port(h, 26379 if scheme == "redis+sentinel" else 6379)
                 for h in parts.netloc.rpartition("@")[2].split(",")]
        password = parts.netloc.rpartition("@")[0].partition(":")[2] or None
        if scheme == "redis+cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            return Backend(RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts],
                                        password=password, max_connections=l2.pool_size,
                                        protocol=protocol,
                                        socket_timeout=l2.timeout,
                                        socket_connect_timeout=l2.connect_timeout), None)
        from redis.asyncio.sentinel import Sentinel

        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel URL needs the master name: .../<master>[/db]")
        db = int(path[1]) if len(path) > 1 else 0
        # redis < 8.2 leaves Sentinel.__init__ untyped, 8.2 types it: the ignore serves both
        sentinel = Sentinel(hosts, socket_timeout=l2.timeout,  # type: ignore[no-untyped-call, unused-ignore]
                            socket_connect_timeout=l2.connect_timeout)
        master = path[0]

        async def locate_master() -> Endpoint:
            host, port = await sentinel.discover_master(master)
            return Endpoint(host=str(host), port=int(port), password=password, db=db)

        return Backend(sentinel.master_for(master, password=password, db=db, **common),
                       locate_master, sentinel)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=l2.pool_size, timeout=l2.timeout, **common)
    endpoint = endpoint_from_pool(
        pool.connection_kwargs,
        unix=issubclass(pool.connection_class, aioredis.UnixDomainSocketConnection),
        tls=issubclass(pool.connection_class, aioredis.SSLConnection))

    async def locate() -> Endpoint:
        return endpoint

    # from_pool: the client owns the pool and disconnects its connections when closed
    # (Redis(connection_pool=...) leaves them open: a leaked socket per pooled connection)
    return Backend(aioredis.Redis.from_pool(pool), locate)


READ_BATCH = 256
GET_PTTL = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n"
SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
SET_PX = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nPX\r\n$%d\r\n%b\r\n"


async def count_replies(reader: asyncio.StreamReader, expected: int) -> int:
    """Read `expected` one-line replies; returns how many were errors (-...)."""
    lines = errors = 0
    previous = b"\n"  # as if a line had just ended: an error reply first is counted too
    while lines < expected:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        window = previous + chunk  # a CRLF may straddle two reads
        lines += window.count(b"\r\n")
        errors += window.count(b"\n-")
        previous = chunk[-1:]
    return errors


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]"), int(port)
