"""Helpers for exporter tests: metric values, a sleep that records instead of waiting, a
pausable loopback TCP proxy and HTTP/2 frame reading. (A uniquely named module:
`from conftest import ...` is ambiguous across test dirs.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.telemetry.metrics import REGISTRY


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class RecordingSleep:
    """Stands in for asyncio.sleep in retry waits: records the delay, yields once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


class TcpProxy:
    """Forwards loopback TCP connections to `upstream_port` and keeps the bytes of each
    direction per connection. `pause()` holds every byte in both directions while the
    sockets stay open: a peer that stops answering without closing."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.client_closed = 0  # connections the client ended (EOF or reset)
        self.to_server: list[bytearray] = []
        self.to_client: list[bytearray] = []
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._flowing.set()
        for writer in self._writers:  # ends both pumps of every connection
            writer.transport.abort()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until `predicate()` holds, checked whenever bytes arrive or a side closes;
        TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        up, down = bytearray(), bytearray()
        self.to_server.append(up)
        self.to_client.append(down)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bytearray,
                       from_client: bool) -> None:
            held = bytearray()
            arrived = asyncio.Event()
            ended = False

            async def receive() -> None:
                # reads on while paused, so the proxy notices a peer leaving at once
                nonlocal ended
                try:
                    while data := await src.read(65536):
                        keep.extend(data)
                        held.extend(data)
                        arrived.set()
                        await self._notify()
                except OSError:
                    pass
                finally:
                    ended = True
                    arrived.set()
                    if from_client:
                        self.client_closed += 1
                    await self._notify()

            async def forward() -> None:
                try:
                    while not (ended and not held):
                        await arrived.wait()
                        arrived.clear()
                        await self._flowing.wait()
                        if held:
                            dst.write(bytes(held))
                            held.clear()
                            await dst.drain()
                except OSError:
                    pass
                finally:
                    dst.close()

            await asyncio.gather(receive(), forward())

        await asyncio.gather(pump(reader, up_writer, up, True),
                             pump(up_reader, writer, down, False), return_exceptions=True)


GOAWAY, PING = 7, 6


def h2_frames(raw: bytes | bytearray) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each whole HTTP/2 frame in `raw`, which must
    start at a frame boundary (server -> client bytes, or client bytes after the preface)."""
    out: list[tuple[int, int, int, bytes]] = []
    pos = 0
    while pos + 9 <= len(raw):
        length = int.from_bytes(raw[pos:pos + 3], "big")
        if pos + 9 + length > len(raw):
            break
        stream = int.from_bytes(raw[pos + 5:pos + 9], "big") & 0x7FFF_FFFF
        out.append((raw[pos + 3], raw[pos + 4], stream, bytes(raw[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return out


def goaway_last_ids(raw: bytes | bytearray) -> list[int]:
    """The last_stream_id of every GOAWAY frame in server -> client bytes."""
    return [int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
            for kind, _, _, payload in h2_frames(raw) if kind == GOAWAY]
