"""The cost processor's span memo (`_Known`, per key set and non-count values) and its
integer fast path: a memoised answer is the unmemoised one, the cost written is the
library's own price, and the memo stays bounded against hostile names."""

from __future__ import annotations

import datetime as dt
import random
import time

import pytest
from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors import genai_usage as gu
from sidecar.processors import llm_cost
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.processors.prices import PriceBook
from sidecar.sample import attrs

NOW_NS = time.time_ns()


def call(provider: str, model: str, inp: int, out: int, start: int = NOW_NS,
         **extra: str | int) -> Span:
    return Span(name=f"chat {model}", trace_id=b"t" * 16, start_time_unix_nano=start,
                end_time_unix_nano=start + 10**9, attributes=attrs({
                    "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                    "gen_ai.request.model": model, "gen_ai.usage.input_tokens": inp,
                    "gen_ai.usage.output_tokens": out, "gen_ai.agent.name": "a", **extra}))


def request(spans: list[Span]) -> bytes:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=spans)])]).SerializeToString()


def run(processor: LlmCost, payload: bytes) -> ExportTraceServiceRequest:
    out = Stage(Signal.TRACES, [processor]).run(Batch.from_bytes(Signal.TRACES, payload))
    assert out is not None
    return out.message


def costs(message: ExportTraceServiceRequest) -> list[dict[str, float]]:
    return [{kv.key: kv.value.double_value for kv in span.attributes
             if kv.value.WhichOneof("value") == "double_value"}
            for span in message.resource_spans[0].scope_spans[0].spans]


def test_the_cost_written_is_the_librarys_price_for_every_model_in_the_data() -> None:
    rng = random.Random(11)
    spans: list[Span] = []
    wanted: list[tuple[float, float, float] | None] = []
    book = PriceBook()
    for provider in get_snapshot().providers:
        if book.provider_id(gu.canonical_provider(provider.id)) != provider.id:
            continue  # e.g. `openai-decisions` reads as `openai` (a Vercel-style name)
        for model in provider.models[:40]:
            inp = rng.choice([rng.randint(1, 5000), rng.randint(150_000, 400_000)])
            out = rng.randint(0, 3000)
            cache_read = rng.choice([0, 0, rng.randint(0, inp // 2)])
            try:
                want = calc_price(Usage(input_tokens=inp, output_tokens=out,
                                        cache_read_tokens=cache_read),
                                  model.id, provider_id=provider.id,
                                  genai_request_timestamp=dt.datetime.now(dt.UTC))
            except (LookupError, ValueError):
                continue
            extra = {"gen_ai.usage.cache_read.input_tokens": cache_read} if cache_read else {}
            spans.append(call(provider.id, model.id, inp, out, **extra))
            wanted.append((float(want.total_price), float(want.output_price),
                           float(want.input_price)))
    assert len(spans) > 500
    processor = LlmCost(CostSettings())
    chunk = llm_cost.LOOKUPS_PER_REQUEST  # new models a request may look up
    for attempt in range(2):  # cold, then with every span's reading memoised
        got_all = [c for n in range(0, len(spans), chunk)
                   for c in costs(run(processor, request(spans[n:n + chunk])))]
        for got, want in zip(got_all, wanted, strict=True):
            assert want is not None
            total, output, inputs = want
            assert got["gen_ai.usage.cost"] == got["gen_ai.usage.cost.amount"] == total, attempt
            assert got["gen_ai.cost.output_tokens"] == output
            # the input part is split from the cache read part only where there is one
            if "gen_ai.cost.cache_read.input_tokens" not in got:
                assert got["gen_ai.cost.input_tokens"] == inputs


def test_a_memoised_answer_is_the_unmemoised_one(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    models = [("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku-20241022"),
              ("openai", "gpt-4o-mini"), ("google", "gemini-2.5-pro"), ("vllm", "house")]
    spans = []
    for n in range(300):
        provider, model = rng.choice(models)
        extra: dict[str, str | int] = {"tenant.id": f"t{n % 3}"}
        if n % 4 == 0:
            extra["gen_ai.usage.cache_read.input_tokens"] = rng.randint(0, 100)
        if n % 7 == 0:
            extra["gen_ai.usage.input_tokens"] = -1  # invalid: the next name is tried
            extra["gen_ai.usage.prompt_tokens"] = 50
        if n % 11 == 0:
            extra["gen_ai.usage.cost"] = 0.5  # the provider's cost: kept
        spans.append(call(provider, model, rng.randint(0, 300_000), rng.randint(0, 900),
                          NOW_NS - rng.randint(0, 400) * 86_400 * 10**9, **extra))
    payload = request(spans)
    config = {"prices": [{"provider": "vllm", "model": "house", "input": "0.2",
                          "output": "0.6"}]}
    warm = LlmCost(CostSettings.model_validate(config))
    first = run(warm, payload)
    assert warm._known_spans  # the readings were memoised
    again = run(warm, payload)  # every span from the memo
    monkeypatch.setattr(llm_cost, "MAX_KNOWN_BYTES", -1)  # nothing memoised: the full path
    cold = run(LlmCost(CostSettings.model_validate(config)), payload)
    assert first == again == cold
    assert sum("gen_ai.usage.cost" in c for c in costs(cold)) == 300


def test_the_memo_is_bounded_in_entries_and_bytes_against_hostile_names() -> None:
    processor = LlmCost(CostSettings())
    for batch in range(6):  # 6 x 1000 distinct models, agents and tenants
        run(processor, request([
            call("openai", f"gpt-4o-{batch}-{n}", 10, 1, **{"tenant.id": f"x{n}" * 20})
            for n in range(1000)]))
        assert len(processor._known_spans) <= llm_cost.MAX_KNOWN
    long_name = "m" * (llm_cost.MAX_KNOWN_BYTES + 1)
    before = len(processor._known_spans)
    run(processor, request([call("openai", long_name, 10, 1)]))
    assert len(processor._known_spans) == before  # read the full way, not kept
    stored = sum(len(key) for key in processor._known_spans)
    assert stored <= llm_cost.MAX_KNOWN * llm_cost.MAX_KNOWN_BYTES
    assert len(processor._plans) <= llm_cost.MAX_KNOWN
    assert len(processor.book._fast) <= 4096
