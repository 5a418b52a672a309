"""`type: honeycomb` - OTLP to Honeycomb (docs/vendors.md §4), over the OTLP exporter.

Every request carries `x-honeycomb-team`; `x-honeycomb-dataset` goes along whenever a
dataset is set. A Classic key (32 hex characters, or a 64-character `hc?ic_` ingest key)
names no environment, so Honeycomb refuses traces and metrics without the dataset header:
such a key without `dataset` is a config error. Environment keys route traces by
`service.name` and need no dataset; logs use it as a fallback."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import SecretStr, model_validator

from sidecar.component import BuildContext, ExporterComponent, ExporterFactory, register_exporter
from sidecar.exporters import otlp_vendor
from sidecar.exporters.otlp import KeepaliveSettings, OtlpConfig
from sidecar.exporthelper.settings import ExporterSettings, TlsSettings

ENDPOINTS = {"us": "https://api.honeycomb.io:443", "eu": "https://api.eu1.honeycomb.io:443"}
_CLASSIC = re.compile(r"[0-9a-f]{32}|hc[a-z]ic_[0-9a-z]{58}")


def is_classic_key(key: str) -> bool:
    return _CLASSIC.fullmatch(key) is not None


class HoneycombConfig(ExporterSettings):
    type: Literal["honeycomb"] = "honeycomb"
    api_key: SecretStr
    dataset: str | None = None
    region: Literal["us", "eu"] = "us"
    endpoint: str | None = None  # replaces the region's endpoint (proxies, tests)
    protocol: Literal["grpc", "http"] = "grpc"
    tls: TlsSettings = TlsSettings()
    keepalive: KeepaliveSettings = KeepaliveSettings()

    @model_validator(mode="after")
    def _resolves(self) -> HoneycombConfig:
        key = self.api_key.get_secret_value()
        if not key.strip():
            raise ValueError("api_key is empty (set it from ${env:HONEYCOMB_API_KEY})")
        if key != key.strip() or any(c < " " or c > "~" for c in key):
            raise ValueError("api_key has whitespace or non-printable characters")
        if self.dataset is not None and not self.dataset.strip():
            raise ValueError("dataset is empty")
        if self.dataset is None and is_classic_key(key):
            raise ValueError("dataset is required with a Classic API key (Honeycomb refuses "
                             "traces and metrics without x-honeycomb-dataset)")
        self.otlp()  # endpoint, TLS and keepalive problems are this block's config errors
        return self

    def otlp(self) -> OtlpConfig:
        headers = {"x-honeycomb-team": self.api_key.get_secret_value()}
        if self.dataset is not None:
            headers["x-honeycomb-dataset"] = self.dataset.strip()
        extra: dict[str, object] = {"tls": self.tls}
        if "keepalive" in self.model_fields_set:
            extra["keepalive"] = self.keepalive
        return otlp_vendor.otlp_config(self, self.endpoint or ENDPOINTS[self.region],
                                       self.protocol, headers, **extra)


def create(name: str, settings: ExporterSettings, ctx: BuildContext) -> ExporterComponent:
    assert isinstance(settings, HoneycombConfig)
    return otlp_vendor.chain(name, settings, settings.otlp())


FACTORY = register_exporter(ExporterFactory("honeycomb", HoneycombConfig, create))
