"""`sidecar send-test`: push sample agent runs to a receiver with a plain OTLP client."""

from __future__ import annotations

import urllib.error
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar.sample import agent_runs
from sidecar.signals import SIGNALS, Signal


def send(endpoint: str, protocol: str, runs: int) -> tuple[int, int]:
    spans = records = 0
    batches = list(agent_runs(runs))
    payloads = {
        "traces": [b.traces.SerializeToString() for b in batches],
        "logs": [b.logs.SerializeToString() for b in batches],
    }
    if protocol == "grpc":
        target = endpoint.removeprefix("http://")
        with grpc.insecure_channel(target) as channel:
            for signal, bodies in payloads.items():
                export = channel.unary_unary(
                    SIGNALS[Signal(signal)].grpc_method,
                    request_serializer=None, response_deserializer=None)
                for body in bodies:
                    export(body, timeout=10)
    else:
        base = endpoint.rstrip("/")
        for signal, bodies in payloads.items():
            for body in bodies:
                request = urllib.request.Request(
                    f"{base}/v1/{signal}", data=body, method="POST",
                    headers={"Content-Type": "application/x-protobuf"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
    for run in batches:
        spans += run.spans
        records += run.log_records
    return spans, records


def priced(admin: str, service: str = "feedback-app") -> float | None:
    """The daemon's `sidecar_llm_cost_usd_total` for the sample's service, None when its
    admin server does not answer."""
    try:
        with urllib.request.urlopen(f"{admin.rstrip('/')}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "sidecar_llm_cost_usd":
            total += sum(s.value for s in family.samples if s.labels.get("service") == service
                         and s.name == "sidecar_llm_cost_usd_total")
    return total
