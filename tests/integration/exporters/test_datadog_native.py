"""`type: datadog` (mode: native) through the whole chain against the strict fake intake:
the decoded AgentPayloads, size splitting and Datadog's answer codes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from export_helpers import RecordingSleep, metric

from sidecar.exporters.datadog import MAX_PAYLOAD, DatadogConfig, NativeTracesSender
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Batch, Signal
from sidecar.sample import agent_run
from sidecar.testing import logs_batch, metrics_batch, traces_batch
from tests.helpers.intakes import DatadogIntake

KEY = "dd-test-key"


def config(intake: DatadogIntake, **raw: Any) -> DatadogConfig:
    return DatadogConfig.model_validate({
        "type": "datadog", "api_key": KEY, "endpoint": intake.endpoint, "env": "test",
        "hostname": "sidecar-host", "timeout": 5, "batch": {"max_delay": 0},
        "retry": {"initial_interval": 0.5, "multiplier": 2, "jitter": 0}, **raw})


def chain(name: str, intake: DatadogIntake, sleep: Any = asyncio.sleep,
          **raw: Any) -> ExportChain:
    cfg = config(intake, **raw)
    return ExportChain(name, cfg, NativeTracesSender(cfg), sleep=sleep, rand=lambda: 0.5)


async def stop(exporter: ExportChain) -> None:
    # returns once everything is delivered; the bound only matters on a loaded machine
    # (the 10,000-span split took 8.8-10.6 s of a 10 s bound under load)
    await exporter.shutdown(asyncio.get_running_loop().time() + 60)


def dropped(name: str, reason: str, signal: str = "traces") -> float:
    return metric("sidecar_exporter_dropped_items_total", exporter=name, signal=signal,
                  reason=reason)


async def test_agent_run_arrives_mapped_field_by_field() -> None:
    run = agent_run(rng=random.Random(3))
    otlp = [s for rs in run.traces.resource_spans for ss in rs.scope_spans for s in ss.spans]
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-fields", intake)
        await exporter.start()
        await exporter.consume(Batch.from_message(Signal.TRACES, run.traces))
        await stop(exporter)
        (request,) = intake.requests
        assert request.status == 202
        assert request.headers["dd-api-key"] == KEY
        assert request.headers["content-type"] == "application/x-protobuf"
        assert request.headers["content-encoding"] == "gzip"
        (payload,) = intake.accepted
        assert (payload.hostName, payload.env) == ("sidecar-host", "test")
        assert len(payload.tracerPayloads) == len(run.traces.resource_spans)
        chunks = [c for tp in payload.tracerPayloads for c in tp.chunks]
        assert len(chunks) == len({s.trace_id for s in otlp})
        by_id = {s.spanID: s for s in intake.spans()}
        assert len(by_id) == len(otlp)
        for source in otlp:
            dd = by_id[int.from_bytes(source.span_id, "big")]
            assert dd.traceID == int.from_bytes(source.trace_id[8:], "big")
            assert dd.meta["otel.trace_id"] == source.trace_id.hex()
            assert dd.start == source.start_time_unix_nano
            assert dd.duration == source.end_time_unix_nano - source.start_time_unix_nano
            assert dd.error == (1 if source.status.code == 2 else 0)
            assert dd.meta["span.kind"] in ("server", "client", "internal")
            for kv in source.attributes:
                if kv.value.HasField("int_value"):
                    assert dd.metrics[kv.key] == kv.value.int_value
                elif kv.key == "gen_ai.request.model":
                    assert dd.meta[kv.key] == kv.value.string_value
        roots = [s for s in intake.spans() if s.parentID == 0]
        assert roots
        assert all(s.metrics["_top_level"] == 1.0 for s in roots)


async def test_ten_thousand_spans_are_split_below_the_limit() -> None:
    async with DatadogIntake(KEY) as intake:
        # one huge OTLP batch (no batch limit helps): the sender refuses to encode it
        # whole and the chain splits it until each payload fits
        exporter = chain("dd-split", intake, batch={"max_delay": 0, "max_bytes": "64MiB",
                                                     "max_items": 100_000})
        await exporter.start()
        await exporter.consume(traces_batch(10_000, attrs=12))
        await stop(exporter)
        assert len(intake.requests) > 1
        assert all(r.status == 202 for r in intake.requests)
        assert all(r.size <= MAX_PAYLOAD for r in intake.requests)
        assert len({s.spanID for s in intake.spans()}) == 10_000
        assert metric("sidecar_exporter_sent_items_total", exporter="dd-split",
                      signal="traces") == 10_000


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_retryable_answers_honour_retry_after(status: int) -> None:
    sleep = RecordingSleep()
    async with DatadogIntake(KEY) as intake:
        exporter = chain(f"dd-retry-{status}", intake, sleep=sleep)
        await exporter.start()
        intake.answer_next(1, status=status, headers={"Retry-After": "4"})
        intake.answer_next(1, status=status)
        await exporter.consume(traces_batch(3))
        await stop(exporter)
        assert [r.status for r in intake.requests] == [status, status, 202]
        assert sleep.delays == [4.0, 1.0]  # the hint, then the backoff (0.5 * 2)
        assert len(intake.spans()) == 3


async def test_500_storm_then_recovery() -> None:
    sleep = RecordingSleep()
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-storm", intake, sleep=sleep,
                         retry={"initial_interval": 0.5, "max_interval": 1, "jitter": 0})
        await exporter.start()
        intake.answer_next(6, status=500)
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        assert [r.status for r in intake.requests] == [500] * 6 + [202]
        assert len(sleep.delays) == 6
        assert len(intake.spans()) == 2


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_permanent_answers_drop_once(status: int) -> None:
    async with DatadogIntake(KEY) as intake:
        name = f"dd-perm-{status}"
        exporter = chain(name, intake)
        await exporter.start()
        intake.answer_next(1, status=status, body=b'{"errors":["Forbidden"]}')
        await exporter.consume(traces_batch(4))
        await stop(exporter)
        assert len(intake.requests) == 1
        assert dropped(name, "permanent") == 4


async def test_wrong_key_is_refused_by_the_intake_and_dropped() -> None:
    async with DatadogIntake("another-key") as intake:
        exporter = chain("dd-wrong-key", intake)
        await exporter.start()
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        assert [r.status for r in intake.requests] == [403]
        assert dropped("dd-wrong-key", "permanent") == 2


async def test_413_splits_and_resends_the_halves() -> None:
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-413", intake)
        await exporter.start()
        intake.answer_next(1, status=413)
        await exporter.consume(traces_batch(8))
        await stop(exporter)
        assert [r.status for r in intake.requests] == [413, 202, 202]
        assert len({s.spanID for s in intake.spans()}) == 8


async def test_connection_refused_is_retried() -> None:
    sleep = RecordingSleep()
    async with DatadogIntake(KEY) as intake:
        port = intake.port
    cfg = DatadogConfig.model_validate({
        "type": "datadog", "api_key": KEY, "endpoint": f"http://127.0.0.1:{port}",
        "batch": {"max_delay": 0}, "retry": {"max_elapsed": 3, "initial_interval": 1,
                                             "jitter": 0}})
    exporter = ExportChain("dd-refused", cfg, NativeTracesSender(cfg), sleep=sleep)
    await exporter.start()
    await exporter.consume(traces_batch(2))
    await stop(exporter)
    assert len(sleep.delays) >= 1
    assert dropped("dd-refused", "retries_exhausted") == 2


async def test_slow_intake_hits_the_timeout_and_is_retried() -> None:
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-slow", intake, timeout=0.2)
        await exporter.start()
        intake.answer_next(1, status=202, delay=1.0, body=b"{}")
        await exporter.consume(traces_batch(2))
        await stop(exporter)
        assert len(intake.requests) == 2
        assert metric("sidecar_exporter_retries_total", exporter="dd-slow",
                      signal="traces") == 1


async def test_metrics_are_dropped_without_a_request() -> None:
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-metrics", intake)
        await exporter.start()
        await exporter.consume(metrics_batch(3))
        await stop(exporter)
        assert intake.requests == []
        assert dropped("dd-metrics", "permanent", "metrics") == 3


async def test_logs_arrive_and_correlate_with_the_spans() -> None:
    run = agent_run(rng=random.Random(9))
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-logs", intake)
        await exporter.start()
        await exporter.consume(Batch.from_message(Signal.TRACES, run.traces))
        await exporter.consume(Batch.from_message(Signal.LOGS, run.logs))
        await stop(exporter)
        logs_requests = [r for r in intake.requests if r.path == "/api/v2/logs"]
        assert [r.status for r in logs_requests] == [202]
        assert logs_requests[0].headers["content-type"] == "application/json"
        records = [lr for rl in run.logs.resource_logs for sl in rl.scope_logs
                   for lr in sl.log_records]
        entries = intake.logs()
        assert len(entries) == len(records)
        spans = {(s.traceID, s.spanID): s for s in intake.spans()}
        linked = [e for e in entries if "dd.span_id" in e]
        assert linked
        for entry in linked:
            span = spans[int(entry["dd.trace_id"]), int(entry["dd.span_id"])]
            assert entry["service"] == span.service
            assert entry["otel.trace_id"] == span.meta["otel.trace_id"]


async def test_logs_over_1000_entries_are_split() -> None:
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-logs-split", intake, batch={"max_delay": 0, "max_items": 5000})
        await exporter.start()
        await exporter.consume(logs_batch(2500))
        await stop(exporter)
        assert len(intake.requests) >= 3
        assert all(r.status == 202 for r in intake.requests)
        assert len(intake.logs()) == 2500


@pytest.mark.parametrize(("status", "outcome"), [
    (408, "retried"), (429, "retried"), (503, "retried"), (400, "dropped"),
    (413, "split")])
async def test_logs_answers(status: int, outcome: str) -> None:
    sleep = RecordingSleep()
    async with DatadogIntake(KEY) as intake:
        name = f"dd-logs-{status}"
        exporter = chain(name, intake, sleep=sleep)
        await exporter.start()
        intake.answer_next(1, status=status)
        await exporter.consume(logs_batch(4))
        await stop(exporter)
        statuses = [r.status for r in intake.requests]
        if outcome == "retried":
            assert statuses == [status, 202]
            assert len(intake.logs()) == 4
        elif outcome == "split":
            assert statuses == [413, 202, 202]
            assert len(intake.logs()) == 4
        else:
            assert statuses == [400]
            assert dropped(name, "permanent", "logs") == 4


async def test_zero_id_spans_are_counted_as_rejected() -> None:
    batch = traces_batch(3)
    request = batch.message
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-zero", intake)
        await exporter.start()
        await exporter.consume(Batch.from_message(Signal.TRACES, request))
        await stop(exporter)
        assert len(intake.spans()) == 2
        assert dropped("dd-zero", "rejected") == 1


async def test_one_span_over_the_limit_is_dropped_without_a_request() -> None:
    batch = traces_batch(3, attrs=0)
    request = batch.message
    huge = request.resource_spans[0].scope_spans[0].spans[1]
    for i in range(140):  # 140 values of 25,000 characters: ~3.5 MB of meta in one span
        huge.attributes.add(key=f"gen_ai.prompt.{i}").value.string_value = "p" * 25_000
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-oversize", intake)
        await exporter.start()
        await exporter.consume(Batch.from_message(Signal.TRACES, request))
        await stop(exporter)
        assert all(r.status == 202 for r in intake.requests)
        assert len(intake.spans()) == 2  # the other spans, split away from it
        assert dropped("dd-oversize", "permanent") == 1


# --- the intakes' limits are measured on the Datadog body, not on OTLP bytes -------------

# DatadogConfig's own batch defaults (config() above replaces them with the generic ones)
DD_BATCH = {"max_delay": 0, "max_items": 1000, "max_bytes": 1024 * 1024}


def test_dd_batch_is_the_configs_default() -> None:
    assert DatadogConfig.model_fields["batch"].default.model_dump() == {
        **DD_BATCH, "max_delay": 0.2}

def _heavy_resource(batch: Batch, attrs: int, size: int) -> Batch:
    """`batch` with `attrs` resource attributes of `size` characters: few OTLP bytes, but
    the Datadog encoding copies them onto every span."""
    request = batch.message
    for rs in request.resource_spans:
        for i in range(attrs):
            rs.resource.attributes.add(key=f"k8s.label.{i}").value.string_value = "r" * size
    return Batch.from_message(Signal.TRACES, request)


async def test_small_otlp_whose_datadog_body_is_over_the_limit_is_cut() -> None:
    # 6 queued batches of 250 spans merge into requests of up to 1,000 spans and ~0.2 MB
    # of OTLP; each span carries ~4.2 KB of resource meta, so 1,000 spans are ~4.3 MB of
    # AgentPayload: over the intake's 3.2 MB, cut before sending
    batches = [_heavy_resource(traces_batch(250, seed=s, attrs=2), 40, 100) for s in range(6)]
    assert sum(b.nbytes for b in batches) < 600_000
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-body-over", intake, batch={**DD_BATCH, "max_delay": 0.2})
        await exporter.start()
        for b in batches:
            await exporter.consume(b)
        await stop(exporter)
        assert intake.requests
        assert all(r.status == 202 for r in intake.requests)
        assert all(r.size <= MAX_PAYLOAD for r in intake.requests)
        ids = [s.spanID for s in intake.spans()]
        expected = {s.span_id for b in batches for rs in b.message.resource_spans
                    for ss in rs.scope_spans for s in ss.spans}
        assert sorted(ids) == sorted(int.from_bytes(i, "big") for i in expected)  # once each
        assert metric("sidecar_exporter_sent_items_total", exporter="dd-body-over",
                      signal="traces") == 1500


async def test_large_otlp_whose_datadog_body_fits_goes_as_one_request() -> None:
    # 30 spans with a 150,000-character prompt: 4.5 MB of OTLP, over the 1 MiB batch size,
    # but Datadog cuts meta values at 25,000 characters, so the AgentPayload is ~0.8 MB
    request = traces_batch(30, attrs=1).message
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.attributes.add(key="gen_ai.prompt").value.string_value = "p" * 150_000
    batch = Batch.from_message(Signal.TRACES, request)
    assert batch.nbytes > 4_000_000
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-body-fits", intake, batch=DD_BATCH)
        await exporter.start()
        await exporter.consume(batch)
        await stop(exporter)
        (request,) = intake.requests
        assert request.status == 202
        assert request.size < MAX_PAYLOAD
        spans = intake.spans()
        assert len({s.spanID for s in spans}) == 30
        assert all(len(s.meta["gen_ai.prompt"]) == 25_003 for s in spans)  # cut + "..."


async def test_traces_are_not_cut_at_the_logs_intakes_1000_entries() -> None:
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-1500", intake, batch=DD_BATCH)
        await exporter.start()
        await exporter.consume(traces_batch(1500, attrs=1))
        await stop(exporter)
        (request,) = intake.requests
        assert request.status == 202
        assert len({s.spanID for s in intake.spans()}) == 1500


async def test_logs_over_5mb_of_json_are_cut_by_their_body_size() -> None:
    # 800 entries (under 1,000) of ~10 KB: ~8 MB of JSON, over the intake's 5 MB
    request = logs_batch(800).message
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for i, record in enumerate(sl.log_records):
                record.body.string_value = f"{i}:" + "m" * 10_000
    batch = Batch.from_message(Signal.LOGS, request)
    async with DatadogIntake(KEY) as intake:
        exporter = chain("dd-logs-5mb", intake, batch=DD_BATCH)
        await exporter.start()
        await exporter.consume(batch)
        await stop(exporter)
        assert len(intake.requests) == 2  # 1.6 times over: two pieces of 400 entries
        assert all(r.status == 202 and r.size <= 5_000_000 for r in intake.requests)
        messages = sorted(int(e["message"].split(":")[0]) for e in intake.logs())
        assert messages == list(range(800))  # each entry exactly once
