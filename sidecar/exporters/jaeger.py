"""`type: jaeger` - OTLP to a Jaeger collector (v1.35+ with OTLP on, v1.46+ by default, and
v2), over the OTLP exporter (docs/vendors.md §5).

Jaeger stores traces only: logs and metrics routed here are dropped as permanent failures
(counted) without a request. The legacy Thrift, agent and model.proto ports are refused
with the port to use instead. Plaintext (`http://`) is for endpoints on this host or in
the cluster; anything else needs `https://` or `allow_plaintext: true`."""

from __future__ import annotations

import ipaddress
import logging
from typing import Literal
from urllib.parse import urlsplit

from pydantic import model_validator

from sidecar.component import BuildContext, ExporterComponent, ExporterFactory, register_exporter
from sidecar.errors import PermanentError
from sidecar.exporters import otlp_vendor
from sidecar.exporters.otlp import KeepaliveSettings, OtlpConfig
from sidecar.exporthelper.body import NO_LIMITS, Body, BodyLimits
from sidecar.exporthelper.chain import EncodingSender, ExportChain
from sidecar.exporthelper.settings import ExporterSettings, TlsSettings
from sidecar.model import Batch, Signal

log = logging.getLogger(__name__)

LEGACY_PORTS = {
    5778: "jaeger-agent sampling configuration",
    6831: "jaeger-agent UDP compact Thrift",
    6832: "jaeger-agent UDP binary Thrift",
    9411: "Zipkin",
    14250: "the collector's gRPC model.proto",
    14268: "the collector's Thrift over HTTP",
}
_LOCAL_SUFFIXES = (".local", ".svc", ".cluster.local", ".internal", ".localhost")


def is_local_host(host: str) -> bool:
    """Loopback, a private or link-local address, `localhost`, a single-label name (a
    Compose or Kubernetes service) or a cluster-local DNS name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        return name == "localhost" or "." not in name or name.endswith(_LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_link_local


class JaegerConfig(ExporterSettings):
    type: Literal["jaeger"] = "jaeger"
    endpoint: str  # http://jaeger-collector:4317 (gRPC) or :4318 (HTTP)
    protocol: Literal["grpc", "http"] = "grpc"
    headers: dict[str, str] = {}
    tls: TlsSettings = TlsSettings()
    keepalive: KeepaliveSettings = KeepaliveSettings()
    allow_plaintext: bool = False  # http:// to a host that is not local

    @model_validator(mode="after")
    def _resolves(self) -> JaegerConfig:
        config = self.otlp()
        url = urlsplit(config.endpoint)
        port = url.port
        if port in LEGACY_PORTS:
            raise ValueError(
                f"endpoint: port {port} is {LEGACY_PORTS[port]}, deprecated and not spoken "
                f"here; Jaeger takes OTLP on 4317 (protocol: grpc) or 4318 (protocol: http)")
        host = url.hostname or ""
        if config.plaintext and not self.allow_plaintext and not is_local_host(host):
            raise ValueError(f"endpoint: plaintext to {host!r}, which is not local; use "
                             "https:// or set allow_plaintext: true")
        return self

    def otlp(self) -> OtlpConfig:
        extra: dict[str, object] = {"tls": self.tls}
        if "keepalive" in self.model_fields_set:
            extra["keepalive"] = self.keepalive
        return otlp_vendor.otlp_config(self, self.endpoint, self.protocol,
                                       dict(self.headers), **extra)


class TracesOnly:
    """Refuses logs and metrics before the wire: Jaeger has no endpoint for them."""

    def __init__(self, inner: EncodingSender) -> None:
        self.inner = inner
        self.off_loop_items = inner.off_loop_items

    async def start(self) -> None:
        await self.inner.start()

    def limits(self, signal: Signal) -> BodyLimits:
        return self.inner.limits(signal)

    def encode(self, batch: Batch, limits: BodyLimits) -> Body:
        if batch.signal is not Signal.TRACES:
            raise PermanentError(f"Jaeger stores traces only, not {batch.signal.value}; "
                                 "route them elsewhere under pipelines:")
        return self.inner.encode(batch, limits)

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        return await self.inner.push(batch, body, data)

    async def send(self, batch: Batch) -> int:
        self.encode(batch, NO_LIMITS)  # the signal check; an OTLP encode is free
        return await self.inner.send(batch)

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> str:
        return self.inner.describe().replace("{signal}", "traces")


def create(name: str, settings: ExporterSettings, ctx: BuildContext) -> ExporterComponent:
    assert isinstance(settings, JaegerConfig)
    others = sorted(s.value for s in ctx.signals if s is not Signal.TRACES)
    if others:
        log.warning("exporter %s: Jaeger stores traces only; %s sent to it will be dropped",
                    name, " and ".join(others), extra={"exporter": name})
    return ExportChain(name, settings, TracesOnly(otlp_vendor.sender_for(settings.otlp())))


FACTORY = register_exporter(ExporterFactory("jaeger", JaegerConfig, create))
