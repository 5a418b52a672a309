"""How the L2 tier talks to Redis: one redis-py client for every URL form, and the few
commands it sends often packed and read by hand.

redis-py builds the connections (TLS, AUTH, Sentinel discovery, pools); the writer and the
reader then use a held connection's socket directly. redis-py's pipeline costs ~60 µs per
command on the build machine (argument packing and reply parsing in Python, per command);
a batch packed with one format call per command and replies counted (writes) or parsed with
two `readuntil` calls (reads) costs a few."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sidecar.cache.config import CacheConfig


def build_client(config: CacheConfig, protocol: int = 2) -> Any:
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

            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in hosts],
                                password=password, max_connections=l2.pool_size,
                                protocol=protocol,
                                socket_timeout=l2.timeout,
                                socket_connect_timeout=l2.connect_timeout)
        from redis.asyncio.sentinel import Sentinel

        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("redis+sentinel URL needs the master name: .../<master>[/db]")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(hosts, socket_timeout=l2.timeout,  # type: ignore[no-untyped-call]
                            socket_connect_timeout=l2.connect_timeout)
        return sentinel.master_for(path[0], password=password, db=db, **common)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=l2.pool_size, timeout=l2.timeout, **common)
    return aioredis.Redis(connection_pool=pool)


READ_BATCH = 256
GET_PTTL = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n*2\r\n$4\r\nPTTL\r\n$%d\r\n%b\r\n"
SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
SET_PX = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nPX\r\n$%d\r\n%b\r\n"


def pack(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


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
