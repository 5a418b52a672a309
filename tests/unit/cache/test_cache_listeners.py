"""Unix socket binding: stale files replaced, live sockets refused, mode applied."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from sidecar.errors import StartupError
from sidecar.net.listeners import bind_tcp, bind_unix


def test_mode_is_applied_and_parent_created(short_tmp: Path) -> None:
    path = str(short_tmp / "sub" / "c.sock")
    sock = bind_unix(path, "cache.unix", mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()


def test_stale_socket_from_a_crash_is_replaced(short_tmp: Path) -> None:
    path = str(short_tmp / "c.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)  # bound, never listening, then gone: what a crash leaves
    dead.close()
    assert os.path.exists(path)
    sock = bind_unix(path, "cache.unix")
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
    sock.close()


def test_live_socket_is_an_error_naming_the_setting(short_tmp: Path) -> None:
    path = str(short_tmp / "c.sock")
    live = bind_unix(path, "cache.unix")
    try:
        with pytest.raises(StartupError, match=r"^cache\.unix: .*already listening"):
            bind_unix(path, "cache.unix")
    finally:
        live.close()


def test_regular_file_is_not_replaced(short_tmp: Path) -> None:
    path = short_tmp / "c.sock"
    path.write_text("precious")
    with pytest.raises(StartupError, match="not a socket"):
        bind_unix(str(path), "cache.unix")
    assert path.read_text() == "precious"


def test_unwritable_directory(short_tmp: Path) -> None:
    if os.geteuid() == 0:
        target = "/proc/sidecar-test/c.sock"  # root can write anywhere else
    else:
        locked = short_tmp / "locked"
        locked.mkdir(mode=0o500)
        target = str(locked / "c.sock")
    with pytest.raises(StartupError, match=r"^cache\.unix: "):
        bind_unix(target, "cache.unix")


def test_too_long_path() -> None:
    with pytest.raises(StartupError, match="longer than 107"):
        bind_unix("/tmp/" + "x" * 120, "cache.unix")


def test_tcp_refuses_non_loopback_unless_allowed() -> None:
    with pytest.raises(StartupError, match="not loopback"):
        bind_tcp("0.0.0.0", 0, "cache.tcp.endpoint")
    sock = bind_tcp("127.0.0.1", 0, "cache.tcp.endpoint")
    sock.close()
