"""Sans-IO RESP parser (requests) and serializer (replies), RESP2 and RESP3.

Written by hand on purpose: no maintained Python library parses the *server* side of RESP
quickly. hiredis and redis-py's parsers read replies (many types, client state); a server
only ever reads arrays of bulk strings (or inline commands), which this module does with
`bytes.find` and slicing, a handful of C calls per argument. Every size a client controls
is checked against a limit before anything is buffered, so memory stays bounded no matter
what arrives."""

from __future__ import annotations

from typing import Final

Command = list[bytes]


class ProtocolError(Exception):
    """The client broke the protocol; the message is the `-ERR` text Redis would send."""


# a RESP header line ("*123\r\n", "$45\r\n") is short; anything longer is garbage
_MAX_HEADER: Final = 32
# bytes a buffered argument costs beyond its payload (bytes object, list slot), so that a
# million empty arguments cannot slip under the request budget
_ARG_OVERHEAD: Final = 48


class RespParser:
    """Feed bytes in, get complete commands out. Keeps the partial command between calls."""

    __slots__ = ("_args", "_buf", "_max_array", "_max_bulk", "_max_inline", "_max_request",
                 "_need", "_size", "_want")

    def __init__(self, max_bulk: int = 512 * 1024 * 1024, max_array: int = 1024 * 1024,
                 max_inline: int = 64 * 1024, max_request: int = 1024 * 1024 * 1024) -> None:
        self._max_bulk = max_bulk
        self._max_array = max_array
        self._max_inline = max_inline
        self._max_request = max_request
        self._buf = bytearray()  # unparsed tail (never holds a parsed argument)
        self._need = 0  # the tail must reach this length before parsing can progress
        self._args: Command | None = None  # arguments of a multibulk command in progress
        self._want = 0  # arguments still missing from it
        self._size = 0  # bytes (with overhead) buffered for it

    def idle(self) -> bool:
        """No partial command held: the next bytes start a new command."""
        return not self._buf and self._args is None

    def buffered(self) -> int:
        """Bytes held for incomplete input: the fuzz tests bound this."""
        return len(self._buf) + self._size

    def feed(self, data: bytes) -> list[Command]:
        if self._buf or self._args is not None:
            return self._feed_slow(data)
        # Fast path: one C-level split into CRLF-separated tokens, then a walk that checks
        # each header against a table of common lengths (no slicing, no int()). It takes
        # only complete, plain commands; at the first anything else (a partial command, a
        # value containing CRLF, inline syntax, a limit, garbage) the rest of the buffer
        # goes to the exact parser below, which also produces every error.
        tokens = data.split(b"\r\n")
        last = len(tokens) - 1  # tokens[last] is what follows the final CRLF
        out: list[Command] = []
        counts = _ARRAY_HEADERS
        lengths = BULK_HEADERS
        t = 0
        while t < last:
            count = counts.get(tokens[t])
            if count is None or t + 2 * count >= last:  # the command is not all there
                break
            args: Command = []
            j = t + 1
            for _ in range(count):
                value = tokens[j + 1]
                if lengths.get(tokens[j]) != len(value):
                    break
                args.append(value)
                j += 2
            else:
                out.append(args)
                t = j
                continue
            break
        if t == last and tokens[last] == b"":
            return out
        # hand over the rest, from the byte offset of token t
        offset = sum(map(len, tokens[:t])) + 2 * t
        if offset:
            out.extend(self._feed_slow(data[offset:]))
            return out
        return self._feed_slow(data)

    def _feed_slow(self, data: bytes) -> list[Command]:
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                # waiting for the rest of a long bulk: no re-scan, no copy (O(n) overall)
                return []
            data = bytes(self._buf)
            self._buf = bytearray()
        self._need = 0
        out: list[Command] = []
        pos = 0
        end = len(data)
        args = self._args
        want = self._want
        find = data.find
        while pos < end:
            if args is None:
                if data[pos] != 42:  # not '*': an inline command (telnet, old scripts)
                    eol = find(b"\n", pos)
                    if eol < 0:
                        if end - pos > self._max_inline:
                            raise ProtocolError("Protocol error: too big inline request")
                        break
                    if eol - pos > self._max_inline:
                        raise ProtocolError("Protocol error: too big inline request")
                    parts = data[pos:eol].split()
                    pos = eol + 1
                    if parts:
                        out.append(parts)
                    continue
                eol = find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_HEADER:
                        raise ProtocolError("Protocol error: too big mbulk count string")
                    break
                try:
                    count = int(data[pos + 1:eol])
                except ValueError:
                    raise ProtocolError("Protocol error: invalid multibulk length") from None
                if count > self._max_array:
                    raise ProtocolError("Protocol error: invalid multibulk length")
                pos = eol + 2
                if count <= 0:  # Redis ignores *0 and *-1
                    continue
                args = []
                want = count
                self._size = 0
            while want:
                if pos >= end:
                    break
                if data[pos] != 36:  # '$'
                    raise ProtocolError(f"Protocol error: expected '$', got '{chr(data[pos])}'")
                eol = find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > _MAX_HEADER:
                        raise ProtocolError("Protocol error: too big bulk count string")
                    break
                try:
                    length = int(data[pos + 1:eol])
                except ValueError:
                    raise ProtocolError("Protocol error: invalid bulk length") from None
                if length < 0 or length > self._max_bulk:
                    raise ProtocolError("Protocol error: invalid bulk length")
                stop = eol + 2 + length
                if stop + 2 > end:
                    size = self._size + length + _ARG_OVERHEAD
                    if size > self._max_request:
                        raise ProtocolError("Protocol error: request too large")
                    self._need = stop + 2 - pos
                    break
                if data[stop:stop + 2] != b"\r\n":
                    raise ProtocolError("Protocol error: bulk not terminated by CRLF")
                self._size += length + _ARG_OVERHEAD
                if self._size > self._max_request:
                    raise ProtocolError("Protocol error: request too large")
                args.append(data[eol + 2:stop])
                pos = stop + 2
                want -= 1
            if want:
                break
            out.append(args)
            args = None
            self._size = 0
        self._args = args
        self._want = want
        if pos < end:
            self._buf = bytearray(data[pos:])
            if self._need <= len(self._buf):
                self._need = len(self._buf) + 1
        else:
            self._need = 0
        return out


