"""A minimal gRPC unary client over HTTP/2 (the `h2` library), for pre-compressed messages.

Why hand-written: with `compression=Gzip`, grpc-python compresses inside grpc-core with its
bundled zlib at the fixed level 6, which cost ~10-13 µs CPU per span (half of the daemon's
CPU in `make bench`); ISA-L level 1 (`gzip_compress`) gzips the same bytes in ~1-2 µs/span.
grpc-python cannot send a message that is already compressed, so the gzip path speaks the
gRPC wire protocol itself: a 5-byte prefix (compressed flag + length) before the message,
`grpc-encoding: gzip`, status in the trailers. Unary calls only; many concurrent streams on
one connection, which is re-opened lazily after it is lost, the peer sends GOAWAY, or a
keepalive PING goes unanswered (`Keepalive`, the values grpc.aio gets too).

GOAWAY (RFC 9113 §6.8): streams above its last_stream_id were not processed and fail at
once with UNAVAILABLE (retried by the chain); streams up to it may still be answered, so
they keep their connection until they end, and new calls go to a new connection. h2 closes
its connection state machine on a received GOAWAY and then refuses those answers
(python-hyper/h2#1181, still so in h2 4.4), so `_Connection` splits the received bytes
into frames and never hands a GOAWAY to h2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import GoAwayFrame

from sidecar.exporthelper.compression import gzip_decompress

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]
MAX_RESPONSE = 4 * 1024 * 1024  # grpc's default max_receive_message_length
KEEPALIVE_TIME = 30.0  # seconds without anything received before a PING
KEEPALIVE_TIMEOUT = 10.0  # seconds the PING may go unanswered before the connection drops
_READ_SIZE = 256 * 1024
# https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
_HTTP_TO_GRPC = {400: grpc.StatusCode.INTERNAL, 401: grpc.StatusCode.UNAUTHENTICATED,
                 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.UNIMPLEMENTED,
                 429: grpc.StatusCode.UNAVAILABLE, 502: grpc.StatusCode.UNAVAILABLE,
                 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.UNAVAILABLE}
_RST_TO_GRPC = {h2.errors.ErrorCodes.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
                h2.errors.ErrorCodes.CANCEL: grpc.StatusCode.CANCELLED,
                h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
                h2.errors.ErrorCodes.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED}
_CODES = {c.value[0]: c for c in grpc.StatusCode}
_LOOPBACK = ("127.0.0.1", "::1")
_MAX_STREAM_ID = 2**31 - 1
_OPEN_ATTEMPTS = 3  # connections tried for one call when each goes away before it starts


class GrpcStatusError(Exception):
    """A call's non-OK status, with the accessors of grpc.aio.AioRpcError."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Metadata:
        return self._trailing


def frame_message(message: bytes, compressed: bool) -> bytes:
    """The gRPC length-prefixed message: flag byte, 4-byte big-endian length, bytes."""
    return (b"\x01" if compressed else b"\x00") + len(message).to_bytes(4, "big") + message


def timeout_header(seconds: float) -> str:
    millis = max(int(seconds * 1000), 1)
    return f"{millis}m" if millis < 100_000_000 else f"{min(int(seconds), 99_999_999)}S"


class _Call:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.data = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fail(self, error: GrpcStatusError) -> None:
        if not self.done.done():
            self.done.set_exception(error)


@dataclass(slots=True)
class Keepalive:
    """grpc-core's keepalive: a PING once nothing was received for `time` seconds, on an
    idle or a busy connection; no answer within `timeout` drops the connection (calls
    fail UNAVAILABLE, the next call reconnects). A GOAWAY "too_many_pings" doubles
    `time`, as grpc-core does."""

    time: float = KEEPALIVE_TIME
    timeout: float = KEEPALIVE_TIMEOUT


