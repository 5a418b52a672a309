"""TLS, mTLS, certificate reload and bearer auth on the OTLP receivers and the admin
server, against the real OpenTelemetry SDK exporters, grpc and ssl clients. Certificates
are made per test by `trustme`."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
import requests
import trustme
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_helpers import Consumers

from sidecar.admin import AdminServer
from sidecar.config import GrpcListenerConfig, HttpListenerConfig
from sidecar.errors import StartupError
from sidecar.model import Signal
from sidecar.net.security import AuthConfig, ServerTlsConfig
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver

TOKEN = "s3cret-token-for-tests"
BAD = "sidecar_receiver_bad_requests_total"


@dataclass
class Pki:
    dir: Path
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client(self, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """A client certificate (signed by `ca`, default ours) as (cert, key) files."""
        issued = (ca or self.ca).issue_cert("client@example.com")
        name = f"client-{id(issued)}"
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def reissue(self, ca: trustme.CA) -> None:
        """Replace the server's files, atomically, with a certificate from `ca`."""
        issued = ca.issue_cert("127.0.0.1", "localhost")
        for blob, target in ((issued.cert_chain_pems[0], self.cert_file),
                             (issued.private_key_pem, self.key_file)):
            tmp = target.with_suffix(".tmp")
            blob.write_to_path(str(tmp))
            tmp.replace(target)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    pki = Pki(tmp_path, ca, tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.reissue(ca)
    return pki


def tls_config(pki: Pki, *, mtls: bool = False, reload: float = 60.0) -> ServerTlsConfig:
    return ServerTlsConfig(cert_file=pki.cert_file, key_file=pki.key_file,
                           client_ca_file=pki.ca_file if mtls else None, reload_interval=reload)


AUTH = AuthConfig(bearer_tokens=[TOKEN])  # type: ignore[list-item]


async def started_grpc(consumers: Consumers, **kw: object) -> OtlpGrpcReceiver:
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(endpoint="127.0.0.1:0", **kw),
                                consumers)
    await receiver.start()
    return receiver


async def started_http(consumers: Consumers, **kw: object) -> OtlpHttpReceiver:
    receiver = OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint="127.0.0.1:0", **kw),
                                consumers)
    await receiver.start()
    return receiver


@pytest.fixture
async def stop() -> AsyncIterator[Callable[[object], None]]:
    started: list[OtlpGrpcReceiver | OtlpHttpReceiver | AdminServer] = []
    yield started.append  # type: ignore[arg-type]
    for receiver in started:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1.0)


def grpc_export(port: int, spans: tuple[ReadableSpan, ...], *, ca: Path | None,
                token: str | None, client: tuple[Path, Path] | None = None) -> SpanExportResult:
    credentials = None
    if ca is not None:
        key_pem = client[1].read_bytes() if client else None
        cert_pem = client[0].read_bytes() if client else None
        credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key_pem, cert_pem)
    exporter = GrpcSpanExporter(
        endpoint=f"localhost:{port}", insecure=ca is None, credentials=credentials,
        headers=(("authorization", f"Bearer {token}"),) if token else None, timeout=5)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def http_export(port: int, spans: tuple[ReadableSpan, ...], *, ca: Path, token: str | None,
                client: tuple[Path, Path] | None = None) -> SpanExportResult:
    # requests lets REQUESTS_CA_BUNDLE (set on some machines) override the CA it is given
    session = requests.Session()
    session.trust_env = False
    exporter = HttpSpanExporter(
        endpoint=f"https://127.0.0.1:{port}/v1/traces", certificate_file=str(ca), session=session,
        client_certificate_file=str(client[0]) if client else None,
        client_key_file=str(client[1]) if client else None,
        headers={"Authorization": f"Bearer {token}"} if token else None, timeout=5)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


