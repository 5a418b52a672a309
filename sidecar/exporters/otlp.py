"""`type: otlp` - OTLP over gRPC or HTTP/protobuf to a collector, Jaeger or a vendor.

A batch's serialized request goes out as is: the gRPC stubs have no serializer (raw bytes
in, raw bytes out) and the HTTP body is the same bytes, so no span is re-encoded here.
Queueing, batching, retries and timeouts come from `ExportChain`."""

from __future__ import annotations

import logging
import re
import ssl
import sys
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import grpc
import grpc.aio
import orjson
from google.protobuf.message import DecodeError
from pydantic import Field, ValidationInfo, field_validator, model_validator

from sidecar.component import BuildContext, ExporterComponent, ExporterFactory, register_exporter
from sidecar.configtypes import Duration, Strict
from sidecar.errors import PermanentError, RetryableError, StartupError
from sidecar.exporthelper import http
from sidecar.exporthelper.body import NO_LIMITS, Body, BodyLimits
from sidecar.exporthelper.chain import ExportChain, send_once
from sidecar.exporthelper.grpc_h2 import (
    KEEPALIVE_TIME,
    KEEPALIVE_TIMEOUT,
    MAX_RESPONSE,
    GrpcH2Client,
    GrpcStatusError,
    Keepalive,
    frame_message,
)
from sidecar.exporthelper.retry import (
    DestinationRefusedError,
    NoResendError,
    RequestTooLargeError,
    retry_info_delay,
)
from sidecar.exporthelper.settings import ExporterSettings, TlsSettings
from sidecar.model import Batch, Signal
from sidecar.signals import SIGNALS, ExportResponse

log = logging.getLogger(__name__)

# refusals that do not depend on the request's content (a wrong key, path or service)
_REFUSED_CODES = frozenset({
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED,
})
_RETRYABLE_CODES = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
_LOCAL_LIMIT = "CLIENT: Received message larger than max"
# gRPC metadata (doc/PROTOCOL-HTTP2.md in grpc/grpc): what both transports can send alike
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII
# set by the transport; HTTP/2 forbids the connection-specific ones
_TRANSPORT_HEADERS = frozenset({"content-type", "te", "host", "connection", "keep-alive",
                                "proxy-connection", "transfer-encoding", "upgrade"})


class KeepaliveSettings(Strict):
    """gRPC only: a PING once nothing was received for `time`, on an idle or a busy
    connection; no answer within `timeout` drops the connection. Both transports."""

    time: Duration = Field(default=KEEPALIVE_TIME, gt=0)
    timeout: Duration = Field(default=KEEPALIVE_TIMEOUT, gt=0)