class _Unusable(Exception):
    """The connection takes no new stream (closed, or draining after a GOAWAY); nothing
    was sent, so the call can go on another connection."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 keepalive: Keepalive) -> None:
        self.reader, self.writer = reader, writer
        self.keepalive = keepalive  # shared by the client's connections
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.calls: dict[int, _Call] = {}
        self.closed = False
        # after a GOAWAY: no new streams; those up to its last_stream_id may still finish
        self.draining = False
        self._last_stream_id = _MAX_STREAM_ID
        self._inbound = bytearray()  # received bytes not yet split into whole frames
        self._changed = asyncio.Event()
        self._last_read = asyncio.get_running_loop().time()
        self._pings = 0
        self._ping_ack: asyncio.Future[None] | None = None
        self.h2.initiate_connection()
        self.flush()
        self._reader_task = asyncio.create_task(self._read_loop())
        self._pinger = asyncio.create_task(self._keepalive_loop())

    @property
    def usable(self) -> bool:
        return not self.closed and not self.draining

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _wait_changed(self) -> None:
        event = self._changed
        await event.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def call(self, headers: list[tuple[bytes, bytes]], body: bytes) -> _Call:
        while (self.usable and self.h2.open_outbound_streams
               >= self.h2.remote_settings.max_concurrent_streams):
            await self._wait_changed()
        if not self.usable:
            raise _Unusable
        stream_id = self.h2.get_next_available_stream_id()
        call = self.calls[stream_id] = _Call()
        try:
            self.h2.send_headers(stream_id, headers)
            self.flush()
            view, sent = memoryview(body), 0
            while sent < len(body) and not call.done.done():
                window = min(self.h2.local_flow_control_window(stream_id),
                             self.h2.max_outbound_frame_size, len(body) - sent)
                if window <= 0:
                    await self._wait_changed()
                    continue
                self.h2.send_data(stream_id, view[sent:sent + window].tobytes())
                sent += window
                self.flush()
                await self.writer.drain()
            if not call.done.done():
                self.h2.end_stream(stream_id)
                self.flush()
            elif not self.closed:  # answered early: close our half so it frees a slot
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    self.flush()
            await asyncio.shield(call.done)
        except h2.exceptions.StreamClosedError:
            # the peer answered (or reset) before taking the whole request
            await asyncio.shield(call.done)
        except (ConnectionError, h2.exceptions.ProtocolError) as exc:
            self.abort(f"connection lost: {exc}")
            await call.done
        except GrpcStatusError:
            raise
        except BaseException:  # cancelled (deadline): tell the peer to stop
            self.calls.pop(stream_id, None)
            if not self.closed:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    self.flush()
                self._close_if_drained()
            raise
        return call

    async def _read_loop(self) -> None:
        reason = "connection closed by peer"
        loop = asyncio.get_running_loop()
        try:
            while data := await self.reader.read(_READ_SIZE):
                self._last_read = loop.time()
                for part in self._split(data):
                    if isinstance(part, GoAwayFrame):
                        self._goaway(part)
                    else:
                        for event in self.h2.receive_data(part):
                            self._handle(event)
                self.flush()
                self._close_if_drained()
                if self.closed:
                    return
        except (OSError, h2.exceptions.ProtocolError) as exc:
            reason = f"connection lost: {exc}"
        except HyperframeError as exc:
            reason = f"malformed GOAWAY from peer: {exc}"
        self.abort(reason)

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            idle_until = self._last_read + self.keepalive.time
            if idle_until > loop.time():
                await asyncio.sleep(idle_until - loop.time())
                continue
            self._pings += 1
            payload = self._pings.to_bytes(8, "big")
            ack = self._ping_ack = loop.create_future()
            try:
                self.h2.ping(payload)
            except h2.exceptions.H2Error:  # the connection is closing
                return
            self.flush()
            timeout = self.keepalive.timeout
            try:
                async with asyncio.timeout(timeout):
                    await ack
            except TimeoutError:
                self.abort(f"keepalive ping not answered within {timeout:g}s")
                return

    def _split(self, data: bytes) -> list[bytes | GoAwayFrame]:
        """`data` as runs of whole frames for h2, with each GOAWAY taken out: h2 closes
        its state machine on a received GOAWAY (python-hyper/h2#1181) and would then
        refuse the answers still due on the streams the GOAWAY lets finish."""
        buf = self._inbound
        buf += data
        out: list[bytes | GoAwayFrame] = []
        start = pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if length > self.h2.max_inbound_frame_size:  # do not buffer it whole
                raise h2.exceptions.FrameTooLargeError(f"frame of {length} bytes")
            end = pos + 9 + length
            if end > len(buf):
                break
            if buf[pos + 3] == GoAwayFrame.type:
                if pos > start:
                    out.append(bytes(buf[start:pos]))
                frame, _ = GoAwayFrame.parse_frame_header(memoryview(bytes(buf[pos:pos + 9])))
                frame.parse_body(memoryview(bytes(buf[pos + 9:end])))
                assert isinstance(frame, GoAwayFrame)
                out.append(frame)
                start = end
            pos = end
        if pos > start:
            out.append(bytes(buf[start:pos]))
        del buf[:pos]
        return out

    def _goaway(self, frame: GoAwayFrame) -> None:
        """Streams above last_stream_id were not processed: fail them (retryable). Those
        up to it finish as they would have; the connection closes once they have."""
        self.draining = True
        self._last_stream_id = min(self._last_stream_id, frame.last_stream_id)
        reason = f"GOAWAY from peer ({_error_name(frame.error_code)})"
        if (frame.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
                and frame.additional_data == b"too_many_pings"):
            self.keepalive.time *= 2
            log.warning("peer asked for fewer pings (GOAWAY too_many_pings): keepalive "
                        "time is now %gs", self.keepalive.time)
        for stream_id in [s for s in self.calls if s > self._last_stream_id]:
            self._finish(stream_id, GrpcStatusError(
                grpc.StatusCode.UNAVAILABLE, f"{reason}: not processed"))
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._wake()

    def _close_if_drained(self) -> None:
        if self.draining and not self.calls and not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection()  # our GOAWAY, as RFC 9113 asks
                self.flush()
            self.closed = True
            self._wake()
            self._pinger.cancel()
            if self.writer.transport.get_write_buffer_size():
                self.writer.transport.abort()  # the peer stopped reading: do not wait
            else:
                self.writer.close()

    def _handle(self, event: h2.events.Event) -> None:
        call = self.calls.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and call:
            call.headers = list(event.headers or ())
        elif isinstance(event, h2.events.TrailersReceived) and call:
            call.trailers = list(event.headers or ())
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                              event.stream_id)
            if call:
                call.data += event.data or b""
                size = (int.from_bytes(call.data[1:5], "big") if len(call.data) >= 5
                        else 0)
                size = max(size, len(call.data) - 5)
                if size > MAX_RESPONSE:
                    self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.CANCEL)
                    # grpc-core's wording, so both transports classify it alike
                    self._finish(event.stream_id, GrpcStatusError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"CLIENT: Received message larger than max ({size} vs. "
                        f"{MAX_RESPONSE})"))
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
            self._finish(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
            code = _RST_TO_GRPC.get(event.error_code,  # type: ignore[call-overload]
                                    grpc.StatusCode.INTERNAL)
            self._finish(event.stream_id, GrpcStatusError(
                code, f"stream reset by peer ({event.error_code!r})"))
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._wake()
        elif isinstance(event, h2.events.PingAckReceived):
            ack = self._ping_ack
            if (ack is not None and not ack.done()
                    and event.ping_data == self._pings.to_bytes(8, "big")):
                ack.set_result(None)

    def _finish(self, stream_id: int, error: GrpcStatusError | None) -> None:
        call = self.calls.pop(stream_id, None)
        if call is not None and not call.done.done():
            if error is None:
                call.done.set_result(None)
            else:
                call.done.set_exception(error)
        self._wake()

    def abort(self, reason: str) -> None:
        """Fail every call in flight (UNAVAILABLE: retryable) and drop the connection."""
        if self.closed:
            return
        self.closed = True
        for call in self.calls.values():
            call.fail(GrpcStatusError(grpc.StatusCode.UNAVAILABLE, reason))
        self.calls.clear()
        self._wake()
        if self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        # no flush of what is still buffered: the peer may have stopped reading
        self.writer.transport.abort()

    async def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.h2.close_connection()
                self.flush()
            with contextlib.suppress(OSError, TimeoutError):  # let the GOAWAY out
                async with asyncio.timeout(1):
                    await self.writer.drain()
            self.abort("client closed")
        # no wait for the TLS close_notify answer: grpc servers do not send one, and
        # asyncio would wait up to its 30 s ssl_shutdown_timeout
        self.writer.transport.abort()
        self._reader_task.cancel()
        self._pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._reader_task
        with contextlib.suppress(asyncio.CancelledError):
            await self._pinger
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1):
                await self.writer.wait_closed()


class GrpcH2Client:
    """Unary gRPC calls on one lazily (re)opened HTTP/2 connection."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 user_agent: str, keepalive: Keepalive | None = None) -> None:
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self.keepalive = keepalive or Keepalive()
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._base = [(b":method", b"POST"),
                      (b":scheme", b"https" if ssl_context else b"http"),
                      (b":authority", authority.encode())]
        self._tail = [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                      (b"grpc-accept-encoding", b"gzip,identity"),
                      (b"user-agent", user_agent.encode())]
        self._conn: _Connection | None = None
        self._draining: set[_Connection] = set()  # after a GOAWAY, until their calls end
        self._lock = asyncio.Lock()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # "localhost" is loopback (RFC 6761): grpc-core's resolver gives both loopback
        # addresses whatever /etc/hosts says, so a server on ::1 only is reached alike
        hosts = _LOOPBACK if self.host.lower() == "localhost" else (self.host,)
        error = OSError(f"no address for {self.host}")
        for host in hosts:
            try:
                return await asyncio.open_connection(
                    host, self.port, ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context else None)
            except ssl.SSLError:
                raise  # a peer answered: the next address would not change that
            except OSError as exc:
                error = exc
        raise error

    async def _connection(self) -> _Connection:
        async with self._lock:
            if self._conn is None or not self._conn.usable:
                if self._conn is not None and not self._conn.closed:
                    self._draining.add(self._conn)
                self._draining = {c for c in self._draining if not c.closed}
                self._conn = None
                try:
                    reader, writer = await self._open()
                except OSError as exc:  # ssl.SSLError included
                    raise GrpcStatusError(grpc.StatusCode.UNAVAILABLE,
                                          f"failed to connect to {self.host}:{self.port}: "
                                          f"{exc}") from exc
                if self.ssl_context is not None:
                    alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
                    if alpn != "h2":
                        writer.close()
                        raise GrpcStatusError(grpc.StatusCode.UNAVAILABLE,
                                              f"peer did not negotiate h2 (ALPN {alpn!r})")
                self._conn = _Connection(reader, writer, self.keepalive)
            return self._conn

    async def unary(self, path: str, framed: bytes, *, timeout: float,
                    metadata: Sequence[tuple[str, str]] = (), gzip: bool = True,
                    ) -> bytes | None:
        """Send one length-prefixed message (`frame_message`) and return the answer's
        message bytes (None, as grpc.aio gives, when an OK answer has no readable
        message), or raise GrpcStatusError."""
        headers = [*self._base, (b":path", path.encode()), *self._tail,
                   (b"grpc-timeout", timeout_header(timeout).encode())]
        if gzip:
            headers.append((b"grpc-encoding", b"gzip"))
        headers.extend((k.encode(), v.encode()) for k, v in metadata)
        try:
            async with asyncio.timeout(timeout):
                for _attempt in range(_OPEN_ATTEMPTS):
                    conn = await self._connection()
                    try:
                        call = await conn.call(headers, framed)
                        break
                    except _Unusable:  # GOAWAY or lost before our stream opened
                        continue
                else:
                    raise GrpcStatusError(grpc.StatusCode.UNAVAILABLE,
                                          "every new connection went away at once")
        except TimeoutError as exc:
            raise GrpcStatusError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  "Deadline Exceeded") from exc
        return _result(call)

    async def close(self) -> None:
        for conn in [*self._draining, *([self._conn] if self._conn else [])]:
            await conn.close()
        self._draining.clear()
        self._conn = None