async def test_grpc_tls_with_a_bearer_token(
    pki: Pki, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
    stop: Callable[[object], None], metric: Callable[..., float],
) -> None:
    receiver = await started_grpc(consumers, tls=tls_config(pki), auth=AUTH)
    stop(receiver)
    port = receiver.bound_port
    refused = metric(BAD, receiver="otlp", transport="grpc", reason="unauthenticated")

    ok = await asyncio.to_thread(grpc_export, port, sdk_spans, ca=pki.ca_file, token=TOKEN)
    assert ok is SpanExportResult.SUCCESS
    assert len(consumers[Signal.TRACES].batches) == 1

    for token in (None, "wrong", TOKEN + "x"):
        result = await asyncio.to_thread(grpc_export, port, sdk_spans, ca=pki.ca_file,
                                         token=token)
        assert result is SpanExportResult.FAILURE
    assert len(consumers[Signal.TRACES].batches) == 1
    assert metric(BAD, receiver="otlp", transport="grpc", reason="unauthenticated") == (
        refused + 3)

    # the status a client sees, and that plaintext is not served on a TLS port
    ca = grpc.ssl_channel_credentials(pki.ca_file.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{port}", ca) as channel:
        rpc = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc(b"", timeout=5, metadata=(("authorization", "Bearer nope"),))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    plain = await asyncio.to_thread(grpc_export, port, sdk_spans, ca=None, token=TOKEN)
    assert plain is SpanExportResult.FAILURE
    assert len(consumers[Signal.TRACES].batches) == 1


async def test_grpc_refuses_a_call_without_a_token_before_reading_its_request(
    consumers: Consumers, stop: Callable[[object], None], metric: Callable[..., float],
) -> None:
    """A client without a token is answered from the call's metadata: the daemon does not
    wait for (and hold) a request of up to `max_recv_msg_size` first. The request here never
    ends, so a check made after reading it would never answer."""
    receiver = await started_grpc(consumers, auth=AUTH)
    stop(receiver)
    refused = metric(BAD, receiver="otlp", transport="grpc", reason="unauthenticated")
    never = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        await never.wait()  # the request's first message is never sent
        yield b""

    path = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.bound_port}") as channel:
        for metadata in ((), (("authorization", "Bearer nope"),)):
            call = channel.stream_unary(path)(endless(), timeout=5, metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        # a client with the token is served as before, on the same connection
        assert await channel.unary_unary(path)(
            b"", timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),)) == b""
    never.set()
    assert metric(BAD, receiver="otlp", transport="grpc", reason="unauthenticated") == (
        refused + 2)


async def test_grpc_mtls_refuses_a_client_without_a_trusted_certificate(
    pki: Pki, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
    stop: Callable[[object], None],
) -> None:
    receiver = await started_grpc(consumers, tls=tls_config(pki, mtls=True))
    stop(receiver)
    port = receiver.bound_port
    good = await asyncio.to_thread(grpc_export, port, sdk_spans, ca=pki.ca_file, token=None,
                                   client=pki.client())
    assert good is SpanExportResult.SUCCESS
    stranger = pki.client(trustme.CA())
    for client in (stranger, None):
        result = await asyncio.to_thread(grpc_export, port, sdk_spans, ca=pki.ca_file,
                                         token=None, client=client)
        assert result is SpanExportResult.FAILURE
    assert len(consumers[Signal.TRACES].batches) == 1


async def test_http_tls_with_a_bearer_token(
    pki: Pki, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
    stop: Callable[[object], None], metric: Callable[..., float],
) -> None:
    receiver = await started_http(consumers, tls=tls_config(pki), auth=AUTH)
    stop(receiver)
    port = receiver.bound_port
    ok = await asyncio.to_thread(http_export, port, sdk_spans, ca=pki.ca_file, token=TOKEN)
    assert ok is SpanExportResult.SUCCESS
    refused = metric(BAD, receiver="otlp", transport="http", reason="unauthenticated")
    for token in (None, "wrong"):
        result = await asyncio.to_thread(http_export, port, sdk_spans, ca=pki.ca_file,
                                         token=token)
        assert result is SpanExportResult.FAILURE
    assert len(consumers[Signal.TRACES].batches) == 1
    assert metric(BAD, receiver="otlp", transport="http", reason="unauthenticated") == (
        refused + 2)

    context = ssl.create_default_context(cafile=pki.ca_file)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://127.0.0.1:{port}/v1/traces", data=b"",
                                headers={"Content-Type": "application/x-protobuf"},
                                ssl=context) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        with pytest.raises(aiohttp.ClientError):  # plaintext to the TLS port
            async with session.post(f"http://127.0.0.1:{port}/v1/traces", data=b"",
                                    headers={"Content-Type": "application/x-protobuf"}):
                pass


async def test_http_mtls_refuses_a_client_without_a_trusted_certificate(
    pki: Pki, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
    stop: Callable[[object], None],
) -> None:
    receiver = await started_http(consumers, tls=tls_config(pki, mtls=True))
    stop(receiver)
    port = receiver.bound_port
    good = await asyncio.to_thread(http_export, port, sdk_spans, ca=pki.ca_file, token=None,
                                   client=pki.client())
    assert good is SpanExportResult.SUCCESS
    for client in (pki.client(trustme.CA()), None):
        result = await asyncio.to_thread(http_export, port, sdk_spans, ca=pki.ca_file,
                                         token=None, client=client)
        assert result is SpanExportResult.FAILURE
    assert len(consumers[Signal.TRACES].batches) == 1


