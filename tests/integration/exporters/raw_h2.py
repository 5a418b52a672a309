"""A scriptable HTTP/2 server (the `h2` library, server side) for answers a grpc server
never gives: bare HTTP statuses, stream resets, a GOAWAY that leaves some streams out.
(A uniquely named module, like export_helpers.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from hyperframe.frame import GoAwayFrame

from sidecar.exporthelper.compression import gzip_decompress
from sidecar.exporthelper.grpc_h2 import frame_message


@dataclass
class Stream:
    connection: int  # 0-based number of the TCP connection
    stream_id: int
    headers: dict[str, str]
    data: bytearray = field(default_factory=bytearray)

    @property
    def message(self) -> bytes:
        """The gRPC request message, inflated if the client gzipped it."""
        raw = bytes(self.data[5:])
        return gzip_decompress(raw) if self.data[:1] == b"\x01" else raw


class Peer:
    """One accepted connection; `respond` answers a stream once its request ended."""

    def __init__(self, server: RawH2Server, number: int, writer: asyncio.StreamWriter) -> None:
        self.server, self.number, self.writer = server, number, writer
        self.h2 = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, Stream] = {}
        self.closed = asyncio.Event()  # the connection ended (either side)

    def flush(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(self.h2.data_to_send())

    def ok(self, stream_id: int, message: bytes = b"") -> None:
        self.h2.send_headers(stream_id, [(":status", "200"),
                                         ("content-type", "application/grpc")])
        self.h2.send_data(stream_id, frame_message(message, False))
        self.h2.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
        self.flush()

    def goaway(self, last_stream_id: int, error_code: int = 0, debug: bytes = b"") -> None:
        """A GOAWAY written past h2, whose state machine would refuse to answer any stream
        after it (python-hyper/h2#1181)."""
        self.writer.write(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code,
                                      additional_data=debug).serialize())


Respond = Callable[[Peer, Stream], Awaitable[None] | None]


class RawH2Server:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.peers: list[Peer] = []
        self.streams: list[Stream] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> RawH2Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:  # ends each handler's read loop
            peer.writer.transport.abort()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def wait_for_streams(self, n: int, timeout: float = 10.0) -> None:
        """Until `n` requests (streams) arrived; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.streams) >= n)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, len(self.peers), writer)
        self.peers.append(peer)
        peer.h2.initiate_connection()
        peer.flush()
        try:
            while data := await reader.read(65536):
                for event in peer.h2.receive_data(data):
                    await self._event(peer, event)
                peer.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            peer.closed.set()
            writer.close()

    async def _event(self, peer: Peer, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            stream = Stream(peer.number, event.stream_id, dict(event.headers or ()))
            peer.streams[event.stream_id] = stream
            self.streams.append(stream)
            async with self._changed:
                self._changed.notify_all()
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            peer.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            peer.streams[event.stream_id].data += event.data or b""
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            answer = self.respond(peer, peer.streams[event.stream_id])
            if answer is not None:
                await answer
            peer.flush()
