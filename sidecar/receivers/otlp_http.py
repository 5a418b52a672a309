"""OTLP/HTTP receiver: POST /v1/{traces,logs,metrics} with protobuf or JSON bodies.

aiohttp's low-level server (no router, no app): one dict lookup routes a request. Request
bodies are decompressed here rather than by aiohttp so the size cap applies to the
decompressed bytes as they are produced, and a gzip bomb stops at the limit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import zlib
from collections.abc import Mapping
from enum import Enum
from typing import Final

import orjson
from aiohttp import HttpVersion11, web
from aiohttp.web import RequestPayloadError
from google.protobuf import json_format
from google.protobuf.message import Message

from sidecar.component import Consumer
from sidecar.config import HttpListenerConfig
from sidecar.configtypes import split_endpoint
from sidecar.errors import BadInputError, PipelineFullError, StartupError, StorageFullError
from sidecar.model import Batch, Signal
from sidecar.net.listeners import bind_unix, remove_unix, socket_inode
from sidecar.net.security import BearerAuth, ServerTls, banner
from sidecar.otlp_json import decode_request
from sidecar.receivers.otlp_common import (
    CODE_DEADLINE_EXCEEDED,
    CODE_INTERNAL,
    CODE_INVALID_ARGUMENT,
    CODE_NOT_FOUND,
    CODE_RESOURCE_EXHAUSTED,
    CODE_UNAUTHENTICATED,
    CODE_UNAVAILABLE,
    EMPTY_RESPONSE,
    HTTP_PATHS,
    BadRequestCounters,
    Intake,
    InternalError,
    RetryLater,
    backpressure_status,
    build_intakes,
    describe,
    partial_success_response,
    retry_later_status,
    rpc_status,
)

TRANSPORT: Final = "http"
# Idle keep-alive connections are closed after this; OTel SDKs reconnect transparently.
KEEPALIVE_TIMEOUT: Final = 120.0
# Retry-After (seconds) when the in-flight body budget is spent: bodies are read in well
# under a second on loopback, so the room comes back soon.
_BUSY_RETRY_AFTER: Final = 1


class Format(Enum):
    PROTOBUF = "protobuf"
    JSON = "json"


CONTENT_TYPES: Final[dict[str, Format]] = {
    "application/x-protobuf": Format.PROTOBUF,
    "application/protobuf": Format.PROTOBUF,
    "application/json": Format.JSON,
}
# HTTP's "deflate" is zlib-wrapped; wbits 32+ auto-detects the gzip or zlib header.
_DECOMPRESS_WBITS: Final = zlib.MAX_WBITS | 32
_COMPRESSED: Final = frozenset({"gzip", "x-gzip", "deflate"})
_IDENTITY: Final = frozenset({"", "identity"})


class _TooLarge(Exception):
    pass


def _input_limit(limit: int) -> int:
    """Valid deflate never grows data by more than a few bytes per 16 KiB block, so more
    compressed input than this cannot fit the limit; it also ends a stream of empty gzip
    members that would otherwise keep us reading forever."""
    return limit + limit // 64 + 1024


class _OverBudget(Exception):
    pass


class InFlightBudget:
    """Request-body bytes held at once across every connection of one listener. A request
    takes its share as its body arrives (all of a Content-Length up front) and gives it back
    when it is answered; one that would go over is refused instead of being read."""

    __slots__ = ("capacity", "used")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0


class _Hold:
    """One request's share of the budget; it only grows until `release`."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: InFlightBudget) -> None:
        self._budget = budget
        self.held = 0

    def grow_to(self, nbytes: int) -> None:
        extra = nbytes - self.held
        if extra <= 0:
            return
        budget = self._budget
        if budget.used + extra > budget.capacity:
            raise _OverBudget
        budget.used += extra
        self.held = nbytes

    def release(self) -> None:
        self._budget.used -= self.held
        self.held = 0


