"""Bind listening sockets the same way for every component.

Unix sockets: a socket file left by a crashed process is replaced, one a live process still
listens on is an error (we try to connect to tell them apart), and the file gets the
configured mode and group. TCP: loopback unless the caller explicitly allows otherwise.
Every failure is a StartupError that names the setting, so the operator knows what to fix."""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from sidecar.errors import StartupError
from sidecar.net.security import is_loopback_host

# sun_path is 108 bytes on Linux including the terminating NUL
MAX_UNIX_PATH = 107


def bind_unix(path: str, setting: str, mode: int = 0o660, group: str | None = None,
              backlog: int = 1024) -> socket.socket:
    """A listening unix socket at `path`; `setting` (e.g. "cache.unix") prefixes errors."""
    fail = prepare_unix(path, setting)
    gid = _gid(group, fail)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if gid != -1:
            os.chown(path, -1, gid)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise fail(exc.strerror or str(exc)) from exc
    return sock


def prepare_unix(path: str, setting: str) -> Callable[[str], StartupError]:
    """Check the path, create its directory and remove a stale socket file, for a server
    that binds the path itself (grpc); returns the error maker for the setting."""
    fail = prepare_fail(path, setting)
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise fail(f"path longer than {MAX_UNIX_PATH} bytes (unix socket limit)")
    parent = Path(path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create directory {parent}: {exc.strerror}") from exc
    _remove_stale(path, fail)
    return fail


def own_unix(path: str, setting: str, mode: int, group: str | None) -> None:
    """Give a socket file bound by someone else (grpc) the configured mode and group."""
    fail = prepare_fail(path, setting)
    gid = _gid(group, fail)
    try:
        os.chmod(path, mode)
        if gid != -1:
            os.chown(path, -1, gid)
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from exc


def prepare_fail(path: str, setting: str) -> Callable[[str], StartupError]:
    return lambda reason: StartupError(f"{setting}: {path}: {reason}")


def _gid(group: str | None, fail: Callable[[str], StartupError]) -> int:
    if group is None:
        return -1
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise fail(f"unknown group {group!r}") from None


def _remove_stale(path: str, fail: Callable[[str], StartupError]) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise fail("exists and is not a socket (refusing to replace it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise fail(f"cannot check the existing socket: {exc.strerror}") from exc
        # nobody listens: a leftover from a crash; replace it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise fail("another process is already listening on this socket")


def socket_inode(path: str) -> int | None:
    with contextlib.suppress(OSError):
        return os.lstat(path).st_ino
    return None


def remove_unix(path: str, inode: int | None) -> None:
    """Remove our socket file at shutdown, unless another process has replaced it since."""
    if inode is not None and socket_inode(path) == inode:
        with contextlib.suppress(OSError):
            os.unlink(path)


def bind_tcp(host: str, port: int, setting: str, allow_remote: bool = False,
             backlog: int = 1024) -> socket.socket:
    """A listening TCP socket; anything but loopback needs allow_remote."""
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise StartupError(f"{setting}: {host}: not an IP address") from None
    if not is_loopback_host(host) and not allow_remote:
        raise StartupError(f"{setting}: {host}:{port}: not loopback (allow_remote is false)")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(address), port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"{setting}: {host}:{port}: {exc.strerror or exc}") from exc
    return sock
