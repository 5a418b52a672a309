"""A unix socket file is never wider than its configured mode, whatever the umask: it is
bound in a private directory, given its mode and group there, then linked into place."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.config import GrpcListenerConfig
from sidecar.errors import StartupError
from sidecar.net import listeners
from sidecar.net.listeners import bind_unix, place_unix
from sidecar.receivers import otlp_grpc
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a plain bind() creates the socket file 0777."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_socket_appears_with_its_mode(short_tmp: Path, open_umask: None) -> None:
    path = short_tmp / "run" / "cache.sock"
    seen: list[tuple[bool, int, int]] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def bind(temporary: str) -> None:
        sock.bind(temporary)
        # at bind time: nothing at the configured path yet, and the file bound with the
        # open umask is in a directory only we can enter
        seen.append((path.exists(), mode(temporary), mode(Path(temporary).parent)))

    try:
        place_unix(str(path), "cache.unix", 0o600, None, bind)
        sock.listen(1)
        assert seen == [(False, 0o777, 0o700)]
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode(path) == 0o600
        assert sorted(os.listdir(path.parent)) == ["cache.sock"]  # private dir removed
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))  # the linked name reaches the listening socket
        client.close()
    finally:
        sock.close()


def test_bind_unix_uses_it(short_tmp: Path, open_umask: None,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = listeners.place_unix

    def spy(path: str, setting: str, mode_: int, group: str | None,
            bind: Callable[[str], object]) -> None:
        calls.append(path)
        real(path, setting, mode_, group, bind)

    monkeypatch.setattr(listeners, "place_unix", spy)
    path = short_tmp / "logs.sock"
    sock = bind_unix(str(path), "receivers.logs.unix", 0o640)
    try:
        assert calls == [str(path)]
        assert mode(path) == 0o640
    finally:
        sock.close()


def test_a_file_appearing_meanwhile_is_not_replaced(short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def bind(temporary: str) -> None:
        sock.bind(temporary)
        path.write_text("someone else's")

    try:
        with pytest.raises(StartupError, match="another process created a file here"):
            place_unix(str(path), "cache.unix", 0o600, None, bind)
    finally:
        sock.close()
    assert path.read_text() == "someone else's"
    assert os.listdir(short_tmp) == ["s.sock"]


def test_a_failed_bind_leaves_nothing_behind(short_tmp: Path) -> None:
    def bind(temporary: str) -> None:
        raise StartupError("grpc could not bind")

    with pytest.raises(StartupError, match="grpc could not bind"):
        place_unix(str(short_tmp / "x.sock"), "cache.unix", 0o600, None, bind)
    assert os.listdir(short_tmp) == []


def test_a_path_at_the_limit_with_no_room_is_refused(short_tmp: Path) -> None:
    parent = short_tmp / ("d" * (listeners.MAX_UNIX_PATH - len(str(short_tmp)) - 4))
    path = parent / "ab"  # exactly at the limit: "<parent>/.xxxx/s" would not fit
    assert len(str(path)) == listeners.MAX_UNIX_PATH
    with pytest.raises(StartupError, match="path too long to bind safely"):
        bind_unix(str(path), "cache.unix")


async def test_grpc_socket_is_placed_with_its_mode(
        short_tmp: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """grpc binds the path itself: it binds the private one and the file is published with
    its mode (before, the configured path existed with the umask's mode until chmod)."""
    path = short_tmp / "otlp.sock"
    seen: list[tuple[bool, int]] = []
    real = listeners.place_unix

    def spy(target: str, setting: str, mode_: int, group: str | None,
            bind: Callable[[str], object]) -> None:
        def observed(temporary: str) -> None:
            bind(temporary)
            seen.append((Path(target).exists(), mode(temporary)))

        real(target, setting, mode_, group, observed)

    monkeypatch.setattr(otlp_grpc, "place_unix", spy)
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(
        endpoint=None, unix=str(path), unix_mode=0o600), {})
    await receiver.start()
    try:
        assert len(seen) == 1  # grpc bound the private path...
        assert seen[0] == (False, 0o777)  # ...while the configured one was still free
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert mode(path) == 0o600
        assert os.listdir(short_tmp) == ["otlp.sock"]
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert not path.exists()
