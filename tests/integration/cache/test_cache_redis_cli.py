"""redis-cli (Debian redis-tools) against the cache socket: handshake, commands, pipe mode."""

from __future__ import annotations

import asyncio
import subprocess

from sidecar.cache.server import CacheService
from sidecar.cache.testing import redis_binary


async def cli(sock: str, *args: str, stdin: bytes | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        redis_binary("redis-cli"), "-s", sock, *args, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode == 0, out
    return out.decode()


async def test_redis_cli_commands(cache: CacheService, cache_sock: str) -> None:
    assert await cli(cache_sock, "PING") == "PONG\n"
    assert await cli(cache_sock, "SET", "cli:a", "hello world", "EX", "100") == "OK\n"
    assert await cli(cache_sock, "GET", "cli:a") == "hello world\n"
    assert await cli(cache_sock, "TTL", "cli:a") == "100\n"
    assert await cli(cache_sock, "INCR", "cli:n") == "1\n"
    assert await cli(cache_sock, "INCRBY", "cli:n", "9") == "10\n"
    assert await cli(cache_sock, "MGET", "cli:a", "cli:n", "cli:none") == (
        "hello world\n10\n\n")
    assert await cli(cache_sock, "FOO", "bar") == (
        "ERR unknown command 'FOO', with args beginning with: 'bar' \n\n")  # as from Redis
    # binary value through redis-cli's escape syntax, read back raw
    await cli(cache_sock, "-x", "SET", "cli:bin", stdin=b"\x00\x01\r\n\xff")
    assert await cli(cache_sock, "--no-raw", "GET", "cli:bin") == '"\\x00\\x01\\r\\n\\xff"\n'


async def test_redis_cli_resp3_handshake(cache: CacheService, cache_sock: str) -> None:
    out = await cli(cache_sock, "-3", "HELLO", "3")
    assert "proto" in out
    assert await cli(cache_sock, "-3", "GET", "nothing") == "\n"


async def test_redis_cli_pipe_mode_1000_commands(cache: CacheService, cache_sock: str) -> None:
    commands = b"".join(
        b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(k), k, len(v), v)
        for k, v in ((f"pipe:{i}".encode(), f"{i}".encode()) for i in range(1000)))
    out = await cli(cache_sock, "--pipe", stdin=commands)
    assert "errors: 0, replies: 1000" in out
    assert await cli(cache_sock, "GET", "pipe:999") == "999\n"
    assert await cli(cache_sock, "DBSIZE") == "1000\n"
