"""The `spanmetrics` processor: RED metrics for every span, like the OpenTelemetry
Collector's spanmetrics connector. Read-only: spans go on unchanged.

`sidecar_span_calls_total` and the `sidecar_span_duration_seconds` histogram, labelled by
service, span name, span kind and status code (`unset`/`ok`/`error`: errors are the calls
with `status_code="error"`). Span names and services pass the cardinality guard of the cost
processor (the top N values by volume, then `other`)."""

from __future__ import annotations

from bisect import bisect_left

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field

from sidecar import _spanwalk
from sidecar.component import ProcessorFactory, ProcessorSettings, register_processor
from sidecar.model import Signal, Work
from sidecar.processors.genai_usage import raw_scalar
from sidecar.processors.llm_cost import MAX_SERIES, OTHER, UNKNOWN, LabelGuard, volumes_by
from sidecar.telemetry import metrics

_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
          5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}


class SpanMetricsSettings(ProcessorSettings):
    # span names (and services) with their own series, the top ones by volume; the rest
    # count as "other"
    label_values: int = Field(default=200, ge=1, le=10_000)
    # requests between rankings of names and services by volume (0: first ones seen)
    label_rerank_requests: int = Field(default=100, ge=0, le=1_000_000)


class SpanMetrics:
    name = "spanmetrics"
    mutates = False
    signals = frozenset({Signal.TRACES})

    def __init__(self, settings: SpanMetricsSettings) -> None:
        self._services = LabelGuard(settings.label_values)
        self._names = LabelGuard(settings.label_values)
        # (service, span name, kind, status code) -> (guarded labels, histogram row,
        # [spans since the last ranking])
        self._series: dict[tuple[str, str, int, int],
                           tuple[tuple[str, ...], list[float], list[float]]] = {}
        # (service.name value bytes or None, span name bytes, kind, code) -> the row and
        # volume of its series in `_series`: what `_spanwalk.red` adds to
        self._raw: dict[tuple[bytes | None, bytes, int, int],
                        tuple[list[float], list[float]]] = {}
        self._rerank_every = settings.label_rerank_requests
        self._requests = 0

    def process(self, work: Work) -> None:
        self._requests += 1
        if self._rerank_every and self._requests % self._rerank_every == 0:
            self._rerank()
        try:
            # the spans' rows in C: added there to the series it knows (`_raw`), by the raw
            # bytes of service and name; the rows of the others come back
            services, misses = _spanwalk.red(work.payload, metrics.SPAN_DURATION.bounds,
                                             self._raw)
        except ValueError:
            self._process_message(work)  # bytes the walk does not follow: the message
            return
        names: list[str] = []
        for resource, raw_name, kind, code, counts in misses:
            if resource >= len(names):
                names += [self._service(raw) for raw in services[len(names):resource + 1]]
            key = (names[resource], raw_name.decode("utf-8", "replace"), kind, code)
            found = self._series.get(key)
            if found is None:
                found = self._new_series(key)
            row = found[1]
            for at, value in enumerate(counts):
                if value:
                    row[at] += value
            found[2][0] += sum(counts[:-1])
            if key in self._series and len(self._raw) < MAX_SERIES:
                # the same row and volume, now found by the raw bytes (several raw forms may
                # name one series: a string and a bytes-equal one, invalid UTF-8 ...)
                self._raw[services[resource], raw_name, kind, code] = (row, found[2])

    @staticmethod
    def _service(raw: bytes | None) -> str:
        """`service.name` as the message path reads it: a string value, else unknown."""
        if raw is None:
            return UNKNOWN
        value = raw_scalar(raw)
        return value if isinstance(value, str) and value else UNKNOWN

    def _process_message(self, work: Work) -> None:
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
                    found[2][0] += 1
                    seconds = max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e9
                    row[bisect_left(bounds, seconds)] += 1
                    row[-1] += seconds

    def _rerank(self) -> None:
        services, names = volumes_by(((key, found[2]) for key, found in self._series.items()),
                                     2)
        changed = [self._services.rerank(services), self._names.rerank(names)]
        if any(changed):
            self._series.clear()  # their labels were made by the old ranking
            self._raw.clear()

    def _new_series(self, key: tuple[str, str, int, int],
                    ) -> tuple[tuple[str, ...], list[float], list[float]]:
        service, name, kind, status = key
        labels = (self._services(service), self._names(name) if name else UNKNOWN,
                  _KINDS.get(kind, OTHER), _STATUS.get(status, OTHER))
        found = (labels, metrics.SPAN_DURATION.row(labels), [0.0])
        if len(self._series) < MAX_SERIES:
            self._series[key] = found
        return found


def _create(settings: ProcessorSettings) -> SpanMetrics:
    assert isinstance(settings, SpanMetricsSettings)
    return SpanMetrics(settings)


# before cost, which hands on bytes only (`Work.edited_bytes`): span metrics read the
# message, which is there already (the receiver parsed it); none of its labels is a cost
register_processor(ProcessorFactory("spanmetrics", SpanMetricsSettings, 15, _create))