def _result(call: _Call) -> bytes | None:
    headers = dict(call.headers)
    http_status = headers.get(b":status", b"")
    if http_status != b"200" and b"grpc-status" not in headers:  # not from a gRPC server
        status = int(http_status) if http_status.isdigit() else 0
        raise GrpcStatusError(_HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN),
                              f"HTTP status {status}")
    # trailers-only answers (how grpc servers send most errors) carry the status in headers
    trailers = dict(call.trailers) if call.trailers else headers
    raw_status = trailers.get(b"grpc-status")
    if raw_status is None or not raw_status.isdigit():
        raise GrpcStatusError(grpc.StatusCode.UNKNOWN, "missing grpc-status")
    code = _CODES.get(int(raw_status), grpc.StatusCode.UNKNOWN)
    if code is not grpc.StatusCode.OK:
        message = unquote(trailers.get(b"grpc-message", b"").decode("ascii", "replace"))
        raise GrpcStatusError(code, message, _metadata(call.trailers or call.headers))
    data = call.data
    if len(data) < 5 or int.from_bytes(data[1:5], "big") != len(data) - 5:
        return None  # the peer said OK; what it took is delivered
    message_bytes = bytes(data[5:])
    if data[0] == 1:
        if headers.get(b"grpc-encoding") != b"gzip":
            raise GrpcStatusError(grpc.StatusCode.INTERNAL, "compressed without gzip encoding")
        try:
            message_bytes = gzip_decompress(message_bytes, MAX_RESPONSE)
        except ValueError as exc:
            raise GrpcStatusError(grpc.StatusCode.INTERNAL, f"bad response: {exc}") from exc
    return message_bytes


def _error_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


def _metadata(pairs: Iterable[tuple[bytes, bytes]]) -> Metadata:
    """Trailing metadata as grpc.aio gives it: -bin values base64-decoded to bytes."""
    out: list[tuple[str, str | bytes]] = []
    for raw_key, value in pairs:
        key = raw_key.decode("ascii", "replace")
        if key.startswith(":") or key in ("grpc-status", "grpc-message", "content-type"):
            continue
        if key.endswith("-bin"):
            try:  # gRPC may omit the base64 padding
                out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
            except ValueError:
                continue
        else:
            out.append((key, value.decode("latin-1")))
    return tuple(out)
