"""A mutating processor's edit reaches every exporter type, byte for byte: the stage owns
re-serialisation, so no exporter can send the client's old bytes while another sends the
edit (regression guard for the `mark_changed()` contract the stage replaced)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sidecar import config as config_module
from sidecar.component import (
    ProcessorFactory,
    ProcessorSettings,
    exporter_factories,
    register_processor,
    unregister_processor,
)
from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.graph import build_graph
from sidecar.sample import agent_run
from sidecar.testing import OtlpSink
from tests.helpers.intakes import DatadogIntake


class MaskPrompts:
    """Masks prompt text on span events and marks every span."""

    name = "mask_prompts"
    mutates = True
    signals = frozenset({Signal.TRACES})

    def process(self, work: Work) -> None:
        message = work.message
        assert isinstance(message, ExportTraceServiceRequest)
        for rs in message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for event in span.events:
                        for kv in event.attributes:
                            if kv.key == "gen_ai.prompt":
                                kv.value.string_value = "[masked]"
                    span.attributes.add(key="test.processed", value={"bool_value": True})


class MaskSettings(ProcessorSettings):
    enabled: bool = False  # planted only where a test asks for it


@pytest.fixture
def planted() -> Iterator[None]:
    register_processor(ProcessorFactory("test_mask_prompts", MaskSettings, 990,
                                        lambda _settings: MaskPrompts()))
    yield
    unregister_processor("test_mask_prompts")


def expected_after(request: ExportTraceServiceRequest) -> bytes:
    edited = ExportTraceServiceRequest()
    edited.CopyFrom(request)
    work = Work(Signal.TRACES, b"", edited)
    MaskPrompts().process(work)
    return edited.SerializeToString()


def hex_ids_to_base64(doc: dict[str, object]) -> dict[str, object]:
    """OTLP/JSON ids are hex; json_format wants base64."""
    import base64

    def fix(node: object) -> None:
        if isinstance(node, dict):
            for key in ("traceId", "spanId", "parentSpanId"):
                if isinstance(node.get(key), str):
                    node[key] = base64.b64encode(bytes.fromhex(node[key])).decode()
            for value in node.values():
                fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(doc)
    return doc


async def test_every_exporter_type_receives_the_same_edited_bytes(
        planted: None, tmp_path: Path) -> None:
    request = agent_run(rng=random.Random(11)).traces
    assert any(kv.key == "gen_ai.prompt" for rs in request.resource_spans
               for ss in rs.scope_spans for s in ss.spans for e in s.events
               for kv in e.attributes), "sample has no prompt to mask"
    want = expected_after(request)
    assert want != request.SerializeToString()
    async with OtlpSink() as sink, DatadogIntake("k") as intake:
        exporters = {
            "file": {"type": "file", "path": str(tmp_path / "out")},
            "grpc_h2": {"type": "otlp", "endpoint": sink.grpc_endpoint, "protocol": "grpc",
                        "compression": "gzip"},
            "grpc_plain": {"type": "otlp", "endpoint": sink.grpc_endpoint, "protocol": "grpc",
                           "compression": "none"},
            "http": {"type": "otlp", "endpoint": sink.http_endpoint, "protocol": "http"},
            "honeycomb": {"type": "honeycomb", "api_key": "k", "endpoint": sink.http_endpoint,
                          "protocol": "http"},
            "jaeger": {"type": "jaeger", "endpoint": sink.grpc_endpoint},
            "datadog": {"type": "datadog", "api_key": "k", "endpoint": intake.endpoint},
        }
        assert {e["type"] for e in exporters.values()} == set(exporter_factories()), \
            "a new exporter type must be added to this test"
        cfg = config_module.from_tree({
            "storage": {"dir": str(tmp_path / "data")},
            "exporters": {n: {**e, "batch": {"max_delay": 0}} for n, e in exporters.items()},
            # only the planted processor edits: `want` is its output
            "processors": {"test_mask_prompts": {"enabled": True}, "cost": {"enabled": False}},
        })
        graph = build_graph(cfg)
        await graph.start()
        try:
            # as the gRPC receiver hands it on: bytes plus its parse
            await graph.consumers[Signal.TRACES].consume(
                Batch.from_bytes(Signal.TRACES, request.SerializeToString()))
            await sink.wait_for_requests(5)
            await intake.wait_for_spans(1)
        finally:
            await graph.shutdown(asyncio.get_running_loop().time() + 5)
        bodies = sorted(r.body for r in sink.requests)
        assert len(bodies) == 5
        assert all(body == want for body in bodies)
        (line,) = (tmp_path / "out" / "traces.jsonl").read_bytes().splitlines()
        from_file = json_format.ParseDict(hex_ids_to_base64(orjson.loads(line)),
                                          ExportTraceServiceRequest())
        assert from_file.SerializeToString() == want
        # Datadog re-encodes: the edit shows in every span it received
        dd_spans = intake.spans()
        assert len(dd_spans) == sum(len(ss.spans) for rs in request.resource_spans
                                    for ss in rs.scope_spans)
        assert all(s.meta["test.processed"] == "true" for s in dd_spans)
        events = [e for s in dd_spans if "events" in s.meta
                  for e in orjson.loads(s.meta["events"])]
        prompts = [e["attributes"]["gen_ai.prompt"] for e in events
                   if "gen_ai.prompt" in e.get("attributes", {})]
        assert prompts
        assert set(prompts) == {"[masked]"}
