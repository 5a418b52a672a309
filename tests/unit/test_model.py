from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.errors import BadInputError
from sidecar.model import Batch, Signal, count_items, merge
from sidecar.sample import agent_runs
from sidecar.testing import metrics_batch


def test_merge_concatenates_into_one_valid_request() -> None:
    runs = list(agent_runs(3, seed=7))
    batches = [Batch.from_bytes(Signal.TRACES, r.traces.SerializeToString()) for r in runs]
    merged = merge(batches)
    assert merged.items == sum(r.spans for r in runs)
    parsed = ExportTraceServiceRequest.FromString(merged.payload)
    expected = ExportTraceServiceRequest()
    for run in runs:
        expected.resource_spans.extend(run.traces.resource_spans)
    assert parsed == expected


def test_counts_spans_logs_and_rejects_garbage() -> None:
    run = next(agent_runs(1, seed=1))
    assert Batch.from_bytes(Signal.TRACES, run.traces.SerializeToString()).items == run.spans
    assert Batch.from_bytes(Signal.LOGS, run.logs.SerializeToString()).items == run.log_records
    with pytest.raises(BadInputError):
        Batch.from_bytes(Signal.TRACES, b"\x0a\xff\xff\xff\xff\x0f garbage")


def test_metric_points_are_counted_across_metric_kinds() -> None:
    batch = metrics_batch(7)
    message = batch.message
    kinds = {m.WhichOneof("data") for rm in message.resource_metrics  # type: ignore[union-attr]
             for sm in rm.scope_metrics for m in sm.metrics}
    points = sum(len(getattr(m, m.WhichOneof("data")).data_points)
                 for rm in message.resource_metrics  # type: ignore[union-attr]
                 for sm in rm.scope_metrics for m in sm.metrics)
    assert len(kinds) >= 1
    assert points == 7
    assert Batch.from_bytes(Signal.METRICS, batch.payload).items == 7


def test_the_receivers_parse_is_handed_over_once() -> None:
    # metrics are parsed to be counted; the parse goes on to the processing stage once
    payload = metrics_batch(3).payload
    batch = Batch.from_bytes(Signal.METRICS, payload)
    decoded = batch.take_decoded()
    assert decoded is not None
    assert decoded.SerializeToString() == payload
    assert batch.take_decoded() is None


def test_traces_and_logs_the_wire_check_passes_are_not_parsed() -> None:
    run = next(agent_runs(1, seed=2))
    for signal, message in ((Signal.TRACES, run.traces), (Signal.LOGS, run.logs)):
        batch = Batch.from_bytes(signal, message.SerializeToString())
        assert batch.take_decoded() is None  # checked and counted without a parse
        assert batch.items == count_items(signal, message)
        assert batch.message == message
