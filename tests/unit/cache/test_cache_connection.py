"""A connection fed raw bytes through a fake transport: reply order, chunking, fast lane."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.cache.config import CacheConfig
from sidecar.cache.server import CacheConnection, CacheService


class FakeTransport:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def connect() -> tuple[CacheConnection, FakeTransport]:
    service = CacheService(CacheConfig(unix=None))
    conn = CacheConnection(service, None, "test")
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


PIPELINE = b"".join([
    cmd(b"SET", b"a", b"1"), cmd(b"SET", b"b\r\n", b"2\r\n"),
    cmd(b"GET", b"a"), cmd(b"get", b"a"), cmd(b"GET", b"b\r\n"), cmd(b"GET", b"zz"),
    cmd(b"GET", b"a"), b"PING\r\n", cmd(b"MGET", b"a", b"zz"), cmd(b"GET", b"a"),
])
# written by hand from the Redis protocol, not produced by the code under test
EXPECTED = (b"+OK\r\n+OK\r\n$1\r\n1\r\n$1\r\n1\r\n$3\r\n2\r\n\r\n$-1\r\n$1\r\n1\r\n+PONG\r\n"
            b"*2\r\n$1\r\n1\r\n$-1\r\n$1\r\n1\r\n")


def test_pipeline_in_one_piece() -> None:
    conn, transport = connect()
    conn.data_received(PIPELINE)
    assert transport.data == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=10))
def test_pipeline_in_any_chunks(cuts: list[int]) -> None:
    conn, transport = connect()
    start = 0
    for cut in sorted(set(cuts)):
        conn.data_received(PIPELINE[start:cut])
        start = cut
    conn.data_received(PIPELINE[start:])
    assert transport.data == EXPECTED


def test_fast_lane_hits_counted_and_timed() -> None:
    conn, transport = connect()
    conn.data_received(cmd(b"SET", b"specs:k", b"v"))
    conn.data_received(cmd(b"GET", b"specs:k") * 16)
    assert transport.data == b"+OK\r\n" + b"$1\r\nv\r\n" * 16
    stats = conn.service.stats()
    assert stats["namespaces"]["specs"]["hits"]["l1"] == 16  # type: ignore[index]
    assert stats["latency"]["GET"]["count"] == 16  # type: ignore[index]


def test_expired_key_is_not_served_by_the_fast_lane() -> None:
    conn, transport = connect()
    conn.data_received(cmd(b"SET", b"k", b"v", b"PX", b"1"))
    entry = conn.service.tiers.l1.data[b"k"]
    entry.expire_at = 0.0  # as if a millisecond had passed
    conn.data_received(cmd(b"GET", b"k"))
    assert transport.data == b"+OK\r\n$-1\r\n"


def test_protocol_error_after_fast_lane_replies() -> None:
    conn, transport = connect()
    conn.data_received(cmd(b"SET", b"k", b"v"))
    conn.data_received(cmd(b"GET", b"k") + b"*1\r\n$-3\r\n")
    assert transport.data == (b"+OK\r\n$1\r\nv\r\n"
                              b"-ERR Protocol error: invalid bulk length\r\n")
    assert transport.closed


def test_fast_lane_set_applies_namespace_policy() -> None:
    service = CacheService(CacheConfig(unix=None, namespaces={
        "small": {"ttl": "10s", "max_value_size": 4}}))
    conn = CacheConnection(service, None, "test")
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(cmd(b"SET", b"small:a", b"1234") + cmd(b"SET", b"small:b", b"12345")
                       + cmd(b"SET", b"small:c", b"1") + cmd(b"TTL", b"small:a"))
    assert transport.data == (b"+OK\r\n-ERR value too large for namespace 'small' (max 4 bytes)"
                              b"\r\n+OK\r\n:10\r\n")
    assert service.stats()["namespaces"]["small"]["sets"] == 2  # type: ignore[index]


class PausableTransport(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


async def test_commands_behind_a_redis_read_keep_order_and_apply_backpressure() -> None:
    # an L2 that is down: a GET that misses L1 still takes the async path (one task)
    service = CacheService(CacheConfig(unix=None, redis="unix:///nonexistent/redis.sock"))
    conn = CacheConnection(service, None, "test")
    transport = PausableTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(cmd(b"GET", b"missing") + cmd(b"SET", b"k", b"v"))
    # while that reply is pending, a client keeps pipelining: 5,000 commands held back
    conn.data_received(cmd(b"GET", b"k") * 5000)
    assert transport.paused
    assert transport.data == b""
    for _ in range(10):
        await asyncio.sleep(0)
    assert not transport.paused
    assert transport.data == b"$-1\r\n+OK\r\n" + b"$1\r\nv\r\n" * 5000


garbage = st.lists(st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"*2\r\n", b"$3\r\nGET\r\n", b"$1\r\nk\r\n", b"*3\r\n$3\r\nSET\r\n",
                     b"PING\r\n", b"$-1\r\n", b"*-1\r\n", b"\r\n", b"HELLO 3\r\n",
                     b"CLIENT SETNAME x\r\n", b"SET a b EX 1\r\n", b"AUTH x\r\n"])),
    max_size=30)


@settings(max_examples=500, deadline=None)
@given(garbage)
def test_fuzz_connection_never_raises(chunks: list[bytes]) -> None:
    conn, transport = connect()
    for chunk in chunks:
        conn.data_received(chunk)  # must not raise, whatever arrives
        if transport.closed:
            break
    assert conn.parser.buffered() <= 64 * 1024 * 1024
    # the service is unaffected: a new connection works
    other, other_transport = CacheConnection(conn.service, None, "t"), FakeTransport()
    other.connection_made(other_transport)  # type: ignore[arg-type]
    other.data_received(b"PING\r\n")
    assert other_transport.data == b"+PONG\r\n"
