"""Node.js's ioredis and node-redis against the cache socket, each with its own handshake.

Needs `node` and the npm packages from tests/e2e/node (installed by `make node`, which
`make test` runs); missing either is a failure, not a skip."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from sidecar.cache.testing import RedisServer, running_cache

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
UNKNOWN = "ERR unknown command 'NOSUCHCMD', with args beginning with: 'x' "


async def run_node(script: str, sock: str) -> dict[str, object]:
    node = shutil.which("node")
    assert node is not None, "node not found: install Node.js 20"
    assert (NODE_DIR / "node_modules" / "ioredis").is_dir(), "run `make node` first"
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / script), sock, cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def check(result: dict[str, object], name: str) -> None:
    assert result["ping"] == "PONG"
    assert result["set"] == "OK"
    assert result["get"] == "hello"
    assert result["ttl"] == 100
    assert result["missing"] is None
    assert result["mget"] == ["hello", "world", None]
    assert result["incr"] == [1, 2, 42]
    assert result["binary"] is True
    assert result["pipeline_len"] == 1000
    assert result["pipeline_ok"] is True
    assert result["name"] == name
    assert result["unknown"] == UNKNOWN


@pytest.mark.node
@pytest.mark.parametrize(("script", "name"), [
    ("cache_ioredis.js", "ioredis-e2e"), ("cache_node_redis.js", "node-redis-e2e")])
async def test_node_client_memory_only(short_tmp: Path, script: str, name: str) -> None:
    sock = str(short_tmp / "c.sock")
    async with running_cache(sock):
        check(await run_node(script, sock), name)


@pytest.mark.node
async def test_node_clients_with_redis_l2(short_tmp: Path) -> None:
    (short_tmp / "redis").mkdir()
    server = RedisServer(short_tmp / "redis")
    server.start()
    try:
        sock = str(short_tmp / "c.sock")
        async with running_cache(sock, redis=server.url):
            check(await run_node("cache_ioredis.js", sock), "ioredis-e2e")
            check(await run_node("cache_node_redis.js", sock), "node-redis-e2e")
    finally:
        server.close()
