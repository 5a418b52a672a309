"""`LineSplitter` with raw bytes: lines, CRLF, the length guard, chunking, the final line."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.net.framing import Line, LineSplitter


def split_all(splitter: LineSplitter, chunks: list[bytes]) -> list[Line]:
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    last = splitter.close()
    return lines if last is None else [*lines, last]


def reference(data: bytes, max_length: int) -> tuple[list[Line], int]:
    """What the splitter must produce, from the whole input at once: split on "\\n", drop
    one "\\r" before it, cut lines over the limit; a final piece without "\\n" is a line too
    (its trailing "\\r" dropped). Also the bytes beyond the limit that must be skipped."""
    pieces = data.split(b"\n")
    *complete, last = pieces
    lines, discarded = [], 0
    for raw in complete:
        content = raw[:-1] if raw.endswith(b"\r") else raw
        if len(content) > max_length:
            lines.append(Line(content[:max_length], truncated=True))
            discarded += len(raw) - max_length
        else:
            lines.append(Line(content))
    if last:
        content = last[:-1] if len(last) <= max_length + 1 and last.endswith(b"\r") else last
        if len(content) > max_length:
            lines.append(Line(content[:max_length], truncated=True))
            discarded += len(last) - max_length
        else:
            lines.append(Line(content))
    return lines, discarded


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_lines_and_terminators() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b'{"a":1}\n{"b":2}\r\n\n  \r\npart') == [
        Line(b'{"a":1}'), Line(b'{"b":2}'), Line(b""), Line(b"  ")]
    assert splitter.buffered == 4
    assert splitter.feed(b"ial\n") == [Line(b"partial")]
    assert splitter.buffered == 0
    assert splitter.close() is None


def test_final_unterminated_line_on_close() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"one\ntwo") == [Line(b"one")]
    assert splitter.close() == Line(b"two")
    assert splitter.close() is None  # and the splitter starts afresh
    assert splitter.feed(b"\r") == []
    assert splitter.close() == Line(b"")  # a lone "\r" at the end: a cut-off "\r\n"


def test_a_lone_cr_inside_a_line_is_data() -> None:
    assert LineSplitter(100).feed(b"a\rb\r\r\n") == [Line(b"a\rb\r")]


def test_over_long_line_is_cut_once_and_its_rest_skipped() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"ok\nabcdefgh") == [Line(b"ok"), Line(b"abcd", truncated=True)]
    # the rest of that line is skipped without being kept, however much of it comes
    assert splitter.buffered == 0
    assert splitter.feed(b"x" * 10_000) == []
    assert splitter.buffered == 0
    assert splitter.feed(b"yyy\nnext\n") == [Line(b"next")]
    assert splitter.truncated_lines == 1
    assert splitter.discarded_bytes == 4 + 10_000 + 3


@pytest.mark.parametrize(("data", "lines"), [
    (b"abcd\n", [Line(b"abcd")]),
    (b"abcd\r\n", [Line(b"abcd")]),  # max_length counts the line, not its terminator
    (b"abcde\n", [Line(b"abcd", truncated=True)]),
    (b"abcd\r\r\n", [Line(b"abcd", truncated=True)]),  # "abcd\r" is 5 bytes of data
    (b"abcd\rx\n", [Line(b"abcd", truncated=True)]),
])
def test_limit_boundaries(data: bytes, lines: list[Line]) -> None:
    assert LineSplitter(4).feed(data) == lines
    one_by_one = LineSplitter(4)
    assert [line for i in range(len(data)) for line in one_by_one.feed(data[i:i + 1])] == lines


def test_line_of_max_length_ending_in_cr_waits_for_the_next_byte() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcd\r") == []
    assert splitter.buffered == 5
    assert splitter.feed(b"\n") == [Line(b"abcd")]


def test_unterminated_over_long_line_is_not_repeated_on_close() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcdefgh") == [Line(b"abcd", truncated=True)]
    assert splitter.close() is None


def test_max_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LineSplitter(0)


def test_repr_shows_state() -> None:
    splitter = LineSplitter(4)
    splitter.feed(b"abcdefg")
    assert repr(splitter) == (
        "LineSplitter(max_length=4, buffered=0, discarding=True, truncated_lines=1)")


@settings(max_examples=400, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b"bc", b"{}", b"xyzw\xff"]),
                  max_size=60).map(b"".join),
    max_length=st.integers(min_value=1, max_value=12),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=20),
)
def test_any_chunking_gives_the_reference_lines(
        data: bytes, max_length: int, cuts: list[int]) -> None:
    splitter = LineSplitter(max_length)
    lines, discarded = reference(data, max_length)
    held = []
    out = []
    for chunk in chunked(data, cuts):
        out.extend(splitter.feed(chunk))
        held.append(splitter.buffered)
    last = splitter.close()
    if last is not None:
        out.append(last)
    assert out == lines
    assert splitter.discarded_bytes == discarded
    assert splitter.truncated_lines == sum(line.truncated for line in lines)
    assert all(n <= max_length + 1 for n in held)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), max_length=st.integers(min_value=1, max_value=40))
def test_random_bytes_one_at_a_time(data: bytes, max_length: int) -> None:
    expected, _ = reference(data, max_length)
    splitter = LineSplitter(max_length)
    assert split_all(splitter, [data[i:i + 1] for i in range(len(data))]) == expected


def test_linear_in_input_size_with_one_byte_feeds() -> None:
    """A splitter that searched or copied its whole buffer on every feed would do ~5e11
    byte operations here (minutes); one that scans each byte once does 1M short calls."""
    size = 1 << 20
    line = b"x" * size
    for max_length in (size, 1024):  # one line kept whole; one cut and skipped
        splitter = LineSplitter(max_length)
        started = time.monotonic()
        out: list[Line] = []
        for i in range(size):
            out += splitter.feed(line[i:i + 1])
        out += splitter.feed(b"\n")
        elapsed = time.monotonic() - started
        assert out == [Line(line[:max_length], truncated=max_length < size)]
        # a liveness bound, ~20x the linear time on a loaded 2-core machine
        assert elapsed < 30, elapsed


def test_cut_hands_out_the_partial_line_marked_and_skips_its_rest() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"one\ntwo-st") == [Line(b"one")]
    assert splitter.cut() == Line(b"two-st", truncated=True)
    assert splitter.buffered == 0
    assert splitter.feed(b"art-rest\nthree\n") == [Line(b"three")]
    assert splitter.cut() is None
    assert splitter.truncated_lines == 1


def test_skip_line_starts_at_the_next_line() -> None:
    splitter = LineSplitter(100)
    splitter.skip_line()
    assert splitter.discarding
    assert splitter.feed(b"tail of a line\nnext\n") == [Line(b"next")]
    assert not splitter.discarding
