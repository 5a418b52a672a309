"""Redis's glob patterns (`SCAN ... MATCH`), matched in bounded time. Sans-IO.

Semantics are those of Redis's `stringmatchlen` as SCAN applies it: `*` (any run, and a
bare `*` matches every key, the empty key too), `?` (one byte), `[...]` (ranges, `^`
negation, `\\` escapes inside; an unterminated `[` ends at the end of the pattern, `[]`
matches nothing), `\\x` (a literal x; a trailing `\\` is a literal backslash), an empty key
only matched by an empty or bare-`*` pattern, and the CVE-2022-36021 nesting limit: past
1000 `*` groups a pattern matches nothing unless the 1001st is the pattern's end. Range ends
compare as C `char`, which is signed on x86-64 where Redis is built (`[a-\\xff]` is the
range -1..97), as the tests check against a real redis-server.

Written here because no library does it: `fnmatch` has other syntax and its translation is
super-linear in the pattern, and a backtracking regex over the whole pattern is exponential
in the number of stars. Here the pattern is cut at its `*` groups into fixed-length
segments; a key matches when the first segment matches at its start, the last at its end,
and each one between at its leftmost place after the previous one (leftmost is always a
safe choice between stars), so no position is tried twice for a segment: at most
O(len(pattern) x len(key)) byte comparisons, done by `bytes.find` for plain segments and
by `re` for segments with `?` or classes (a fixed-length regex, no quantifier, so it cannot
backtrack). Matching is a generator that yields after each slice of about `budget`
comparisons, so a caller on an event loop can let other work run between slices."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from typing import Final

# Redis's "protection against abusive patterns" (util.c, CVE-2022-36021)
MAX_NESTING: Final = 1000
# comparisons one search call may do before the matcher checks its budget again
_WINDOW_WORK: Final = 1 << 16
# what `re` testing one `[...]` element costs, in units of a byte comparison (a literal or
# `?`); `re` over a 1000-element `[^b]` segment measured up to ~300x a `bytes.find` byte:
# at 256 the worst slice of a 1M-comparison budget took ~10 ms (64 left ~100 ms)
_CLASS_COST: Final = 256

_HEX: Final = [b"\\x%02x" % i for i in range(256)]
_FLIP: Final = bytes.maketrans(b"\x00\x01", b"\x01\x00")
_RUNS: Final = re.compile(rb"\x01+")


class Budget:
    """Comparisons left before the matcher yields; refilled to `size` when it resumes."""

    __slots__ = ("left", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = size


class _Segment:
    """Fixed-length run of single-byte elements between two `*` groups."""

    __slots__ = ("cost", "length", "literal", "regex")

    def __init__(self, elements: list[bytes | bytearray]) -> None:
        self.length = len(elements)
        # an element is one byte (a literal) or a 256-byte membership table (`?`: all ones);
        # cost: budget units one tried position costs
        classes = sum(1 for e in elements if len(e) > 1 and e.count(1) < 256)
        self.cost = max(1, self.length + (_CLASS_COST - 1) * classes)
        if all(len(e) == 1 for e in elements):
            self.literal: bytes | None = b"".join(elements)
            self.regex: re.Pattern[bytes] | None = None
        else:
            self.literal = None
            self.regex = re.compile(b"".join(map(_element_regex, elements)), re.DOTALL)

    def at(self, key: bytes, pos: int) -> bool:
        if self.literal is not None:
            return key.startswith(self.literal, pos)
        assert self.regex is not None
        return self.regex.match(key, pos) is not None

    def find(self, key: bytes, start: int, end: int) -> int:
        """Leftmost position p in [start, end - length] where the segment matches, else -1."""
        if self.literal is not None:
            return key.find(self.literal, start, end)
        assert self.regex is not None
        found = self.regex.search(key, start, end)
        return -1 if found is None else found.start()


class Glob:
    """A compiled pattern. Compiling is linear in the pattern's length."""

    __slots__ = ("_first", "_last", "_middle", "_min_length", "_never", "_stars",
                 "match_all", "pattern")

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern
        # SCAN and KEYS answer a bare `*` without matching (the empty key included)
        self.match_all = pattern == b"*"
        segments, stars, never, last_is_star = _parse(pattern)
        if stars > MAX_NESTING and not (stars == MAX_NESTING + 1 and last_is_star):
            never = True  # the 1001st star group is reached nested 1001 deep: Redis gives up
        self._never = never
        self._stars = stars
        compiled = [] if never else [_Segment(s) for s in segments]
        self._first = compiled[0] if compiled else None
        self._last = compiled[-1] if len(compiled) > 1 else None
        self._middle = compiled[1:-1]
        self._min_length = sum(len(s) for s in segments)

    def __repr__(self) -> str:
        return f"Glob({self.pattern[:60]!r}, stars={self._stars}, never={self._never})"

    def match(self, key: bytes) -> bool:
        """Match at once (no slices): for short keys and tests."""
        run = self.steps(key, Budget(1 << 62))
        try:
            while True:
                next(run)
        except StopIteration as stop:
            return bool(stop.value)

    def filter(self, keys: Iterable[bytes], budget: int) -> Generator[None, None, list[bytes]]:
        """The keys that match, in order; yields after about `budget` comparisons."""
        meter = Budget(budget)
        found: list[bytes] = []
        for key in keys:
            meter.left -= 1  # a key costs something even when it is rejected at once
            if (yield from self.steps(key, meter)):
                found.append(key)
            if meter.left <= 0:
                yield
                meter.left = budget
        return found

    def steps(self, key: bytes, meter: Budget) -> Generator[None, None, bool]:
        """Match `key`, charging `meter`; yields whenever `meter.left` is used up (the caller
        lets other work run, then resumes it); the return value is the verdict."""
        if self.match_all:
            return True
        if not key:
            return not self.pattern
        if self._never or len(key) < self._min_length:
            return False
        first, last = self._first, self._last
        assert first is not None
        meter.left -= first.cost
        if not first.at(key, 0):
            return False
        if last is None:  # no star: the segment is the whole pattern
            return len(key) == first.length
        end = len(key) - last.length
        meter.left -= last.cost
        if not last.at(key, end):
            return False
        pos = first.length
        for segment in self._middle:
            length = segment.length
            window = max(1, _WINDOW_WORK // segment.cost)
            while True:
                if meter.left <= 0:
                    yield
                    meter.left = meter.size
                stop = min(end, pos + window + length - 1)
                if stop - pos < length:
                    return False  # no room left for this segment before the last one
                meter.left -= (stop - pos - length + 1) * segment.cost
                found = segment.find(key, pos, stop)
                if found >= 0:
                    pos = found + length
                    break
                pos = stop - length + 1
        return True


def _element_regex(element: bytes | bytearray) -> bytes:
    if len(element) == 1:
        return _HEX[element[0]]
    members = element.count(1)
    if members == 256:
        return b"."
    parts = [b"["]
    for run in _RUNS.finditer(element):
        first, last = run.start(), run.end() - 1
        parts.append(_HEX[first] if first == last else _HEX[first] + b"-" + _HEX[last])
    parts.append(b"]")
    return b"".join(parts)


def _parse(pattern: bytes) -> tuple[list[list[bytes | bytearray]], int, bool, bool]:
    """Segments between `*` groups, the number of groups, whether some element can never
    match (an empty class), and whether the pattern ends with a `*` group. Walks the
    pattern exactly as `stringmatchlen` does, so every quirk of its bracket parsing is kept."""
    segments: list[list[bytes | bytearray]] = [[]]
    stars = 0
    never = False
    last_is_star = False
    n = len(pattern)
    i = 0
    while i < n:
        c = pattern[i]
        last_is_star = False
        if c == 0x2A:  # '*'
            while i < n and pattern[i] == 0x2A:
                i += 1
            stars += 1
            segments.append([])
            last_is_star = True
            continue
        if c == 0x3F:  # '?'
            element: bytes | bytearray = bytearray(b"\x01" * 256)
        elif c == 0x5B:  # '['
            i, element = _parse_class(pattern, i + 1)
            if not element.count(1):
                never = True
        else:
            if c == 0x5C and n - i >= 2:  # '\\': the next byte is literal
                i += 1
            element = pattern[i:i + 1]
        segments[-1].append(element)
        i += 1
    return segments, stars, never, last_is_star


def _parse_class(pattern: bytes, i: int) -> tuple[int, bytearray]:
    """Parse after `[`; returns the index of the class's last byte and its membership table."""
    n = len(pattern)
    table = bytearray(256)
    negate = i < n and pattern[i] == 0x5E  # '^'
    if negate:
        i += 1
    while True:
        if i < n and pattern[i] == 0x5C and n - i >= 2:  # '\\'
            i += 1
            table[pattern[i]] = 1
        elif i < n and pattern[i] == 0x5D:  # ']'
            break
        elif i >= n:  # unterminated: the class ends with the pattern
            i -= 1
            break
        elif n - i >= 3 and pattern[i + 1] == 0x2D:  # 'x-y'
            _mark_range(table, _signed(pattern[i]), _signed(pattern[i + 2]))
            i += 2
        else:
            table[pattern[i]] = 1
        i += 1
    if negate:
        table = bytearray(table.translate(_FLIP))
    return i, table


def _signed(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _mark_range(table: bytearray, start: int, end: int) -> None:
    """Mark bytes whose signed value lies in [start, end] (ends in either order)."""
    if start > end:
        start, end = end, start
    for low, high in ((max(start, 0), end), (start + 256, min(end, -1) + 256)):
        if low <= high:
            table[low:high + 1] = b"\x01" * (high - low + 1)
