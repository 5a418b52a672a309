from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.errors import BadInputError
from sidecar.model import Batch, Signal, merge
from sidecar.sample import agent_runs


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


def test_mark_changed_reserializes_and_recounts() -> None:
    run = next(agent_runs(1, seed=2))
    batch = Batch.from_bytes(Signal.TRACES, run.traces.SerializeToString())
    message = batch.message
    assert isinstance(message, ExportTraceServiceRequest)
    del message.resource_spans[0].scope_spans[0].spans[0]
    batch.mark_changed()
    assert batch.items == run.spans - 1
    assert ExportTraceServiceRequest.FromString(batch.payload) == message
