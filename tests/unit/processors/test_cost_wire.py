"""The byte-level helpers of the cost processor: appended attributes decode as the protobuf
library's own, and a message that no longer lines up with its bytes is walked in full."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.model import Signal, Work
from sidecar.processors import span_index, wire
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.sample import attrs


@pytest.mark.parametrize("value", [0.0, 1.5, 1e-12, 123456.789, 2.0**60])
def test_double_attribute_bytes_decode_as_the_library_encodes(value: float) -> None:
    span = Span(name="x")
    span.MergeFromString(wire.DoubleAttribute("gen_ai.usage.cost")(value)
                         + wire.attribute("k" * 200, "v" * 300) + wire.attribute("n", 7)
                         + wire.attribute("b", True))
    assert list(span.attributes) == [
        wire.key_value("gen_ai.usage.cost", value), wire.key_value("k" * 200, "v" * 300),
        wire.key_value("n", 7), wire.key_value("b", True)]
    assert span.name == "x"


def call(model: str) -> Span:
    return Span(name=f"chat {model}", attributes=attrs({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 1}))


def test_index_finds_the_spans_with_usage_by_position() -> None:
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(scope_spans=[ScopeSpans(spans=[Span(name="a"), call("m")])]),
        ResourceSpans(scope_spans=[ScopeSpans(), ScopeSpans(spans=[call("n")])])])
    found = span_index.index(request.SerializeToString(), (b"okens",))
    assert found is not None
    shape, positions = found
    assert positions == [(0, 0, 1), (1, 1, 0)]
    assert span_index.same_shape(shape, request.resource_spans)
    del request.resource_spans[1].scope_spans[1].spans[0]
    assert not span_index.same_shape(shape, request.resource_spans)
    assert span_index.index(b"\xff\xff", (b"okens",)) is None


def test_a_message_edited_out_of_line_with_its_bytes_is_walked_in_full() -> None:
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[Span(name="dropped"), call("m1"), call("m2")])])])
    payload = request.SerializeToString()
    edited = ExportTraceServiceRequest.FromString(payload)
    del edited.resource_spans[0].scope_spans[0].spans[0]  # as an earlier processor might
    work = Work(Signal.TRACES, payload, edited)
    LlmCost(CostSettings.model_validate({"free_providers": ["ollama"]})).process(work)
    spans = edited.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["chat m1", "chat m2"]
    for s in spans:
        sources = [kv.value.string_value for kv in s.attributes
                   if kv.key == "gen_ai.usage.cost.source"]
        assert sources == ["local"], s.name
