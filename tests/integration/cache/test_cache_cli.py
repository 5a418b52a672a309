"""`sidecar cache stats|get|set|del` against a running cache (CLI run in a thread)."""

from __future__ import annotations

import asyncio

import orjson
from click.testing import CliRunner, Result

from sidecar.cache.cli import cache as cache_group
from sidecar.cache.server import CacheService


async def invoke(*args: str) -> Result:
    # the CLI blocks on its socket; the cache runs on this test's event loop
    return await asyncio.to_thread(CliRunner().invoke, cache_group, list(args))


async def test_set_get_del_stats(cache: CacheService, cache_sock: str) -> None:
    result = await invoke("--socket", cache_sock, "set", "specs:k", "hello", "--ex", "60")
    assert result.exit_code == 0, result.output
    assert result.output == "OK\n"
    result = await invoke("--socket", cache_sock, "get", "specs:k")
    assert result.exit_code == 0
    assert result.stdout == "hello\n"
    result = await invoke("--socket", cache_sock, "stats", "--json")
    data = orjson.loads(result.stdout)
    assert data["namespaces"]["specs"]["hits"]["l1"] == 1
    assert data["namespaces"]["specs"]["items"]["l1"] == 1
    assert data["namespaces"]["specs"]["saved_usd"] == 0.01
    result = await invoke("--socket", cache_sock, "stats")
    assert result.exit_code == 0
    assert "specs" in result.stdout
    assert "L2   none (memory only)" in result.stdout
    result = await invoke("--socket", cache_sock, "del", "specs:k")
    assert result.stdout == "1\n"
    result = await invoke("--socket", cache_sock, "get", "specs:k")
    assert result.exit_code == 1
    assert "(nil)" in result.output


async def test_unreachable_socket_is_a_clear_error(cache_sock: str) -> None:
    result = await invoke("--socket", cache_sock + ".none", "get", "k")
    assert result.exit_code == 1
    assert "cannot reach the cache at" in result.output
