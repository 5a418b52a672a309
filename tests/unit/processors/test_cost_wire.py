"""The byte-level helpers of the cost processor: appended attributes decode as the protobuf
library's own, and the processor's fast path (the C walk, its memos, the inline path and
the splice) gives exactly what walking and editing the parsed message gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar import _spanwalk
from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.stage import Stage
from sidecar.processors import genai_usage as gu
from sidecar.processors import wire
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.sample import agent_runs, attrs
from sidecar.telemetry import metrics


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


def call(model: str, **extra: str | int) -> Span:
    return Span(name=f"chat {model}", attributes=attrs({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 1, **extra}))


# --- random requests: the walk's fast path against the message path ----------------------

KEYS = ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.request.model",
        "gen_ai.provider.name", "gen_ai.operation.name", "gen_ai.agent.name",
        "llm.token_count.prompt", "llm.token_count.completion", "openinference.span.kind",
        "traceloop.span.kind", "traceloop.workflow.name", "ai.telemetry.functionId",
        "gen_ai.usage.cost", "tenant.id", "http.method", "okens", "session.id", "tool.name",
        "llm.input_messages.0.message.content", "llm.input_messages.1.message.role",
        "llm.response.finish_reason", "llm.request.type", "gen_ai.conversation.id"]
VALUES = st.one_of(
    st.integers(min_value=-5, max_value=10**6),
    st.sampled_from(["chat", "invoke_agent", "LLM", "agent", "gpt-4o-mini", "ollama",
                     "openai", "claude-3-5-haiku-20241022", "anthropic", "xokensx", ""]),
    st.text(alphabet="abcokens_token_count.", max_size=30),
    st.floats(allow_nan=True, allow_infinity=False, width=64))


@st.composite
def spans(draw: st.DrawFn) -> Span:
    values = draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8))
    event_values = draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=2))
    start = draw(st.integers(min_value=0, max_value=2**62))
    return Span(trace_id=draw(st.sampled_from([b"", b"t" * 16, b"u" * 16])),
                name=draw(st.text(max_size=12)), start_time_unix_nano=start,
                end_time_unix_nano=start + draw(st.integers(min_value=0, max_value=10**10)),
                attributes=attrs(values),
                events=[Span.Event(name="e", attributes=attrs(event_values))]
                if event_values else [])


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    resources = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        scopes = [ScopeSpans(scope=InstrumentationScope(name=draw(st.text(max_size=8))),
                             spans=draw(st.lists(spans(), max_size=5)),
                             schema_url=draw(st.text(max_size=5)))
                  for _ in range(draw(st.integers(min_value=0, max_value=3)))]
        resource_attrs = draw(st.dictionaries(st.sampled_from([*KEYS, "service.name"]),
                                              VALUES, max_size=3))
        resources.append(ResourceSpans(resource=Resource(attributes=attrs(resource_attrs)),
                                       scope_spans=scopes))
    return ExportTraceServiceRequest(resource_spans=resources)


def _fresh_tables(patch: pytest.MonkeyPatch) -> list[metrics.CounterTable | metrics.HistogramTable]:
    tables: list[metrics.CounterTable | metrics.HistogramTable] = []
    for name in ("LLM_CALLS", "LLM_COST", "LLM_TOKENS"):
        old = getattr(metrics, name)
        tables.append(metrics.CounterTable(old.name, old.documentation, old.labels))
        patch.setattr(metrics, name, tables[-1])
    old_duration = metrics.LLM_DURATION
    tables.append(metrics.HistogramTable(old_duration.name, old_duration.documentation,
                                         old_duration.labels, old_duration.bounds))
    patch.setattr(metrics, "LLM_DURATION", tables[-1])
    return tables


def _no_walk(*_: object) -> None:
    raise ValueError("forced")  # as the walk does on bytes it does not follow


@settings(max_examples=100, deadline=None)
@given(requests())
def test_the_fast_path_gives_what_walking_and_re_serialising_the_whole_message_gives(
        request: ExportTraceServiceRequest) -> None:
    config = {"free_providers": ["ollama"],
              "prices": [{"model": "gpt-4o-mini", "input": "0.15", "output": "0.6"}]}
    payload = request.SerializeToString()
    results = []
    for fast in (True, False):
        processor = LlmCost(CostSettings.model_validate(config))
        with pytest.MonkeyPatch.context() as patch:
            tables = _fresh_tables(patch)
            if not fast:
                patch.setattr(_spanwalk, "walk", _no_walk)
            out = Stage(Signal.TRACES, [processor]).run(Batch.from_bytes(Signal.TRACES, payload))
        rows = [t.totals() if isinstance(t, metrics.CounterTable) else t.rows for t in tables]
        results.append((None if out is None else out.message, rows))
    assert results[0] == results[1]
    # twice through one processor: the second time from its memos and the inline path
    processor = LlmCost(CostSettings.model_validate(config))
    with pytest.MonkeyPatch.context() as patch:
        tables = _fresh_tables(patch)
        stage = Stage(Signal.TRACES, [processor])
        outs = [stage.run(Batch.from_bytes(Signal.TRACES, payload)) for _ in range(2)]
        rows = [t.totals() if isinstance(t, metrics.CounterTable) else t.rows for t in tables]
    messages = [None if out is None else out.message for out in outs]
    assert messages[0] == messages[1] == results[0][0]
    for got, once in zip(rows, results[0][1], strict=True):
        assert got.keys() == once.keys()
        for key, value in once.items():
            want = [2 * x for x in value] if isinstance(value, list) else 2 * value
            assert got[key] == pytest.approx(want, rel=1e-12), key


def test_a_span_dropped_by_an_earlier_processor_is_not_priced_in_its_place() -> None:
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[Span(name="dropped"), call("m1"), call("m2")])])])

    class DropFirst:
        name = "drop"
        mutates = True
        signals = frozenset({Signal.TRACES})

        def process(self, work: Work) -> None:
            message = work.message
            assert isinstance(message, ExportTraceServiceRequest)
            del message.resource_spans[0].scope_spans[0].spans[0]

    cost = LlmCost(CostSettings.model_validate({"free_providers": ["ollama"]}))
    out = Stage(Signal.TRACES, [DropFirst(), cost]).run(
        Batch.from_bytes(Signal.TRACES, request.SerializeToString()))
    assert out is not None
    spans = out.message.resource_spans[0].scope_spans[0].spans  # type: ignore[attr-defined]
    assert [s.name for s in spans] == ["chat m1", "chat m2"]
    for s in spans:
        sources = [kv.value.string_value for kv in s.attributes
                   if kv.key == "gen_ai.usage.cost.source"]
        assert sources == ["local"], s.name


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.builds(lambda v: AnyValue(string_value=v), st.text(max_size=200)),
    st.builds(lambda v: AnyValue(int_value=v), st.integers(min_value=-2**63,
                                                           max_value=2**63 - 1)),
    st.builds(lambda v: AnyValue(double_value=v), st.floats(allow_nan=False)),
    st.builds(lambda v: AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: AnyValue(bytes_value=v), st.binary(max_size=10)),
    st.just(AnyValue())))
def test_raw_scalar_decodes_as_the_library(value: AnyValue) -> None:
    assert gu.raw_scalar(value.SerializeToString()) == gu.scalar(value)


@pytest.mark.parametrize("data", [b"\x18\x81\x80\x00", b"\x18\x01\x18\x02", b"\x10\x02",
                                  b"\x0a\x01a\x0a\x01b", b"\x21" + b"\x00" * 8 + b"\x18\x01"])
def test_raw_scalar_of_unusual_encodings_is_the_librarys(data: bytes) -> None:
    # non-minimal varints, repeated oneof fields (the last wins), a bool of 2
    assert gu.raw_scalar(data) == gu.scalar(AnyValue.FromString(data))


def test_label_guard_keeps_the_heaviest_values_and_quiet_ones_while_there_is_room() -> None:
    from sidecar.processors.llm_cost import OTHER, LabelGuard

    guard = LabelGuard(3)
    assert [guard(v) for v in ("a", "b", "c", "d")] == ["a", "b", "c", OTHER]
    assert not guard.rerank({})  # quiet values keep their series
    assert guard.rerank({f"v{i}": i for i in range(1000)})  # bounded: 1000 candidates
    assert [guard(v) for v in ("v999", "v998", "v997", "a")] == ["v999", "v998", "v997",
                                                                  OTHER]
    assert guard("x" * 500) == OTHER


def test_the_inline_path_counts_what_the_message_path_counts() -> None:
    # realistic agent runs (sidecar.sample), each request twice: the second time most calls
    # take the inline path in `process`; the message path prices every one the full way
    payloads = [run.traces.SerializeToString() for run in agent_runs(40, seed=2)]
    results = []
    for fast in (True, False):
        processor = LlmCost(CostSettings())
        with pytest.MonkeyPatch.context() as patch:
            tables = _fresh_tables(patch)
            if not fast:
                patch.setattr(_spanwalk, "walk", _no_walk)
            stage = Stage(Signal.TRACES, [processor])
            outs = [stage.run(Batch.from_bytes(Signal.TRACES, p)) for p in payloads * 2]
            rows = [t.totals() if isinstance(t, metrics.CounterTable) else t.rows
                    for t in tables]
        if fast:
            assert any(k.hot is not None for k in processor._known_spans.values())
        results.append(([None if out is None else out.message for out in outs], rows))
    (fast_messages, fast_rows), (full_messages, full_rows) = results
    assert fast_messages == full_messages
    for got, want in zip(fast_rows, full_rows, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12), key
