"""A multi-pattern scan that says which segments of a buffer (the items of a raw OTLP
request, or the strings of one item) hold a possible match, for the redact processor.

Hyperscan scans every pattern it can compile at once, several times faster than one RE2
alternation (perf-notes.md; `bench/redact_bench.py`). It compiles in prefilter mode, whose
matches are a documented superset of the pattern's, with `.` matching newlines too (again
wider), and it reports *every* end offset of every pattern, so the segment holding a match
is always among those reported. Patterns it rejects, and patterns whose meaning in RE2's
Latin-1 mode it may not share (non-ASCII text, `\\p` classes, `\\x` escapes of
non-ASCII bytes, `\\C`, `\\Q`), are searched with one RE2 alternation instead: leftmost-first,
restarting after each hit segment, which also finds every segment holding a match.

A pattern may look at one byte after the text it is about (the key stems' `token[^s._]`):
so a match ending at `b` marks the segments holding `b - 1` and `b - 2`.

A `Form` may carry a `confirm` pattern: its fast form is a cheap superset whose hits are
kept only when `confirm` (RE2) matches within `reach` bytes before the hit's end (and one
after). The card rule uses it: 13 digits with separators is cheap to find, but UUIDs are
full of them; the exact pre-scan form, which tests the bytes around a run, costs ~2 ns/B
when run over everything and nothing when run around the rare hits. A `confirmer` names a
C function (`CONFIRMERS`) that decides the same as `confirm` on each window (property-
tested against RE2): one RE2 call per window costs ~1 µs, more than finding the hits.

A `Form` may also name a C `finder` (`FINDERS`) that gives exactly the end offsets Hyperscan
reports for its pattern (property-tested against Hyperscan), searched instead of Hyperscan:
the card rule's digit runs cost Hyperscan ~0.8 ns/B, as much as every other form together,
and a stride scan in C (sidecar/_spanwalk.c `digit_runs`) reads about one byte in 13 of
text without digits."""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hyperscan

from sidecar import _spanwalk
from sidecar.processors.redact_rules import Pattern, PatternError, compile_bytes

__all__ = ["CONFIRMERS", "FINDERS", "MAX_HITS", "Form", "MultiScan", "TooManyHits",
           "hyperscan_takes", "locate"]

# Reported matches per scan before it stops and the caller walks everything: each costs a
# Python call (~0.5 µs), so hostile text (megabytes of digits) stops at ~5 ms.
MAX_HITS = 10_000

_RE2_ONLY = ("\\p", "\\P", "\\x", "\\C", "\\Q")
_FLAGS = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_DOTALL


@dataclass(frozen=True, slots=True)
class Form:
    pattern: str
    # a hit ending at `to` counts only when this matches in data[to - reach:to + 1]; every
    # match of it must hold a match of `pattern` ending at its end or one byte before
    confirm: str | None = None
    reach: int = 0
    # a name in CONFIRMERS: its C function decides what `confirm` decides on each window
    confirmer: str = ""
    # a name in FINDERS: its C finder is searched for `pattern` instead of Hyperscan
    finder: str = ""


def _card_digits(data: bytes, limit: int) -> list[int] | None:
    return _spanwalk.digit_runs(data, 13, limit)


def _card_confirm(data: bytes, ends: Sequence[int], reach: int) -> list[int]:
    return _spanwalk.card_confirm(data, ends, reach)


# name -> (data, ends, reach) -> the ends whose window data[to - reach:to + 1] holds a
# match of the confirm pattern it stands for, in order
CONFIRMERS: dict[str, Callable[[bytes, Sequence[int], int], list[int]]] = {
    "card-prescan": _card_confirm,  # redact_rules.CARD_PRESCAN
}


# name -> (data, limit) -> the end offsets of every match of the pattern it stands for,
# ascending, each once (as Hyperscan reports them), or None when there are more than `limit`
FINDERS: dict[str, Callable[[bytes, int], list[int] | None]] = {
    "card-digits": _card_digits,  # redact_rules.CARD_DIGITS
}


class TooManyHits(Exception):
    """More than MAX_HITS matches: treat every segment as hit."""


