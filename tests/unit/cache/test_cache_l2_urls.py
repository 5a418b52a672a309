"""L2 URL forms build the right redis-py client (no connection is made here)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from sidecar.cache.config import CacheConfig
from sidecar.cache.l2conn import Endpoint, ErrorReply, L2ReplyError, read_reply
from sidecar.cache.l2wire import SET, SET_PX, build_backend, build_client, count_replies, pack
from sidecar.cache.ops import redacted


def test_plain_tls_and_unix_urls() -> None:
    for url in ("redis://:pw@cache:6379/2", "rediss://cache:6380/0", "unix:///run/r.sock?db=1"):
        client = build_client(CacheConfig(redis=url))
        assert isinstance(client, Redis)
        assert client.connection_pool.max_connections == 8
    client = build_client(CacheConfig(redis="redis://:pw@cache:6379/2"))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "cache", 6379, 2, "pw")
    assert kwargs["socket_timeout"] == 0.5


def test_sentinel_url() -> None:
    client = build_client(CacheConfig(redis="redis+sentinel://:pw@s1:26379,s2/mymaster/3"))
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "pw"
    assert [(s.connection_pool.connection_kwargs["host"],
             s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels] == [("s1", 26379), ("s2", 26379)]


def test_cluster_url() -> None:
    client = build_client(CacheConfig(redis="redis+cluster://n1:7000,n2:7001"))
    assert isinstance(client, RedisCluster)
    nodes = [(n.host, n.port) for n in client.nodes_manager.startup_nodes.values()]
    assert sorted(nodes) == [("n1", 7000), ("n2", 7001)]


def test_redacted() -> None:
    assert redacted("redis://user:secret@h:1/0") == "redis://user:***@h:1/0"
    assert redacted("unix:///run/r.sock") == "unix:///run/r.sock"


def test_pack_is_resp() -> None:
    assert pack(b"SET", b"k\r\n", b"") == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n"


async def test_count_replies_across_read_boundaries() -> None:
    reader = asyncio.StreamReader()
    counting = asyncio.create_task(count_replies(reader, 4))
    # the CRLF of the second reply is split over two reads; the third is an error
    for chunk in (b"+OK\r\n:1\r", b"\n-OOM command not allowed\r\n", b":0\r\n"):
        assert not counting.done()
        reader.feed_data(chunk)
        for _ in range(3):
            await asyncio.sleep(0)  # let the counter take this chunk on its own
    assert await counting == 1


def test_set_templates() -> None:
    plain = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\r\n\r\n"
    packed = SET % (1, b"k", 2, b"\r\n")
    assert packed == plain
    with_px = b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nPX\r\n$4\r\n1500\r\n"
    packed = SET_PX % (1, b"k", 1, b"v", 4, b"1500")
    assert packed == with_px
    assert pack(b"SET", b"k", b"v", b"PX", b"1500") == with_px


async def test_read_reply_reads_every_resp2_and_resp3_type() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(
        b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n*-1\r\n"
        b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n_\r\n#t\r\n,1.5\r\n(12345\r\n"
        b"=8\r\ntxt:blob\r\n!5\r\nERR x\r\n~1\r\n+m\r\n"
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n"
        b"|1\r\n+ttl\r\n:3\r\n+after-attributes\r\n")
    replies = [await read_reply(reader) for _ in range(17)]
    assert replies == [b"OK", "ERR no", 42, b"abc", None, [b"a", 1], None,
                       {b"server": b"redis", b"proto": 3}, None, True, 1.5, 12345, b"blob",
                       "ERR x", [b"m"], [b"invalidate", [b"key"]], [b"invalidate", None]]
    assert isinstance(replies[1], ErrorReply)
    assert await read_reply(reader) == b"after-attributes"


async def test_read_reply_refuses_garbage_and_deep_nesting() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"?what\r\n" + b"*1\r\n" * 20 + b":1\r\n")
    with pytest.raises(L2ReplyError, match="unexpected reply"):
        await read_reply(reader)
    with pytest.raises(L2ReplyError, match="nested too deep"):
        await read_reply(reader)


def test_endpoint_from_redis_py_url_parsing() -> None:
    tls = build_backend(CacheConfig(redis="rediss://u:pw@cache:6380/4?ssl_cert_reqs=none"))
    unix = build_backend(CacheConfig(redis="unix:///run/r.sock?db=2&password=pw"))
    plain = build_backend(CacheConfig(redis="redis://cache"))

    async def where() -> list[Endpoint]:
        return [await b.locate() for b in (tls, unix, plain) if b.locate is not None]

    found = asyncio.run(where())
    assert [(e.host, e.port, e.path, e.username, e.password, e.db) for e in found] == [
        ("cache", 6380, None, "u", "pw", 4), ("localhost", 6379, "/run/r.sock", None, "pw", 2),
        ("cache", 6379, None, None, None, 0)]
    assert found[0].tls is not None
    assert found[0].tls.verify_mode == ssl.CERT_NONE
    assert found[1].tls is None
    assert found[2].tls is None
