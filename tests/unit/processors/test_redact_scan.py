"""The pre-scan's batched confirm (`MultiScan.confirmed` with a joiner) keeps exactly the
hits that confirming each hit's own window keeps, and the direct RE2 calls of the walk
(`Re2Pattern.spans`, `Redactor._matches`) find what google-re2's `finditer` finds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.processors.redact import Redactor, RedactSettings
from sidecar.processors.redact_rules import (
    BUILTIN_RULES,
    CARD_DIGITS,
    CARD_JOINER,
    CARD_PRESCAN,
    CARD_REACH,
    compile_bytes,
)
from sidecar.processors.redact_scan import Form, MultiScan

CARD = MultiScan([Form(CARD_DIGITS, CARD_PRESCAN, CARD_REACH, CARD_JOINER)])
CONFIRM = compile_bytes(CARD_PRESCAN, capture=False)

# digit runs with separators, the bytes the arms test around them, length-byte values
# 13..37 (the byte before a whole-string run), and the joiner itself
digit_text = st.lists(st.sampled_from([
    "4111", "1", "0", "9", " ", "-", "_", "$", "a", "Z", ".", "\x0d", "\x10", "\x24",
    "\x25", "\n", "4111 1111 1111 1111", "5500-0000-0000-0004", "1234567890123",
    "12345678901234567890", "$1234567890123456789",
]), max_size=24).map(lambda parts: "".join(parts).encode())


def _own_window(data: bytes, to: int) -> bool:  # what one search per hit decides
    return CONFIRM.search(data[max(0, to - CARD_REACH):to + 1]) is not None


@settings(max_examples=600, deadline=None)
@given(digit_text, st.data())
def test_batched_confirm_keeps_what_each_window_keeps(data: bytes, draw: st.DataObject) -> None:
    ends = sorted(draw.draw(st.lists(st.integers(0, len(data) + 2), max_size=12)))
    assert CARD.confirmed(data, 0, ends) == [to for to in ends if _own_window(data, to)]


@settings(max_examples=300, deadline=None)
@given(digit_text)
def test_card_offsets_are_the_confirmed_digit_runs(data: bytes) -> None:
    fast = MultiScan([CARD_DIGITS])  # the unconfirmed form: every digit-run end
    every = [to for to, _ in fast.offsets(data)]
    assert sorted(to for to, _ in CARD.offsets(data)) == sorted(
        to for to in every if _own_window(data, to))


def test_no_match_of_the_card_confirm_holds_the_joiner() -> None:
    # the claim the batched confirm rests on, over every arm's context byte
    for byte in range(256):
        text = bytes([byte]) + b"1234567890123456789" + bytes([byte])
        for m in CONFIRM.finditer(text):
            assert CARD_JOINER not in text[m.start():m.end()]
    assert not CONFIRM.search(CARD_JOINER * 40)


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