async def read_body(request: web.BaseRequest, encoding: str, limit: int, hold: _Hold) -> bytes:
    """The request body, decompressed, never holding more than `limit` + 1 bytes of it,
    growing `hold` as it arrives. Raises `_TooLarge`, `_OverBudget`, or `BadInputError` for
    a corrupt, truncated or cut-off body (the client sent less, or went away)."""
    try:
        if encoding in _IDENTITY:
            return await _read_plain(request, limit, hold)
        return await _read_compressed(request, encoding, limit, hold)
    except (asyncio.IncompleteReadError, RequestPayloadError, ConnectionError) as exc:
        # aiohttp keeps a disconnect's exception on the request's stream, and its traceback
        # holds these frames, which hold the body read so far: a reference cycle that only
        # the cycle collector frees, and it runs by object count, not bytes. Drop the frames.
        exc.__traceback__ = None
        reason = str(exc) or type(exc).__name__
    raise BadInputError(f"request body ended early: {reason}", "truncated")


async def _read_plain(request: web.BaseRequest, limit: int, hold: _Hold) -> bytes:
    content = request.content
    length = request.content_length
    if length is not None:
        if length > limit:
            raise _TooLarge
        hold.grow_to(length)
        return await content.readexactly(length) if length else b""
    chunks = bytearray()
    async for chunk in content.iter_any():
        chunks += chunk
        if len(chunks) > limit:
            raise _TooLarge
        hold.grow_to(len(chunks))
    return bytes(chunks)


async def _read_compressed(
    request: web.BaseRequest, encoding: str, limit: int, hold: _Hold
) -> bytes:
    out = bytearray()
    input_limit = _input_limit(limit)
    seen = 0
    inflater = zlib.decompressobj(_DECOMPRESS_WBITS)
    try:
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > input_limit:
                raise _TooLarge
            data = chunk
            while data:
                # max_length caps what one call may allocate; stopping early leaves the
                # rest in unconsumed_tail, which only happens once we are over the limit.
                out += inflater.decompress(data, limit - len(out) + 1)
                if len(out) > limit:
                    raise _TooLarge
                # Concatenated gzip members are one valid body (RFC 1952 §2.2).
                data = inflater.unused_data if inflater.eof else b""
                if data:
                    inflater = zlib.decompressobj(_DECOMPRESS_WBITS)
            hold.grow_to(len(out))
        if not inflater.eof:
            raise BadInputError(f"truncated {encoding} body", "bad_encoding")
    except zlib.error as exc:
        raise BadInputError(f"corrupt {encoding} body: {exc}", "bad_encoding") from exc
    return bytes(out)


def _send_continue(request: web.BaseRequest) -> None:
    """curl and some HTTP clients wait (about a second) for this before sending a large
    body. Sent only after the request passed every check that needs no body (the budget
    too), so a refused request is refused before its body is uploaded. Written straight to
    the transport, before any of the response, so aiohttp's writer never counts it as the
    response having started."""
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == (
        "100-continue"
    ):
        transport = request.transport
        if transport is not None:
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


class _Route:
    __slots__ = ("empty_json", "empty_proto", "intake", "signal")

    def __init__(self, signal: Signal, intake: Intake | None) -> None:
        self.signal = signal
        self.intake = intake
        self.empty_proto = EMPTY_RESPONSE[signal]
        self.empty_json = b"{}"


def _encode(message: Message, fmt: Format) -> bytes:
    if fmt is Format.PROTOBUF:
        return message.SerializeToString()
    return orjson.dumps(json_format.MessageToDict(message))


def _error(
    fmt: Format | None, content_type: str, http_status: int, code: int, message: str
) -> web.Response:
    """A failure answer: a `google.rpc.Status` in the request's format (OTLP), or plain
    text when the request's format is not one we speak."""
    if fmt is None:
        return web.Response(status=http_status, text=message + "\n")
    return _status_response(fmt, content_type, http_status, rpc_status(code, message))


def _status_response(
    fmt: Format, content_type: str, http_status: int, status: Message
) -> web.Response:
    body = _encode(status, fmt)
    return web.Response(status=http_status, body=body, content_type=content_type)


