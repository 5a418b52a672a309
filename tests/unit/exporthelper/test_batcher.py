from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.exporthelper.batcher import Accumulator, split
from sidecar.model import Batch, Signal, count_items
from sidecar.testing import logs_batch, metrics_batch, traces_batch


def span_ids(request: ExportTraceServiceRequest) -> list[bytes]:
    return [s.span_id for rs in request.resource_spans for ss in rs.scope_spans
            for s in ss.spans]


def test_normal_batches_merge_by_concatenating_bytes() -> None:
    acc: Accumulator[int] = Accumulator(max_items=100, max_bytes=1 << 20, max_delay=1.0)
    parts = [traces_batch(5, seed=i) for i in range(3)]
    for i, part in enumerate(parts):
        assert acc.add(part, i, now=0.0) == []
    (request,) = acc.flush_all()
    assert request.batch.payload == b"".join(p.payload for p in parts)
    assert request.batch.items == 15
    assert [t.token for t in request.tickets] == [0, 1, 2]
    assert all(t.refs == 1 for t in request.tickets)


def test_flush_when_max_items_reached() -> None:
    acc: Accumulator[int] = Accumulator(max_items=10, max_bytes=1 << 20, max_delay=1.0)
    assert acc.add(traces_batch(4), 0, 0.0) == []
    assert acc.add(traces_batch(4), 1, 0.0) == []
    # 8 + 4 > 10: the pending 8 go out, the new 4 start the next request
    out = acc.add(traces_batch(4), 2, 0.0)
    assert [r.batch.items for r in out] == [8]
    out = acc.add(traces_batch(6), 3, 0.0)  # exactly 10: sent at once
    assert [r.batch.items for r in out] == [10]
    assert acc.pending_items == 0


def test_flush_when_max_bytes_reached() -> None:
    one = traces_batch(5)
    acc: Accumulator[int] = Accumulator(max_items=10_000, max_bytes=one.nbytes * 2 + 1,
                                        max_delay=1.0)
    assert acc.add(traces_batch(5), 0, 0.0) == []
    assert acc.add(traces_batch(5), 1, 0.0) == []
    out = acc.add(traces_batch(5), 2, 0.0)
    assert [r.batch.nbytes for r in out] == [2 * one.nbytes]


def test_flush_after_max_delay_per_signal() -> None:
    acc: Accumulator[str] = Accumulator(max_items=100, max_bytes=1 << 20, max_delay=0.5)
    acc.add(traces_batch(1), "t", now=10.0)
    acc.add(logs_batch(1), "l", now=10.3)
    assert acc.next_due() == 10.5
    assert acc.flush_due(10.49) == []
    (due,) = acc.flush_due(10.5)
    assert due.batch.signal is Signal.TRACES
    assert acc.next_due() == 10.8
    (due,) = acc.flush_due(11.0)
    assert due.batch.signal is Signal.LOGS
    assert acc.next_due() is None


def test_signals_never_merge() -> None:
    acc: Accumulator[int] = Accumulator(max_items=100, max_bytes=1 << 20, max_delay=1.0)
    acc.add(traces_batch(2), 0, 0.0)
    acc.add(logs_batch(2), 1, 0.0)
    acc.add(metrics_batch(2), 2, 0.0)
    out = acc.flush_all()
    assert sorted(r.batch.signal for r in out) == sorted(Signal)


def test_zero_delay_sends_each_batch_at_once() -> None:
    acc: Accumulator[int] = Accumulator(max_items=100, max_bytes=1 << 20, max_delay=0)
    assert len(acc.add(traces_batch(2), 0, 0.0)) == 1


def test_oversize_batch_is_split_after_pending_data_and_shares_one_ticket() -> None:
    acc: Accumulator[int] = Accumulator(max_items=10, max_bytes=1 << 20, max_delay=1.0)
    acc.add(traces_batch(3, seed=9), 0, 0.0)
    big = traces_batch(25, seed=1)
    out = acc.add(big, 1, 0.0)
    assert [r.batch.items for r in out] == [3, 10, 10, 5]
    ticket = out[1].tickets[0]
    assert ticket.token == 1
    assert ticket.refs == 3
    assert all(r.tickets == [ticket] for r in out[1:])


def test_split_by_items_keeps_every_span_in_order_and_resource_context() -> None:
    batch = traces_batch(7, resources=3, scopes=2, seed=4)  # 42 spans
    pieces = split(batch, max_items=10, max_bytes=1 << 20)
    assert all(p.items <= 10 for p in pieces)
    assert sum(p.items for p in pieces) == 42
    original = batch.message
    assert isinstance(original, ExportTraceServiceRequest)
    got: list[bytes] = []
    for piece in pieces:
        message = ExportTraceServiceRequest.FromString(piece.payload)
        assert count_items(Signal.TRACES, message) == piece.items
        got.extend(span_ids(message))
        for rs in message.resource_spans:
            assert rs.resource.attributes[0].key == "service.name"
            for ss in rs.scope_spans:
                assert ss.scope.name.startswith("scope-")
    assert got == span_ids(original)


def test_split_by_bytes_respects_the_limit() -> None:
    batch = traces_batch(40, resources=2, seed=2)
    limit = batch.nbytes // 5
    pieces = split(batch, max_items=10_000, max_bytes=limit)
    assert len(pieces) >= 5
    assert all(p.nbytes <= limit for p in pieces)
    merged = ExportTraceServiceRequest.FromString(b"".join(p.payload for p in pieces))
    original = batch.message
    assert isinstance(original, ExportTraceServiceRequest)
    assert span_ids(merged) == span_ids(original)


def test_a_single_span_larger_than_max_bytes_travels_alone() -> None:
    batch = traces_batch(3, attrs=50)
    pieces = split(batch, max_items=100, max_bytes=100)
    assert [p.items for p in pieces] == [1, 1, 1]


def test_whole_resources_are_kept_together_when_they_fit() -> None:
    batch = traces_batch(4, resources=5)
    pieces = split(batch, max_items=8, max_bytes=1 << 20)
    shapes = []
    for piece in pieces:
        message = piece.message
        assert isinstance(message, ExportTraceServiceRequest)
        shapes.append([len(rs.scope_spans[0].spans) for rs in message.resource_spans])
    assert shapes == [[4, 4], [4, 4], [4]]


def test_split_logs_and_metrics() -> None:
    logs = split(logs_batch(25), max_items=10, max_bytes=1 << 20)
    assert [p.items for p in logs] == [10, 10, 5]
    # metrics split at metric granularity: three 4-point metrics into pieces of <= 8 points
    metrics = metrics_batch(4, seed=1)
    request = metrics.message
    for seed in (2, 3):
        request.MergeFrom(metrics_batch(4, seed=seed).message)  # type: ignore[arg-type]
    pieces = split(Batch.from_message(Signal.METRICS, request), max_items=8, max_bytes=1 << 20)
    assert [p.items for p in pieces] == [8, 4]
