"""SCAN ... MATCH on the sidecar gives what a real redis-server gives: the same keys and the
same patterns, through redis-py, to both (hypothesis picks them)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.cache.testing import RedisServer, running_cache

# the bytes Redis's matcher treats specially, a few plain ones, and bytes that are
# negative as a C char (range ends compare signed)
ALPHABET = b"ab-^[]\\*?\x00\x7f\x80\xff"


@contextlib.contextmanager
def sidecar_in_thread(sock: str) -> Iterator[None]:
    """A memory-only cache on its own event loop in a thread, for synchronous clients."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    async def serve() -> None:
        try:
            async with running_cache(sock, allow_flush=True):
                ready.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            raise

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()))
    thread.start()
    try:
        assert ready.wait(10), "the cache did not start"
        assert not failure, failure
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """(sidecar, redis-server) clients."""
    with tempfile.TemporaryDirectory(prefix="sm-", dir="/tmp") as d:
        (Path(d) / "redis").mkdir()
        server = RedisServer(Path(d) / "redis")
        server.start()
        sock = f"{d}/cache.sock"
        try:
            with sidecar_in_thread(sock):
                ours = redis.Redis(unix_socket_path=sock)
                theirs = redis.Redis(unix_socket_path=server.socket)
                try:
                    yield ours, theirs
                finally:
                    ours.close()
                    theirs.close()
        finally:
            server.close()


def scan_both(pair: tuple[redis.Redis, redis.Redis], keys: set[bytes],
              patterns: list[bytes]) -> None:
    for client in pair:
        client.flushall()
        if keys:
            client.mset(dict.fromkeys(keys, b"1"))
    for pattern in patterns:
        ours, theirs = (set(c.scan_iter(match=pattern, count=1000)) for c in pair)
        assert ours == theirs, pattern


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.sets(st.binary(max_size=6).map(lambda b: bytes(ALPHABET[x % len(ALPHABET)]
                                                              for x in b)), max_size=25),
       patterns=st.lists(st.binary(max_size=9).map(
           lambda b: bytes(ALPHABET[x % len(ALPHABET)] for x in b)), min_size=1, max_size=4))
def test_scan_match_agrees_with_redis(pair: tuple[redis.Redis, redis.Redis], keys: set[bytes],
                                      patterns: list[bytes]) -> None:
    scan_both(pair, keys, patterns)


def test_keys_made_from_the_pattern_agree_with_redis(
        pair: tuple[redis.Redis, redis.Redis]) -> None:
    # keys that almost match, so the positive side is exercised as much as the negative
    keys = {b"user:42", b"user:", b"users:42", b"a]", b"]", b"-", b"\\", b"*", b"?", b"[",
            b"ab", b"abc", b"abcabc", b"\x00", b"\xff", b"a\xffb", b"x" * 40, b"^", b"_"}
    patterns = [b"user:*", b"*:42", b"u*r*2", b"[a-c]*", b"[c-a]?", b"[]a]", b"[^]*", b"[a-]",
                b"[a-", b"[abc", b"[\\]]", b"\\*", b"a\\", b"*[a-\xff]*", b"[\x80-b]",
                b"*a*b*c", b"x*x*x*x*x*x*x*x*x*x*y", b"**", b"*", b"", b"?", b"[^a-z]"]
    scan_both(pair, keys, patterns)


def test_nesting_limit_agrees_with_redis(pair: tuple[redis.Redis, redis.Redis]) -> None:
    keys = {b"a" * 1000, b"a" * 1001, b"a" * 2000, b"ab" * 1001, b"a"}
    patterns = [b"*a" * 999, b"*a" * 1000, b"*a" * 1001, b"*a" * 1000 + b"*",
                b"*a" * 1001 + b"*", b"a*" * 1001, b"a*" * 1002, b"*" + b"a*" * 1001,
                b"*" * 3000 + b"a", b"*a" * 1000 + b"*?"]
    scan_both(pair, keys, patterns)


def test_too_long_pattern_is_refused_with_a_clear_error(
        pair: tuple[redis.Redis, redis.Redis]) -> None:
    ours, _ = pair
    before = orjson.loads(ours.execute_command("SIDECAR", "STATS"))["limit_errors"]
    with pytest.raises(redis.ResponseError, match=r"pattern too long .*max 4096 bytes"):
        ours.scan(0, match=b"[a" * 12_000)
    with pytest.raises(redis.ResponseError, match="pattern too long"):
        ours.scan(0, match=b"?" * 4097)
    ours.flushall()
    ours.set(b"?" * 4096, b"1")
    assert ours.scan(0, match=b"?" * 4096, count=100) == (0, [b"?" * 4096])
    assert orjson.loads(ours.execute_command("SIDECAR", "STATS"))["limit_errors"] == before + 2