# header token -> number, for the sizes clients send all the time; anything else (larger,
# malformed, negative) misses the table and takes the exact path
_ARRAY_HEADERS: Final = {b"*%d" % n: n for n in range(1, 1025)}
BULK_HEADERS: Final = {b"$%d" % n: n for n in range(16385)}


# --- replies -------------------------------------------------------------------------------
# Constants for the replies sent most; building bytes once is cheaper than formatting.
OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
NIL2: Final = b"$-1\r\n"
NIL3: Final = b"_\r\n"
ZERO: Final = b":0\r\n"
ONE: Final = b":1\r\n"


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def error(message: str) -> bytes:
    # a reply line cannot contain CR/LF; Redis replaces them the same way
    return b"-" + message.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def simple(text: str) -> bytes:
    return b"+" + text.encode() + b"\r\n"


def array_of_bulks(values: list[bytes | None], nil: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(values)]
    for value in values:
        parts.append(nil if value is None else b"$%d\r\n%b\r\n" % (len(value), value))
    return b"".join(parts)


class Status(str):
    """A simple string (+OK) rather than a bulk string in `encode`."""

    __slots__ = ()


def encode(value: object, resp3: bool) -> bytes:
    """Encode a nested reply (HELLO, COMMAND DOCS, CLIENT INFO...): not the hot path."""
    out: list[bytes] = []
    _encode(value, resp3, out)
    return b"".join(out)


def _encode(value: object, resp3: bool, out: list[bytes]) -> None:
    if value is None:
        out.append(NIL3 if resp3 else NIL2)
    elif isinstance(value, bool):
        out.append((b"#t\r\n" if value else b"#f\r\n") if resp3 else (ONE if value else ZERO))
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, Status):
        out.append(simple(value))
    elif isinstance(value, str):
        out.append(bulk(value.encode()))
    elif isinstance(value, bytes):
        out.append(bulk(value))
    elif isinstance(value, dict):
        if resp3:
            out.append(b"%%%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % (2 * len(value)))
        for key, item in value.items():
            _encode(key, resp3, out)
            _encode(item, resp3, out)
    elif isinstance(value, list | tuple | set):
        out.append((b"~%d\r\n" if resp3 and isinstance(value, set) else b"*%d\r\n") % len(value))
        for item in value:
            _encode(item, resp3, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")
