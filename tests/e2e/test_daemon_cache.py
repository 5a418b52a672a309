"""The cache served by the real daemon: redis-cli on its socket, stats on the admin server
and through `sidecar cache`."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import aiohttp

from tests.helpers.daemon import SIDECAR, DaemonProcess


async def test_cache_on_the_daemon_socket(short_tmp: Path) -> None:
    redis_cli = shutil.which("redis-cli")
    assert redis_cli is not None, "redis-cli is installed by `make test` (redis-tools)"
    daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                           "path": str(short_tmp / "export")}})
    await daemon.start()
    socket_path = str(short_tmp / "cache.sock")
    try:
        def cli(*args: str) -> str:
            return subprocess.run([redis_cli, "-s", socket_path, *args], capture_output=True,
                                  text=True, timeout=10, check=True).stdout.strip()

        assert await asyncio.to_thread(cli, "SET", "embeddings:doc-1", "[0.1,0.2]") == "OK"
        assert await asyncio.to_thread(cli, "GET", "embeddings:doc-1") == "[0.1,0.2]"
        ttl = int(await asyncio.to_thread(cli, "TTL", "embeddings:doc-1"))
        assert 86_000 < ttl <= 86_400  # the embeddings namespace's default TTL: 24 h

        async with aiohttp.ClientSession() as session, \
                session.get(f"{daemon.admin_url}/cache/stats") as response:
            assert response.status == 200
            stats = await response.json()
        assert "embeddings" in str(stats)

        hits = await daemon.metric("sidecar_cache_hits_total", namespace="embeddings")
        assert hits == 1

        result = await asyncio.to_thread(
            subprocess.run, [SIDECAR, "cache", "--socket", socket_path, "get", "embeddings:doc-1"],
            capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        assert "[0.1,0.2]" in result.stdout
    finally:
        code, out, err = await daemon.stop()
    assert code == 0, err
    assert socket_path in out  # the banner lists the cache listener
