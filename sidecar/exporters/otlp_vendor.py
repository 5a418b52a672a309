"""Vendor exporters that speak plain OTLP (Honeycomb, Jaeger): a vendor config resolves to
an `OtlpConfig`, and the OTLP exporter's senders do the rest, so the vendor modules hold
only endpoints, headers and checks."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sidecar.exporters.otlp import GrpcSender, HttpSender, OtlpConfig
from sidecar.exporthelper.chain import EncodingSender, ExportChain
from sidecar.exporthelper.settings import ExporterSettings

# the keys every exporter shares (ExporterSettings), passed through as they are
_SHARED = ("timeout", "compression", "queue", "batch", "retry")


def otlp_config(settings: ExporterSettings, endpoint: str, protocol: str,
                headers: dict[str, str], **extra: Any) -> OtlpConfig:
    """The OTLP exporter config a vendor block stands for; raises ValueError (inside a
    pydantic validator that becomes the vendor block's config error)."""
    raw: dict[str, Any] = {key: getattr(settings, key) for key in _SHARED}
    raw.update(type="otlp", endpoint=endpoint, protocol=protocol, headers=headers, **extra)
    try:
        return OtlpConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                   for e in exc.errors())) from None


def sender_for(config: OtlpConfig) -> EncodingSender:
    return GrpcSender(config) if config.protocol == "grpc" else HttpSender(config)


def chain(name: str, settings: ExporterSettings, config: OtlpConfig) -> ExportChain:
    return ExportChain(name, settings, sender_for(config))
