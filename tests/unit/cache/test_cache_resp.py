"""The sans-IO RESP parser and serializer, with raw bytes (no sockets)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache import resp
from sidecar.cache.resp import ProtocolError, RespParser, Status


def encode_command(args: list[bytes]) -> bytes:
    """Reference encoder, written from the RESP spec (not from the code under test)."""
    out = b"*" + str(len(args)).encode() + b"\r\n"
    for arg in args:
        out += b"$" + str(len(arg)).encode() + b"\r\n" + arg + b"\r\n"
    return out


def feed_in_chunks(parser: RespParser, data: bytes, cuts: list[int]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    start = 0
    for cut in sorted(set(cuts)):
        out.extend(parser.feed(data[start:cut]))
        start = cut
    out.extend(parser.feed(data[start:]))
    return out


def test_parses_a_pipeline_of_commands() -> None:
    data = encode_command([b"SET", b"k", b"v"]) + encode_command([b"GET", b"k"])
    assert RespParser().feed(data) == [[b"SET", b"k", b"v"], [b"GET", b"k"]]


def test_binary_values_with_crlf_and_nul() -> None:
    value = b"\r\n\x00$3\r\n*1\r\n\xff"
    data = encode_command([b"SET", b"\x00key\r\n", value])
    assert RespParser().feed(data) == [[b"SET", b"\x00key\r\n", value]]


def test_one_byte_at_a_time() -> None:
    data = encode_command([b"SET", b"k", b"x" * 100]) + encode_command([b"PING"])
    parser = RespParser()
    out: list[list[bytes]] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i:i + 1]))
    assert out == [[b"SET", b"k", b"x" * 100], [b"PING"]]
    assert parser.buffered() == 0


def test_large_value_arriving_in_pieces_is_assembled_once() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, contains CRLF bytes
    data = encode_command([b"SET", b"k", value])
    parser = RespParser()
    out = feed_in_chunks(parser, data, list(range(0, len(data), 65536)))
    assert out == [[b"SET", b"k", value]]


def test_inline_commands() -> None:
    assert RespParser().feed(b"PING\r\nSET a b\n\r\n") == [[b"PING"], [b"SET", b"a", b"b"]]


def test_empty_and_null_multibulk_are_ignored() -> None:
    assert RespParser().feed(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n") == [[b"PING"]]


@pytest.mark.parametrize(("data", "message"), [
    (b"*1\r\n$-5\r\n", "invalid bulk length"),
    (b"*1\r\n$abc\r\n", "invalid bulk length"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*1\r\n:5\r\n", "expected '$', got ':'"),
    (b"*1\r\n$2\r\nabXY", "bulk not terminated by CRLF"),
    (b"*1\r\n$" + b"9" * 40, "too big bulk count string"),
])
def test_violations_raise_redis_worded_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        RespParser().feed(data)


def test_limits() -> None:
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        RespParser(max_bulk=10).feed(b"*2\r\n$3\r\nGET\r\n$11\r\n")
    with pytest.raises(ProtocolError, match="invalid multibulk length"):
        RespParser(max_array=4).feed(b"*5\r\n")
    with pytest.raises(ProtocolError, match="too big inline request"):
        RespParser(max_inline=100).feed(b"A" * 101)
    parser = RespParser(max_bulk=100, max_request=1000)
    parser.feed(b"*100\r\n")
    arg = b"$50\r\n" + b"x" * 50 + b"\r\n"
    for _ in range(10):  # 10 x (50 + 48 overhead) = 980 bytes: within the budget
        parser.feed(arg)
    with pytest.raises(ProtocolError, match="request too large"):
        parser.feed(arg)


def test_limit_checked_before_the_value_arrives() -> None:
    # the header alone is refused: nothing of the 1 GB is ever buffered
    with pytest.raises(ProtocolError):
        RespParser(max_bulk=1024).feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000000\r\n")


commands = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6),
                    min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(commands, st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_any_chunking_gives_the_same_commands(cmds: list[list[bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_command(c) for c in cmds)
    parser = RespParser()
    assert feed_in_chunks(parser, data, [c for c in cuts if c <= len(data)]) == cmds
    assert parser.buffered() == 0


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_fuzz_garbage_never_escapes_and_stays_bounded(chunks: list[bytes]) -> None:
    parser = RespParser(max_bulk=1024, max_array=64, max_inline=256, max_request=8192)
    try:
        for chunk in chunks:
            for command in parser.feed(chunk):
                assert all(isinstance(a, bytes) for a in command)
                assert len(command) <= 64
            # bounded: the partial command plus the unparsed tail stay under the limits
            assert parser.buffered() <= 8192 + 1024 + 64
    except ProtocolError:
        pass


resp_tokens = st.sampled_from([b"*", b"$", b"\r\n", b"1", b"2", b"3", b"-1", b"0", b"GET",
                               b"x", b"\n", b"*2\r\n", b"$3\r\n", b"99999999999", b" "])


@settings(max_examples=1500, deadline=None)
@given(st.lists(resp_tokens, max_size=40), st.integers(min_value=1, max_value=7))
def test_fuzz_near_valid_input(tokens: list[bytes], step: int) -> None:
    # near-miss RESP exercises the header paths that random bytes rarely reach
    data = b"".join(tokens)
    parser = RespParser(max_bulk=64, max_array=16, max_inline=64, max_request=4096)
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i:i + step])
            assert parser.buffered() <= 4096 + 64 + 64
    except ProtocolError:
        pass


def test_serializers() -> None:
    assert resp.bulk(b"a\r\nb") == b"$4\r\na\r\nb\r\n"
    assert resp.integer(-3) == b":-3\r\n"
    assert resp.error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert resp.array_of_bulks([b"a", None], resp.NIL2) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert resp.array_of_bulks([None], resp.NIL3) == b"*1\r\n_\r\n"


def test_nested_encode_resp2_and_resp3() -> None:
    value = {"proto": 3, "ok": Status("OK"), "none": None, "list": [b"x", 1]}
    assert resp.encode(value, resp3=False) == (
        b"*8\r\n$5\r\nproto\r\n:3\r\n$2\r\nok\r\n+OK\r\n$4\r\nnone\r\n$-1\r\n"
        b"$4\r\nlist\r\n*2\r\n$1\r\nx\r\n:1\r\n")
    assert resp.encode(value, resp3=True) == (
        b"%4\r\n$5\r\nproto\r\n:3\r\n$2\r\nok\r\n+OK\r\n$4\r\nnone\r\n_\r\n"
        b"$4\r\nlist\r\n*2\r\n$1\r\nx\r\n:1\r\n")
