"""`sidecar pipe`: forward stdin (`node app.js | sidecar pipe`) to a running daemon's logs
socket, whole lines at a time.

Blocking I/O on purpose: while the daemon's pipeline is full it stops reading, `sendall`
blocks, the pipe fills and the app's own writes block, so nothing is dropped. Only whole
lines are sent (a final line without newline at end of input too), so a daemon restart
never turns one line into two records; after a lost connection the lines of the write that
failed are sent again once reconnected (at least once: the daemon may have read some). At
end of input it waits for the daemon to have read everything, and fails if it was dropped."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Final

_CHUNK: Final = 64 * 1024
# a line longer than this goes on in parts on the same connection (the daemon cuts it to
# its max_line_length anyway), so waiting for its newline never holds more than this
_MAX_PENDING: Final = 1024 * 1024


class PipeError(Exception):
    pass


@dataclass
class PipeStats:
    lines: int = 0
    bytes: int = 0
    reconnects: int = 0


def _connect(path: str, wait: float, sleep: Callable[[float], None]) -> socket.socket:
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise PipeError(f"no daemon listening at {path} ({exc.strerror or exc}); "
                                f"start `sidecar run` first") from None
            sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        return sock


def forward(source: BinaryIO, path: str, *, tee: BinaryIO | None = None,
            reconnect_wait: float = 30.0,
            sleep: Callable[[float], None] = time.sleep) -> PipeStats:
    """Send `source`'s lines to the unix socket at `path` until end of input."""
    stats = PipeStats()
    sock = _connect(path, 0.0, sleep)
    pending = b""  # the start of a line whose newline has not come yet
    fd = source.fileno()
    try:
        while True:
            data = os.read(fd, _CHUNK)
            if tee is not None and data:
                tee.write(data)
                tee.flush()
            if not data:  # end of input: a last line without newline gets one
                out, pending = (pending + b"\n" if pending else b""), b""
            else:
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut == 0 and len(pending) > _MAX_PENDING:
                    cut = len(pending)
                out, pending = pending[:cut], pending[cut:]
            if out:
                sock = _send(sock, out, path, reconnect_wait, sleep, stats)
                stats.lines += out.count(b"\n")
                stats.bytes += len(out)
            if not data:
                _confirm(sock, path, stats)
                return stats
    finally:
        sock.close()


def _send(sock: socket.socket, out: bytes, path: str, wait: float,
          sleep: Callable[[float], None], stats: PipeStats) -> socket.socket:
    while True:
        try:
            sock.sendall(out)
        except OSError:
            sock.close()
            sock = _connect(path, wait, sleep)
            stats.reconnects += 1
            continue
        return sock


def _confirm(sock: socket.socket, path: str, stats: PipeStats) -> None:
    """Wait until the daemon has read everything: it closes its side once it reads our
    end of input. A reset means it dropped the connection with our lines still unread
    (e.g. it was at `max_connections`): say so rather than report them sent."""
    try:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(_CHUNK):
            pass
    except OSError as exc:
        raise PipeError(f"the daemon at {path} closed the connection without reading all "
                        f"of it ({exc.strerror or exc}; at max_connections?): up to "
                        f"{stats.lines} lines lost") from None


def main(path: str, tee: bool) -> int:
    try:
        stats = forward(sys.stdin.buffer, path, tee=sys.stdout.buffer if tee else None)
    except PipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    note = f", {stats.reconnects} reconnects" if stats.reconnects else ""
    print(f"sidecar pipe: {stats.lines} lines to {path}{note}", file=sys.stderr)
    return 0