class OtlpHttpReceiver:
    """`name` is the receiver's config section: the `receiver` label on its metrics."""

    def __init__(self, name: str, config: HttpListenerConfig,
                 consumers: Mapping[Signal, Consumer]) -> None:
        self.name = name
        self._config = config
        self._setting = f"receivers.{name}.{TRANSPORT}.endpoint"
        self._limit = config.max_body_size
        self._intakes = build_intakes(name, TRANSPORT, consumers)
        self._routes = {
            path: _Route(signal, self._intakes.get(signal)) for path, signal in HTTP_PATHS.items()
        }
        self._bad = BadRequestCounters(name, TRANSPORT)
        self._budget = InFlightBudget(config.max_in_flight_bytes)
        self._auth = BearerAuth(config.auth) if config.auth is not None else None
        self._tls: ServerTls | None = None
        self._web: web.Server | None = None
        self._servers: list[asyncio.Server] = []
        self._port: int | None = None
        self._unix_inode: int | None = None

    @property
    def bound_port(self) -> int:
        if self._port is None:
            raise RuntimeError("receiver not started")
        return self._port

    async def start(self) -> None:
        config = self._config
        loop = asyncio.get_running_loop()
        handler = web.Server(
            self._handle,
            loop=loop,
            auto_decompress=False,  # read_body decompresses under the size cap
            access_log=None,  # one log line per export request would dwarf the telemetry
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        if config.tls is not None:
            self._tls = ServerTls(config.tls, f"receivers.{self.name}.{TRANSPORT}.tls")
        ssl_context = self._tls.listener_context if self._tls is not None else None
        servers: list[asyncio.Server] = []
        try:
            if config.endpoint is not None:
                host, port = split_endpoint(config.endpoint)
                try:
                    servers.append(await loop.create_server(handler, host, port, backlog=512,
                                                            ssl=ssl_context))
                except OSError as exc:
                    # asyncio rewrites strerror into a long sentence; the errno says it plainly
                    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                    raise StartupError(f"{self._setting}: {config.endpoint}: {reason}") from None
                self._port = int(servers[0].sockets[0].getsockname()[1])
            if config.unix is not None:
                sock = bind_unix(config.unix, f"receivers.{self.name}.{TRANSPORT}.unix",
                                 config.unix_mode, config.unix_group, backlog=512)
                self._unix_inode = socket_inode(config.unix)
                servers.append(await loop.create_unix_server(handler, sock=sock,
                                                             ssl=ssl_context))
        except BaseException:
            for server in servers:
                server.close()
            raise
        self._web, self._servers = handler, servers

    async def shutdown(self, deadline: float) -> None:
        """Stop listening at once; requests in flight get until `deadline` (loop time)."""
        servers, handler = self._servers, self._web
        self._servers, self._web = [], None
        if not servers or handler is None:
            return
        for server in servers:
            server.close()
        # Let requests already read off the sockets reach their handlers before idle
        # keep-alive connections are closed (what aiohttp's runner does too).
        await asyncio.sleep(0)
        handler.pre_shutdown()
        grace = max(0.0, deadline - asyncio.get_running_loop().time())
        await handler.shutdown(grace)
        for server in servers:
            await server.wait_closed()
        if self._config.unix is not None:
            remove_unix(self._config.unix, self._unix_inode)

    def describe(self) -> str:
        return describe(self.name, TRANSPORT, self._config.endpoint, self._port, self._intakes,
                        banner(self._config.tls, self._config.auth), self._config.unix)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        content_type = request.content_type
        fmt = CONTENT_TYPES.get(content_type)
        if self._auth is not None and not self._auth.check(request.headers.get("Authorization")):
            self._bad.inc("unauthenticated")
            response = _error(fmt, content_type, 401, CODE_UNAUTHENTICATED,
                              "missing or wrong bearer token in the Authorization header")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sidecar"'
            response.force_close()  # the body is never read
            return response
        checked = self._check_headers(request, fmt, content_type)
        if isinstance(checked, web.Response):
            return checked
        route, intake, encoding = checked
        assert fmt is not None  # _check_headers refused other content types
        hold = _Hold(self._budget)
        try:
            return await self._handle_body(request, route, intake, fmt, content_type, encoding,
                                           hold)
        finally:
            hold.release()

    async def _handle_body(
        self, request: web.BaseRequest, route: _Route, intake: Intake, fmt: Format,
        content_type: str, encoding: str, hold: _Hold,
    ) -> web.StreamResponse:
        try:
            length = request.content_length
            if length is not None:
                if length > (self._limit if encoding in _IDENTITY else _input_limit(self._limit)):
                    raise _TooLarge
                hold.grow_to(length)
            _send_continue(request)
            # A body already here whole (most are: it came with the headers) needs no timer.
            timer = (contextlib.nullcontext() if request.content.is_eof()
                     else asyncio.timeout(self._config.body_timeout))
            async with timer:
                body = await read_body(request, encoding, self._limit, hold)
            if fmt is Format.PROTOBUF:
                batch = Batch.from_bytes(route.signal, body)
                rejected, why = 0, ""
            else:
                decoded = decode_request(route.signal, body)
                batch = Batch.from_message(route.signal, decoded.message)
                rejected, why = decoded.rejected, decoded.error_message
        except _TooLarge:
            self._bad.inc("too_large")
            message = f"request body exceeds {self._limit} bytes (after decompression)"
            response = _error(fmt, content_type, 413, CODE_RESOURCE_EXHAUSTED, message)
            # Closed once answered: the rest of the body is never kept (aiohttp reads and
            # drops it for up to its lingering time, so the client gets the answer).
            response.force_close()
            return response
        except _OverBudget:
            self._bad.inc("in_flight_limit")
            message = (f"request bodies in flight would exceed {self._budget.capacity} bytes, "
                       f"retry in {_BUSY_RETRY_AFTER}s")
            status = rpc_status(CODE_UNAVAILABLE, message, _BUSY_RETRY_AFTER)
            response = _status_response(fmt, content_type, 503, status)
            response.headers["Retry-After"] = str(_BUSY_RETRY_AFTER)
            response.force_close()
            return response
        except TimeoutError:
            self._bad.inc("timeout")
            message = f"request body did not arrive within {self._config.body_timeout:g}s"
            response = _error(fmt, content_type, 408, CODE_DEADLINE_EXCEEDED, message)
            response.force_close()
            return response
        except BadInputError as exc:
            self._bad.inc(exc.reason)
            return _error(fmt, content_type, 400, CODE_INVALID_ARGUMENT, str(exc))

        try:
            await intake.deliver(batch)
        except PipelineFullError as exc:
            seconds, status = backpressure_status(route.signal, exc)
            # disk full is the server's trouble, not the client's rate: 503 (retryable)
            code = 503 if isinstance(exc, StorageFullError) else 429
            response = _status_response(fmt, content_type, code, status)
            response.headers["Retry-After"] = str(seconds)
            return response
        except RetryLater as exc:
            seconds, status = retry_later_status(exc)
            response = _status_response(fmt, content_type, 503, status)
            response.headers["Retry-After"] = str(seconds)
            return response
        except InternalError as exc:
            return _error(fmt, content_type, 500, CODE_INTERNAL, str(exc))

        if rejected:
            intake.rejected(rejected)
            body = _encode(partial_success_response(route.signal, rejected, why), fmt)
        else:
            body = route.empty_proto if fmt is Format.PROTOBUF else route.empty_json
        return web.Response(body=body, content_type=content_type)

    def _check_headers(
        self, request: web.BaseRequest, fmt: Format | None, content_type: str
    ) -> web.Response | tuple[_Route, Intake, str]:
        """Everything decidable before reading the body: the refusal, or what to read."""
        route = self._routes.get(request.path)
        if route is None:
            self._bad.inc("not_found")
            message = f"no OTLP endpoint at {request.path}"
            return _error(fmt, content_type, 404, CODE_NOT_FOUND, message)
        if request.method != "POST":
            self._bad.inc("method_not_allowed")
            response = _error(None, content_type, 405, 0, f"{request.path} accepts only POST")
            response.headers["Allow"] = "POST"
            return response
        if fmt is None:
            self._bad.inc("unsupported_media_type")
            message = (f"unsupported content type {content_type!r}: use "
                       "application/x-protobuf or application/json")
            return _error(None, content_type, 415, 0, message)
        if route.intake is None:
            self._bad.inc("no_pipeline")
            message = f"no {route.signal.value} pipeline is configured in this sidecar"
            return _error(fmt, content_type, 404, CODE_NOT_FOUND, message)
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _IDENTITY and encoding not in _COMPRESSED:
            self._bad.inc("unsupported_encoding")
            message = f"unsupported content encoding {encoding!r}: use gzip or deflate"
            return _error(fmt, content_type, 415, CODE_INVALID_ARGUMENT, message)
        return route, route.intake, encoding
