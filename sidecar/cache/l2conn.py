"""The L2 fast path's own connections: plain asyncio streams, the handshake, reply reading.

Why not redis-py's connections: the fast path needs the socket's stream to pack batches
and count or parse replies itself (redis-py's per-reply parsing costs ~60 µs per command
here), and redis-py exposes that stream and its RESP3 push hook only as private attributes
(`_reader`, `_parser`), which a minor release may move. So redis-py parses the URL and
discovers the Sentinel master (public API: `connection_kwargs`, `discover_master`) and
keeps the health pings, raw commands and Cluster routing; these connections are opened,
authenticated and read here."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

# a reply line from Redis (a header) is short; a value line is read with readexactly
_LIMIT: Final = 1 << 20
_MAX_DEPTH: Final = 8


def pack(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p) for p in parts)


class L2ReplyError(ConnectionError):
    """Redis refused the handshake, or sent what the fast path cannot read."""


class ErrorReply(str):
    """An error reply (-ERR ...) returned as a value, as a pipeline does."""

    __slots__ = ()


@dataclass(frozen=True)
class Endpoint:
    """Where a fast-path connection goes and how it authenticates."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host:port
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0


Locate = Callable[[], Awaitable[Endpoint]]  # asked at each connect (Sentinel: the master now)


def endpoint_from_pool(kwargs: dict[str, Any], unix: bool, tls: bool) -> Endpoint:
    """An Endpoint from a redis-py pool's `connection_kwargs` (what its URL parser found)."""
    password = kwargs.get("password")
    username = kwargs.get("username")
    db = int(kwargs.get("db") or 0)
    if unix:
        return Endpoint(path=str(kwargs["path"]), username=username, password=password, db=db)
    host = str(kwargs.get("host") or "localhost")
    context = tls_context(kwargs) if tls else None
    return Endpoint(host=host, port=int(kwargs.get("port") or 6379), tls=context,
                    server_hostname=host if context is not None else None,
                    username=username, password=password, db=db)


def tls_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    """The context redis-py builds from the same `ssl_*` options, with its defaults
    (certificates verified, host name checked)."""
    reqs = kwargs.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str):
        modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                 "required": ssl.CERT_REQUIRED}
        if reqs not in modes:
            raise ValueError(f"invalid ssl_cert_reqs: {reqs!r}")
        reqs = modes[reqs]
    context = ssl.create_default_context()
    context.check_hostname = bool(kwargs.get("ssl_check_hostname", True)) and (
        reqs != ssl.CERT_NONE)
    context.verify_mode = reqs
    certfile = kwargs.get("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile=certfile, keyfile=kwargs.get("ssl_keyfile"),
                                password=kwargs.get("ssl_password"))
    if kwargs.get("ssl_ca_certs") or kwargs.get("ssl_ca_data") or kwargs.get("ssl_ca_path"):
        context.load_verify_locations(cafile=kwargs.get("ssl_ca_certs"),
                                      capath=kwargs.get("ssl_ca_path"),
                                      cadata=kwargs.get("ssl_ca_data"))
    if kwargs.get("ssl_min_version") is not None:
        context.minimum_version = kwargs["ssl_min_version"]
    if kwargs.get("ssl_ciphers") is not None:
        context.set_ciphers(kwargs["ssl_ciphers"])
    return context


class RawConnection:
    """One stream to Redis; `reader` and `writer` are the fast path's to use."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: Endpoint, resp3: bool = False) -> RawConnection:
        """Connect, authenticate, select the db (HELLO 3 first for RESP3). The caller
        bounds the time."""
        if endpoint.path is not None:
            reader, writer = await asyncio.open_unix_connection(endpoint.path, limit=_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=endpoint.tls,
                server_hostname=endpoint.server_hostname, limit=_LIMIT)
        conn = cls(reader, writer)
        try:
            await conn._handshake(endpoint, resp3)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _handshake(self, endpoint: Endpoint, resp3: bool) -> None:
        commands: list[bytes] = []
        auth: list[bytes] = []
        if endpoint.password is not None:
            auth = [(endpoint.username or "default").encode(), endpoint.password.encode()]
        if resp3:
            commands.append(pack(b"HELLO", b"3", *([b"AUTH", *auth] if auth else [])))
        elif auth:
            commands.append(pack(b"AUTH", *auth))
        if endpoint.db:
            commands.append(pack(b"SELECT", b"%d" % endpoint.db))
        if not commands:
            return
        self.writer.write(b"".join(commands))
        for _ in commands:
            reply = await read_reply(self.reader)
            if isinstance(reply, ErrorReply):
                raise L2ReplyError(f"Redis refused the connection setup: {reply}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):  # already broken: closed all the same
            await self.writer.wait_closed()


async def read_reply(reader: asyncio.StreamReader, depth: int = 0) -> Any:
    """One RESP2/RESP3 reply: bytes, int, float, bool, None, list (arrays, sets, pushes:
    a push is a list whose first item is its kind), dict, or ErrorReply. For the
    handshake and the tracking connection; the hot reads parse their own two replies."""
    if depth > _MAX_DEPTH:
        raise L2ReplyError("reply nested too deep")
    line = await reader.readuntil(b"\r\n")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return bytes(body)
    if kind == b"-":
        return ErrorReply(body.decode("utf-8", "replace"))
    if kind in (b":", b"("):
        return int(body)
    if kind in (b"$", b"=", b"!"):
        length = int(body)
        if length < 0:
            return None
        data = (await reader.readexactly(length + 2))[:-2]
        if kind == b"!":
            return ErrorReply(data.decode("utf-8", "replace"))
        return data[4:] if kind == b"=" else data  # verbatim: "txt:" prefix
    if kind in (b"*", b"~", b">"):
        count = int(body)
        if count < 0:
            return None
        return [await read_reply(reader, depth + 1) for _ in range(count)]
    if kind in (b"%", b"|"):
        pairs = int(body)
        items = {}
        for _ in range(pairs):
            key = await read_reply(reader, depth + 1)
            items[key if isinstance(key, bytes | int | str) else repr(key)] = (
                await read_reply(reader, depth + 1))
        if kind == b"|":  # attributes precede the reply they describe
            return await read_reply(reader, depth)
        return items
    if kind == b"_":
        return None
    if kind == b"#":
        return body == b"t"
    if kind == b",":
        return float(body)
    raise L2ReplyError(f"unexpected reply from Redis: {bytes(line[:40])!r}")
