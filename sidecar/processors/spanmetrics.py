"""The `spanmetrics` processor: RED metrics for every span, like the OpenTelemetry
Collector's spanmetrics connector. Read-only: spans go on unchanged.

`sidecar_span_calls_total` and the `sidecar_span_duration_seconds` histogram, labelled by
service, span name, span kind and status code (`unset`/`ok`/`error`: errors are the calls
with `status_code="error"`). Span names and services pass the cardinality guard of the cost
processor (first N distinct values, then `other`)."""

from __future__ import annotations

from bisect import bisect_left

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field

from sidecar.component import ProcessorFactory, ProcessorSettings, register_processor
from sidecar.model import Signal, Work
from sidecar.processors.llm_cost import MAX_SERIES, OTHER, UNKNOWN, LabelGuard
from sidecar.telemetry import metrics

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
          5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}


class SpanMetricsSettings(ProcessorSettings):
    # distinct span names (and services) with their own series; later ones count as "other"
    label_values: int = Field(default=200, ge=1, le=10_000)


class SpanMetrics:
    name = "spanmetrics"
    mutates = False
    signals = frozenset({Signal.TRACES})

    def __init__(self, settings: SpanMetricsSettings) -> None:
        self._services = LabelGuard(settings.label_values)
        self._names = LabelGuard(settings.label_values)
        # (service, span name, kind, status code) -> (guarded labels, histogram row)
        self._series: dict[tuple[str, str, int, int], tuple[tuple[str, ...], list[float]]] = {}

    def process(self, work: Work) -> None:
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        series = self._series
        bounds = metrics.SPAN_DURATION.bounds
        for resource_spans in message.resource_spans:
            service = UNKNOWN
            for kv in resource_spans.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value or UNKNOWN
                    break
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    key = (service, span.name, span.kind, span.status.code)
                    found = series.get(key)
                    if found is None:
                        found = self._new_series(key)
                    row = found[1]
                    seconds = max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e9
                    row[bisect_left(bounds, seconds)] += 1
                    row[-1] += seconds

    def _new_series(self, key: tuple[str, str, int, int]) -> tuple[tuple[str, ...], list[float]]:
        service, name, kind, status = key
        labels = (self._services(service), self._names(name) if name else UNKNOWN,
                  _KINDS.get(kind, OTHER), _STATUS.get(status, OTHER))
        found = (labels, metrics.SPAN_DURATION.row(labels))
        if len(self._series) < MAX_SERIES:
            self._series[key] = found
        return found


def _create(settings: ProcessorSettings) -> SpanMetrics:
    assert isinstance(settings, SpanMetricsSettings)
    return SpanMetrics(settings)


register_processor(ProcessorFactory("spanmetrics", SpanMetricsSettings, 30, _create))
