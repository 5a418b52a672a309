"""PriceBook: the memoised fast path against genai-prices itself, worked cases whose
expected cost comes from the rates in genai-prices' data (read here) or from rates the test
states, and the overrides."""

from __future__ import annotations

import datetime as dt
import random
import time
from decimal import Decimal

from genai_prices import Usage, calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from sidecar.processors.prices import PriceBook, Rates

M = Decimal(1_000_000)
NOW_NS = time.time_ns()


def rates(provider: str, model: str, when_ns: int = NOW_NS) -> ModelPrice:
    """The prices genai-prices publishes for the model at that time."""
    _, info = get_snapshot().find_provider_model(model, None, provider, None)
    return info.get_prices(dt.datetime.fromtimestamp(when_ns / 1e9, dt.UTC))


def flat(value: Decimal | TieredPrices | None) -> Decimal:
    assert isinstance(value, Decimal)
    return value


def test_fast_path_equals_the_library_for_every_model_in_the_data() -> None:
    book = PriceBook()
    rng = random.Random(7)
    compared = 0
    for provider in get_snapshot().providers:
        for model in provider.models:
            for _ in range(2):
                inp = rng.choice([0, rng.randint(1, 5000), rng.randint(150_000, 400_000)])
                cache_read = rng.randint(0, inp // 2)
                cache_write = rng.randint(0, (inp - cache_read) // 2)
                out = rng.randint(0, 3000)
                start = NOW_NS - rng.randint(0, 3 * 365 * 86400) * 10**9
                tier = rng.choice([None, None, "flex", "priority", "default"])
                try:
                    want = calc_price(
                        Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cache_read,
                              cache_write_tokens=cache_write),
                        model.id, provider_id=provider.id,
                        genai_request_timestamp=dt.datetime.fromtimestamp(start / 1e9, dt.UTC),
                        price_context={"service_tier": tier} if tier else None)
                except (LookupError, ValueError):
                    continue  # shapes the library itself refuses for token-only usage
                got = book.price(provider.id, model.id, start, input_tokens=inp,
                                 output_tokens=out, cache_read=cache_read,
                                 cache_write=cache_write, service_tier=tier)
                assert got is not None, (provider.id, model.id)
                assert (got.total, got.input, got.output, got.model_id) == (
                    want.total_price, want.input_price, want.output_price, want.model.id), \
                    (provider.id, model.id, inp, cache_read, cache_write, out, tier)
                compared += 1
    assert compared > 4000


def test_openai_cached_input_is_charged_at_the_cache_rate() -> None:
    price = PriceBook().price("openai", "gpt-4o", NOW_NS, input_tokens=10_000, output_tokens=500,
                              cache_read=8_000)
    r = rates("openai", "gpt-4o")
    want = (2_000 * flat(r.input_mtok) + 8_000 * flat(r.cache_read_mtok)
            + 500 * flat(r.output_mtok)) / M
    assert price is not None
    assert price.total == want == Decimal("0.020")  # the shared doc's worked figure
    assert price.cache_read == 8_000 * flat(r.cache_read_mtok) / M


def test_anthropic_cache_write_and_read() -> None:
    price = PriceBook().price("anthropic", "claude-sonnet-4-20250514", NOW_NS,
                              input_tokens=10_000, output_tokens=500, cache_read=8_000,
                              cache_write=1_000)
    r = rates("anthropic", "claude-sonnet-4-20250514")
    want = (1_000 * flat(r.input_mtok) + 8_000 * flat(r.cache_read_mtok)
            + 1_000 * flat(r.cache_write_mtok) + 500 * flat(r.output_mtok)) / M
    assert price is not None
    assert price.total == want == Decimal("0.01665")
    assert price.model_id == "claude-sonnet-4-0"  # the dated name matched its entry


def test_long_context_tier_applies_its_rate_to_all_tokens() -> None:
    r = rates("anthropic", "claude-sonnet-4-5")
    assert isinstance(r.input_mtok, TieredPrices)
    assert isinstance(r.output_mtok, TieredPrices)
    (tier_in,) = r.input_mtok.tiers
    (tier_out,) = r.output_mtok.tiers
    book = PriceBook()
    over = book.price("anthropic", "claude-sonnet-4-5", NOW_NS, input_tokens=tier_in.start + 1,
                      output_tokens=1_000)
    under = book.price("anthropic", "claude-sonnet-4-5", NOW_NS, input_tokens=tier_in.start,
                       output_tokens=1_000)
    assert over is not None
    assert under is not None
    assert over.total == ((tier_in.start + 1) * tier_in.price + 1_000 * tier_out.price) / M
    assert under.total == (tier_in.start * r.input_mtok.base + 1_000 * r.output_mtok.base) / M


def test_dated_snapshots_resolve_as_the_data_lists_them() -> None:
    book = PriceBook()
    dated = book.price("openai", "gpt-4o-2024-08-06", NOW_NS, input_tokens=1_000,
                       output_tokens=100)
    r = rates("openai", "gpt-4o")
    assert dated is not None
    assert dated.model_id == "gpt-4o"
    assert dated.total == (1_000 * flat(r.input_mtok) + 100 * flat(r.output_mtok)) / M
    own = book.price("openai", "gpt-4o-2024-05-13", NOW_NS, input_tokens=1_000,
                     output_tokens=100)
    assert own is not None
    assert own.model_id == "gpt-4o-2024-05-13"
    assert own.total == (1_000 * Decimal(5) + 100 * Decimal(15)) / M


def test_fine_tune_names_get_fine_tune_prices() -> None:
    price = PriceBook().price("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123", NOW_NS,
                              input_tokens=1_000, output_tokens=100)
    r = rates("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123")
    assert price is not None
    assert price.model_id == "ft:gpt-4o-mini"
    assert price.total == (1_000 * flat(r.input_mtok) + 100 * flat(r.output_mtok)) / M
    base = rates("openai", "gpt-4o-mini")
    assert flat(r.input_mtok) != flat(base.input_mtok)


def test_unknown_models_and_unknown_providers_have_no_price() -> None:
    book = PriceBook()
    assert book.price("openai", "gpt-4o-2099-01-01", NOW_NS, input_tokens=1,
                      output_tokens=1) is None
    assert book.price("ollama", "llama3", NOW_NS, input_tokens=1, output_tokens=1) is None
    # a self-hosted provider is never priced as a cloud's model of the same name
    assert book.price("vllm", "gpt-4o", NOW_NS, input_tokens=1, output_tokens=1) is None


def test_semconv_provider_names_reach_genai_prices_ids() -> None:
    book = PriceBook()
    for provider, model in (("x_ai", "grok-3"), ("azure.ai.inference", "gpt-4o"),
                            ("gcp.vertex_ai", "gemini-2.5-flash"),
                            ("aws.bedrock", "us.anthropic.claude-3-5-sonnet-20241022-v2:0")):
        assert book.price(provider, model, NOW_NS, input_tokens=10,
                          output_tokens=10) is not None, provider


def test_gateway_model_ids_are_priced_as_the_vendors() -> None:
    book = PriceBook()
    routed = book.price("gateway", "openai/gpt-4o", NOW_NS, input_tokens=1_000,
                        output_tokens=100)
    direct = book.price("openai", "gpt-4o", NOW_NS, input_tokens=1_000, output_tokens=100)
    assert routed is not None
    assert direct is not None
    assert routed.total == direct.total


def test_overrides_multipliers_free_providers_and_aliases() -> None:
    book = PriceBook(
        overrides={("vllm", "my-llama"): Rates(Decimal("0.5"), Decimal("1.5"), Decimal("0.05")),
                   (None, "house-model"): Rates(Decimal(2), Decimal(4))},
        multipliers={"openai": Decimal("0.8")},
        free_providers=frozenset({"ollama"}),
        provider_aliases={"my-openai-proxy": "openai"})
    own = book.price("vllm", "My-Llama", NOW_NS, input_tokens=3_000, output_tokens=200,
                     cache_read=1_000)
    assert own is not None
    assert own.source == "override"
    assert own.total == (2_000 * Decimal("0.5") + 1_000 * Decimal("0.05")
                         + 200 * Decimal("1.5")) / M
    anywhere = book.price("somewhere", "house-model", NOW_NS, input_tokens=1_000,
                          output_tokens=1_000)
    assert anywhere is not None
    assert anywhere.total == Decimal(6) / 1_000
    r = rates("openai", "gpt-4o")
    discounted = book.price("openai", "gpt-4o", NOW_NS, input_tokens=1_000, output_tokens=0)
    assert discounted is not None
    assert discounted.total == 1_000 * flat(r.input_mtok) / M * Decimal("0.8")
    free = book.price("ollama", "llama3", NOW_NS, input_tokens=9, output_tokens=9)
    assert free is not None
    assert free.total == 0
    assert free.source == "free"
    proxied = book.price("my-openai-proxy", "gpt-4o", NOW_NS, input_tokens=1_000,
                         output_tokens=0)
    assert proxied is not None
    assert proxied.total == 1_000 * flat(r.input_mtok) / M


def test_the_span_time_selects_the_price_in_force() -> None:
    """A model whose price changed: each side of the change gets its own price."""
    snapshot = get_snapshot()
    for provider in snapshot.providers:
        for model in provider.models:
            if isinstance(model.prices, ModelPrice) or len(model.prices) < 2:
                continue
            change = model.prices[-1].constraint
            start_date = getattr(change, "start_date", None)
            if start_date is None:
                continue
            after = int(dt.datetime.combine(start_date, dt.time(12), dt.UTC).timestamp()) \
                * 10**9
            before = after - 2 * 86_400 * 10**9
            old, new = rates(provider.id, model.id, before), rates(provider.id, model.id, after)
            if not isinstance(old.input_mtok, Decimal) or not isinstance(new.input_mtok, Decimal) \
                    or old.input_mtok == new.input_mtok:
                continue
            book = PriceBook()
            got_old = book.price(provider.id, model.id, before, input_tokens=M_INT,
                                 output_tokens=0)
            got_new = book.price(provider.id, model.id, after, input_tokens=M_INT,
                                 output_tokens=0)
            assert got_old is not None
            assert got_new is not None
            assert (got_old.total, got_new.total) == (old.input_mtok, new.input_mtok)
            assert got_new.price_date == start_date.isoformat()
            return
    raise AssertionError("no model with a dated price change in the data")


M_INT = 1_000_000
