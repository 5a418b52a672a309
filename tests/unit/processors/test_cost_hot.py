"""The cost processor's hot path in C (`_spanwalk.c`, hot_span): the model calls it prices
and the trace agents it remembers are exactly what the Python inline path and the message
path give, request after request (the hot path only takes calls priced once before)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar import _spanwalk
from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.sample import agent_runs, attrs
from sidecar.telemetry import metrics
from tests.unit.processors.test_cost_wire import _fresh_tables, _no_walk

# gpt-4o-mini and claude-3-5-haiku are priced from the library's data (the hot path's
# calls); an override and a free provider take the other paths
CONFIG: dict[str, Any] = {
    "free_providers": ["ollama"],
    "prices": [{"model": "tiny", "input": "0.000001", "output": "0.0000013"}]}
DAY_NS = 86_400_000_000_000
TRACES = [bytes([n]) * 16 for n in range(1, 5)] + [b"", b"short"]
COUNTS = st.one_of(st.integers(min_value=0, max_value=5_000),
                   st.sampled_from([-1, 10**13, 10**14, 2**63 - 1]),
                   st.just("12"), st.floats(min_value=0, max_value=100, width=32))


def _count_value(value: int | str | float) -> AnyValue:
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(int_value=value)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    kind = draw(st.sampled_from(["call", "call", "call", "agent", "other"]))
    values: dict[str, str | int] = {}
    if kind == "call":
        model = draw(st.sampled_from(["gpt-4o-mini", "tiny", "llama3", "claude-3-5-haiku"]))
        values = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                  "gen_ai.provider.name": "ollama" if model == "llama3" else
                  "anthropic" if model.startswith("claude") else "openai"}
    elif kind == "agent":
        values = {"gen_ai.operation.name": "invoke_agent"}
    else:
        values = {"http.method": "GET"}
    agent = draw(st.sampled_from([None, "planner", "writer", "x" * 140]))
    if agent is not None:
        values["gen_ai.agent.name"] = agent
    if draw(st.booleans()):
        values["tenant.id"] = draw(st.sampled_from(["t1", "t2"]))
    # OpenInference's generic session.id: its value is left out of the memo key, and read
    # (renamed to gen_ai.conversation.id) only beside openinference.span.kind
    if draw(st.booleans()):
        values["session.id"] = draw(st.sampled_from(["s1", "s2", "s3"]))
        if draw(st.booleans()):
            values["openinference.span.kind"] = "LLM"
    attributes = attrs(values)
    if kind == "call":
        for key in draw(st.sampled_from([("gen_ai.usage.input_tokens",
                                          "gen_ai.usage.output_tokens"),
                                         ("gen_ai.usage.input_tokens",),
                                         ("gen_ai.usage.output_tokens",), ()])):
            attributes.append(KeyValue(key=key, value=_count_value(draw(COUNTS))))
    day = draw(st.sampled_from([20_000, 20_000, 20_001]))
    start = day * DAY_NS + draw(st.integers(min_value=0, max_value=DAY_NS - 1))
    end = start + draw(st.sampled_from([-5, 0, 1, 10**6, 3 * 10**9, 10**12]))
    return Span(trace_id=draw(st.sampled_from(TRACES)), name="s",
                start_time_unix_nano=start, end_time_unix_nano=max(end, 0),
                attributes=attributes)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        resource = Resource(attributes=attrs({
            k: v for k, v in (("service.name", draw(st.sampled_from(["a", "b", None]))),
                              ("tenant.id", draw(st.sampled_from(["r1", None]))))
            if v is not None}))
        scope = ScopeSpans(spans=draw(st.lists(spans(), max_size=6)))
        # the usual order, or the resource after the spans (the parser merges it all the
        # same; the hot path then stays off for that entry)
        rs = ResourceSpans(resource=resource, scope_spans=[scope])
        body = rs.SerializeToString() if draw(st.booleans()) else (
            ResourceSpans(scope_spans=[scope]).SerializeToString()
            + ResourceSpans(resource=resource).SerializeToString())
        out += _field(1, body)
    return out


def _field(number: int, body: bytes) -> bytes:
    size, head = len(body), bytearray([number << 3 | 2])
    while size >= 0x80:
        head.append(size & 0x7F | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + body


def _run(payloads: list[bytes], mode: str, config: dict[str, Any],
         ) -> tuple[list[bytes | None], list[Any], list[tuple[bytes, str]], LlmCost]:
    processor = LlmCost(CostSettings.model_validate(config))
    processor._c_hot = mode == "c"
    with pytest.MonkeyPatch.context() as patch:
        tables = _fresh_tables(patch)
        if mode == "message":
            patch.setattr(_spanwalk, "walk", _no_walk)
        stage = Stage(Signal.TRACES, [processor])
        outs = [stage.run(Batch.from_bytes(Signal.TRACES, p)) for p in payloads]
        rows = [t.totals() if isinstance(t, metrics.CounterTable) else
                {k: list(v) for k, v in t.rows.items()} for t in tables]
    return ([None if o is None else o.payload for o in outs], rows,
            list(processor._agents.items()), processor)


def _same_rows(got: list[Any], want: list[Any]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            assert g[key] == pytest.approx(value, rel=1e-12), key


@settings(max_examples=80, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=3), st.sampled_from([0, 1, 3]))
def test_the_c_path_gives_what_the_python_paths_give(payloads: list[bytes],
                                                     rerank: int) -> None:
    # each request twice in a row and the list again: the later readings take the hot path
    sent = [p for p in payloads for _ in range(2)] + payloads
    # few label values: which values get a series of their own depends on the order calls
    # are first seen in, the same on both fast paths
    config = {**CONFIG, "label_rerank_requests": rerank, "label_values": 2}
    c_out, c_rows, c_agents, processor = _run(sent, "c", config)
    event(f"calls held for the C path: {min(3, sum(len(e) > 1 for e in processor._hot.values()))}")
    py_out, py_rows, py_agents, _ = _run(sent, "python", config)
    assert c_out == py_out
    assert c_agents == py_agents  # the same traces' agents, in the same order
    _same_rows(c_rows, py_rows)
    # against the message path (which meets the calls in another order): room for all
    config = {**CONFIG, "label_rerank_requests": rerank}
    c_out, c_rows, _, _ = _run(sent, "c", config)
    msg_out, msg_rows, _, _ = _run(sent, "message", config)
    assert [None if o is None else ExportTraceServiceRequest.FromString(o) for o in c_out] \
        == [None if o is None else ExportTraceServiceRequest.FromString(o) for o in msg_out]
    _same_rows(c_rows, msg_rows)


def test_realistic_runs_are_priced_in_c_the_second_time() -> None:
    payloads = [run.traces.SerializeToString() for run in agent_runs(30, seed=5)]
    c_out, c_rows, c_agents, processor = _run(payloads * 2, "c", {})
    py_out, py_rows, py_agents, _ = _run(payloads * 2, "python", {})
    assert c_out == py_out
    assert c_agents == py_agents
    _same_rows(c_rows, py_rows)
    # the second time, the walk hands back no model call: each is priced in C
    edits: list[tuple[int, bytes]] = []
    hot = (processor._hot, processor._hot_resources, processor._agents,
           processor._agent_limit, processor._series_generation, 10**12,
           metrics.LLM_DURATION.bounds, edits)
    handed_back = 0
    for payload in payloads:
        _, records = _spanwalk.walk(payload, processor._span_keys, processor._resource_keys,
                                    processor._known_spans, hot)
        handed_back += len(records)
    calls = sum(1 for p in payloads for rs in ExportTraceServiceRequest.FromString(p)
                .resource_spans for ss in rs.scope_spans for s in ss.spans
                if any(kv.key == "gen_ai.usage.input_tokens" for kv in s.attributes))
    assert len(edits) == calls > 0
    assert handed_back == 0


def test_a_bad_hot_argument_is_a_clear_error() -> None:
    payload = next(iter(agent_runs(1, seed=1))).traces.SerializeToString()
    processor = LlmCost(CostSettings())
    args = (payload, processor._span_keys, processor._resource_keys, {})
    with pytest.raises(TypeError):
        _spanwalk.walk(*args, ({}, {}, None, 0, 0, 10, (), "not a list"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _spanwalk.walk(*args, "no tuple")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too many bounds"):
        _spanwalk.walk(*args, ({}, {}, None, 0, 0, 10, (0.0,) * 65, []))
    # an entry of the wrong shape under a span's key: refused
    Stage(Signal.TRACES, [processor]).run(Batch.from_bytes(Signal.TRACES, payload))
    hot = dict.fromkeys(processor._known_spans, (1, 2))
    with pytest.raises(TypeError):
        _spanwalk.walk(*args, (hot, processor._hot_resources, None, 0, 0, 10, (), []))


def test_a_trace_agent_named_by_a_span_handed_back_keeps_the_wire_order() -> None:
    # span A (its count a string: the C path hands it back) names "writer", then span B
    # (priced in C) names "planner", in one trace: the trace's agent is B's, as in wire
    # order, though the walk meets B before Python reads A
    def call(agent: str, tokens: int | str) -> Span:
        span = Span(trace_id=TRACES[0], name="chat", start_time_unix_nano=20_000 * DAY_NS,
                    end_time_unix_nano=20_000 * DAY_NS + 10**6, attributes=attrs({
                        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.provider.name": "openai", "gen_ai.agent.name": agent}))
        span.attributes.append(KeyValue(key="gen_ai.usage.input_tokens",
                                        value=_count_value(tokens)))
        return span

    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=attrs({"service.name": "a"})),
        scope_spans=[ScopeSpans(spans=[call("writer", "12"), call("planner", 12)])])])
    payload = request.SerializeToString()
    c_out, _, c_agents, processor = _run([payload] * 3, "c", CONFIG)
    py_out, _, py_agents, _ = _run([payload] * 3, "python", CONFIG)
    assert sum(len(e) > 1 for e in processor._hot.values()) == 2  # both held for C
    assert c_out == py_out
    assert c_agents == py_agents == [(TRACES[0], "planner")]


@pytest.mark.parametrize(("key", "values"), [
    ("gen_ai.request.model", ["gpt-4o-mini", "tiny"]),
    ("gen_ai.response.model", ["gpt-4o-mini", "tiny"]),
    ("gen_ai.provider.name", ["openai", "ollama"]),
    ("gen_ai.operation.name", ["chat", "text_completion"]),
    ("gen_ai.agent.name", ["planner", "writer"]),
    ("tenant.id", ["t1", "t2"]),
    ("gen_ai.openai.response.service_tier", ["default", "flex"]),
    ("session.id", ["s1", "s2"]),  # left out of the memo key: read only for renames
])
@pytest.mark.parametrize("openinference", [False, True])
def test_spans_that_differ_in_one_value_are_each_priced_by_their_own(
        key: str, values: list[str], openinference: bool) -> None:
    # calls alike but for one attribute's value, each request twice: a memo that mixed them
    # up (a value it reads left out of its key) gives the first call's reading to the next
    def request(value: str) -> bytes:
        fields = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                  "gen_ai.provider.name": "openai", key: value}
        if openinference:
            fields["openinference.span.kind"] = "LLM"
        span = Span(trace_id=TRACES[0], name="chat", start_time_unix_nano=20_000 * DAY_NS,
                    end_time_unix_nano=20_000 * DAY_NS + 10**6, attributes=attrs(fields))
        span.attributes.append(KeyValue(key="gen_ai.usage.input_tokens",
                                        value=AnyValue(int_value=5_000)))
        span.attributes.append(KeyValue(key="gen_ai.usage.output_tokens",
                                        value=AnyValue(int_value=700)))
        return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=Resource(attributes=attrs({"service.name": "a"})),
            scope_spans=[ScopeSpans(spans=[span])])]).SerializeToString()

    sent = [request(v) for v in values for _ in range(2)] * 2
    c_out, c_rows, _, _ = _run(sent, "c", CONFIG)
    msg_out, msg_rows, _, _ = _run(sent, "message", CONFIG)
    assert [None if o is None else ExportTraceServiceRequest.FromString(o) for o in c_out] \
        == [None if o is None else ExportTraceServiceRequest.FromString(o) for o in msg_out]
    _same_rows(c_rows, msg_rows)


def test_a_call_met_under_several_resources_is_priced_in_c_under_each() -> None:
    # the same call (same memo key) from two services and a tenant of its resource: one C
    # entry per (service, tenant), so none is handed back once each was priced
    def call() -> Span:
        span = Span(trace_id=TRACES[1], name="chat", start_time_unix_nano=20_000 * DAY_NS,
                    end_time_unix_nano=20_000 * DAY_NS + 10**6, attributes=attrs({
                        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.provider.name": "openai", "gen_ai.agent.name": "planner"}))
        span.attributes.append(KeyValue(key="gen_ai.usage.input_tokens",
                                        value=AnyValue(int_value=1_000)))
        return span

    resources = [{"service.name": "a"}, {"service.name": "b"},
                 {"service.name": "a", "tenant.id": "r1"}]
    payload = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=attrs(r)),
                      scope_spans=[ScopeSpans(spans=[call(), call()])]) for r in resources
    ]).SerializeToString()
    c_out, c_rows, _, processor = _run([payload] * 3, "c", CONFIG)
    msg_out, msg_rows, _, _ = _run([payload] * 3, "message", CONFIG)
    assert [ExportTraceServiceRequest.FromString(o) for o in c_out if o is not None] \
        == [ExportTraceServiceRequest.FromString(o) for o in msg_out if o is not None]
    _same_rows(c_rows, msg_rows)
    (entry,) = processor._hot.values()
    assert isinstance(entry, dict)
    assert set(entry) == {("a", None), ("a", "r1"), ("b", None)}
    edits: list[tuple[int, bytes]] = []
    hot = (processor._hot, processor._hot_resources, processor._agents,
           processor._agent_limit, processor._series_generation, 10**12,
           metrics.LLM_DURATION.bounds, edits)
    _, records = _spanwalk.walk(payload, processor._span_keys, processor._resource_keys,
                                processor._known_spans, hot)
    assert records == []
    assert len(edits) == 6
