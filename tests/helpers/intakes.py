"""Strict fake vendor intakes on loopback (docs/vendors.md §6). Each refuses what the vendor
refuses (wrong path, missing or wrong headers, bad content type or encoding, oversize
bodies) and decodes every body it accepts."""

from __future__ import annotations

from sidecar.testing import OtlpSink


def honeycomb_sink(api_key: str, dataset: str | None = None) -> OtlpSink:
    """Honeycomb's OTLP intake: 401 without the team key (and, when `dataset` is given,
    without that dataset header), 415 for other content types, gzip or plain bodies."""
    required = {"x-honeycomb-team": api_key}
    if dataset is not None:
        required["x-honeycomb-dataset"] = dataset
    return OtlpSink(require_headers=required)


def jaeger_sink() -> OtlpSink:
    """Jaeger's OTLP receivers: no auth, traces only (requests of other signals are
    recorded, so a test can assert there were none)."""
    return OtlpSink()
