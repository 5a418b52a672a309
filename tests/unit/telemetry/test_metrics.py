"""The daemon's registry exposes no `_created` series."""

from __future__ import annotations

from prometheus_client import generate_latest

from sidecar.telemetry.metrics import EXPORTER_LATENCY, EXPORTER_SENT, REGISTRY


def sample_names(text: str) -> list[str]:
    return [line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")]


def test_counters_and_histograms_have_no_created_sample() -> None:
    sent = EXPORTER_SENT.labels("unit-created-check", "traces")
    latency = EXPORTER_LATENCY.labels("unit-created-check")
    try:
        sent.inc(3)
        latency.observe(0.01)
        names = sample_names(generate_latest(REGISTRY).decode())
    finally:
        EXPORTER_SENT.remove("unit-created-check", "traces")
        EXPORTER_LATENCY.remove("unit-created-check")
    assert "sidecar_exporter_sent_items_total" in names
    assert "sidecar_exporter_send_duration_seconds_count" in names
    assert [n for n in names if n.endswith("_created")] == []
