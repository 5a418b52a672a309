"""`LineSplitter.split` (whole lines from one bytes.split) against `feed` (the reference):
the same lines, counters and state for any input and any chunking."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.net.framing import Line, LineSplitter


def as_lines(items: list[bytes | Line]) -> list[Line]:
    return [item if isinstance(item, Line) else Line(item) for item in items]


def state(splitter: LineSplitter) -> tuple[int, bool, int, int]:
    return (splitter.buffered, splitter.discarding, splitter.truncated_lines,
            splitter.discarded_bytes)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b"{}", b"xxxxxxx"]),
                max_size=60),
       st.lists(st.integers(min_value=0, max_value=40), max_size=8),
       st.integers(min_value=1, max_value=9), st.booleans())
def test_split_gives_what_feed_gives(pieces: list[bytes], cuts: list[int], max_length: int,
                                     skip_first: bool) -> None:
    data = b"".join(pieces)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    reference, fast = LineSplitter(max_length), LineSplitter(max_length)
    if skip_first:
        reference.skip_line()
        fast.skip_line()
    for start, stop in itertools.pairwise(bounds):
        chunk = data[start:stop]
        assert as_lines(fast.split(chunk)) == reference.feed(chunk)
        assert state(fast) == state(reference)
    assert fast.close() == reference.close()


def test_plain_lines_are_bytes_and_cut_ones_are_marked() -> None:
    splitter = LineSplitter(4)
    assert splitter.split(b"ab\r\ncd\n\ntoolong\nxy") == [
        b"ab", b"cd", b"", Line(b"tool", truncated=True)]
    assert splitter.split(b"z\n") == [b"xyz"]
    assert splitter.truncated_lines == 1
