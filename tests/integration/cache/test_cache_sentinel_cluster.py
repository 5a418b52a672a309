"""L2 through Redis Sentinel and Redis Cluster, with real redis-server processes."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sidecar.cache.testing import RedisServer, redis_binary, running_cache, wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_port(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers PING on port {port}")


@contextlib.contextmanager
def process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def sentinel(short_tmp: Path) -> Iterator[tuple[RedisServer, int]]:
    """A master (unix socket + loopback port) and one Sentinel monitoring it."""
    (short_tmp / "master").mkdir()
    master = RedisServer(short_tmp / "master", port=free_port())
    master.start()
    port = free_port()
    conf = short_tmp / "sentinel.conf"  # Sentinel rewrites its file: it must be writable
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {short_tmp}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")
    try:
        with process([redis_binary(), str(conf), "--sentinel"]):
            wait_port(port)
            yield master, port
    finally:
        master.close()


async def test_sentinel_url_writes_and_reads_through_the_master(
        short_tmp: Path, sentinel: tuple[RedisServer, int]) -> None:
    master, port = sentinel
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock, redis=f"redis+sentinel://127.0.0.1:{port}/mymaster") as svc:
        l2 = svc.tiers.l2
        assert l2 is not None
        assert l2.up
        client = aioredis.Redis(unix_socket_path=sock)
        direct = aioredis.Redis(unix_socket_path=master.socket)
        try:
            await client.set("specs:s", "via-sentinel", ex=100)
            await wait_until(lambda: not l2.pending, "writes reached Redis")
            assert await direct.get("specs:s") == b"via-sentinel"
            await direct.set("specs:t", "from-master")
            assert await client.get("specs:t") == b"from-master"  # an L2 read
            assert l2.reads == 1
        finally:
            await client.aclose()
            await direct.aclose()


@pytest.fixture
def cluster(short_tmp: Path) -> Iterator[list[int]]:
    """Three cluster-enabled redis-servers joined by `redis-cli --cluster create`."""
    ports = [cluster_port() for _ in range(3)]
    with contextlib.ExitStack() as stack:
        for port in ports:
            node_dir = short_tmp / f"n{port}"
            node_dir.mkdir()
            stack.enter_context(process([
                redis_binary(), "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--dir", str(node_dir), "--save", "", "--appendonly", "no"]))
        for port in ports:
            wait_port(port)
        subprocess.run([redis_binary("redis-cli"), "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # wait until every slot is served
            info = subprocess.run([redis_binary("redis-cli"), "-p", str(ports[0]),
                                   "CLUSTER", "INFO"], capture_output=True, timeout=5)
            if b"cluster_state:ok" in info.stdout:
                break
            time.sleep(0.1)
        yield ports


async def test_cluster_url_spreads_keys_over_nodes(short_tmp: Path, cluster: list[int]) -> None:
    sock = str(short_tmp / "c.sock")
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster)
    async with running_cache(sock, redis=url) as svc:
        l2 = svc.tiers.l2
        assert l2 is not None
        client = aioredis.Redis(unix_socket_path=sock)
        try:
            for i in range(30):
                await client.set(f"embeddings:{i}", f"v{i}")
            await wait_until(lambda: not l2.pending, "writes reached Redis")
            assert not l2.pending
            assert l2.write_errors == 0
            counts = []
            for port in cluster:
                node = aioredis.Redis(port=port)
                try:
                    counts.append(await node.dbsize())
                finally:
                    await node.aclose()
            assert sum(counts) == 30
            assert sum(1 for c in counts if c) >= 2  # really spread over the cluster
            # a key only Redis has: read through the cluster client
            writer = aioredis.RedisCluster(host="127.0.0.1", port=cluster[0])
            try:
                await writer.set("specs:only-in-redis", "x")
            finally:
                await writer.aclose()
            assert await client.get("specs:only-in-redis") == b"x"
        finally:
            await client.aclose()
