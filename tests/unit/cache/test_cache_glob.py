"""The glob matcher alone: Redis's pattern rules, worked out by hand from util.c's
stringmatchlen (the integration test compares the same rules with a real redis-server)."""

from __future__ import annotations

import pytest

from sidecar.cache.glob import MAX_NESTING, Budget, Glob


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    (b"*", b"", True),  # a bare star is every key, the empty one too
    (b"**", b"", False),  # stringmatchlen never matches an empty string but to ""
    (b"", b"", True),
    (b"", b"a", False),
    (b"user:*", b"user:42", True),
    (b"user:*", b"users:42", False),
    (b"*:42", b"user:42", True),
    (b"u*r*2", b"user:42", True),
    (b"u*r*3", b"user:42", False),
    (b"a?c", b"abc", True),
    (b"a?c", b"ac", False),
    (b"[abc]", b"b", True),
    (b"[^abc]", b"b", False),
    (b"[^abc]", b"d", True),
    (b"[a-c]x", b"bx", True),
    (b"[c-a]x", b"bx", True),  # reversed ends are swapped
    (b"[a-c]", b"-", False),
    (b"[\\]]", b"]", True),
    (b"[\\-]", b"-", True),
    (b"[]", b"]", False),  # an empty class matches nothing...
    (b"[]a]", b"]", False),
    (b"[]a]", b"a]", False),
    (b"[^]", b"x", True),  # ...and its negation any byte
    (b"[abc", b"c", True),  # unterminated: the class ends with the pattern
    (b"[abc", b"[", False),
    (b"[a-", b"-", True),  # too short for a range: 'a' and '-'
    (b"[a-]", b"_", True),  # a range from ']' to 'a', then unterminated
    (b"[a-]", b"b", False),
    (b"[^", b"z", True),
    (b"[", b"[", False),
    (b"\\*", b"*", True),
    (b"\\*", b"a", False),
    (b"a\\", b"a\\", True),  # a trailing backslash is literal
    (b"\\?", b"?", True),
    (b"*a*b*c", b"xxaxxbxxc", True),
    (b"*a*b*c", b"xxaxxcxxb", False),
    (b"a*a", b"a", False),
    (b"a*a", b"aa", True),
    (b"[a-\xff]", b"b", False),  # range ends compare as signed chars: -1..97
    (b"[a-\xff]", b"\x00", True),
    (b"[a-\xff]", b"\xff", True),
    (b"[\x80-b]", b"\xc0", True),  # -128..98
    (b"[\x80-b]", b"c", False),
    (b"x\x00y", b"x\x00y", True),  # NUL is an ordinary byte
])
def test_redis_pattern_rules(pattern: bytes, key: bytes, expected: bool) -> None:
    assert Glob(pattern).match(key) is expected


def test_nesting_limit_of_cve_2022_36021() -> None:
    key = b"a" * 3000
    assert Glob(b"*a" * MAX_NESTING).match(key)
    # the 1001st star group is reached 1001 calls deep: Redis answers "no match"...
    assert not Glob(b"*a" * (MAX_NESTING + 1)).match(key)
    # ...unless it ends the pattern (a trailing star matches before recursing)
    assert Glob(b"*a" * MAX_NESTING + b"*").match(key)
    assert not Glob(b"*a" * (MAX_NESTING + 1) + b"*").match(key)
    assert Glob(b"*" * 5000 + b"a").match(b"a")  # consecutive stars are one group


def test_long_key_is_matched_in_slices_with_the_same_verdict() -> None:
    glob = Glob(b"*?" + b"a" * 50 + b"b*")
    key = b"a" * 200_000 + b"b"
    meter = Budget(10_000)
    run = glob.steps(key, meter)
    slices = 0
    try:
        while True:
            next(run)
            slices += 1
            assert slices < 10_000
    except StopIteration as stop:
        verdict = stop.value
    assert verdict is True
    assert slices > 100  # 200k positions x 52 elements: many slices of 10k comparisons
    assert glob.match(key) is True
    assert glob.match(key[:-1]) is False


def test_filter_keeps_order_and_yields_between_keys() -> None:
    glob = Glob(b"k[0-4]*")
    keys = [b"k%d:%s" % (i % 10, b"x" * 100) for i in range(1000)]
    run = glob.filter(keys, 500)
    yields = 0
    try:
        while True:
            next(run)
            yields += 1
    except StopIteration as stop:
        found = stop.value
    assert found == [k for k in keys if k[1] in b"01234"]
    assert yields >= 1


def test_many_brackets_compile_to_one_unterminated_class() -> None:
    # `[a[a[a...`: one class {a, [} that never closes (fnmatch took 6.6 s on this)
    glob = Glob(b"[a" * 100_000)
    assert glob.match(b"a")
    assert glob.match(b"[")
    assert not glob.match(b"aa")


def _slices(glob: Glob, key: bytes, budget: int) -> int:
    run = glob.steps(key, Budget(budget))
    slices = 0
    try:
        while True:
            next(run)
            slices += 1
            assert slices < 100_000
    except StopIteration:
        return slices


def test_a_class_segment_is_charged_more_than_a_literal_one() -> None:
    # `re` tests a class element many times slower than `bytes.find` compares a byte: charged
    # alike, a `[^b]` segment of 1000 elements held the loop ~290 ms per slice, not ~20 ms
    key = b"a" * 20_000
    literal = _slices(Glob(b"*" + b"a" * 200 + b"b*"), key, 100_000)
    classes = _slices(Glob(b"*" + b"[^b]" * 200 + b"b*"), key, 100_000)
    assert literal > 10
    assert classes >= 32 * literal
