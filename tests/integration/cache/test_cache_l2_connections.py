"""The L2 fast path's own connections against real redis-servers: AUTH and a db index over
a unix socket, TLS with a verified certificate, a refused password (L2 down, L1 serves)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis.asyncio as aioredis

from sidecar.cache.l2 import RedisTier
from sidecar.cache.testing import RedisServer, running_cache, wait_until
from tests.conftest import free_port


async def check_write_and_read_through(sock: str, direct: aioredis.Redis,
                                       l2: RedisTier) -> None:
    client = aioredis.Redis(unix_socket_path=sock)
    try:
        await client.set("specs:mine", "from-sidecar")
        await wait_until(lambda: not l2.pending, "writes reached Redis")
        assert await direct.get("specs:mine") == b"from-sidecar"
        await direct.set("specs:theirs", "from-redis", ex=100)
        assert await client.get("specs:theirs") == b"from-redis"  # an L2 read
        assert 0 < await client.ttl("specs:theirs") <= 100
    finally:
        await client.aclose()


async def test_password_and_db_over_a_unix_socket(short_tmp: Path) -> None:
    (short_tmp / "r").mkdir()
    server = RedisServer(short_tmp / "r", extra_args=["--requirepass", "s3cret"])
    server.start()
    try:
        sock = str(short_tmp / "c.sock")
        url = f"unix://{server.socket}?db=3&password=s3cret"
        async with running_cache(sock, redis=url) as svc:
            l2 = svc.tiers.l2
            assert l2 is not None
            assert l2.up
            direct = aioredis.Redis(unix_socket_path=server.socket, password="s3cret", db=3)
            try:
                await check_write_and_read_through(sock, direct, l2)
                other = aioredis.Redis(unix_socket_path=server.socket, password="s3cret")
                try:
                    assert await other.dbsize() == 0  # nothing went to db 0
                finally:
                    await other.aclose()
                assert l2.read_errors == l2.write_errors == 0
            finally:
                await direct.aclose()
    finally:
        server.close()


async def test_refused_password_means_l2_down_and_memory_serves(short_tmp: Path) -> None:
    (short_tmp / "r").mkdir()
    server = RedisServer(short_tmp / "r", extra_args=["--requirepass", "s3cret"])
    server.start()
    try:
        sock = str(short_tmp / "c.sock")
        async with running_cache(sock, redis=f"unix://{server.socket}?password=wrong") as svc:
            assert svc.tiers.l2 is not None
            assert not svc.tiers.l2.up
            client = aioredis.Redis(unix_socket_path=sock)
            try:
                await client.set("specs:k", "v")
                assert await client.get("specs:k") == b"v"
            finally:
                await client.aclose()
    finally:
        server.close()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost, made by the openssl CLI."""
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    crt, key, csr = directory / "srv.crt", directory / "srv.key", directory / "srv.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca,
                    "-days", "1", "-subj", "/CN=test-ca"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr,
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                    "-CAcreateserial", "-out", crt, "-days", "1", "-copy_extensions", "copy"],
                   check=True, capture_output=True)
    return ca, crt, key


async def test_tls_with_a_verified_certificate(short_tmp: Path) -> None:
    ca, crt, key = make_certificates(short_tmp)
    (short_tmp / "r").mkdir()
    port = free_port()
    server = RedisServer(short_tmp / "r", extra_args=[
        "--tls-port", str(port), "--tls-cert-file", str(crt), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--bind", "127.0.0.1"])
    server.start()
    try:
        sock = str(short_tmp / "c.sock")
        url = f"rediss://localhost:{port}/2?ssl_ca_certs={ca}"
        async with running_cache(sock, redis=url) as svc:
            l2 = svc.tiers.l2
            assert l2 is not None
            assert l2.up
            direct = aioredis.Redis(unix_socket_path=server.socket, db=2)
            try:
                await check_write_and_read_through(sock, direct, l2)
            finally:
                await direct.aclose()
        # a certificate nobody vouches for: no connection (L2 down), memory serves
        async with running_cache(sock, redis=f"rediss://localhost:{port}/2") as svc:
            assert svc.tiers.l2 is not None
            assert not svc.tiers.l2.up
    finally:
        server.close()
