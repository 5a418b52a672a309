"""The command table: Redis commands real clients send, on top of `Tiers`.

A handler returns reply bytes when it could answer synchronously (every L1 hit), or a
coroutine producing them when Redis must be asked; the connection keeps replies in order.
Error texts are Redis's own, word for word: client libraries match on them."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, Protocol

from sidecar.cache import resp
from sidecar.cache.config import CacheConfig
from sidecar.cache.glob import Glob
from sidecar.cache.namespaces import Namespace
from sidecar.cache.ops import NEVER
from sidecar.cache.resp import Status, bulk, error, integer
from sidecar.cache.tiers import Tiers, _Unknown

REDIS_VERSION: Final = "7.2.0"  # what we tell clients (HELLO, INFO): the feature level we speak
# SCAN: a larger COUNT is taken as this (COUNT is a hint in Redis too), so one call visits at
# most this many keys; MATCH patterns longer than MAX_PATTERN bytes are refused
SCAN_MAX_COUNT: Final = 1000
MAX_PATTERN: Final = 4096
# byte comparisons a SCAN MATCH does before it lets the event loop run other work
_GLOB_SLICE: Final = 1 << 20
# MGET MSET DEL UNLINK EXISTS with more keys than this run in slices of this many keys, and
# the event loop serves other clients between slices (so such a call is not atomic)
SLICE_KEYS: Final = 1024
Reply = bytes | Coroutine[Any, Any, bytes]


class Client(Protocol):
    """What a command may read or change about the connection that sent it."""

    id: int
    name: bytes | None
    resp3: bool
    nil: bytes
    authed: bool
    lib_name: bytes | None
    lib_ver: bytes | None
    created: float
    closing: bool

    def describe(self) -> str: ...


Handler = Callable[[Client, list[bytes]], Reply]

SYNTAX: Final = error("ERR syntax error")
NOT_INT: Final = error("ERR value is not an integer or out of range")
_UNSUPPORTED: Final = {
    "MULTI": "transactions", "EXEC": "transactions", "DISCARD": "transactions",
    "WATCH": "transactions", "UNWATCH": "transactions",
    "SUBSCRIBE": "pub/sub", "PSUBSCRIBE": "pub/sub", "SSUBSCRIBE": "pub/sub",
    "UNSUBSCRIBE": "pub/sub", "PUNSUBSCRIBE": "pub/sub", "PUBLISH": "pub/sub",
    "SPUBLISH": "pub/sub", "PUBSUB": "pub/sub",
    "EVAL": "scripting", "EVALSHA": "scripting", "EVAL_RO": "scripting",
    "EVALSHA_RO": "scripting", "SCRIPT": "scripting", "FUNCTION": "scripting",
    "FCALL": "scripting", "FCALL_RO": "scripting",
}


def arity(name: str) -> bytes:
    return error(f"ERR wrong number of arguments for '{name}' command")


def unknown_command(args: list[bytes]) -> bytes:
    name = args[0].decode("utf-8", "replace")
    head = "".join(f"'{a.decode('utf-8', 'replace')[:128]}' " for a in args[1:21])
    return error(f"ERR unknown command '{name[:128]}', with args beginning with: {head}")


def _int(raw: bytes) -> int | None:
    # Redis accepts only a plain decimal (no spaces, no '+', no '_' as Python would)
    if not raw or len(raw) > 20 or raw[0] in b" +_" or b"_" in raw or raw[-1] in b" \t\n":
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if -(2**63) <= value < 2**63 else None


class Commands:
    """Bound handlers; `table` maps the upper-cased command name to one."""

    def __init__(self, config: CacheConfig, tiers: Tiers, info: Callable[[], str]) -> None:
        self.config = config
        self.tiers = tiers
        self.l1 = tiers.l1
        self._l1_data = tiers.l1.data
        # the connection sets this once per batch of commands (one clock read per batch)
        self.now = time.monotonic()
        self.l2 = tiers.l2
        self.namespaces = tiers.namespaces
        self.info_text = info
        self.started = time.time()
        self._globs: OrderedDict[bytes, Glob] = OrderedDict()  # a SCAN loop repeats its MATCH
        self.limit_errors = 0  # commands refused for a limit (a SCAN MATCH pattern too long)
        t: dict[bytes, Handler] = {
            b"GET": self.get, b"SET": self.set, b"MGET": self.mget, b"MSET": self.mset,
            b"GETEX": self.getex, b"GETDEL": self.getdel, b"DEL": self.delete,
            b"UNLINK": self.delete, b"EXISTS": self.exists, b"EXPIRE": self.expire,
            b"PEXPIRE": self.pexpire, b"TTL": self.ttl, b"PTTL": self.pttl,
            b"PERSIST": self.persist, b"TYPE": self.type, b"INCR": self.incr,
            b"INCRBY": self.incrby, b"DECR": self.decr, b"DECRBY": self.decrby,
            b"DBSIZE": self.dbsize, b"SCAN": self.scan, b"FLUSHDB": self.flush,
            b"FLUSHALL": self.flush, b"PING": self.ping, b"ECHO": self.echo,
            b"SELECT": self.select, b"INFO": self.info, b"COMMAND": self.command,
        }
        for name, what in _UNSUPPORTED.items():
            t[name.encode()] = self._unsupported(name, what)
        # clients send upper case (redis-py, redis-cli) or lower case (ioredis, node-redis):
        # both go in the table so the hot path skips `upper()`
        t.update({name.lower(): handler for name, handler in list(t.items())})
        self.table = t

    @staticmethod
    def _unsupported(name: str, what: str) -> Handler:
        reply = error(f"ERR {name} is not supported by the sidecar cache (no {what})")
        return lambda _client, _args: reply

    # --- strings -------------------------------------------------------------------------------
    def get(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return arity("get")
        key = args[1]
        now = self.now
        # the hot path, inlined: an L1 hit is one dict lookup and a pre-encoded reply
        entry = self._l1_data.get(key)
        if entry is not None and entry.expire_at > now and (
                self.l2 is None or now < entry.fresh_until or self.tiers.fresh(entry, now)):
            self._l1_data.move_to_end(key)
            entry.ns.hits_l1 += 1
            return entry.reply
        known = self.tiers.known(key, now, count=True)
        if not isinstance(known, _Unknown):
            return client.nil if known is None else bulk(known[0])
        return self._get_async(client, key)

    async def _get_async(self, client: Client, key: bytes) -> bytes:
        found = await self.tiers.read(key)
        return client.nil if found is None else bulk(found[0])

    def mget(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return arity("mget")
        if len(args) > SLICE_KEYS + 1:
            return self._mget_sliced(client, args)
        now = time.monotonic()
        known = self.tiers.known
        values: list[bytes | None] = []
        missing: list[int] = []
        for i, key in enumerate(args[1:]):
            found = known(key, now, count=True)
            if isinstance(found, _Unknown):
                missing.append(i)
                values.append(None)
            else:
                values.append(None if found is None else found[0])
        if not missing:
            return resp.array_of_bulks(values, client.nil)
        return self._mget_async(client, args, values, missing)

    async def _mget_async(self, client: Client, args: list[bytes], values: list[bytes | None],
                          missing: list[int]) -> bytes:
        found = await asyncio.gather(*(self.tiers.read(args[i + 1]) for i in missing))
        for i, item in zip(missing, found, strict=True):
            values[i] = None if item is None else item[0]
        return resp.array_of_bulks(values, client.nil)

    def set(self, client: Client, args: list[bytes]) -> Reply:
        n = len(args)
        if n < 3:
            return arity("set")
        key, value = args[1], args[2]
        ns = self.namespaces.of(key)
        if len(value) > ns.max_value_size:
            return self._too_big(ns)
        if n == 3:  # the common case, no options
            ttl = ns.ttl_ms if ns.max_ttl_ms is None else ns.ttl_for(None)
            self.tiers.write(key, value, NEVER if ttl is None else self.now + ttl / 1000, ns)
            return resp.OK
        ttl_ms: int | None = None
        nx = xx = keepttl = get = False
        i = 3
        while i < n:
            opt = args[i].upper()
            if opt in (b"EX", b"PX", b"EXAT", b"PXAT") and ttl_ms is None and not keepttl:
                if i + 1 >= n:
                    return SYNTAX
                number = _int(args[i + 1])
                if number is None:
                    return NOT_INT
                if number <= 0 or number > 2**48:
                    return error("ERR invalid expire time in 'set' command")
                ttl_ms = _to_ttl_ms(opt, number)
                i += 2
                continue
            if opt == b"NX" and not xx:
                nx = True
            elif opt == b"XX" and not nx:
                xx = True
            elif opt == b"KEEPTTL" and ttl_ms is None:
                keepttl = True
            elif opt == b"GET":
                get = True
            else:
                return SYNTAX
            i += 1
        if not (nx or xx or keepttl or get):
            if ttl_ms is not None and ttl_ms <= 0:  # EXAT/PXAT in the past: Redis deletes
                self.tiers.delete(key)
                return resp.OK
            self.tiers.write(key, value, self._expiry(ns, ttl_ms), ns)
            return resp.OK
        return self._set_conditional(client, key, value, ns, ttl_ms, nx, xx, keepttl, get)

    async def _set_conditional(self, client: Client, key: bytes, value: bytes, ns: Namespace,
                               ttl_ms: int | None, nx: bool, xx: bool, keepttl: bool,
                               get: bool) -> bytes:
        current = await self.tiers.lookup(key)
        old = client.nil if current is None else bulk(current[0])
        if (nx and current is not None) or (xx and current is None):
            return old if get else client.nil
        if keepttl and current is not None:
            expire_at = current[1]
        elif ttl_ms is not None and ttl_ms <= 0:
            self.tiers.delete(key)
            return old if get else resp.OK
        else:
            expire_at = self._expiry(ns, ttl_ms)
        self.tiers.write(key, value, expire_at, ns)
        return old if get else resp.OK

    def mset(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) < 3 or len(args) % 2 == 0:
            return arity("mset")
        if len(args) > 2 * SLICE_KEYS + 1:
            return self._mset_sliced(args)
        return self._mset_check(args[1:]) or self._mset_write(args[1:])

    def _mset_check(self, flat: list[bytes]) -> bytes:
        """The error for the first value too large for its namespace, else b""."""
        of = self.namespaces.of
        for key, value in zip(flat[::2], flat[1::2], strict=True):
            ns = of(key)
            if len(value) > ns.max_value_size:
                return self._too_big(ns)
        return b""

    def _mset_write(self, flat: list[bytes]) -> bytes:
        of = self.namespaces.of
        for key, value in zip(flat[::2], flat[1::2], strict=True):
            ns = of(key)
            self.tiers.write(key, value, self._expiry(ns, None), ns)
        return resp.OK

    async def _mset_sliced(self, args: list[bytes]) -> bytes:
        # every value is checked before the first write, as in the unsliced case
        step = 2 * SLICE_KEYS
        for start in range(1, len(args), step):
            refused = self._mset_check(args[start:start + step])
            if refused:
                return refused
            await asyncio.sleep(0)
        for start in range(1, len(args), step):
            self._mset_write(args[start:start + step])
            await asyncio.sleep(0)
        return resp.OK

    async def _in_slices(self, client: Client, args: list[bytes],
                         handler: Handler) -> list[bytes]:
        """Run a multi-key command as one command per SLICE_KEYS keys; their replies."""
        replies: list[bytes] = []
        for start in range(1, len(args), SLICE_KEYS):
            reply = handler(client, [args[0], *args[start:start + SLICE_KEYS]])
            replies.append(reply if isinstance(reply, bytes) else await reply)
            await asyncio.sleep(0)
        return replies

    async def _mget_sliced(self, client: Client, args: list[bytes]) -> bytes:
        replies = await self._in_slices(client, args, self.mget)
        # each reply is an array: one header for all, then their elements
        return b"*%d\r\n" % (len(args) - 1) + b"".join(
            r[r.index(b"\r\n") + 2:] for r in replies)

    async def _sum_sliced(self, client: Client, args: list[bytes], handler: Handler) -> bytes:
        replies = await self._in_slices(client, args, handler)
        return integer(sum(int(r[1:-2]) for r in replies))

    def getex(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return arity("getex")
        ttl_ms: int | None = None
        persist = False
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt in (b"EX", b"PX", b"EXAT", b"PXAT") and ttl_ms is None and not persist:
                number = _int(args[i + 1]) if i + 1 < len(args) else None
                if i + 1 >= len(args):
                    return SYNTAX
                if number is None:
                    return NOT_INT
                if number <= 0 or number > 2**48:
                    return error("ERR invalid expire time in 'getex' command")
                ttl_ms = _to_ttl_ms(opt, number)
                i += 2
            elif opt == b"PERSIST" and ttl_ms is None:
                persist = True
                i += 1
            else:
                return SYNTAX
        return self._getex(client, args[1], ttl_ms, persist)

    async def _getex(self, client: Client, key: bytes, ttl_ms: int | None,
                     persist: bool) -> bytes:
        found = await self.tiers.lookup(key, count=True)
        if found is None:
            return client.nil
        if ttl_ms is not None or persist:
            self._set_ttl(key, ttl_ms if ttl_ms is not None else None)
        return bulk(found[0])

    def getdel(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return arity("getdel")
        return self._getdel(client, args[1])

    async def _getdel(self, client: Client, key: bytes) -> bytes:
        found = await self.tiers.lookup(key, count=True)
        if found is None:
            return client.nil
        self.tiers.delete(key)
        return bulk(found[0])

    def incr(self, client: Client, args: list[bytes]) -> Reply:
        return arity("incr") if len(args) != 2 else self._incr(args[1], 1)

    def decr(self, client: Client, args: list[bytes]) -> Reply:
        return arity("decr") if len(args) != 2 else self._incr(args[1], -1)

    def incrby(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 3:
            return arity("incrby")
        delta = _int(args[2])
        return NOT_INT if delta is None else self._incr(args[1], delta)

    def decrby(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 3:
            return arity("decrby")
        delta = _int(args[2])
        return NOT_INT if delta is None or delta == -(2**63) else self._incr(args[1], -delta)

    def _incr(self, key: bytes, delta: int) -> Reply:
        # atomic within this sidecar (one event loop); across sidecars sharing a Redis the
        # last write wins -- counters are not what this cache is for
        known = self.tiers.known(key, time.monotonic())
        if isinstance(known, _Unknown):
            return self._incr_async(key, delta)
        return self._apply_incr(key, known, delta)

    async def _incr_async(self, key: bytes, delta: int) -> bytes:
        return self._apply_incr(key, await self.tiers.read(key, count=False), delta)

    def _apply_incr(self, key: bytes, current: tuple[bytes, float] | None, delta: int) -> bytes:
        ns = self.namespaces.of(key)
        if current is None:
            base, expire_at = 0, self._expiry(ns, None)
        else:
            parsed = _int(current[0])
            if parsed is None:
                return NOT_INT
            base, expire_at = parsed, current[1]
        result = base + delta
        if not -(2**63) <= result < 2**63:
            return error("ERR increment or decrement would overflow")
        self.tiers.write(key, b"%d" % result, expire_at, ns)
        return integer(result)

    # --- keys ----------------------------------------------------------------------------------
    def delete(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return arity(args[0].decode().lower())
        # Redis counts each deleted key once (`DEL k k` is 1; EXISTS counts repeats)
        keys = list(dict.fromkeys(args[1:]))
        if len(keys) > SLICE_KEYS:
            return self._sum_sliced(client, [args[0], *keys], self.delete)
        return self._count_then(keys, self.tiers.delete)

    def exists(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return arity("exists")
        if len(args) > SLICE_KEYS + 1:
            return self._sum_sliced(client, args, self.exists)
        return self._count_then(args[1:], None)

    def _count_then(self, keys: list[bytes], action: Callable[[bytes], None] | None) -> Reply:
        now = time.monotonic()
        count = 0
        unknown: list[bytes] = []
        for key in keys:
            known = self.tiers.known(key, now)
            if isinstance(known, _Unknown):
                unknown.append(key)
            elif known is not None:
                count += 1
        if unknown:
            return self._count_async(keys, count, unknown, action)
        if action is not None:
            for key in keys:
                action(key)
        return integer(count)

    async def _count_async(self, keys: list[bytes], count: int, unknown: list[bytes],
                           action: Callable[[bytes], None] | None) -> bytes:
        for key in unknown:
            if await self.tiers.read(key, count=False) is not None:
                count += 1
        if action is not None:
            for key in keys:
                action(key)
        return integer(count)

    def expire(self, client: Client, args: list[bytes]) -> Reply:
        return self._expire_cmd(args, "expire", 1000)

    def pexpire(self, client: Client, args: list[bytes]) -> Reply:
        return self._expire_cmd(args, "pexpire", 1)

    def _expire_cmd(self, args: list[bytes], name: str, unit: int) -> Reply:
        if len(args) < 3:
            return arity(name)
        flags = set()
        for raw in args[3:]:
            option = raw.upper()
            if option not in (b"NX", b"XX", b"GT", b"LT"):
                return error(f"ERR Unsupported option {raw.decode('utf-8', 'replace')}")
            flags.add(option)
        if b"NX" in flags and len(flags) > 1:
            return error("ERR NX and XX, GT or LT options at the same time are not compatible")
        if b"GT" in flags and b"LT" in flags:
            return error("ERR GT and LT options at the same time are not compatible")
        number = _int(args[2])
        if number is None:
            return NOT_INT
        if abs(number) > 2**48:
            return error(f"ERR invalid expire time in '{name}' command")
        return self._expire_async(args[1], number * unit, frozenset(flags))

    async def _expire_async(self, key: bytes, ttl_ms: int, flags: frozenset[bytes]) -> bytes:
        found = await self.tiers.lookup(key)
        if found is None:
            return resp.ZERO
        if flags:
            current = found[1]  # NEVER: no expiry, which GT/LT treat as infinite
            new = time.monotonic() + ttl_ms / 1000
            if ((b"NX" in flags and current != NEVER) or (b"XX" in flags and current == NEVER)
                    or (b"GT" in flags and not new > current)
                    or (b"LT" in flags and not new < current)):
                return resp.ZERO
        if ttl_ms <= 0:
            self.tiers.delete(key)
        else:
            self._set_ttl(key, ttl_ms)
        return resp.ONE

    def persist(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return arity("persist")
        return self._persist(args[1])

    async def _persist(self, key: bytes) -> bytes:
        found = await self.tiers.lookup(key)
        if found is None or found[1] == NEVER:
            return resp.ZERO
        ns = self.namespaces.of(key)
        if ns.max_ttl_ms is not None:  # this namespace's keys always expire
            return resp.ZERO
        self.tiers.expire(key, NEVER)
        return resp.ONE

    def _set_ttl(self, key: bytes, ttl_ms: int | None) -> None:
        ns = self.namespaces.of(key)
        if ttl_ms is None:  # PERSIST
            if ns.max_ttl_ms is not None:
                return
            self.tiers.expire(key, NEVER)
            return
        capped = ns.ttl_for(ttl_ms)
        assert capped is not None
        self.tiers.expire(key, time.monotonic() + capped / 1000)

    def ttl(self, client: Client, args: list[bytes]) -> Reply:
        return arity("ttl") if len(args) != 2 else self._ttl(args[1], 1000)

    def pttl(self, client: Client, args: list[bytes]) -> Reply:
        return arity("pttl") if len(args) != 2 else self._ttl(args[1], 1)

    def _ttl(self, key: bytes, unit: int) -> Reply:
        known = self.tiers.known(key, time.monotonic())
        if isinstance(known, _Unknown):
            return self._ttl_async(key, unit)
        return self._ttl_reply(known, unit)

    async def _ttl_async(self, key: bytes, unit: int) -> bytes:
        return self._ttl_reply(await self.tiers.read(key, count=False), unit)

    @staticmethod
    def _ttl_reply(found: tuple[bytes, float] | None, unit: int) -> bytes:
        if found is None:
            return integer(-2)
        if found[1] == NEVER:
            return integer(-1)
        ms = max(0, (found[1] - time.monotonic()) * 1000)
        # Redis rounds TTL to the nearest second
        return integer(int(ms + 500) // 1000 if unit == 1000 else int(ms))

    def type(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return arity("type")
        return self._type(args[1])

    async def _type(self, key: bytes) -> bytes:
        found = await self.tiers.lookup(key)
        return resp.simple("none" if found is None else "string")

    def dbsize(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 1:
            return arity("dbsize")
        if self.l2 is None or not self.l2.up:
            return integer(len(self.l1))
        return self._dbsize_async()

    async def _dbsize_async(self) -> bytes:
        assert self.l2 is not None
        size = await self.l2.run("DBSIZE")
        return integer(size if isinstance(size, int) else len(self.l1))

    def scan(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return arity("scan")
        cursor = _int(args[1])
        if cursor is None or cursor < 0:
            return error("ERR invalid cursor")
        glob: Glob | None = None
        count = 10
        type_string = False
        i = 2
        while i < len(args):
            opt = args[i].upper()
            if i + 1 >= len(args):
                return SYNTAX
            if opt == b"MATCH":
                if len(args[i + 1]) > MAX_PATTERN:
                    self.limit_errors += 1
                    return error(f"ERR MATCH pattern too long for the sidecar cache "
                                 f"(max {MAX_PATTERN} bytes)")
                glob = self._glob(args[i + 1])
            elif opt == b"COUNT":
                parsed = _int(args[i + 1])
                if parsed is None:
                    return NOT_INT
                if parsed < 1:
                    return SYNTAX
                count = min(parsed, SCAN_MAX_COUNT)
            elif opt == b"TYPE":
                if args[i + 1].lower() != b"string":
                    return resp.encode([b"0", []], client.resp3)
                type_string = True
            else:
                return SYNTAX
            i += 2
        if self.l2 is not None and self.l2.up:
            return self._scan_l2(client, cursor, glob, count, type_string)
        return self._scan_l1(client, cursor, glob, count)

    def _glob(self, pattern: bytes) -> Glob:
        globs = self._globs
        glob = globs.get(pattern)
        if glob is None:
            glob = globs[pattern] = Glob(pattern)
            if len(globs) > 64:
                globs.popitem(last=False)
        else:
            globs.move_to_end(pattern)
        return glob

    async def _scan_l2(self, client: Client, cursor: int, glob: Glob | None, count: int,
                       type_string: bool) -> bytes:
        assert self.l2 is not None
        args: list[bytes | int] = [b"SCAN", cursor, b"COUNT", count]
        if glob is not None:
            args += [b"MATCH", glob.pattern]
        if type_string:
            args += [b"TYPE", b"string"]
        result = await self.l2.run(*args)
        if isinstance(result, list | tuple) and len(result) == 2:
            next_cursor, keys = result
            return _scan_reply(client, b"%d" % next_cursor if isinstance(next_cursor, int)
                               else next_cursor, list(keys))
        # Redis went away: answer from L1, as without an L2
        reply = self._scan_l1(client, cursor, glob, count)
        return reply if isinstance(reply, bytes) else await reply

    def _scan_l1(self, client: Client, cursor: int, glob: Glob | None, count: int) -> Reply:
        # bounded by COUNT: see MemoryStore.scan for the cursor and its guarantee
        next_cursor, keys = self.l1.scan(cursor, count, time.monotonic())
        cursor_text = b"%d" % next_cursor
        if glob is None or glob.match_all or not keys:
            return _scan_reply(client, cursor_text, keys)
        run = glob.filter(keys, _GLOB_SLICE)
        try:
            next(run)
        except StopIteration as done:
            return _scan_reply(client, cursor_text, done.value)
        return self._scan_slices(client, cursor_text, run)

    @staticmethod
    async def _scan_slices(client: Client, cursor: bytes,
                           run: Generator[None, None, list[bytes]]) -> bytes:
        # a costly pattern (long keys): matched in slices, the loop runs other work between
        while True:
            await asyncio.sleep(0)
            try:
                next(run)
            except StopIteration as done:
                return _scan_reply(client, cursor, done.value)

    def flush(self, client: Client, args: list[bytes]) -> Reply:
        name = args[0].decode().upper()
        if not self.config.allow_flush:
            return error(f"ERR {name} is disabled on the sidecar cache "
                         "(set cache.allow_flush: true to allow it)")
        if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
            return SYNTAX
        self.tiers.clear()
        if self.l2 is None:
            return resp.OK
        return self._flush_l2()

    async def _flush_l2(self) -> bytes:
        assert self.l2 is not None
        await self.l2.run("FLUSHDB")
        return resp.OK

    # --- connection and server -------------------------------------------------------------------
    def ping(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) == 1:
            return resp.PONG
        return bulk(args[1]) if len(args) == 2 else arity("ping")

    def echo(self, client: Client, args: list[bytes]) -> Reply:
        return bulk(args[1]) if len(args) == 2 else arity("echo")

    def select(self, client: Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return arity("select")
        index = _int(args[1])
        if index is None:
            return NOT_INT
        return resp.OK if index == 0 else error("ERR DB index is out of range")

    def info(self, client: Client, args: list[bytes]) -> Reply:
        return bulk(self.info_text().encode())

    def command(self, client: Client, args: list[bytes]) -> Reply:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"COUNT":
            return integer(len(self.table))
        if sub == b"DOCS":
            names = [a.lower() for a in args[2:]] or [n.lower() for n in self.table]
            docs = {n: {"summary": _SUMMARY.get(n.upper(), "sidecar cache command"),
                        "since": "1.0.0", "group": "string"}
                    for n in names if n.upper() in self.table}
            return resp.encode(docs, client.resp3)
        if sub == b"INFO":
            names = [a.upper() for a in args[2:]] or list(self.table)
            return resp.encode([_command_info(n) if n in self.table else None for n in names],
                               client.resp3)
        if sub == b"":
            return resp.encode([_command_info(n) for n in self.table], client.resp3)
        return error(f"ERR unknown subcommand '{args[1].decode('utf-8', 'replace')}'. "
                     "Try COMMAND HELP.")

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _expiry(ns: Namespace, ttl_ms: int | None) -> float:
        ttl = ns.ttl_for(ttl_ms)
        return NEVER if ttl is None else time.monotonic() + ttl / 1000

    @staticmethod
    def _too_big(ns: Namespace) -> bytes:
        return error(f"ERR value too large for namespace '{ns.name}' "
                     f"(max {ns.max_value_size} bytes)")


def _scan_reply(client: Client, cursor: bytes, keys: list[bytes]) -> bytes:
    return b"*2\r\n" + bulk(cursor) + resp.array_of_bulks(list(keys), client.nil)


def _to_ttl_ms(option: bytes, number: int) -> int:
    if option == b"EX":
        return number * 1000
    if option == b"PX":
        return number
    wall_ms = time.time() * 1000
    absolute = number * 1000 if option == b"EXAT" else number
    return int(absolute - wall_ms)


_SUMMARY: Final = {
    b"GET": "Returns the string value of a key.",
    b"SET": "Sets the string value of a key, ignoring its type.",
    b"MGET": "Atomically returns the string values of one or more keys.",
    b"DEL": "Deletes one or more keys.",
}
# (arity, flags, first key, last key, step): what COMMAND INFO reports
_SPECS: Final[dict[bytes, tuple[int, list[str], int, int, int]]] = {
    b"GET": (2, ["readonly", "fast"], 1, 1, 1),
    b"SET": (-3, ["write", "denyoom"], 1, 1, 1),
    b"MGET": (-2, ["readonly", "fast"], 1, -1, 1),
    b"MSET": (-3, ["write", "denyoom"], 1, -1, 2),
    b"GETEX": (-2, ["write", "fast"], 1, 1, 1),
    b"GETDEL": (2, ["write", "fast"], 1, 1, 1),
    b"DEL": (-2, ["write"], 1, -1, 1),
    b"UNLINK": (-2, ["write", "fast"], 1, -1, 1),
    b"EXISTS": (-2, ["readonly", "fast"], 1, -1, 1),
    b"EXPIRE": (-3, ["write", "fast"], 1, 1, 1),
    b"PEXPIRE": (-3, ["write", "fast"], 1, 1, 1),
    b"TTL": (2, ["readonly", "fast"], 1, 1, 1),
    b"PTTL": (2, ["readonly", "fast"], 1, 1, 1),
    b"PERSIST": (2, ["write", "fast"], 1, 1, 1),
    b"TYPE": (2, ["readonly", "fast"], 1, 1, 1),
    b"INCR": (2, ["write", "denyoom", "fast"], 1, 1, 1),
    b"INCRBY": (3, ["write", "denyoom", "fast"], 1, 1, 1),
    b"DECR": (2, ["write", "denyoom", "fast"], 1, 1, 1),
    b"DECRBY": (3, ["write", "denyoom", "fast"], 1, 1, 1),
}


def _command_info(name: bytes) -> list[object]:
    spec = _SPECS.get(name, (-1, ["fast"], 0, 0, 0))
    arity_, flags, first, last, step = spec
    return [name.lower(), arity_, [Status(f) for f in flags], first, last, step, [], [], [], []]
