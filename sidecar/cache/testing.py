"""Run the cache alone, and a private redis-server, for tests and benchmarks.

`running_cache` starts a CacheService on a temporary unix socket; `RedisServer` starts a
real redis-server on a private unix socket (and optionally a loopback port) in a temporary
directory. A missing redis-server binary is an error, never a skip: the tests that need one
are the tests that matter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from sidecar.cache.config import CacheConfig
from sidecar.cache.server import CacheService


@contextlib.asynccontextmanager
async def running_cache(socket_path: str | Path, **settings: Any) -> AsyncIterator[CacheService]:
    """A started CacheService listening on `socket_path`; `settings` are CacheConfig keys."""
    config = CacheConfig.model_validate({"unix": str(socket_path), **settings})
    service = CacheService(config)
    await service.start()
    try:
        yield service
    finally:
        await service.shutdown(asyncio.get_running_loop().time() + 5)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str,
                     limit: float = 10.0) -> None:
    """Poll a condition, bounded in time; AssertionError naming `what` if it never holds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def redis_binary(name: str = "redis-server") -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found: install Debian's redis-server/redis-tools (make sysdeps)")
    return found


class RedisServer:
    """A private redis-server: `start()`, `stop()` (kill), `start()` again on the same socket."""

    def __init__(self, directory: Path | None = None, port: int = 0,
                 extra_args: list[str] | None = None) -> None:
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
        self.socket = str(self.dir / "redis.sock")
        self.port = port
        self.extra_args = extra_args or []  # e.g. --requirepass, --tls-port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        args = [redis_binary(), "--port", str(self.port), "--unixsocket", self.socket,
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning",
                # DEBUG SLEEP makes a slow Redis for the outage tests
                "--enable-debug-command", "local",
                "--logfile", str(self.dir / "redis.log"), *self.extra_args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited: {log}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(self.socket)
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        """Kill -9: an outage, not a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(port: int = 0) -> Iterator[RedisServer]:
    server = RedisServer(port=port)
    server.start()
    try:
        yield server
    finally:
        server.close()
