"""The processing stage owns parsing and re-serialisation (pipeline/stage.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar.errors import ProcessingError
from sidecar.model import Batch, ExportRequest, Signal, Work
from sidecar.pipeline.stage import Stage
from sidecar.sample import agent_run
from sidecar.telemetry.metrics import REGISTRY


class Probe:
    """A processor whose behaviour each test picks."""

    def __init__(self, action: Callable[[Work], None], *, mutates: bool,
                 signals: frozenset[Signal] = frozenset(Signal), name: str = "probe") -> None:
        self.name = name
        self.mutates = mutates
        self.signals = signals
        self.action = action
        self.calls: list[Work] = []

    def process(self, work: Work) -> None:
        self.calls.append(work)
        self.action(work)


def traces() -> Batch:
    return Batch.from_bytes(Signal.TRACES, agent_run().traces.SerializeToString())


def spans_of(message: ExportRequest) -> list[str]:
    assert isinstance(message, ExportTraceServiceRequest)
    return [s.name for rs in message.resource_spans for ss in rs.scope_spans for s in ss.spans]


def rename_all(work: Work) -> None:
    message = work.message
    assert isinstance(message, ExportTraceServiceRequest)
    for rs in message.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.name = "renamed"


def drop_all(work: Work) -> None:
    message = work.message
    assert isinstance(message, ExportTraceServiceRequest)
    del message.resource_spans[:]


def test_without_processors_the_bytes_pass_and_the_receivers_parse_is_let_go() -> None:
    batch = traces()
    out = Stage(Signal.TRACES).run(batch)
    assert out is not None
    assert out.payload is batch.payload
    assert out.take_decoded() is None  # queues hold bytes only


def test_a_mutating_processor_gets_the_receivers_parse_and_its_edit_reaches_the_bytes() -> None:
    batch = traces()
    original_items = batch.items
    probe = Probe(rename_all, mutates=True)
    out = Stage(Signal.TRACES, [probe]).run(batch)
    assert out is not None
    assert probe.calls[0].parsed  # the receiver's parse was handed over: no second parse
    assert set(spans_of(out.message)) == {"renamed"}
    assert out.items == original_items
    assert out.take_decoded() is None


def test_items_are_recounted_and_an_emptied_request_goes_nowhere() -> None:
    def keep_first(work: Work) -> None:
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        del message.resource_spans[0].scope_spans[0].spans[1:]
        del message.resource_spans[1:]

    batch = traces()
    assert batch.items > 1
    out = Stage(Signal.TRACES, [Probe(keep_first, mutates=True)]).run(traces())
    assert out is not None
    assert out.items == 1
    assert Stage(Signal.TRACES, [Probe(drop_all, mutates=True)]).run(traces()) is None


def test_a_pre_scan_that_does_not_read_the_message_keeps_the_clients_bytes() -> None:
    batch = traces()
    found: list[bool] = []
    probe = Probe(lambda work: found.append(b"sk-live-" in work.payload), mutates=True)
    out = Stage(Signal.TRACES, [probe]).run(batch)
    assert found == [False]
    assert out is not None
    assert out.payload is batch.payload


def test_a_read_only_processor_never_causes_a_re_serialisation() -> None:
    batch = traces()
    seen: list[int] = []
    probe = Probe(lambda work: seen.append(len(spans_of(work.message))), mutates=False)
    out = Stage(Signal.TRACES, [probe]).run(batch)
    assert out is not None
    assert seen == [batch.items]
    assert out.payload is batch.payload


def test_the_message_is_parsed_once_for_all_processors() -> None:
    # from raw bytes (no receiver parse): the first reader parses, the next sees its edit
    batch = Batch(Signal.TRACES, 0, agent_run().traces.SerializeToString())
    names: list[list[str]] = []
    first = Probe(rename_all, mutates=True, name="first")
    second = Probe(lambda work: names.append(spans_of(work.message)), mutates=False,
                   name="second")
    out = Stage(Signal.TRACES, [first, second]).run(batch)
    assert out is not None
    assert first.calls[0] is second.calls[0]
    assert set(names[0]) == {"renamed"}
    assert set(spans_of(out.message)) == {"renamed"}


def test_processors_apply_only_to_their_signals() -> None:
    traces_only = Probe(rename_all, mutates=True, signals=frozenset({Signal.TRACES}))
    stage = Stage(Signal.LOGS, [traces_only])
    logs = Batch.from_message(Signal.LOGS, agent_run().logs)
    out = stage.run(logs)
    assert out is not None
    assert traces_only.calls == []
    assert isinstance(out.message, ExportLogsServiceRequest)


def test_a_processor_error_fails_the_request_retryably_without_its_message() -> None:
    def boom(_work: Work) -> None:
        raise ValueError("processor bug quoting the content")

    with pytest.raises(ProcessingError) as info:
        Stage(Signal.TRACES, [Probe(boom, mutates=True)]).run(traces())
    assert "failed on a traces request (ValueError)" in str(info.value)
    assert "quoting" not in str(info.value)
    assert info.value.__cause__ is None


def test_a_batch_is_immutable_and_its_message_is_a_private_copy() -> None:
    batch = traces()
    with pytest.raises(AttributeError):
        batch.payload = b""  # type: ignore[misc]
    copy = batch.message
    assert isinstance(copy, ExportTraceServiceRequest)
    copy.resource_spans[0].scope_spans[0].spans[0].name = "edited"
    assert "edited" not in spans_of(batch.message)


def test_a_processor_that_read_but_changed_nothing_keeps_the_clients_bytes() -> None:
    batch = traces()

    def look(work: Work) -> None:
        assert spans_of(work.message)
        work.read_only()

    out = Stage(Signal.TRACES, [Probe(look, mutates=True)]).run(batch)
    assert out is not None
    assert out.payload is batch.payload


def test_bytes_handed_over_with_the_edit_are_the_output_and_later_processors_see_both() -> None:
    batch = traces()
    spliced: list[bytes] = []

    def rename_and_splice(work: Work) -> None:
        rename_all(work)
        spliced.append(work.message.SerializeToString())  # as a splice would make them
        work.edited(spliced[0])

    seen: list[tuple[bytes, list[str]]] = []
    later = Probe(lambda work: seen.append((work.payload, spans_of(work.message))),
                  mutates=False, name="later")
    out = Stage(Signal.TRACES, [Probe(rename_and_splice, mutates=True), later]).run(batch)
    assert out is not None
    assert out.payload is spliced[0]  # not serialised again
    assert seen[0][0] is spliced[0]
    assert set(seen[0][1]) == {"renamed"}
    assert out.items == batch.items


def test_bytes_read_after_an_edit_are_the_edited_message() -> None:
    batch = traces()
    payloads: list[bytes] = []
    reader = Probe(lambda work: payloads.append(work.payload), mutates=False, name="reader")
    out = Stage(Signal.TRACES, [Probe(rename_all, mutates=True), reader]).run(batch)
    assert out is not None
    assert set(spans_of(ExportTraceServiceRequest.FromString(payloads[0]))) == {"renamed"}
    assert out.payload is payloads[0]  # serialised once


# --- CPU time per processor (sidecar_processor_cpu_seconds_total) --------------------------

def _cpu(processor: str, signal: str) -> float | None:
    return REGISTRY.get_sample_value("sidecar_processor_cpu_seconds_total",
                                     {"processor": processor, "signal": signal})


def burn(seconds: float) -> Callable[[Work], None]:
    """A processor action that uses `seconds` of this thread's CPU (measured by the thread's
    own clock, so the test asserts CPU used, not time passed)."""
    def action(_work: Work) -> None:
        until = time.thread_time() + seconds
        while time.thread_time() < until:
            pass
    return action


def test_each_processor_is_charged_its_own_cpu_time() -> None:
    busy = Probe(burn(0.03), mutates=False, name="cpu-busy")
    idle = Probe(lambda _w: None, mutates=False, name="cpu-idle")
    assert _cpu("cpu-busy", "traces") is None
    stage = Stage(Signal.TRACES, [idle, busy])
    assert _cpu("cpu-busy", "traces") == 0.0  # the series exist from the stage's start
    stage.run(traces())
    stage.run(traces())
    busy_cpu, idle_cpu = _cpu("cpu-busy", "traces"), _cpu("cpu-idle", "traces")
    assert busy_cpu is not None
    assert idle_cpu is not None
    assert busy_cpu >= 0.06
    assert idle_cpu < 0.03  # a no-op is not charged its neighbour's time


def test_a_failing_processor_is_charged_the_cpu_it_used_before_failing() -> None:
    def burn_then_fail(work: Work) -> None:
        burn(0.02)(work)
        raise RuntimeError("boom")

    stage = Stage(Signal.TRACES, [Probe(burn_then_fail, mutates=True, name="cpu-failing")])
    with pytest.raises(ProcessingError):
        stage.run(traces())
    cpu = _cpu("cpu-failing", "traces")
    assert cpu is not None
    assert cpu >= 0.02


def test_a_processor_gets_no_series_for_a_signal_it_does_not_process() -> None:
    only_logs = Probe(burn(0.01), mutates=False, name="cpu-logs-only",
                      signals=frozenset({Signal.LOGS}))
    Stage(Signal.TRACES, [only_logs]).run(traces())
    assert _cpu("cpu-logs-only", "traces") is None
    assert only_logs.calls == []
