"""Sans-IO newline framing with a line-length guard, for the NDJSON receivers.

Feed bytes as they arrive, get complete lines back; `close()` returns a final line that had
no newline. A line is ended by `\\n` or `\\r\\n` (the terminator is not part of it). A line
longer than `max_length` comes out once, cut to `max_length` and flagged `truncated`, as
soon as it is known to be too long; the rest of it, up to its newline, is skipped without
being buffered. So one connection never buffers more than `max_length + 1` bytes, and an
over-long record is neither dropped nor split into several fake records.

Hand-written (a few lines over `bytes.find`): asyncio's `StreamReader.readuntil` raises on
an over-long line and leaves the rest in its buffer, and it needs a reader task per
connection where a `Protocol` needs none. Every input byte is scanned once: `find` only
looks at bytes not seen before, so the cost is linear in the input however it is chunked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Line:
    data: bytes
    truncated: bool = False  # the line was longer than max_length; data is its first part


class LineSplitter:
    __slots__ = ("_discarding", "_max", "_partial", "discarded_bytes", "truncated_lines")

    def __init__(self, max_length: int) -> None:
        if max_length <= 0:
            raise ValueError("max_length must be positive")
        self._max = max_length
        # The current line's start: at most max_length + 1 bytes, the extra one being the
        # "\r" of a "\r\n" that may end a line of exactly max_length.
        self._partial = bytearray()
        self._discarding = False  # inside an over-long line that was already handed out
        self.truncated_lines = 0
        self.discarded_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete line."""
        return len(self._partial)

    @property
    def discarding(self) -> bool:
        """Inside an over-long line already handed out: input up to the next newline is
        skipped."""
        return self._discarding

    def skip_line(self) -> None:
        """Skip input up to and including the next newline: for a reader that starts in the
        middle of a line (a file tailer resuming inside an over-long line, or starting at
        the end of a file whose last line is unfinished)."""
        self._partial.clear()
        self._discarding = True

    def cut(self) -> Line | None:
        """The unfinished line so far, now, flagged `truncated`; the rest of it up to its
        newline is skipped. For a caller out of memory budget for unfinished lines."""
        if not self._partial:
            return None
        line = bytes(self._partial)
        self._partial.clear()
        self._discarding = True
        self.truncated_lines += 1
        return Line(line[:self._max], truncated=True)

    def feed(self, data: bytes) -> list[Line]:
        lines: list[Line] = []
        limit = self._max + 1
        pos, size = 0, len(data)
        while pos < size:
            newline = data.find(b"\n", pos)
            if self._discarding:
                if newline < 0:
                    self.discarded_bytes += size - pos
                    break
                self.discarded_bytes += newline - pos
                self._discarding = False
                pos = newline + 1
                continue
            stop = size if newline < 0 else newline
            partial = self._partial
            take = min(stop - pos, limit - len(partial))
            skipped = stop - pos - take
            if newline < 0:
                partial += data[pos:pos + take]
                if skipped or (len(partial) == limit and not partial.endswith(b"\r")):
                    # longer than max_length whatever follows: out now, skip the rest
                    lines.append(self._cut(bytes(partial), skipped))
                    partial.clear()
                    self._discarding = True
                break
            if partial:
                partial += data[pos:pos + take]
                line = bytes(partial)
                partial.clear()
            else:
                line = data[pos:pos + take]
            pos = newline + 1
            if not skipped and line.endswith(b"\r"):
                line = line[:-1]
            lines.append(self._cut(line, skipped) if skipped or len(line) > self._max
                         else Line(line))
        return lines

    def split(self, data: bytes) -> list[bytes | Line]:
        """`feed`, with each line that was not cut as its bytes (not a `Line`): the whole
        lines inside `data` come from one `bytes.split`, not a `find` per line, for a reader
        of large chunks (the file tailer). The same lines, counts and state as `feed`."""
        last = data.rfind(b"\n")
        if last < 0:
            return _plain(self.feed(data))
        out: list[bytes | Line] = []
        start = 0
        if self._partial or self._discarding:  # the first line continues earlier input
            start = data.find(b"\n") + 1
            out = _plain(self.feed(data[:start]))
        if start <= last:
            middle = data[start:last]
            parts: list[bytes] = middle.split(b"\n")
            if max(map(len, parts)) > self._max:
                out += _plain(self.feed(data[start:last + 1]))
            else:
                if b"\r" in middle:
                    parts = [p[:-1] if p.endswith(b"\r") else p for p in parts]
                out += parts
        if last + 1 < len(data):
            out += _plain(self.feed(data[last + 1:]))
        return out

    def close(self) -> Line | None:
        """The final line if the input did not end with a newline (a trailing "\r" is taken
        for a cut-off "\r\n"), and a reset for new input."""
        line = bytes(self._partial)
        self._partial = bytearray()
        self._discarding = False
        if not line:
            return None
        if line.endswith(b"\r"):
            line = line[:-1]
        return Line(line)

    def _cut(self, line: bytes, skipped: int) -> Line:
        self.truncated_lines += 1
        self.discarded_bytes += skipped + max(len(line) - self._max, 0)
        return Line(line[:self._max], truncated=True)

    def __repr__(self) -> str:
        return (f"LineSplitter(max_length={self._max}, buffered={len(self._partial)}, "
                f"discarding={self._discarding}, truncated_lines={self.truncated_lines})")


def _plain(lines: list[Line]) -> list[bytes | Line]:
    return [line if line.truncated else line.data for line in lines]
