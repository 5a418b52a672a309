"""L2: Redis through redis.asyncio, written through a replayable queue.

Writes are acknowledged once they are in L1 and in `pending` (an ordered map key -> latest
operation); a writer task pipelines `pending` to Redis in batches. That one queue is both
the write-through path and the outage buffer: while Redis is down it keeps filling (bounded
in items and bytes, oldest dropped first, counted) and is replayed on reconnect. Reads that
miss L1 consult `pending` first (read-your-writes), then Redis; concurrent misses for one
key share one Redis round trip. Any Redis error or timeout marks the tier down: reads and
writes then stay in L1 (no client-visible error) while a task reconnects with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from itertools import islice
from typing import Any, Final

from redis.exceptions import RedisError, ResponseError

from sidecar.cache.config import CacheConfig
from sidecar.cache.l2conn import ErrorReply, L2ReplyError, RawConnection, read_reply
from sidecar.cache.l2wire import (
    GET_PTTL,
    READ_BATCH,
    SET,
    SET_PX,
    Backend,
    build_backend,
    count_replies,
    pack,
)
from sidecar.cache.ops import (
    NEVER,
    OP_DEL,
    OP_EXPIRE,
    OP_SET,
    UNAVAILABLE,
    Fetched,
    redacted,
)
from sidecar.telemetry.health import supervised

log = logging.getLogger("sidecar.cache.l2")

_OP_OVERHEAD: Final = 96

# errors that mean "Redis is not answering well", as opposed to bugs in this module
# EOFError: asyncio's IncompleteReadError when Redis closes mid-reply; ValueError: a reply
# we could not parse (asyncio's LimitOverrunError is one too)
L2_ERRORS: Final = (RedisError, OSError, TimeoutError, asyncio.TimeoutError, EOFError,
                    ValueError)


class PendingOp:
    __slots__ = ("expire_at", "kind", "size", "value")

    def __init__(self, kind: int, value: bytes | None, expire_at: float, size: int) -> None:
        self.kind = kind
        self.value = value
        self.expire_at = expire_at
        self.size = size


class RedisTier:
    def __init__(self, config: CacheConfig) -> None:
        assert config.redis is not None
        self.url = config.redis
        self._full_config = config
        self._config = config.l2
        self.client: Any = None  # redis-py: pings, raw commands, Cluster routing
        self._backend: Backend | None = None
        self.up = False
        self.pending: OrderedDict[bytes, PendingOp] = OrderedDict()
        self.pending_bytes = 0
        self.dropped = 0  # queued writes given up (bound reached while Redis was away)
        self.replayed = 0  # writes delivered after an outage
        self.written = 0
        self.read_errors = 0
        self.write_errors = 0
        self.reads = 0
        self.coalesced = 0  # reads that shared another read's round trip
        self.outages = 0
        self._replay_left = 0
        self._reads: dict[bytes, asyncio.Future[Fetched]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        # client-side caching (RESP3 tracking): an L1 entry validated in the current epoch
        # while tracking is on stays fresh until Redis says the key changed
        self.epoch = 0
        self.tracking_ok = False
        self.invalidations = 0  # bumped per invalidation message (see fetch)
        self.on_invalidate: Any = None  # set by Tiers: callable(keys | None)
        self._tracking: asyncio.Task[None] | None = None
        # the fast path's own connections (standalone, Sentinel), opened when first needed
        self._write_conn: RawConnection | None = None
        self._read_conn: RawConnection | None = None
        self._read_queue: list[bytes] = []
        self._read_wake = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect if Redis answers; if not, start degraded (memory) and keep trying."""
        self._backend = build_backend(self._full_config)
        self.client = self._backend.client
        try:
            async with asyncio.timeout(self._config.connect_timeout + self._config.timeout):
                await self.client.ping()
            self._set_up(True)
        except L2_ERRORS as exc:
            log.warning("cache L2 %s unreachable at start, serving from memory: %s",
                        redacted(self.url), exc)
            self._mark_down(exc)
        # supervised: a bug that escapes their own handlers restarts them (counted, /readyz)
        self._tasks.append(supervised("cache", "cache-l2-writer", self._writer))
        self._tasks.append(supervised("cache", "cache-l2-reader", self._reader))
        if self._config.tracking:
            self._restart_tracking()

    async def close(self, deadline: float) -> None:
        """Deliver what is pending until the deadline, then stop."""
        loop = asyncio.get_running_loop()
        while self.pending and self.up and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        self._closing = True
        tasks = [*self._tasks, *(t for t in (self._reconnecting, self._tracking) if t)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pending:
            log.warning("cache L2: %d writes not delivered at shutdown", len(self.pending))
        for conn in (self._write_conn, self._read_conn):
            if conn is not None:
                await conn.close()
        self._write_conn = self._read_conn = None
        if self._backend is not None:
            await self._backend.aclose()

    async def _connect(self) -> RawConnection:
        assert self._backend is not None
        assert self._backend.locate is not None
        async with asyncio.timeout(self._config.connect_timeout):
            return await RawConnection.open(await self._backend.locate())

    # --- writes ------------------------------------------------------------------------------
    def enqueue(self, key: bytes, kind: int, value: bytes | None, expire_at: float) -> None:
        pending = self.pending
        old = pending.pop(key, None)
        if old is not None:
            self.pending_bytes -= old.size
            if kind == OP_EXPIRE:
                if old.kind == OP_DEL:  # expiring a deleted key does nothing
                    pending[key] = old
                    self.pending_bytes += old.size
                    return
                if old.kind == OP_SET:  # fold the new expiry into the pending write
                    kind, value = OP_SET, old.value
        op = PendingOp(kind, value, expire_at,
                       len(key) + (len(value) if value is not None else 0) + _OP_OVERHEAD)
        pending[key] = op
        self.pending_bytes += op.size
        config = self._config
        while (len(pending) > config.replay_max_items
               or self.pending_bytes > config.replay_max_bytes):
            _, dropped = pending.popitem(last=False)
            self.pending_bytes -= dropped.size
            self.dropped += 1
        if self.up:
            self._wake.set()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending and self.up:
                batch = list(islice(self.pending.items(), self._config.write_batch))
                delivered = True
                try:
                    await self._send(batch)
                except L2_ERRORS as exc:
                    self.write_errors += 1
                    self._mark_down(exc)
                    break
                except Exception:
                    # a bug must neither stop the writer nor replay the same batch forever:
                    # drop it (counted) and go on
                    log.exception("cache L2 writer: unexpected error; batch dropped")
                    self.write_errors += 1
                    self.dropped += len(batch)
                    delivered = False
                for key, op in batch:
                    # a newer write for the key arrived meanwhile: it stays queued
                    if self.pending.get(key) is op:
                        del self.pending[key]
                        self.pending_bytes -= op.size
                if not delivered:
                    continue
                self.written += len(batch)
                if self._replay_left:
                    n = min(self._replay_left, len(batch))
                    self._replay_left -= n
                    self.replayed += n

    async def _send(self, batch: list[tuple[bytes, PendingOp]]) -> None:
        assert self._backend is not None
        if self._backend.locate is None:  # Redis Cluster: redis-py routes the keys
            await self._send_pipeline(batch)
            return
        # Standalone and Sentinel: one held connection, the batch packed here in one buffer,
        # and the replies counted rather than parsed. Every reply to SET/DEL/PEXPIRE/PERSIST
        # is one line, so counting CRLFs is exact. redis-py's pipeline costs ~60 µs per
        # command on the build machine; this costs a few.
        now = time.monotonic()
        parts: list[bytes] = []
        for key, op in batch:
            if op.expire_at != NEVER:
                ms = int((op.expire_at - now) * 1000)
                if ms <= 0:  # expired while queued: Redis must not keep an older value
                    parts.append(pack(b"DEL", key))
                    continue
            else:
                ms = 0
            if op.kind == OP_SET:
                value = op.value
                assert value is not None
                if ms:  # the write this queue is mostly made of: one format call
                    expiry = b"%d" % ms
                    parts.append(SET_PX % (len(key), key, len(value), value,
                                            len(expiry), expiry))
                else:
                    parts.append(SET % (len(key), key, len(value), value))
            elif op.kind == OP_DEL:
                parts.append(pack(b"DEL", key))
            elif ms:
                parts.append(pack(b"PEXPIRE", key, b"%d" % ms))
            else:
                parts.append(pack(b"PERSIST", key))
        conn = self._write_conn
        if conn is None:
            conn = self._write_conn = await self._connect()
        try:
            async with asyncio.timeout(self._config.timeout * 4):
                conn.writer.write(b"".join(parts))
                errors = await count_replies(conn.reader, len(parts))
        except BaseException:
            self._write_conn = None
            await conn.close()
            raise
        if errors:  # e.g. OOM on the Redis side: not retryable, counted and logged
            self.write_errors += errors
            log.warning("cache L2: Redis refused %d of %d writes", errors, len(parts))

    async def _send_pipeline(self, batch: list[tuple[bytes, PendingOp]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        now = time.monotonic()
        for key, op in batch:
            if op.expire_at != NEVER:
                ms = int((op.expire_at - now) * 1000)
                if ms <= 0:  # expired while queued: Redis must not keep an older value
                    pipe.delete(key)
                    continue
            else:
                ms = 0
            if op.kind == OP_SET:
                pipe.set(key, op.value, px=ms or None)
            elif op.kind == OP_DEL:
                pipe.delete(key)
            elif ms:
                pipe.pexpire(key, ms)
            else:
                pipe.persist(key)
        async with asyncio.timeout(self._config.timeout * 4):
            await pipe.execute()

    # --- reads -------------------------------------------------------------------------------
    async def fetch(self, key: bytes) -> Fetched:
        """Value and expiry from Redis; concurrent calls for one key share one round trip."""
        shared = self._reads.get(key)
        if shared is not None:
            self.coalesced += 1
            return await asyncio.shield(shared)
        assert self._backend is not None
        if self._backend.locate is not None:
            # standalone/Sentinel: the reader task batches every waiting key into one
            # round trip on its own connection
            future: asyncio.Future[Fetched] = asyncio.get_running_loop().create_future()
            self._reads[key] = future
            self._read_queue.append(key)
            self._read_wake.set()
            self.reads += 1
            try:
                # the reader resolves every future (value, miss or UNAVAILABLE) within its
                # own timeout; this bound only guards against a reader that died
                return await asyncio.wait_for(asyncio.shield(future),
                                              self._config.timeout * 2 + 1)
            except TimeoutError:
                return UNAVAILABLE
        return await self._fetch_pipeline(key)

    async def _reader(self) -> None:
        while True:
            await self._read_wake.wait()
            self._read_wake.clear()
            while self._read_queue and self.up:
                keys = self._read_queue[:READ_BATCH]
                del self._read_queue[:READ_BATCH]
                try:
                    results = await self._read_batch(keys)
                except L2_ERRORS as exc:
                    self.read_errors += 1
                    self._mark_down(exc)
                    results = [UNAVAILABLE] * len(keys)
                except Exception:  # a bug must not stop the reader: these keys miss
                    log.exception("cache L2 reader: unexpected error")
                    self.read_errors += 1
                    results = [UNAVAILABLE] * len(keys)
                for key, result in zip(keys, results, strict=True):
                    future = self._reads.pop(key, None)
                    if future is not None and not future.done():
                        future.set_result(result)
            if not self.up:  # nobody will answer these now: L1 or a miss
                for key in self._read_queue:
                    future = self._reads.pop(key, None)
                    if future is not None and not future.done():
                        future.set_result(UNAVAILABLE)
                self._read_queue.clear()

    async def _read_batch(self, keys: list[bytes]) -> list[Fetched]:
        """GET and PTTL per key, packed here, replies parsed here (bulk or nil, then an
        integer; an error reply such as WRONGTYPE is a miss)."""
        conn = self._read_conn
        if conn is None:
            conn = self._read_conn = await self._connect()
        try:
            async with asyncio.timeout(self._config.timeout):
                conn.writer.write(b"".join(GET_PTTL % (len(k), k, len(k), k) for k in keys))
                reader = conn.reader
                now = time.monotonic()
                results: list[Fetched] = []
                for _ in keys:
                    header = await reader.readuntil(b"\r\n")
                    value: bytes | None = None
                    if header[:1] == b"$":
                        length = int(header[1:-2])
                        if length >= 0:
                            value = (await reader.readexactly(length + 2))[:-2]
                    elif header[:1] != b"-":
                        raise ConnectionError(f"unexpected reply from Redis: {header[:40]!r}")
                    header = await reader.readuntil(b"\r\n")
                    pttl = int(header[1:-2]) if header[:1] == b":" else -2
                    if value is None or pttl == -2:  # -2: expired between GET and PTTL
                        results.append(None)
                    else:
                        results.append((value, NEVER if pttl < 0 else now + pttl / 1000))
                return results
        except BaseException:
            self._read_conn = None
            await conn.close()
            raise

    async def _fetch_pipeline(self, key: bytes) -> Fetched:
        """Redis Cluster: redis-py routes the key to its node."""
        future: asyncio.Future[Fetched] = asyncio.get_running_loop().create_future()
        self._reads[key] = future
        result: Fetched = UNAVAILABLE
        try:
            self.reads += 1
            async with asyncio.timeout(self._config.timeout):
                pipe = self.client.pipeline(transaction=False)
                pipe.get(key)
                pipe.pttl(key)
                value, pttl = await pipe.execute()
            if value is None:
                result = None
            else:
                result = (value, NEVER if pttl < 0 else time.monotonic() + pttl / 1000)
        except ResponseError:
            # Redis answered, with an error about this key (WRONGTYPE: some other program
            # stored a hash there): a miss for us, and no reason to call Redis down
            self.read_errors += 1
            result = None
        except L2_ERRORS as exc:
            self.read_errors += 1
            self._mark_down(exc)
        finally:
            del self._reads[key]
            future.set_result(result)
        return result

    async def run(self, *args: bytes | int | str) -> Any:
        """One raw command (DBSIZE, SCAN, FLUSHDB...), with the tier's timeout."""
        try:
            async with asyncio.timeout(self._config.timeout):
                return await self.client.execute_command(*args)
        except ResponseError:
            return UNAVAILABLE
        except L2_ERRORS as exc:
            self._mark_down(exc)
            return UNAVAILABLE

    # --- health ------------------------------------------------------------------------------
    def _set_up(self, up: bool) -> None:
        self.up = up
        if up:
            self.epoch += 1  # invalidations may have been missed: old entries revalidate
            self._replay_left = len(self.pending)
            self._wake.set()
            if self._config.tracking:
                self._restart_tracking()

    # --- tracking ------------------------------------------------------------------------------
    def _restart_tracking(self) -> None:
        if self._tracking is not None:
            self._tracking.cancel()
        self.tracking_ok = False
        self._tracking = asyncio.get_running_loop().create_task(self._track())

    async def _track(self) -> None:
        """CLIENT TRACKING ON BCAST on a dedicated RESP3 connection: Redis pushes the name
        of every key that changes (or null on a flush); L1 copies of them revalidate."""
        assert self._backend is not None
        if self._backend.locate is None:
            log.warning("cache.l2.tracking is not supported with Redis Cluster; "
                        "max_staleness bounds L1 copies instead")
            return
        conn: RawConnection | None = None
        try:
            async with asyncio.timeout(self._config.connect_timeout + self._config.timeout):
                conn = await RawConnection.open(await self._backend.locate(), resp3=True)
                conn.writer.write(pack(b"CLIENT", b"TRACKING", b"ON", b"BCAST"))
                reply = await read_reply(conn.reader)
                while isinstance(reply, list) and reply[:1] != [b"OK"]:  # a push first
                    reply = await read_reply(conn.reader)
            if isinstance(reply, ErrorReply):  # e.g. a Redis older than 6: the cap applies
                log.warning("cache L2 tracking unavailable: %s", reply)
                return
            if reply != b"OK":
                raise ResponseError(f"CLIENT TRACKING refused: {reply!r}")
            self.epoch += 1  # copies validated before tracking began are not covered
            self.tracking_ok = True
            log.info("cache L2 tracking on: L1 copies live until Redis invalidates them")
            while True:
                message = await read_reply(conn.reader)
                if isinstance(message, list) and message[:1] == [b"invalidate"]:
                    self._invalidated(message)
        except L2ReplyError as exc:  # HELLO 3 refused (a Redis older than 6): the cap applies
            log.warning("cache L2 tracking unavailable: %s", exc)
        except L2_ERRORS as exc:
            self._mark_down(exc)
        finally:
            self.tracking_ok = False
            if conn is not None:
                await conn.close()

    def _invalidated(self, message: list[Any]) -> None:
        self.invalidations += 1
        keys = message[1] if len(message) > 1 else None
        if self.on_invalidate is not None:
            self.on_invalidate(keys)

    def _mark_down(self, exc: BaseException) -> None:
        if self._closing:
            return
        self._read_wake.set()  # the reader answers what waits with UNAVAILABLE
        if self.up:
            self.outages += 1
            log.warning("cache L2 %s down, serving from memory: %s", redacted(self.url), exc)
        self.up = False
        self.tracking_ok = False
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self._config.backoff_min
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self._config.connect_timeout + self._config.timeout):
                    await self.client.ping()
            except L2_ERRORS:
                delay = min(delay * 2, self._config.backoff_max)
                continue
            log.info("cache L2 %s back; replaying %d writes", redacted(self.url),
                     len(self.pending))
            self._set_up(True)
            return

