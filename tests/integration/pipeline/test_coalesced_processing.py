"""The default processors (redaction, span metrics, cost) give a coalesced group the same
content as its requests one by one (`pipelines.coalesce` concatenates their bytes): what a
client sent is redacted and priced the same whether or not others came with it."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from sidecar.config import Config
from sidecar.model import Batch, Signal, merge
from sidecar.pipeline.graph import build_processors
from sidecar.pipeline.stage import Stage
from sidecar.sample import agent_runs

SECRET = "sk-proj-" + "Q" * 20 + "T3BlbkFJ" + "x" * 20  # an OpenAI key's shape


def requests(count: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for n, run in enumerate(agent_runs(count, seed=3)):
        message = run.traces
        if n % 2:  # every other request carries a secret in a span attribute
            span = message.resource_spans[0].scope_spans[0].spans[rng.randrange(2)]
            span.attributes.append(KeyValue(key="http.request.header.x-note"))
            span.attributes[-1].value.string_value = f"key={SECRET} end"
        out.append(message.SerializeToString())
    return out


def stage() -> Stage:
    return Stage(Signal.TRACES, build_processors(Config()))


def processed(stage: Stage, batch: Batch) -> ExportTraceServiceRequest:
    out = stage.run(batch)
    assert out is not None
    return ExportTraceServiceRequest.FromString(out.payload)


def test_a_group_is_processed_as_its_requests_alone() -> None:
    payloads = requests(8)
    alone, together = stage(), stage()
    expected = ExportTraceServiceRequest()
    for payload in payloads:
        expected.MergeFrom(processed(alone, Batch.from_bytes(Signal.TRACES, payload)))
    merged = processed(together, merge([Batch.from_bytes(Signal.TRACES, p) for p in payloads]))
    assert merged == expected
    exported = merged.SerializeToString()
    assert SECRET.encode() not in exported
    assert SECRET[8:20].encode() not in exported
    assert b"[REDACTED:" in exported  # the planted secrets were found, not just lost
    assert b"gen_ai.usage.cost" in exported  # the model calls were priced
