"""One client connection: an asyncio.Protocol that parses, runs and answers commands.

Every complete command of one `data_received` is parsed at once and all replies leave in one
`transport.write`. A leading run of plain GET hits and plain SETs is answered straight from
the bytes (the fast lane). A command that must wait for Redis returns a coroutine: the
connection runs it in a task and holds the commands after it until it is done, because
replies must come back in request order. L1 hits never create a task."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import time
from collections.abc import Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import orjson

from sidecar.cache import resp
from sidecar.cache.commands import REDIS_VERSION, Reply, arity, unknown_command
from sidecar.cache.ops import NEVER
from sidecar.cache.resp import BULK_HEADERS, ProtocolError, RespParser, bulk, error

if TYPE_CHECKING:
    from sidecar.cache.server import CacheService

log = logging.getLogger("sidecar.cache")

_ids = itertools.count(1)
NOAUTH = error("NOAUTH Authentication required.")
# commands allowed before AUTH on a password-protected listener (as in Redis)
_PRE_AUTH = {b"AUTH", b"HELLO", b"QUIT", b"RESET"}
# a client pipelining this many commands behind a slow (Redis) one stops being read
_BACKLOG_PAUSE = 4096
_BACKLOG_PAUSE_BYTES = 4 * 1024 * 1024
# commands the fast lane takes from one read (bounds the split)
_FAST_LANE_MAX = 256


class CacheConnection(asyncio.Protocol):
    def __init__(self, service: CacheService, password: str | None, listener: str) -> None:
        self.service = service
        limits = service.config.limits
        # one command may carry several values of max_bulk (MSET): its total is bounded at
        # 4x that, and never below 64 MiB
        self.parser = RespParser(limits.max_bulk, limits.max_array, limits.max_inline,
                                 max(4 * limits.max_bulk, 64 * 1024 * 1024))
        self.table = service.commands.table
        self.latency = service.latency
        self.password = password
        self.listener = listener
        self.id = next(_ids)
        self.name: bytes | None = None
        self.lib_name: bytes | None = None
        self.lib_ver: bytes | None = None
        self.resp3 = False
        self.nil = resp.NIL2
        self.authed = password is None
        self.created = time.time()
        self.closing = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._busy = False  # a coroutine reply is in flight
        self._backlog: list[list[bytes]] = []
        self._backlog_bytes = 0
        self._paused = False
        self._writing_paused = False

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; the interface is the same
        self.transport = cast(asyncio.Transport, transport)
        service = self.service
        if len(service.connections) >= service.config.limits.max_clients:
            self.transport.write(error("ERR max number of clients reached"))
            self.transport.close()
            self.closed = True
            return
        service.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.service.connections.discard(self)

    def pause_writing(self) -> None:
        # the client is not reading its replies: stop reading its requests
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self.authed and not self._busy and not self.closing and self.parser.idle():
            data = self._fast_lane(data)
            if not data:
                return
        try:
            commands = self.parser.feed(data)
        except ProtocolError as exc:
            self.service.protocol_errors += 1
            assert self.transport is not None
            self.transport.write(error(f"ERR {exc}"))
            self.transport.close()
            self.closing = True
            return
        if not commands or self.closing:
            return
        if self._busy:
            self._backlog.extend(commands)
            self._backlog_bytes += len(data)
            self._update_reading()
            return
        self._run(commands, 0)

    def _fast_lane(self, data: bytes) -> bytes:
        """Answer the leading run of plain `GET key` (L1 hits) and `SET key value` (no
        options) straight from the bytes: no command list, no dispatch. These two are the
        cache's traffic. Stops at the first anything else (a miss, an option, a long value,
        a partial command) and returns the rest for the general path; replies stay in order
        because they are written before the rest is handled. Same semantics as the GET and
        SET handlers, which it inlines."""
        tokens = data.split(b"\r\n", 7 * _FAST_LANE_MAX)
        last = len(tokens) - 1
        if last < 5:
            return data
        service = self.service
        tiers = service.tiers
        l1 = tiers.l1.data
        fresh = tiers.fresh
        namespace_of = tiers.namespaces.of
        write = tiers.write
        memory_only = tiers.l2 is None
        now = time.monotonic()
        service.commands.now = now
        start = perf_counter()
        lengths = BULK_HEADERS
        out: list[bytes] = []
        gets = sets = 0
        t = 0
        while t + 4 < last and tokens[t + 1] == b"$3":
            head = tokens[t]
            name = tokens[t + 2]
            key = tokens[t + 4]
            if lengths.get(tokens[t + 3]) != len(key):
                break
            if head == b"*2" and (name == b"GET" or name == b"get"):
                entry = l1.get(key)
                if entry is None or entry.expire_at <= now or not (
                        memory_only or now < entry.fresh_until or fresh(entry, now)):
                    break
                l1.move_to_end(key)
                entry.ns.hits_l1 += 1
                out.append(entry.reply)
                gets += 1
                t += 5
            elif head == b"*3" and (name == b"SET" or name == b"set") and t + 6 < last:
                value = tokens[t + 6]
                if lengths.get(tokens[t + 5]) != len(value):
                    break
                ns = namespace_of(key)
                if len(value) > ns.max_value_size:
                    break  # the handler words the error
                ttl = ns.ttl_ms if ns.max_ttl_ms is None else ns.ttl_for(None)
                write(key, value, NEVER if ttl is None else now + ttl / 1000, ns)
                out.append(resp.OK)
                sets += 1
                t += 7
            else:
                break
        if not out:
            return data
        assert self.transport is not None
        self.transport.write(b"".join(out))
        elapsed = perf_counter() - start
        self._record(b"GET", gets, elapsed)
        self._record(b"SET", sets, elapsed)
        if t == last and tokens[last] == b"":
            return b""
        return data[sum(map(len, tokens[:t])) + 2 * t:]

    # --- command loop -------------------------------------------------------------------------
    def _run(self, commands: list[list[bytes]], i: int) -> None:
        transport = self.transport
        assert transport is not None
        out: list[bytes] = []
        table = self.table
        n = len(commands)
        t0 = perf_counter()
        self.service.commands.now = time.monotonic()
        # Latency: replies of a batch leave together, so each command's latency is the time
        # from the batch's start to its write. Runs of one command name are recorded in one
        # histogram update (a pipeline of 16 GETs costs one bisect, not 16).
        run_name = b""
        run_length = 0
        while i < n:
            args = commands[i]
            i += 1
            name = args[0]
            handler = table.get(name)
            if handler is None:
                name = name.upper()
                handler = table.get(name)
            if handler is not None and self.authed:
                reply: Reply = handler(self, args)
            else:
                reply = self._session(name.upper(), args)
            if type(reply) is not bytes:
                if out:
                    transport.write(b"".join(out))
                self._record(run_name, run_length, perf_counter() - t0)
                self._busy = True
                assert not isinstance(reply, bytes)
                task = asyncio.get_running_loop().create_task(
                    self._finish(reply, name, t0, commands, i))
                inflight = self.service.inflight
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                return
            out.append(reply)
            if name == run_name:
                run_length += 1
            else:
                if run_length:
                    self._record(run_name, run_length, perf_counter() - t0)
                run_name, run_length = name, 1
            if self.closing:
                break
        if out:
            transport.write(b"".join(out))
        if run_length:
            self._record(run_name, run_length, perf_counter() - t0)
        if self.closing:
            transport.close()

    def _record(self, name: bytes, count: int, seconds: float) -> None:
        if count:
            self.latency.get(name).observe(seconds, count)

    async def _finish(self, reply: Coroutine[Any, Any, bytes], name: bytes, t0: float,
                      commands: list[list[bytes]], i: int) -> None:
        try:
            data = await reply
        except Exception:  # a bug must cost one reply, not the connection or the daemon
            log.exception("cache command %s failed", name.decode("utf-8", "replace"))
            data = error("ERR internal error")
        self._record(name, 1, perf_counter() - t0)
        self._busy = False
        if self.closed:
            return
        assert self.transport is not None
        self.transport.write(data)
        rest = commands[i:]
        if self._backlog:
            rest.extend(self._backlog)
            self._backlog = []
            self._backlog_bytes = 0
        self._update_reading()
        if rest:
            self._run(rest, 0)

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        pause = (self._writing_paused or len(self._backlog) > _BACKLOG_PAUSE
                 or self._backlog_bytes > _BACKLOG_PAUSE_BYTES)
        if pause and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        elif not pause and self._paused:
            self.transport.resume_reading()
            self._paused = False

    # --- connection-level commands ------------------------------------------------------------
    def _session(self, name: bytes, args: list[bytes]) -> bytes:
        if not self.authed and name not in _PRE_AUTH:
            return NOAUTH
        if name == b"HELLO":
            return self._hello(args)
        if name == b"AUTH":
            return self._auth(args)
        if name == b"CLIENT":
            return self._client(args)
        if name == b"QUIT":
            self.closing = True
            return resp.OK
        if name == b"SIDECAR":
            # operators' extension (`sidecar cache stats`): the /cache/stats JSON
            if len(args) == 2 and args[1].upper() == b"STATS":
                return bulk(orjson.dumps(self.service.stats()))
            return error("ERR usage: SIDECAR STATS")
        if name == b"RESET":
            self.resp3, self.nil, self.name = False, resp.NIL2, None
            self.authed = self.password is None
            return resp.simple("RESET")
        handler = self.table.get(name)
        if handler is not None:  # authenticated meanwhile (AUTH earlier in this batch)
            reply = handler(self, args)
            if isinstance(reply, bytes):
                return reply
            reply.close()
            return error("ERR command not allowed here")
        return unknown_command(args)

    def _auth(self, args: list[bytes]) -> bytes:
        if len(args) not in (2, 3):
            return arity("auth")
        if self.password is None:
            return error("ERR AUTH <password> called without any password configured for "
                         "the default user. Are you sure your configuration is correct?")
        if len(args) == 3 and args[1] != b"default":
            return error("WRONGPASS invalid username-password pair or user is disabled.")
        if hmac.compare_digest(args[-1], self.password.encode()):
            self.authed = True
            return resp.OK
        return error("WRONGPASS invalid username-password pair or user is disabled.")

    def _hello(self, args: list[bytes]) -> bytes:
        resp3 = self.resp3
        i = 1
        if len(args) > 1:
            version = args[1]
            if version not in (b"2", b"3"):
                return error("NOPROTO unsupported protocol version")
            resp3 = version == b"3"
            i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                reply = self._auth([b"AUTH", args[i + 1], args[i + 2]])
                if reply != resp.OK:
                    return reply
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                self.name = args[i + 1]
                i += 2
            else:
                return error(f"ERR Syntax error in HELLO option '{opt.decode('utf-8', 'replace')}'")
        if not self.authed:
            return NOAUTH
        self.resp3 = resp3
        self.nil = resp.NIL3 if resp3 else resp.NIL2
        return resp.encode({"server": "redis", "version": REDIS_VERSION,
                            "proto": 3 if resp3 else 2, "id": self.id, "mode": "standalone",
                            "role": "master", "modules": []}, resp3)

    def _client(self, args: list[bytes]) -> bytes:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"SETNAME" and len(args) == 3:
            if any(c <= 32 or c > 126 for c in args[2]):
                return error("ERR Client names cannot contain spaces, newlines or special "
                             "characters.")
            self.name = args[2] or None
            return resp.OK
        if sub == b"GETNAME" and len(args) == 2:
            return self.nil if self.name is None else bulk(self.name)
        if sub == b"ID" and len(args) == 2:
            return resp.integer(self.id)
        if sub == b"INFO" and len(args) == 2:
            return bulk(self.describe().encode() + b"\n")
        if sub == b"LIST":
            lines = "".join(c.describe() + "\n" for c in self.service.connections)
            return bulk(lines.encode())
        if sub == b"SETINFO" and len(args) == 4:
            attr = args[2].upper()
            if attr == b"LIB-NAME":
                self.lib_name = args[3]
            elif attr == b"LIB-VER":
                self.lib_ver = args[3]
            else:
                return error(f"ERR Unrecognized option '{args[2].decode('utf-8', 'replace')}'")
            return resp.OK
        if sub in (b"SETNAME", b"GETNAME", b"ID", b"INFO", b"SETINFO"):
            return error(f"ERR wrong number of arguments for 'client|{sub.decode().lower()}' "
                         "command")
        if sub in (b"NO-EVICT", b"NO-TOUCH", b"REPLY"):
            return resp.OK
        shown = args[1].decode("utf-8", "replace") if len(args) > 1 else ""
        return error(f"ERR unknown subcommand '{shown}'. Try CLIENT HELP.")

    def describe(self) -> str:
        def text(value: bytes | None) -> str:
            return "" if value is None else value.decode("utf-8", "replace")

        age = int(time.time() - self.created)
        return (f"id={self.id} addr={self.listener} laddr={self.listener} fd=-1 "
                f"name={text(self.name)} age={age} idle=0 flags=N db=0 sub=0 psub=0 "
                f"ssub=0 multi=-1 resp={3 if self.resp3 else 2} "
                f"lib-name={text(self.lib_name)} lib-ver={text(self.lib_ver)}")
