"""`sidecar cache stats|get|set|del` against a running cache (in a thread through click, and
the installed executable in a subprocess)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import orjson
from click.testing import CliRunner, Result

from sidecar.cache.cli import cache as cache_group
from sidecar.cache.server import CacheService
from tests.helpers.daemon import SIDECAR


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


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed `sidecar` executable, as an operator runs it."""
    return await asyncio.to_thread(subprocess.run, [SIDECAR, "cache", *args],
                                   capture_output=True, text=True, timeout=30)


async def test_socket_and_config_options_work_after_the_subcommand(
        cache: CacheService, cache_sock: str, short_tmp: Path) -> None:
    done = await run_cli("set", "specs:after", "v1", "--socket", cache_sock)
    assert done.returncode == 0, done.stderr
    done = await run_cli("get", "--socket", cache_sock, "specs:after")
    assert (done.returncode, done.stdout) == (0, "v1\n"), done.stderr
    done = await run_cli("stats", "--socket", cache_sock, "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["namespaces"]["specs"]["items"]["l1"] == 1
    config = short_tmp / "sidecar.yaml"
    config.write_text(f"cache:\n  unix: {cache_sock}\n")
    done = await run_cli("get", "specs:after", "--config", str(config))
    assert (done.returncode, done.stdout) == (0, "v1\n"), done.stderr
    # before the subcommand, as before; after it, it wins
    done = await run_cli("--socket", cache_sock + ".none", "del", "specs:after",
                         "--socket", cache_sock)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    done = await run_cli("--socket", cache_sock, "get", "specs:after")
    assert done.returncode == 1
    assert "(nil)" in done.stderr
