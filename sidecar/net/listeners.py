"""Bind listening sockets the same way for every component.

Unix sockets: a socket file left by a crashed process is replaced, one a live process still
listens on is an error (we try to connect to tell them apart), and the file has the
configured mode and group before it appears at its path (`place_unix`: never wider).
TCP: loopback unless the caller explicitly allows otherwise.
Every failure is a StartupError that names the setting, so the operator knows what to fix."""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import os
import secrets
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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        place_unix(path, setting, mode, group, sock.bind)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise prepare_fail(path, setting)(exc.strerror or str(exc)) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def place_unix(path: str, setting: str, mode: int, group: str | None,
               bind: Callable[[str], object]) -> None:
    """Have `bind(temporary path)` create the socket file (our own bind, or grpc's), then
    put it at `path` with the configured mode and group, so that the file at `path` is
    never wider than `mode`. bind() creates the file with the process umask (0777 & ~umask,
    often 0755 or 0777): done in a fresh 0700 directory beside `path`, nobody else can reach
    it before chmod and chown; a hard link then publishes it (link, unlike rename, fails
    when a socket appeared at `path` meanwhile instead of replacing it)."""
    fail = prepare_unix(path, setting)
    gid = _gid(group, fail)
    directory = _private_dir(Path(path), fail)
    temporary = str(directory / "s")
    try:
        bind(temporary)
        os.chmod(temporary, mode)
        if gid != -1:
            os.chown(temporary, -1, gid)
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise fail("another process created a file here while we bound it") from None
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _private_dir(path: Path, fail: Callable[[str], StartupError]) -> Path:
    """A new 0700 directory beside `path`, named so that `<it>/s` is no longer than `path`
    when possible (sun_path limit)."""
    room = max(4, min(16, len(path.name) - 3))  # "." + name + "/s"
    for _ in range(16):
        candidate = path.parent / f".{secrets.token_hex(8)[:room]}"
        if len(os.fsencode(candidate)) + 2 > MAX_UNIX_PATH:
            raise fail(f"path too long to bind safely (a unix socket path is at most "
                       f"{MAX_UNIX_PATH} bytes, and this one needs a few to spare)")
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise fail(f"cannot create a directory beside it: {exc.strerror}") from exc
        return candidate
    raise fail("cannot create a private directory beside it")  # pragma: no cover


def prepare_unix(path: str, setting: str) -> Callable[[str], StartupError]:
    """Check the path, create its directory and remove a stale socket file; returns the
    error maker for the setting."""
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
