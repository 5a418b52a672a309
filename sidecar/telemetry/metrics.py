"""Every metric the daemon exports, declared once, in the daemon's own registry.

Components take label children once at construction (`.labels(...)`) so the hot path is a
single increment."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from sidecar import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

BUILD_INFO = Info("sidecar_build", "Version of the running sidecar", registry=REGISTRY)
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

# --- receivers ---------------------------------------------------------------------------
RECEIVER_ACCEPTED = Counter(
    "sidecar_receiver_accepted_items",
    "Spans, log records or metric points accepted into the pipeline",
    ["receiver", "transport", "signal"],
    registry=REGISTRY,
)
RECEIVER_REFUSED = Counter(
    "sidecar_receiver_refused_items",
    "Items refused: backpressure (client told to retry) or bad input (rejected)",
    ["receiver", "transport", "signal", "reason"],
    registry=REGISTRY,
)
RECEIVER_BAD_REQUESTS = Counter(
    "sidecar_receiver_bad_requests",
    "Requests rejected as malformed, oversize or of an unsupported content type",
    ["receiver", "transport", "reason"],
    registry=REGISTRY,
)

# --- exporters (shared export layer) ------------------------------------------------------
EXPORTER_SENT = Counter(
    "sidecar_exporter_sent_items",
    "Items the destination acknowledged",
    ["exporter", "signal"],
    registry=REGISTRY,
)
EXPORTER_FAILED = Counter(
    "sidecar_exporter_send_failed_items",
    "Items in failed send attempts (each attempt counted)",
    ["exporter", "signal"],
    registry=REGISTRY,
)
EXPORTER_RETRIED = Counter(
    "sidecar_exporter_retries",
    "Send attempts that were retried",
    ["exporter", "signal"],
    registry=REGISTRY,
)
EXPORTER_DROPPED = Counter(
    "sidecar_exporter_dropped_items",
    "Items given up on: permanent error, partial-success rejection, retries exhausted",
    ["exporter", "signal", "reason"],
    registry=REGISTRY,
)
EXPORTER_QUEUE_BYTES = Gauge(
    "sidecar_exporter_queue_size_bytes", "Bytes waiting in the exporter queue", ["exporter"],
    registry=REGISTRY,
)
EXPORTER_QUEUE_ITEMS = Gauge(
    "sidecar_exporter_queue_size_items", "Items waiting in the exporter queue", ["exporter"],
    registry=REGISTRY,
)
EXPORTER_QUEUE_CAPACITY = Gauge(
    "sidecar_exporter_queue_capacity_bytes", "Configured queue bound", ["exporter"],
    registry=REGISTRY,
)
EXPORTER_BATCH_ITEMS = Histogram(
    "sidecar_exporter_batch_size_items",
    "Items per request sent to the destination",
    ["exporter"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
    registry=REGISTRY,
)
EXPORTER_LATENCY = Histogram(
    "sidecar_exporter_send_duration_seconds",
    "Time for one send attempt, request to answer",
    ["exporter"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

# --- daemon -------------------------------------------------------------------------------
READY = Gauge("sidecar_ready", "1 when every listener is bound and every exporter started",
              registry=REGISTRY)