async def _peer_issuer(port: int, ca: Path) -> str | None:
    """The issuer of the certificate a new TLS connection is shown, or None when the
    handshake fails against `ca` (no SNI: connecting by IP address)."""
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return None
    peer = writer.get_extra_info("peercert")
    writer.close()
    return str(peer["issuer"])


async def test_http_and_admin_reload_a_rotated_certificate(
    pki: Pki, consumers: Consumers, stop: Callable[[object], None], tmp_path: Path,
) -> None:
    receiver = await started_http(consumers, tls=tls_config(pki, reload=0.05))
    stop(receiver)
    admin = AdminServer("127.0.0.1:0", tls=tls_config(pki, reload=0.05))
    await admin.start()
    stop(admin)
    assert admin.bound_port is not None
    ports = (receiver.bound_port, admin.bound_port)
    for port in ports:
        assert await _peer_issuer(port, pki.ca_file) is not None

    new_ca = trustme.CA()
    new_ca_file = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_ca_file))
    pki.reissue(new_ca)
    for port in ports:
        for _ in range(200):  # bounded: ~10 s
            if await _peer_issuer(port, new_ca_file) is not None:
                break
            await asyncio.sleep(0.05)
        assert await _peer_issuer(port, new_ca_file) is not None
        assert await _peer_issuer(port, pki.ca_file) is None

    # a broken file (a rotation half done) keeps the working certificate
    pki.cert_file.write_text("not a certificate")
    await asyncio.sleep(0.2)
    for port in ports:
        assert await _peer_issuer(port, new_ca_file) is not None


async def test_grpc_reloads_a_rotated_certificate(
    pki: Pki, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
    stop: Callable[[object], None], tmp_path: Path,
) -> None:
    receiver = await started_grpc(consumers, tls=tls_config(pki, reload=0.05))
    stop(receiver)
    port = receiver.bound_port
    new_ca = trustme.CA()
    new_ca_file = tmp_path / "new-ca.pem"
    new_ca.cert_pem.write_to_path(str(new_ca_file))
    pki.reissue(new_ca)
    await asyncio.sleep(0.1)
    result = SpanExportResult.FAILURE
    for _ in range(20):  # bounded: gRPC asks for the configuration on new connections
        result = await asyncio.to_thread(grpc_export, port, sdk_spans, ca=new_ca_file,
                                         token=None)
        if result is SpanExportResult.SUCCESS:
            break
        await asyncio.sleep(0.1)
    assert result is SpanExportResult.SUCCESS
    assert await asyncio.to_thread(grpc_export, port, sdk_spans, ca=pki.ca_file,
                                   token=None) is SpanExportResult.FAILURE


async def test_admin_auth_leaves_the_probes_open(
    stop: Callable[[object], None], metric: Callable[..., float],
) -> None:
    admin = AdminServer("127.0.0.1:0", lambda: {"hits": 1}, auth=AUTH,
                        listeners=lambda: [{"component": "admin"}],
                        spend=lambda: {"total_usd": 0})
    await admin.start()
    stop(admin)
    admin.set_ready(True)
    base = f"http://127.0.0.1:{admin.bound_port}"
    before = metric("sidecar_admin_unauthenticated_total")
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(base + path) as response:
                assert response.status == 200, path
        for path in ("/metrics", "/cache/stats", "/listeners", "/spend", "/anything"):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with session.get(base + path, headers=headers) as response:
                    assert response.status == 401, path
                    assert TOKEN not in await response.text()
            async with session.get(base + path,
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == (404 if path == "/anything" else 200), path
    assert metric("sidecar_admin_unauthenticated_total") == before + 10


async def test_a_bad_certificate_is_a_startup_error_naming_the_setting(
    pki: Pki, consumers: Consumers, tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("garbage")
    bad = ServerTlsConfig(cert_file=broken, key_file=pki.key_file)
    with pytest.raises(StartupError, match=r"receivers\.otlp\.http\.tls\.cert_file"):
        await started_http(consumers, tls=bad)
    with pytest.raises(StartupError, match=r"receivers\.otlp\.grpc\.tls\.cert_file"):
        await started_grpc(consumers, tls=bad)
    missing = ServerTlsConfig(cert_file=pki.cert_file, key_file=tmp_path / "nope.key")
    with pytest.raises(StartupError, match=r"admin\.tls"):
        await AdminServer("127.0.0.1:0", tls=missing).start()
