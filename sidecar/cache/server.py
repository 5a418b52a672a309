"""The cache service: listeners, lifecycle, reporting (banner, /cache/stats, metrics).

Connections are `connection.CacheConnection`; commands are `commands.Commands` on top of
`tiers.Tiers` (L1 memory, optional L2 Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from sidecar.cache.commands import REDIS_VERSION, Commands
from sidecar.cache.config import CacheConfig
from sidecar.cache.connection import CacheConnection
from sidecar.cache.ops import redacted
from sidecar.cache.stats import BOUNDS, Latency
from sidecar.cache.tiers import Tiers
from sidecar.configtypes import split_endpoint
from sidecar.errors import StartupError
from sidecar.net.listeners import bind_tcp, bind_unix, remove_unix, socket_inode
from sidecar.telemetry.health import supervised
from sidecar.telemetry.metrics import CACHE_COLLECTOR, CacheNamespaceSample, CacheSample

log = logging.getLogger("sidecar.cache")


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:g} MiB"


class CacheService:
    """The shared cache: started and stopped by the daemon, or alone in tests."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.tiers = Tiers(config)
        self.commands = Commands(config, self.tiers, self._info)
        names = [*self.commands.table, b"HELLO", b"AUTH", b"CLIENT", b"QUIT", b"RESET",
                 b"SIDECAR"]
        self.latency = Latency(names)
        self.connections: set[CacheConnection] = set()
        self.protocol_errors = 0
        self.inflight: set[asyncio.Task[None]] = set()  # replies waiting for Redis
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_inode: int | None = None
        self.tcp_port: int | None = None  # bound (the config may say 0), for GET /listeners
        self._sweeper: asyncio.Task[None] | None = None
        self._started = time.time()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            if config.unix is not None:
                sock = bind_unix(config.unix, "cache.unix", config.unix_mode, config.unix_group)
                self._unix_inode = socket_inode(config.unix)
                self._servers.append(await loop.create_unix_server(
                    lambda: CacheConnection(self, None, f"unix:{config.unix}"), sock=sock))
            if config.tcp is not None:
                host, port = split_endpoint(config.tcp.endpoint)
                sock = bind_tcp(host, port, "cache.tcp.endpoint", config.tcp.allow_remote)
                self.tcp_port = int(sock.getsockname()[1])
                password = config.tcp.password
                self._servers.append(await loop.create_server(
                    lambda: CacheConnection(self, password, f"tcp:{config.tcp.endpoint}"
                                            if config.tcp else "tcp"), sock=sock))
        except StartupError:
            await self._close_servers()
            raise
        if self.tiers.l2 is not None:
            await self.tiers.l2.start()
        self._sweeper = supervised("cache", "cache-sweeper", self._sweep)
        CACHE_COLLECTOR.attach(self.sample)

    async def shutdown(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        CACHE_COLLECTOR.detach(self.sample)
        await self._close_servers()
        # let replies that wait for Redis finish, then close every client
        if self.inflight:
            await asyncio.wait(list(self.inflight), timeout=max(0.0, deadline - loop.time()))
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.tiers.l2 is not None:
            await self.tiers.l2.close(deadline)

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await server.wait_closed()
        self._servers.clear()
        if self.config.unix is not None and self._unix_inode is not None:
            remove_unix(self.config.unix, self._unix_inode)
            self._unix_inode = None

    async def _sweep(self) -> None:
        # active expiry: free memory of keys nobody reads again
        while True:
            await asyncio.sleep(0.1)
            self.tiers.l1.sweep(time.monotonic())

    # --- reporting ----------------------------------------------------------------------------
    def describe(self) -> list[str]:
        config = self.config
        where = []
        if config.unix is not None:
            where.append(f"unix:{config.unix}")
        if config.tcp is not None:
            auth = ", AUTH" if config.tcp.password else ""
            endpoint = config.tcp.endpoint
            if self.tcp_port is not None:  # the port bound (the config may say 0)
                endpoint = f"{endpoint.rpartition(':')[0]}:{self.tcp_port}"
            where.append(f"tcp:{endpoint}{auth}")
        l2 = f"L2 {redacted(config.redis)}" if config.redis else "no L2 (memory only)"
        return [f"cache      {'  '.join(where) or '(no listener)'}  "
                f"(memory L1 {_mib(config.memory.max_bytes)}, {l2})"]

    def stats(self) -> dict[str, object]:
        tiers = self.tiers
        namespaces = {ns.name: ns.snapshot() for ns in tiers.namespaces.all}
        hits = sum(ns.hits_l1 + ns.hits_l2 for ns in tiers.namespaces.all)
        misses = sum(ns.misses for ns in tiers.namespaces.all)
        l2 = tiers.l2
        latency: dict[str, object] = {}
        for name, hist in self.latency.by_command.items():
            count = sum(hist.counts)
            if count:
                latency[name.decode()] = {
                    "count": count, "mean_s": hist.total / count,
                    "p50_le_s": hist.quantile(0.5), "p99_le_s": hist.quantile(0.99)}
        return {
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "saved_usd": round(sum((ns.hits_l1 + ns.hits_l2) * ns.value_usd
                                   for ns in tiers.namespaces.all), 6),
            "l1": {"items": len(tiers.l1), "bytes": tiers.l1.bytes,
                   "max_bytes": tiers.l1.max_bytes},
            "l2": None if l2 is None else {
                "url": redacted(l2.url), "up": l2.up, "pending_writes": len(l2.pending),
                "pending_bytes": l2.pending_bytes, "written": l2.written,
                "replayed": l2.replayed, "dropped": l2.dropped, "reads": l2.reads,
                "coalesced_reads": l2.coalesced, "read_errors": l2.read_errors,
                "write_errors": l2.write_errors, "outages": l2.outages,
                "tracking": l2.tracking_ok},
            "connections": len(self.connections),
            "protocol_errors": self.protocol_errors,
            "limit_errors": self.commands.limit_errors,
            "namespaces": namespaces,
            "latency": latency,
        }

    def sample(self) -> CacheSample:
        l2 = self.tiers.l2
        return CacheSample(
            namespaces=[CacheNamespaceSample(
                ns.name, ns.hits_l1, ns.hits_l2, ns.misses, ns.sets, ns.deletes, ns.evictions,
                ns.expirations, ns.items_l1, ns.bytes_l1, (ns.hits_l1 + ns.hits_l2) * ns.value_usd)
                for ns in self.tiers.namespaces.all],
            backend_up=None if l2 is None else float(l2.up),
            l2_pending=0 if l2 is None else len(l2.pending),
            l2_replayed=0 if l2 is None else l2.replayed,
            l2_dropped=0 if l2 is None else l2.dropped,
            l2_errors=0 if l2 is None else l2.read_errors + l2.write_errors,
            connections=len(self.connections),
            protocol_errors=self.protocol_errors,
            limit_errors=self.commands.limit_errors,
            latency={name.decode().lower(): (BOUNDS, list(h.counts), h.total)
                     for name, h in self.latency.by_command.items() if h.total or any(h.counts)},
        )

    def _info(self) -> str:
        tiers = self.tiers
        l2 = tiers.l2
        hits = sum(ns.hits_l1 + ns.hits_l2 for ns in tiers.namespaces.all)
        misses = sum(ns.misses for ns in tiers.namespaces.all)
        lines = [
            "# Server", f"redis_version:{REDIS_VERSION}", "redis_mode:standalone",
            "server_name:sidecar-cache", f"process_id:{os.getpid()}",
            f"uptime_in_seconds:{int(time.time() - self._started)}",
            "", "# Clients", f"connected_clients:{len(self.connections)}",
            f"maxclients:{self.config.limits.max_clients}",
            "", "# Memory", f"used_memory:{tiers.l1.bytes}", f"maxmemory:{tiers.l1.max_bytes}",
            "maxmemory_policy:allkeys-lru",
            "", "# Persistence", "loading:0",
            "", "# Stats", f"keyspace_hits:{hits}", f"keyspace_misses:{misses}",
            f"evicted_keys:{sum(ns.evictions for ns in tiers.namespaces.all)}",
            f"expired_keys:{sum(ns.expirations for ns in tiers.namespaces.all)}",
            "", "# Replication", "role:master", "connected_slaves:0",
            "", "# Sidecar", f"l2_configured:{int(l2 is not None)}",
            f"l2_up:{int(bool(l2 and l2.up))}",
            f"l2_pending_writes:{len(l2.pending) if l2 else 0}",
            "", "# Keyspace",
        ]
        if len(tiers.l1):
            # expires is not tracked (counting it would cost every write); clients that
            # read INFO (ioredis's ready check) look at `loading`, not at this line
            lines.append(f"db0:keys={len(tiers.l1)},expires=0,avg_ttl=0")
        return "\r\n".join(lines) + "\r\n"


__all__ = ["CacheConnection", "CacheService"]
