"""No cache command stalls the daemon: while redis-py sends hostile SCAN patterns, scans a
large keyspace and sends huge multi-key commands to the real daemon, /healthz on the admin
port keeps answering within 1 s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers.daemon import DaemonProcess

KEYS = 500_000  # one MSET of these is 1,000,001 arguments: under the parser's max_array
PATHOLOGICAL = [b"[a" * 12_000, b"[a" * 200_000]  # 6.6 s and minutes in fnmatch.translate
# within the pattern bound, and hard for a backtracking matcher
HARD_BUT_ALLOWED = [b"[a" * 2048, b"*a" * 2048, b"*?" * 2048, b"a*" * 1000 + b"b",
                    b"*" + b"?" * 4094 + b"*"]


class Poller:
    """GET /healthz every 50 ms; each answer must come within 1 s."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers = 0
        self.failures: list[str] = []
        self.slowest = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        await response.read()
                        if response.status != 200:
                            self.failures.append(f"status {response.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failures.append(f"{type(exc).__name__} after "
                                         f"{time.monotonic() - start:.2f} s")
                self.slowest = max(self.slowest, time.monotonic() - start)
                self.answers += 1
                await asyncio.sleep(0.05)


def hostile_client_session(sock: str) -> dict[str, object]:
    """What a careless or hostile client does, with redis-py; bounded in count and time."""
    deadline = time.monotonic() + 90
    # no retries: a stalled daemon should fail this test at once, not after redis-py's backoff
    client = redis.Redis(unix_socket_path=sock, socket_timeout=15, retry=Retry(NoBackoff(), 0))
    out: dict[str, object] = {}
    try:
        keys = [b"load:%d" % i for i in range(KEYS)]
        mapping = dict.fromkeys(keys, b"v")
        out["mset"] = client.mset(mapping)  # one command, 500k keys
        refused = []
        for pattern in PATHOLOGICAL:
            try:
                client.scan(0, match=pattern, count=100)
            except redis.ResponseError as exc:
                refused.append(str(exc))
        out["refused"] = refused
        out["allowed"] = [client.scan(0, match=p, count=1000)[1] for p in HARD_BUT_ALLOWED]
        # a pipelined burst of fresh scans: each one used to sort a snapshot of all keys
        with client.pipeline(transaction=False) as pipe:
            for _ in range(20):
                pipe.scan(0, match="load:1*", count=10)
            burst = pipe.execute()
        out["burst"] = [len(keys) <= 10 for _, keys in burst]
        seen: set[bytes] = set()
        cursor, calls = 0, 0
        while True:
            assert time.monotonic() < deadline, "SCAN loop did not finish in time"
            cursor, found = client.scan(cursor, count=1000)
            seen.update(found)
            calls += 1
            if cursor == 0 or calls > 2 * KEYS:
                break
        out["scan_complete"] = seen == set(keys)
        out["scan_calls"] = calls
        out["mget_hits"] = sum(v is not None for v in client.mget(keys))
        out["deleted"] = client.delete(*keys)
    finally:
        client.close()
    return out


@pytest.mark.timeout(180)
async def test_hostile_cache_commands_keep_the_daemon_responsive(short_tmp: Path) -> None:
    sock = str(short_tmp / "cache.sock")
    daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                           "path": str(short_tmp / "export")}},
                           extra={"cache": {"unix": sock, "memory": {"max_bytes": 512 << 20}}})
    await daemon.start()
    poller = Poller(daemon.admin_url)
    stop = asyncio.Event()
    polling = asyncio.create_task(poller.run(stop))
    try:
        out = await asyncio.to_thread(hostile_client_session, sock)
    finally:
        stop.set()
        await polling
        code, _, err = await daemon.stop(timeout=15)
    assert not poller.failures, (poller.failures[:5], f"slowest {poller.slowest:.2f} s")
    assert poller.answers > 10
    assert out["mset"] is True
    assert out["refused"] == ["MATCH pattern too long for the sidecar cache (max 4096 bytes)"] * 2
    assert out["allowed"] == [[], [], [], [], []]  # no key has such a shape
    assert out["burst"] == [True] * 20
    assert out["scan_complete"] is True
    assert out["mget_hits"] == KEYS
    assert out["deleted"] == KEYS
    assert code == 0, err