class OtlpConfig(ExporterSettings):
    type: Literal["otlp"] = "otlp"
    endpoint: str  # http://host:4317 or https://host:4317; HTTP posts to {endpoint}/v1/{signal}
    protocol: Literal["grpc", "http"] = "grpc"
    headers: dict[str, str] = {}
    tls: TlsSettings = TlsSettings()
    keepalive: KeepaliveSettings = KeepaliveSettings()

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"expected http://host:port or https://host:port, got {value!r}")
        try:
            port = url.port
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"port must be a number from 1 to 65535, got {value!r}")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _grpc_metadata(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if info.data.get("protocol") != "grpc":
            return value
        seen: set[str] = set()
        for name, raw in value.items():
            key = name.lower()
            problem = _metadata_problem(key, raw.strip())
            if problem is None and key in seen:
                problem = "given twice (gRPC metadata keys are lowercase)"
            if problem is not None:
                raise ValueError(f"{name!r}: {problem}")
            seen.add(key)
        return value

    @model_validator(mode="after")
    def _tls_used(self) -> OtlpConfig:
        # TLS files on a plaintext endpoint would be accepted and ignored: say so instead
        if self.plaintext:
            given = sorted(k for k in self.tls.model_fields_set
                           if k != "insecure" and getattr(self.tls, k))
            if given:
                why = "tls.insecure is true" if self.tls.insecure else "the endpoint is http://"
                raise ValueError(f"tls.{', tls.'.join(given)} have no effect: {why} "
                                 "(plaintext); use an https:// endpoint")
        return self

    @model_validator(mode="after")
    def _one_authorization(self) -> OtlpConfig:
        # aiohttp refuses a request with both (every send would fail for good)
        has_header = any(k.lower() == "authorization" for k in self.headers)
        userinfo = "@" in self.endpoint.split("://", 1)[-1].split("/", 1)[0]
        if has_header and userinfo:
            raise ValueError("the endpoint has user:password@ and headers has authorization: "
                             "use one of them")
        return self

    @model_validator(mode="after")
    def _grpc_only(self) -> OtlpConfig:
        if self.protocol != "grpc":
            if "keepalive" in self.model_fields_set:
                raise ValueError("keepalive is for protocol: grpc (HTTP has no pings)")
            return self
        if self.tls.insecure_skip_verify:
            raise ValueError("tls.insecure_skip_verify is not supported with protocol: grpc")
        url = urlsplit(self.endpoint)
        if url.path or url.query or url.fragment or "@" in url.netloc:
            raise ValueError(f"endpoint: protocol grpc takes scheme://host:port only, got "
                             f"{self.endpoint!r}")
        return self

    @property
    def plaintext(self) -> bool:
        return self.tls.insecure or self.endpoint.startswith("http://")


def _metadata_problem(key: str, value: str) -> str | None:
    if not _METADATA_KEY.fullmatch(key):
        return "not a gRPC metadata key (letters, digits, '-', '_' and '.')"
    if key.startswith("grpc-"):
        return "grpc-* keys are reserved for gRPC itself"
    if key.endswith("-bin"):
        return "binary (-bin) metadata is not supported"
    if key in _TRANSPORT_HEADERS:
        return "set by the gRPC transport, not configurable"
    if not _METADATA_VALUE.fullmatch(value):
        return "the value must be printable ASCII"
    return None


def classify_grpc_error(error: grpc.aio.AioRpcError | GrpcStatusError,
                        ) -> PermanentError | RetryableError:
    """An error of either gRPC transport (grpc.aio or the h2 client), by its status."""
    return classify_grpc_status(error.code(), error.details(), error.trailing_metadata())


def classify_grpc_status(code: grpc.StatusCode, details: str | None,
                         trailing_metadata: Iterable[object] | None,
                         ) -> PermanentError | RetryableError:
    """OTLP spec: RESOURCE_EXHAUSTED is retryable only with a RetryInfo (throttling)."""
    message = f"gRPC {code.name}: {details}"
    delay = retry_info_delay(trailing_metadata)
    if code in _RETRYABLE_CODES:
        return RetryableError(message, retry_after=delay)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if delay is not None:
            return RetryableError(message, retry_after=delay)
        # grpc's own limit check: "Received message larger than max (N vs. M)". grpc-core
        # marks the side that refused: "CLIENT:" is our limit on the answer, so the peer
        # took the request and sending it again (split) would deliver it twice
        if _LOCAL_LIMIT in (details or ""):
            return NoResendError(message)
        if "larger than max" in (details or ""):
            return RequestTooLargeError(message)
    if code in _REFUSED_CODES:
        return DestinationRefusedError(message)
    return PermanentError(message)


class _PassThrough:
    """The OTLP body is the batch's bytes as they are: nothing to encode, and the batch
    limits (`batch:`, OTLP bytes) are its limits, applied by the batcher."""

    off_loop_items = sys.maxsize

    def limits(self, signal: Signal) -> BodyLimits:
        return NO_LIMITS

    def encode(self, batch: Batch, limits: BodyLimits) -> Body:
        # an empty batch (the health check's empty export) still goes out
        return Body(batch.payload, max(batch.items, 1))


def partial_success(signal: Signal, body: bytes, content_type: str) -> tuple[int, str]:
    """(rejected items, message) from an Export*ServiceResponse body, protobuf or JSON;
    (0, "") if absent or unreadable (the peer said 2xx: the data is delivered)."""
    if not body:
        return 0, ""
    spec = SIGNALS[signal]
    if "json" in content_type:
        try:
            doc = orjson.loads(body)
            partial = doc.get("partialSuccess") or {}
            return (int(partial.get(spec.rejected_json, 0)),
                    str(partial.get("errorMessage", "")))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return 0, ""
    response = _parse(spec.response_type, body)
    if response is None or not response.HasField("partial_success"):
        return 0, ""
    ps = response.partial_success
    return int(getattr(ps, spec.rejected_field)), str(ps.error_message)


class GrpcSender(_PassThrough):
    def __init__(self, config: OtlpConfig) -> None:
        self.config = config
        url = urlsplit(config.endpoint)
        host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname
        self._target = f"{host}:{url.port or 4317}"
        self._host, self._port = url.hostname or "", url.port or 4317
        # gRPC metadata keys are lowercase; values lose surrounding whitespace as HTTP/2
        # field values do (h2 strips it); `user-agent` replaces ours on both transports
        metadata = {k.lower(): v.strip() for k, v in config.headers.items()}
        self._user_agent = metadata.pop("user-agent", http.USER_AGENT)
        self._metadata = tuple(metadata.items())
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[Signal, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        # gzip: ISA-L compresses and the h2 client sends the pre-compressed message
        self._h2: GrpcH2Client | None = None

    async def start(self) -> None:
        # built for both transports: grpc.aio would take unusable PEM files and fail every
        # call with a retryable UNAVAILABLE instead of refusing to start
        ssl_context = self._ssl_context()
        if self.config.compression == "gzip":
            keepalive = self.config.keepalive
            self._h2 = GrpcH2Client(self._host, self._port, ssl_context=ssl_context,
                                    user_agent=self._user_agent,
                                    keepalive=Keepalive(keepalive.time, keepalive.timeout))
            return
        retry, keepalive = self.config.retry, self.config.keepalive
        options: list[tuple[str, str | int]] = [
            ("grpc.primary_user_agent", self._user_agent),
            ("grpc.max_receive_message_length", MAX_RESPONSE),  # the h2 client's limit
            # grpc.aio backs off reconnecting on its own (1 s growing to 120 s) and fails
            # calls fast meanwhile; bounded by the retry settings, a peer that is back is
            # reached by the next retry, as the h2 client (which connects per call) does
            ("grpc.initial_reconnect_backoff_ms", _millis(retry.initial_interval)),
            ("grpc.max_reconnect_backoff_ms", _millis(retry.max_interval)),
            # the h2 client's keepalive (grpc_h2.Keepalive). grpc 1.85 times keepalive
            # pings out by grpc.http2.ping_timeout_ms (60 s by default): with
            # keepalive_timeout_ms alone a hung peer went unnoticed
            ("grpc.keepalive_time_ms", _millis(keepalive.time)),
            ("grpc.keepalive_timeout_ms", _millis(keepalive.timeout)),
            ("grpc.http2.ping_timeout_ms", _millis(keepalive.timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        compression = grpc.Compression.NoCompression  # gzip goes through self._h2
        if self.config.plaintext:
            self._channel = grpc.aio.insecure_channel(
                self._target, options=options, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(self.config, "ca_file"),
                private_key=_read(self.config, "key_file"),
                certificate_chain=_read(self.config, "cert_file"))
            self._channel = grpc.aio.secure_channel(
                self._target, credentials, options=options, compression=compression)
        # no serializers: requests and responses stay bytes
        self._calls = {s: self._channel.unary_unary(spec.grpc_method, None, None)
                       for s, spec in SIGNALS.items()}

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.plaintext:
            return None
        for key in ("ca_file", "cert_file", "key_file"):
            _read(self.config, key)  # names a missing file the way the grpc.aio path does
        tls = self.config.tls
        try:  # ssl.SSLError is an OSError: a bad PEM
            context = ssl.create_default_context(cafile=tls.ca_file)
        except (OSError, ValueError) as exc:
            raise StartupError(f"tls.ca_file: {tls.ca_file}: {exc}") from exc
        if tls.cert_file is not None and tls.key_file is not None:
            try:
                # no password: an encrypted key fails here instead of OpenSSL prompting
                # on the terminal
                context.load_cert_chain(tls.cert_file, tls.key_file, password=http.no_password)
            except (OSError, ValueError) as exc:
                raise StartupError(f"tls.cert_file, tls.key_file: {exc} (expected a PEM "
                                   f"certificate and its unencrypted key)") from exc
        context.set_alpn_protocols(["h2"])
        return context

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        try:
            if self._h2 is not None:  # gzip: `data` is compressed
                answer = await self._h2.unary(
                    SIGNALS[batch.signal].grpc_method, frame_message(data, True),
                    timeout=self.config.timeout, metadata=self._metadata)
            else:
                answer = await self._calls[batch.signal](
                    data, timeout=self.config.timeout, metadata=self._metadata)
        except (grpc.aio.AioRpcError, GrpcStatusError) as exc:
            raise classify_grpc_error(exc) from exc
        if answer is None:
            return 0
        rejected, message = partial_success(batch.signal, answer, "application/grpc")
        if rejected or message:
            log.warning("partial success from %s", self.config.endpoint,
                        extra={"rejected": rejected, "detail": message})
        return rejected

    async def send(self, batch: Batch) -> int:
        return await send_once(self, batch, self.config.compression)

    async def close(self) -> None:
        if self._h2 is not None:
            await self._h2.close()
            self._h2 = None
        if self._channel is not None:
            await self._channel.close(grace=None)
            self._channel = None

    def describe(self) -> str:
        return f"otlp/grpc {self.config.endpoint}"


class HttpSender(_PassThrough):
    def __init__(self, config: OtlpConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/x-protobuf", **config.headers}
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        base = config.endpoint
        if config.plaintext:
            # tls.insecure: plaintext even to an https:// endpoint, as with gRPC (aiohttp
            # would speak TLS to an https URL, only unverified)
            base = urlsplit(base)._replace(scheme="http").geturl()
        self._urls = {s: f"{base}/v1/{s.value}" for s in Signal}

    async def start(self) -> None:
        self._session = http.open_session(
            None if self.config.plaintext else self.config.tls,
            connections=self.config.queue.concurrency)

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        assert self._session is not None, "push() before start()"
        answer = await http.post(self._session, self._urls[batch.signal], data,
                                 self._headers)
        rejected, message = partial_success(batch.signal, answer.body, answer.content_type)
        if rejected or message:
            log.warning("partial success from %s", self.config.endpoint,
                        extra={"rejected": rejected, "detail": message})
        return rejected

    async def send(self, batch: Batch) -> int:
        return await send_once(self, batch, self.config.compression)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def describe(self) -> str:
        return f"otlp/http {self.config.endpoint}/v1/{{signal}}"


def _parse(response_type: type[ExportResponse], answer: bytes | None,
           ) -> ExportResponse | None:
    """The Export response; None if there is none (both transports give None for an OK
    without a message) or it does not parse."""
    if answer is None:
        return None
    try:
        return response_type.FromString(answer)
    except DecodeError:
        return None


def _millis(seconds: float) -> int:
    return max(int(seconds * 1000), 100)  # never a reconnect or ping loop without a pause


def _read(config: OtlpConfig, key: Literal["ca_file", "cert_file", "key_file"]) -> bytes | None:
    path = getattr(config.tls, key)
    if path is None:
        return None
    try:
        return bytes(path.read_bytes())
    except OSError as exc:
        raise StartupError(f"tls.{key}: {path}: {exc.strerror}") from exc


def create(name: str, settings: ExporterSettings, ctx: BuildContext) -> ExporterComponent:
    assert isinstance(settings, OtlpConfig)
    sender = GrpcSender(settings) if settings.protocol == "grpc" else HttpSender(settings)
    return ExportChain(name, settings, sender)


FACTORY = register_exporter(ExporterFactory("otlp", OtlpConfig, create))
