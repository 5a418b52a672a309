"""`sidecar pipe`'s forwarding loop against a real unix socket server: whole lines only, a
last line without newline gets one, a restarted daemon gets the failed write again."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import threading
from pathlib import Path

import pytest

from sidecar.config import LogsReceiverConfig
from sidecar.model import Batch, Signal
from sidecar.pipe import PipeError, forward
from sidecar.receivers.ndjson import LogsReceiver


class LineServer:
    """A unix socket server that keeps every byte of each connection, in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.connections: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
            data = b""
            with conn:
                while chunk := conn.recv(65536):
                    data += chunk
            self.connections.append(data)

    def join(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive()


class Pipeline:
    """The logs pipeline's entrance, counting the records it took."""

    def __init__(self) -> None:
        self.records = 0

    async def consume(self, batch: Batch) -> None:
        self.records += batch.items

    async def wait_for_room(self, nbytes: int) -> None:
        return None


def feed(chunks: list[bytes]) -> tuple[int, int]:
    """A pipe that delivers `chunks` as separate writes, then EOF (read end, writer thread)."""
    read, write = os.pipe()

    def writer() -> None:
        for chunk in chunks:
            os.write(write, chunk)
        os.close(write)

    threading.Thread(target=writer, daemon=True).start()
    return read, write


def test_forwards_whole_lines_and_ends_the_last_one(short_tmp: Path) -> None:
    server = LineServer(short_tmp / "logs.sock")
    read, _ = feed([b'{"a":1}\n{"b":', b'2}\n{"c"', b":3}"])
    with os.fdopen(read, "rb") as source:
        stats = forward(source, str(short_tmp / "logs.sock"))
    server.join()
    assert server.connections == [b'{"a":1}\n{"b":2}\n{"c":3}\n']
    assert (stats.lines, stats.reconnects) == (3, 0)


def test_no_daemon_is_a_clear_error(short_tmp: Path) -> None:
    read, write = os.pipe()
    os.write(write, b"x\n")
    os.close(write)
    with os.fdopen(read, "rb") as source, pytest.raises(PipeError, match="no daemon"):
        forward(source, str(short_tmp / "missing.sock"))


def test_a_restarted_daemon_gets_the_lines_again(short_tmp: Path) -> None:
    path = short_tmp / "logs.sock"
    first = socket.socket(socket.AF_UNIX)
    first.bind(str(path))
    first.listen()
    read, write = os.pipe()
    restarted: list[LineServer] = []

    def restart(_: float) -> None:
        # called while pipe waits to reconnect: the new daemon comes up
        if not restarted:
            os.unlink(path)
            restarted.append(LineServer(path))

    result = []

    def run() -> None:
        with os.fdopen(read, "rb") as source:
            result.append(forward(source, str(path), reconnect_wait=10, sleep=restart))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    conn, _ = first.accept()
    os.write(write, b"one\n")
    assert conn.recv(100) == b"one\n"
    conn.close()  # the daemon goes away
    first.close()
    # writes fail once the peer is gone (EPIPE); keep writing until pipe reconnects
    for _ in range(200):
        os.write(write, b"two\n")
        if restarted:
            break
        thread.join(0.01)
    os.close(write)
    thread.join(10)
    assert not thread.is_alive()
    restarted[0].join()
    (stats,) = result
    assert stats.reconnects == 1
    received = restarted[0].connections[0]
    assert received
    assert set(received.splitlines()) == {b"two"}


def test_tee_copies_the_input_as_it_came(short_tmp: Path) -> None:
    server = LineServer(short_tmp / "logs.sock")
    read, _ = feed([b"a\nb", b"c"])
    copy = io.BytesIO()
    with os.fdopen(read, "rb") as source:
        forward(source, str(short_tmp / "logs.sock"), tee=copy)
    server.join()
    assert copy.getvalue() == b"a\nbc"
    assert server.connections == [b"a\nbc\n"]


async def test_a_daemon_that_drops_the_connection_unread_is_an_error(short_tmp: Path) -> None:
    """The real receiver at max_connections closes pipe's connection on arrival, after the
    kernel took pipe's bytes: pipe must not report the lines as sent."""
    path = short_tmp / "logs.sock"
    pipeline = Pipeline()
    receiver = LogsReceiver("pipe_full", LogsReceiverConfig(unix=str(path), max_connections=1),
                            {Signal.LOGS: pipeline})
    await receiver.start()
    _, held = await asyncio.open_unix_connection(str(path))
    try:
        read, _ = feed([b'{"msg":"a"}\n' * 100])
        with os.fdopen(read, "rb") as source, pytest.raises(PipeError, match="lines lost"):
            await asyncio.to_thread(forward, source, str(path))
        assert pipeline.records == 0
    finally:
        held.close()
        await held.wait_closed()
        await receiver.shutdown(asyncio.get_running_loop().time() + 2)


async def test_the_real_receiver_confirms_every_line(short_tmp: Path) -> None:
    path = short_tmp / "logs.sock"
    pipeline = Pipeline()
    receiver = LogsReceiver("pipe_ok", LogsReceiverConfig(unix=str(path)),
                            {Signal.LOGS: pipeline})
    await receiver.start()
    try:
        read, _ = feed([b'{"msg":"a"}\n' * 5000, b'{"msg":"last"}'])
        with os.fdopen(read, "rb") as source:
            stats = await asyncio.to_thread(forward, source, str(path))
        assert stats.lines == 5001
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 2)
    assert pipeline.records == 5001
