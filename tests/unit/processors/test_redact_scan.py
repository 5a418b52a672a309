"""The pre-scan's C confirm (`MultiScan.confirmed` with a confirmer) keeps exactly the
hits that confirming each hit's own window with RE2 keeps, and the direct RE2 calls of the walk
(`Re2Pattern.spans`, `Redactor._matches`) find what google-re2's `finditer` finds."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.loadgen import build_workload
from sidecar import _spanwalk
from sidecar.processors.redact import Redactor, RedactSettings
from sidecar.processors.redact_rules import (
    BUILTIN_RULES,
    CARD_CONFIRMER,
    CARD_DIGITS,
    CARD_FINDER,
    CARD_PRESCAN,
    CARD_REACH,
    compile_bytes,
)
from sidecar.processors.redact_scan import MAX_HITS, Form, MultiScan, TooManyHits, locate

CARD = MultiScan([Form(CARD_DIGITS, CARD_PRESCAN, CARD_REACH)])  # RE2 on each window
# the default: the C finder, and the C confirm
CARD_C = MultiScan([Form(CARD_DIGITS, CARD_PRESCAN, CARD_REACH, CARD_CONFIRMER, CARD_FINDER)])
CONFIRM = compile_bytes(CARD_PRESCAN, capture=False)

# digit runs with separators, the bytes the arms test around them, length-byte values
# 13..37 (the byte before a whole-string run)
digit_text = st.lists(st.sampled_from([
    "4111", "1", "0", "9", " ", "-", "_", "$", "a", "Z", ".", "\x0d", "\x10", "\x24",
    "\x25", "\n", "4111 1111 1111 1111", "5500-0000-0000-0004", "1234567890123",
    "12345678901234567890", "$1234567890123456789",
]), max_size=24).map(lambda parts: "".join(parts).encode())


def _own_window(data: bytes, to: int) -> bool:  # what one search per hit decides
    return CONFIRM.search(data[max(0, to - CARD_REACH):to + 1]) is not None


@settings(max_examples=600, deadline=None)
@given(digit_text, st.data())
def test_c_confirm_keeps_what_each_window_keeps(data: bytes, draw: st.DataObject) -> None:
    ends = sorted(draw.draw(st.lists(st.integers(0, len(data) + 2), max_size=12)))
    want = [to for to in ends if _own_window(data, to)]
    assert CARD.confirmed(data, 0, ends) == want
    assert CARD_C.confirmed(data, 0, ends) == want


@settings(max_examples=300, deadline=None)
@given(digit_text)
def test_card_offsets_are_the_confirmed_digit_runs(data: bytes) -> None:
    fast = MultiScan([CARD_DIGITS])  # the unconfirmed form: every digit-run end
    every = [to for to, _ in fast.offsets(data)]
    assert sorted(to for to, _ in CARD.offsets(data)) == sorted(
        to for to in every if _own_window(data, to))


def test_c_confirm_refuses_a_negative_end() -> None:
    # data[max(0, to - reach):to + 1] counts a negative end from the back: no window
    with pytest.raises(ValueError, match="negative"):
        _spanwalk.card_confirm(b"1" * 40, [-3], CARD_REACH)


def test_c_confirm_on_every_context_byte() -> None:
    # every arm's context classes, before and after runs of 12..21 digits, whole and
    # split by separators, at every place in a window cut short by `reach`
    runs = [b"1" * k for k in range(12, 22)] + [
        b"4111 1111 1111 1111", b"4111-1111-1111-1111", b"1 2 3 4 5 6 7 8 9 0 1 2 3",
        b"12345678901 23", b"1234567890123 4567890", b"1234567890-123456789"]
    for byte in range(256):
        for run in runs:
            for text in (bytes([byte]) + run, run + bytes([byte]),
                         bytes([byte]) + run + bytes([byte]), b"$" + run + bytes([byte])):
                ends = list(range(len(text) + 2))
                for reach in (CARD_REACH, 14, 20):
                    want = [to for to in ends
                            if CONFIRM.search(text[max(0, to - reach):to + 1]) is not None]
                    assert _spanwalk.card_confirm(text, ends, reach) == want, (text, reach)


text = st.lists(st.sampled_from([
    "sk-", "ghp_", "a" * 36, "AKIA", "ABCDEFGHIJKLMNOP", "Bearer ", "x", " ", "",
    "eyJ", "abcdefghij", ".", "https://", "u:p@", "4111 1111 1111 1111", "0", "-",
    "xoxb-", "AIza", "=", "\u00e9",
]), max_size=12).map(lambda parts: "".join(parts).encode())

REDACTOR = Redactor(RedactSettings(pii=["email", "phone"]))


@settings(max_examples=400, deadline=None)
@given(text)
def test_direct_re2_calls_find_what_finditer_finds(data: bytes) -> None:
    for rule in REDACTOR._rules:
        want: list[tuple[int, int]] = []
        for m in rule.regex.finditer(data):  # google-re2's own iteration
            start, end = m.span(rule.group)
            if start < 0 or start == end:
                continue
            want += [(start, end)] if rule.check is None else rule.check(data, start, end)
        got = REDACTOR._matches(rule, data, droppable=False)
        assert isinstance(got, list)
        # `_matches` widens to whole UTF-8 characters: the test text's are whole already
        assert [(s, e) for s, e, _ in got] == want, rule.name


@settings(max_examples=300, deadline=None)
@given(text, st.integers(0, 60))
def test_spans_and_hit_agree_with_search(data: bytes, pos: int) -> None:
    for rule in BUILTIN_RULES:
        pattern = compile_bytes(rule.pattern)
        m = pattern.search(data, pos)
        found = pattern.spans(data, pos)
        assert (found is None) == (m is None)
        if m is not None:
            assert found is not None
            assert found[0] == m.span()
        assert pattern.hit(data, pos) == (m is not None)


# --- the C finder of the card digit runs (`_spanwalk.digit_runs`) ------------------------
HYPERSCAN_RUNS = MultiScan([CARD_DIGITS])  # no finder: Hyperscan's ends
# the pattern in Python's `re` (bytes: `\d` is ASCII digits), matched whole on each window
CARD_FULL = re.compile(CARD_DIGITS.encode())

run_text = st.lists(st.one_of(
    st.sampled_from([b"0", b"1", b"5", b"9", b" ", b"-", b"  ", b"--", b" -", b"a", b"\x00",
                     b"/", b":", b"\xb0", b"4111 1111 1111 1111", b"1234567890123",
                     b"5500-0000-0000-0004", b"1 2 3 4 5 6 7 8 9 0 1 2 3"]),
    st.binary(max_size=4)), max_size=40).map(b"".join)


def _hyperscan_ends(data: bytes) -> list[int]:
    return sorted(to for to, _ in HYPERSCAN_RUNS.offsets(data))


def _re_ends(data: bytes) -> list[int]:
    # a match holds 13 digits and at most 12 separators
    return [e for e in range(len(data) + 1)
            if any(CARD_FULL.fullmatch(data, s, e) for s in range(max(0, e - 25), e))]


def test_the_card_form_names_the_c_finder() -> None:
    rule = next(r for r in BUILTIN_RULES if r.name == "card-number")
    assert rule.prescan_fast == CARD_DIGITS
    assert rule.prescan_finder == CARD_FINDER
    assert CARD_C.finder_forms == 1
    assert CARD_C.hyperscan_forms == 0


@settings(max_examples=1500, deadline=None)
@given(run_text, st.integers(0, 30))
def test_digit_runs_are_hyperscan_ends(data: bytes, pad: int) -> None:
    data = b"x" * pad + data  # every alignment of the stride scan
    got = _spanwalk.digit_runs(data, 13, MAX_HITS)
    assert got == _hyperscan_ends(data) == _re_ends(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_digit_runs_on_arbitrary_bytes(data: bytes) -> None:
    assert _spanwalk.digit_runs(data, 13, MAX_HITS) == _hyperscan_ends(data)


def _chain_ends(data: bytes, digits: int) -> list[int]:
    # from the pattern \d(?:[ -]?\d){digits - 1}: the longest chain of digits ending at
    # each byte, a digit following the last one directly or after one separator
    longest = [0] * len(data)
    for i, byte in enumerate(data):
        if not 0x30 <= byte <= 0x39:
            continue
        before = longest[i - 1] if i >= 1 else 0
        if i >= 2 and data[i - 1] in b" -":
            before = max(before, longest[i - 2])
        longest[i] = before + 1
    return [i + 1 for i, n in enumerate(longest) if n >= digits]


@settings(max_examples=600, deadline=None)
@given(st.lists(run_text, min_size=1, max_size=8), st.integers(1, 70), st.integers(0, 130))
def test_digit_runs_of_any_length_across_blocks(parts: list[bytes], digits: int,
                                                 pad: int) -> None:
    # every run length the finder takes, against the pattern's definition, at every stride
    # alignment of the probe scan
    data = b"x" * pad + b"".join(parts) * 3
    want = _chain_ends(data, digits)
    assert _spanwalk.digit_runs(data, digits, MAX_HITS) == want
    assert _spanwalk.digit_runs(data, digits, MAX_HITS, False) == want  # the scalar scan
    if digits == 13:
        assert _chain_ends(data, 13) == _hyperscan_ends(data)


@pytest.mark.parametrize("data", [
    b"7" * 200_000, b" " * 100_000 + b"1" * 30, b"1 " * 100_000, b"1-" * 50_000 + b"x",
    (b"12345678901 " * 20_000), bytes(range(256)) * 400])
def test_digit_runs_on_long_runs(data: bytes) -> None:
    # runs across many blocks, and more ends than the limit: both scans agree, stop alike
    for limit in (MAX_HITS, 10 ** 7):
        assert _spanwalk.digit_runs(data, 13, limit) == _spanwalk.digit_runs(
            data, 13, limit, False)
    if data.count(b"7") == len(data):
        assert _spanwalk.digit_runs(data, 13, MAX_HITS) is None


def test_digit_runs_at_block_edges() -> None:
    for at in range(40, 200):
        for run in (b"1" * 13, b"1" * 12, b"4111 1111 1111 1111", b"1-" * 13, b"7" * 70):
            data = b"a" * at + run + b"b" * 5 + run
            for digits in (1, 12, 13, 64, 65):
                for vector in (True, False):
                    assert _spanwalk.digit_runs(data, digits, MAX_HITS, vector) \
                        == _chain_ends(data, digits), (at, run, digits, vector)


@settings(max_examples=300, deadline=None)
@given(run_text)
def test_card_offsets_with_the_finder_are_hyperscans(data: bytes) -> None:
    assert sorted(CARD_C.offsets(data)) == sorted(CARD.offsets(data))


def test_digit_runs_on_loadgen_requests() -> None:
    rng = random.Random(7)
    for workload in ("agent", "secrets", "large"):
        for _ in range(3):
            payload = build_workload(rng, workload)
            assert _spanwalk.digit_runs(payload, 13, MAX_HITS) == _hyperscan_ends(payload)
            assert sorted(CARD_C.offsets(payload)) == sorted(CARD.offsets(payload))
    # and the whole default pre-scan, finder in, against the same forms all in Hyperscan
    redactor = Redactor(RedactSettings())
    forms = [Form(f.pattern, f.confirm, f.reach, f.confirmer) for f in redactor.prescan.forms]
    all_hyperscan = MultiScan(forms)
    assert all_hyperscan.finder_forms == 0
    assert redactor.prescan.finder_forms == 1
    for workload in ("agent", "secrets"):
        for _ in range(3):
            payload = build_workload(rng, workload)
            assert sorted(redactor.prescan.offsets(payload)) == sorted(
                all_hyperscan.offsets(payload))


@pytest.mark.parametrize("extra", [0, 1])
def test_the_hit_cap_is_hyperscans(extra: int) -> None:
    # 12 + MAX_HITS digits: exactly MAX_HITS ends; one digit more is one too many
    data = b"7" * (12 + MAX_HITS + extra)
    finder = _spanwalk.digit_runs(data, 13, MAX_HITS)
    if extra:
        assert finder is None
        with pytest.raises(TooManyHits):
            HYPERSCAN_RUNS.offsets(data)
        with pytest.raises(TooManyHits):
            CARD_C.offsets(data)
    else:
        assert finder == list(range(13, len(data) + 1)) == _hyperscan_ends(data)
        assert sorted(CARD_C.offsets(data)) == sorted(CARD.offsets(data))


def test_the_hit_cap_counts_every_form() -> None:
    # MAX_HITS digit-run ends, then one Hyperscan hit: over the cap, as with one database
    data = b"7" * (12 + MAX_HITS) + b" sk-" + b"a" * 40
    both = MultiScan([Form(CARD_DIGITS, finder=CARD_FINDER), r"sk-[A-Za-z0-9_-]{32,}"])
    one_db = MultiScan([CARD_DIGITS, r"sk-[A-Za-z0-9_-]{32,}"])
    for scan in (both, one_db):
        with pytest.raises(TooManyHits):
            scan.offsets(data)
    assert _spanwalk.digit_runs(b"1" * 19, 13, 7) == list(range(13, 20))  # 7 ends
    assert _spanwalk.digit_runs(b"1" * 20, 13, 7) is None
    with pytest.raises(ValueError, match="digits must be positive"):
        _spanwalk.digit_runs(b"1", 0, 7)
    with pytest.raises(ValueError, match="unknown finder"):
        MultiScan([Form(CARD_DIGITS, finder="no-such-finder")])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6)), max_size=12),
       st.lists(st.tuples(st.integers(-2, 80), st.integers(0, 30)), max_size=20))
def test_group_hits_is_locate_per_hit(gaps: list[tuple[int, int]],
                                      offsets: list[tuple[int, int]]) -> None:
    # items as the layout gives them: ascending, disjoint, maybe empty or touching
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for gap, size in gaps:
        starts.append(pos + gap)
        ends.append(pos + gap + size)
        pos = ends[-1]
    want: dict[int, list[tuple[int, int]]] = {}
    outside = False
    for to, form in offsets:
        found = locate(to, starts, ends)
        for k in found:
            want.setdefault(k, []).append((to, form))
        outside = outside or not found
    at, out = _spanwalk.group_hits(offsets, starts, ends)
    assert at == want
    assert out == outside
