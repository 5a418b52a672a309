"""Everything the daemon knows per OTLP signal, in one table.

Receivers, the batcher, exporters and the sample sender look up message types, gRPC method
paths, HTTP paths, partial-success field names and the nesting of items here, instead of
each spelling them out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeAlias

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ExportRequest: TypeAlias = (
    ExportTraceServiceRequest | ExportLogsServiceRequest | ExportMetricsServiceRequest
)
ExportResponse: TypeAlias = (
    ExportTraceServiceResponse | ExportLogsServiceResponse | ExportMetricsServiceResponse
)
PartialSuccess: TypeAlias = (
    ExportTracePartialSuccess | ExportLogsPartialSuccess | ExportMetricsPartialSuccess
)


class Signal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True)
class SignalSpec:
    signal: Signal
    request_type: type[ExportRequest]
    response_type: type[ExportResponse]
    partial_success_type: type[PartialSuccess]
    # the partial-success count field, in protobuf and in OTLP/JSON spelling
    rejected_field: str
    rejected_json: str
    # repeated-field names from the request down to the items:
    # request -> resources -> scopes -> items (metrics: items are metrics holding points)
    levels: tuple[str, str, str]
    item_name: str  # for messages: "spans", "log records", "data points"
    grpc_service: str
    http_path: str

    @property
    def grpc_method(self) -> str:
        return f"/{self.grpc_service}/Export"


SIGNALS: Final[dict[Signal, SignalSpec]] = {
    Signal.TRACES: SignalSpec(
        Signal.TRACES, ExportTraceServiceRequest, ExportTraceServiceResponse,
        ExportTracePartialSuccess, "rejected_spans", "rejectedSpans",
        ("resource_spans", "scope_spans", "spans"), "spans",
        "opentelemetry.proto.collector.trace.v1.TraceService", "/v1/traces"),
    Signal.LOGS: SignalSpec(
        Signal.LOGS, ExportLogsServiceRequest, ExportLogsServiceResponse,
        ExportLogsPartialSuccess, "rejected_log_records", "rejectedLogRecords",
        ("resource_logs", "scope_logs", "log_records"), "log records",
        "opentelemetry.proto.collector.logs.v1.LogsService", "/v1/logs"),
    Signal.METRICS: SignalSpec(
        Signal.METRICS, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        ExportMetricsPartialSuccess, "rejected_data_points", "rejectedDataPoints",
        ("resource_metrics", "scope_metrics", "metrics"), "data points",
        "opentelemetry.proto.collector.metrics.v1.MetricsService", "/v1/metrics"),
}

REQUEST_TYPES: Final[dict[Signal, type[ExportRequest]]] = {
    s: spec.request_type for s, spec in SIGNALS.items()}
HTTP_PATHS: Final[dict[str, Signal]] = {spec.http_path: s for s, spec in SIGNALS.items()}

# Where gRPC carries a serialized google.rpc.Status (what grpcio-status and the Go
# Collector read), and a bare RetryInfo (what the OTel Python exporter reads).
GRPC_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
GRPC_RETRY_INFO_KEY: Final = "google.rpc.retryinfo-bin"