_HEX_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _hyperscan_safe(form: str) -> bool:
    """ASCII text, and `\\xHH` escapes of ASCII bytes only (`\\x60` in gitleaks' rules):
    in both engines those mean one byte, whatever the case folding."""
    if not form.isascii() or "\\x{" in form:
        return False
    if any(int(h, 16) >= 0x80 for h in _HEX_ESCAPE.findall(form)):
        return False
    rest = _HEX_ESCAPE.sub("", form)
    return not any(s in rest for s in _RE2_ONLY)


# Compiling is the slow part (~20 ms a form); processors, the CLI and tests build the same
# rule sets again and again. Databases are read-only once compiled: only scratch is per scan.
@functools.lru_cache(maxsize=1024)
def _compiles(form: str) -> bool:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    try:
        db.compile(expressions=[form.encode()], ids=[0], elements=1, flags=[_FLAGS])
    except hyperscan.error:
        return False
    return True


@functools.lru_cache(maxsize=64)
def _database(forms: tuple[str, ...]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[f.encode() for f in forms], ids=list(range(len(forms))),
               elements=len(forms), flags=[_FLAGS] * len(forms))
    return db


def hyperscan_takes(form: str) -> bool:
    return _hyperscan_safe(form) and _compiles(form)


class MultiScan:
    """Compiled once, at start. Not thread-safe (one scratch space)."""

    def __init__(self, forms: Sequence[str | Form]) -> None:
        every = [f if isinstance(f, Form) else Form(f) for f in forms]
        self.forms = tuple(every)
        for f in every:
            if f.finder and f.finder not in FINDERS:
                raise ValueError(f"unknown finder {f.finder!r}")
            if f.confirmer and (f.confirmer not in CONFIRMERS or f.confirm is None):
                raise ValueError(f"unknown confirmer {f.confirmer!r}, or no confirm pattern")
        # (form index, finder) of the forms a C finder searches
        self._finders = [(i, FINDERS[f.finder]) for i, f in enumerate(every) if f.finder]
        # by index: equal forms (two gitleaks rules with one keyword) each keep their own
        fast_ids = [i for i, f in enumerate(every) if not f.finder
                    and _hyperscan_safe(f.pattern) and _compiles(f.pattern)]
        fast = [every[i].pattern for i in fast_ids]
        taken = {*fast_ids, *(i for i, _ in self._finders)}
        slow_ids = [i for i in range(len(every)) if i not in taken]
        # a form left to RE2 is searched as its exact confirm pattern when it has one
        slow = [every[i].confirm or every[i].pattern for i in slow_ids]
        # form index -> its confirm pattern, reach and C confirmer
        self._confirm: dict[int, tuple[Pattern, int, str]] = {
            i: (compile_bytes(f.confirm, capture=False), f.reach, f.confirmer)
            for i, f in enumerate(every) if f.confirm is not None and i not in slow_ids}
        self.hyperscan_forms = len(fast)
        self.finder_forms = len(self._finders)
        self.re2_forms = tuple(slow)
        # hyperscan id -> index in `forms`; the indices of the forms left to RE2
        self._fast_ids = fast_ids
        self.re2_indices = frozenset(slow_ids)
        self._db: Any = None
        self._scratch: Any = None
        if fast:
            self._db = _database(tuple(fast))
            self._scratch = hyperscan.Scratch(self._db)
        self._re2: Pattern | None = None
        if slow:
            try:
                self._re2 = compile_bytes("|".join(f"(?:{f})" for f in slow), capture=False)
            except PatternError:  # each compiled alone; together over RE2's memory budget
                self._re2 = None
                self._re2_each = tuple(compile_bytes(f, capture=False) for f in slow)
            else:
                self._re2_each = ()
        else:
            self._re2_each = ()

    def _confirmed(self, data: bytes, form: int, to: int) -> bool:
        check = self._confirm.get(form)
        if check is None:
            return True
        pattern, reach, _ = check
        return pattern.hit(data[max(0, to - reach):to + 1])

    def confirmed(self, data: bytes, form: int, ends: Sequence[int]) -> list[int]:
        """The hits of `form` (the index of a form with a confirm pattern) ending at `ends` that
        its confirm pattern keeps, in order: the same as `_confirmed` on each."""
        _, reach, confirmer = self._confirm[form]
        if confirmer:
            return CONFIRMERS[confirmer](data, ends, reach)
        return [to for to in ends if self._confirmed(data, form, to)]

    def any(self, data: bytes) -> bool:
        try:
            offsets = self.offsets(data)
        except TooManyHits:
            return True
        return bool(offsets) or self.re2_any(data)

    def _re2_patterns(self) -> tuple[Pattern, ...]:
        return (self._re2,) if self._re2 is not None else self._re2_each

    def re2_any(self, data: bytes) -> bool:
        return any(p.hit(data) for p in self._re2_patterns())

    def offsets(self, data: bytes) -> list[tuple[int, int]]:
        """(end offset, form index) of every confirmed match of a form searched by a C
        finder or Hyperscan, in no particular order. Raises TooManyHits when there are more
        than MAX_HITS matches, counted before confirming."""
        offsets: list[tuple[int, int]] = []
        pending: list[tuple[int, int]] = []  # (to, form index) of hits to confirm
        confirm = self._confirm
        seen = [0]
        for form, find in self._finders:
            ends = find(data, MAX_HITS - seen[0])
            if ends is None:
                raise TooManyHits
            seen[0] += len(ends)
            if form in confirm:
                pending += [(to, form) for to in ends]
            else:
                offsets += [(to, form) for to in ends]
        if self._db is not None:
            fast_ids = self._fast_ids

            def on_match(hs_id: int, _from: int, to: int, _flags: int, _ctx: object) -> bool:
                form = fast_ids[hs_id]
                if form in confirm:
                    pending.append((to, form))
                else:
                    offsets.append((to, form))
                seen[0] += 1
                return seen[0] > MAX_HITS

            try:
                self._db.scan(data, match_event_handler=on_match, scratch=self._scratch)
            except hyperscan.ScanTerminated:
                raise TooManyHits from None
        if pending:
            for form in sorted({f for _, f in pending}):
                ends = [to for to, f in pending if f == form]
                offsets += [(to, form) for to in self.confirmed(data, form, ends)]
        return offsets

    def re2_segments(self, data: bytes, starts: Sequence[int],
                     ends: Sequence[int]) -> tuple[set[int], bool]:
        """The segments where a form left to RE2 may match, and whether one may outside."""
        hit: set[int] = set()
        outside = False
        for pattern in self._re2_patterns():
            found, out = _re2_segments(pattern, data, starts, ends)
            hit |= found
            outside = outside or out
        return hit, outside

    def segments(self, data: bytes, starts: Sequence[int],
                 ends: Sequence[int]) -> tuple[dict[int, set[int]], bool]:
        """The segments [starts[k], ends[k]) (sorted, disjoint) that hold a possible match,
        each with the indices of the forms that may match in it (every form left to RE2,
        `re2_indices`, when the RE2 search hit it), and whether a match lies outside every
        segment. Raises TooManyHits."""
        hit: dict[int, set[int]] = {}
        outside = False
        for to, form in self.offsets(data):
            inside = False
            for k in locate(to, starts, ends):
                hit.setdefault(k, set()).add(form)
                inside = True
            outside = outside or not inside
        if self._re2_patterns():
            found, out = self.re2_segments(data, starts, ends)
            for k in found:
                hit.setdefault(k, set()).update(self.re2_indices)
            outside = outside or out
        return hit, outside


def locate(to: int, starts: Sequence[int], ends: Sequence[int]) -> set[int]:
    """The segments holding byte `to - 1` or `to - 2` of a match ending at `to`."""
    found: set[int] = set()
    for p in (to - 1, to - 2):
        k = bisect_right(starts, p) - 1
        if k >= 0 and p < ends[k]:
            found.add(k)
    return found


def _re2_segments(pattern: Pattern, data: bytes, starts: Sequence[int],
                  ends: Sequence[int]) -> tuple[set[int], bool]:
    """Leftmost-first search, restarting at the end of each hit segment (or the next
    segment after a hit outside them): a match starting in segment k is found unless an
    earlier search already marked k, so at most one search per segment."""
    hit: set[int] = set()
    outside = False
    pos, n, count = 0, len(data), 0
    while pos <= n:
        found = pattern.spans(data, pos)
        if found is None:
            break
        count += 1
        if count > MAX_HITS:
            raise TooManyHits
        o = found[0][0]
        k = bisect_right(starts, o) - 1
        if k >= 0 and o < ends[k]:
            hit.add(k)
            pos = max(ends[k], o + 1)
            continue
        outside = True
        pos = max(o + 1, starts[k + 1] if k + 1 < len(starts) else n + 1)
    return hit, outside
