"""Token prices: genai-prices' bundled data behind a memoised fast path, plus config
overrides.

`genai_prices.calc_price` costs 150-250 µs a call (its unit decomposition); a span costs a
few µs. So the model lookup and the price set in force are memoised, and the common price
shapes (input/output/cache read/cache write per million, flat or tiered by input size) are
computed here in Decimal with the library's own rules; any other shape (audio, images,
per-request fees, 1-hour cache writes) goes to the library's `ModelPrice.calc_price`. The
result is the library's to the last digit (tests compare them over every model in the
data). The network updater (`UpdatePrices`) is never started: prices are the bundled ones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version

from genai_prices import Usage
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import (
    ModelInfo,
    ModelPrice,
    Provider,
    StartDateConstraint,
    TieredPrices,
    TimeOfDateConstraint,
)

DATA_VERSION = f"genai-prices {version('genai-prices')}"
MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
# price keys the fast path computes itself. The usage passed never has 1-hour cache writes
# or searches, so the library prices all cache writes at the 5-minute rate and searches
# at zero too
_FAST_KEYS = frozenset(("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
                        "cache_write_1h_mtok", "web_searches_kcount",
                        "storage_searches_kcount"))
# bounds on memo tables fed by span content (model names are client-chosen)
MAX_MEMO = 4096
# longer model or provider names are not looked up
MAX_NAME = 200

# `gen_ai.provider.name` values -> genai-prices provider ids, where its own matching
# misses them (shared/docs/genai-and-logs.md §3.1)
PROVIDER_IDS = {
    "openai": "openai", "anthropic": "anthropic", "aws.bedrock": "aws",
    "azure.ai.openai": "azure", "azure.ai.inference": "azure", "gcp.gemini": "google",
    "gcp.vertex_ai": "google", "gcp.gen_ai": "google", "x_ai": "x-ai", "mistral_ai": "mistral",
    "moonshot_ai": "moonshotai", "cohere": "cohere", "deepseek": "deepseek", "groq": "groq",
    "perplexity": "perplexity",
}
# routers whose model ids read `vendor/model`
ROUTERS = frozenset(("gateway", "openrouter", "litellm"))


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens of a self-hosted or negotiated model (config override)."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """The cost of one call and where its price came from."""

    total: Decimal
    input: Decimal  # all input units, cache included (as the library's input_price)
    output: Decimal
    # breakdown of the input; None where the library priced a shape we do not split
    uncached_input: Decimal | None
    cache_read: Decimal | None
    cache_write: Decimal | None
    provider_id: str
    model_id: str
    source: str  # DATA_VERSION, "override" or "free"
    price_date: str | None  # start date of the price in force, when the data gives one


@dataclass(frozen=True, slots=True)
class _Resolved:
    provider: Provider
    model: ModelInfo
    # prices change only at UTC day boundaries (else memoised per call time, not day)
    by_day: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """One ModelPrice, readied for the fast path (None: library path)."""

    price: ModelPrice
    fast: bool
    input: Decimal | TieredPrices | None
    output: Decimal | TieredPrices | None
    cache_read: Decimal | TieredPrices | None
    cache_write: Decimal | TieredPrices | None
    price_date: str | None


def _rate(price: Decimal | TieredPrices | None, total_input: int) -> Decimal | None:
    """The library's tier rule: crossing a tier applies its rate to all tokens."""
    if price is None or isinstance(price, Decimal):
        return price
    applicable = price.base
    for tier in reversed(price.tiers):
        if total_input > tier.start:
            return tier.price
    return applicable


def _part(price: Decimal | TieredPrices | None, count: int, total_input: int) -> Decimal:
    rate = _rate(price, total_input)
    if rate is None:
        return _ZERO
    return rate * Decimal(count) / MILLION


def _has_time_of_day(model: ModelInfo) -> bool:
    constraints = [] if isinstance(model.prices, ModelPrice) else \
        [c.constraint for c in model.prices]
    constraints += [v.constraint for v in model.price_variants or ()]
    return any(isinstance(c, TimeOfDateConstraint) for c in constraints)


def _price_date(model: ModelInfo, when: dt.datetime) -> str | None:
    if isinstance(model.prices, ModelPrice):
        return None
    for conditional in reversed(model.prices):
        constraint = conditional.constraint
        if constraint is None or constraint.active(when):
            if isinstance(constraint, StartDateConstraint):
                return constraint.start_date.isoformat()
            return None
    return None


def _plan(model: ModelInfo, when: dt.datetime, context: Mapping[str, str] | None) -> _Plan:
    price = model.get_prices(when, dict(context) if context else None)
    keys = {k for k, v in vars(price).items() if v is not None and not k.startswith("_")}
    return _Plan(price, keys <= _FAST_KEYS, price.input_mtok, price.output_mtok,
                 price.cache_read_mtok, price.cache_write_mtok, _price_date(model, when))


# a rate as an integer over the plan's denominator, or tiers (base, ((start, rate), ...))
_IntRate = int | tuple[int, tuple[tuple[int, int], ...]] | None


@dataclass(frozen=True, slots=True)
class FastRates:
    """One flat or tiered token price in integers: a part costs count x rate / denominator
    USD, exactly the Decimal the fast path gives (its rates have few digits, so the
    Decimal products and sums are exact), and `int / int` rounds that rational correctly
    to the nearest double, as `float(Decimal)` does."""

    input: _IntRate
    output: _IntRate
    cache_read: _IntRate
    cache_write: _IntRate
    denominator: int
    provider_id: str
    model_id: str
    price_date: str | None

    @staticmethod
    def rate(rate: _IntRate, total_input: int) -> int:
        """The library's tier rule (`_rate`), on integers."""
        if rate is None:
            return 0
        if isinstance(rate, int):
            return rate
        base, tiers = rate
        for start, tier in reversed(tiers):
            if total_input > start:
                return tier
        return base


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _fast_rates(plan: _Plan, provider_id: str, model_id: str) -> FastRates | None:
    """`plan` in integers, None when a rate is not a finite Decimal of few digits."""
    rates = (plan.input, plan.output, plan.cache_read, plan.cache_write)
    decimals: list[Decimal] = []
    for rate in rates:
        if isinstance(rate, TieredPrices):
            decimals += (rate.base, *(tier.price for tier in rate.tiers))
        elif rate is not None:
            decimals.append(rate)
    if any(not d.is_finite() or d < 0 for d in decimals):
        return None
    scale = max((_exponent(d) for d in decimals), default=0)
    # the Decimal path is exact while its sums fit the context's 28 digits: counts have at
    # most 13 (MAX_TOKENS, x3 with the cache added), so the rates get 12 with their scale
    if max((d.adjusted() + 1 for d in decimals), default=0) + scale > 12:
        return None
    factor = Decimal(10) ** scale

    def whole(value: Decimal) -> int:
        return int(value * factor)

    def convert(rate: Decimal | TieredPrices | None) -> _IntRate:
        if rate is None:
            return None
        if isinstance(rate, TieredPrices):
            return whole(rate.base), tuple((int(t.start), whole(t.price)) for t in rate.tiers)
        return whole(rate)

    return FastRates(convert(plan.input), convert(plan.output), convert(plan.cache_read),
                     convert(plan.cache_write), 10 ** (scale + 6), provider_id, model_id,
                     plan.price_date)


class PriceBook:
    """Resolves (provider, model, time, tier) to a price; memoised, bounded."""

    def __init__(self, overrides: Mapping[tuple[str | None, str], Rates] | None = None,
                 multipliers: Mapping[str, Decimal] | None = None,
                 free_providers: frozenset[str] = frozenset(),
                 provider_aliases: Mapping[str, str] | None = None) -> None:
        self._snapshot = get_snapshot()
        self._overrides = {(p, m.lower()): r for (p, m), r in (overrides or {}).items()}
        self._multipliers = dict(multipliers or {})
        self._free = free_providers
        self._aliases = {**PROVIDER_IDS, **(provider_aliases or {})}
        # new (uncached) lookups allowed before the next `budget` call; None: unlimited. A
        # lookup of an unknown model costs ~140 µs in genai-prices (not cached there), so a
        # request naming thousands of distinct models must not cost thousands of them.
        self.lookups_left: int | None = None
        self._lookups: dict[tuple[str | None, str], _Resolved | None] = {}
        self._plans: dict[tuple[str, str, int, str | None], _Plan] = {}
        # (provider, model, UTC day, tier) -> integer rates, or None for the other paths
        self._fast: dict[tuple[str | None, str, int, str | None], FastRates | None] = {}

    def provider_id(self, provider: str | None) -> str | None:
        if provider is None:
            return None
        return self._aliases.get(provider, provider)

    def lookup(self, provider: str | None, model: str) -> tuple[str | None, str, _Resolved | None]:
        """(provider id, model ref, resolution or None when unknown), memoised. A router's
        `vendor/model` id is priced at the router's own price when the data has one, else
        as the vendor's model."""
        provider_id = self.provider_id(provider)
        ref = model.strip()
        key = (provider_id, ref)
        if key in self._lookups:
            return provider_id, ref, self._lookups[key]
        if len(ref) > MAX_NAME or len(provider_id or "") > MAX_NAME:
            return provider_id, ref, None  # no model is named so: not looked up, not kept
        if self.lookups_left is not None:
            if self.lookups_left <= 0:
                return provider_id, ref, None  # over this request's budget: not kept
            self.lookups_left -= 1
        resolved = self._find(ref, provider_id)
        if resolved is None and provider in ROUTERS and "/" in ref:
            vendor, _, rest = ref.partition("/")
            resolved = self._find(rest, self.provider_id(vendor))
        if len(self._lookups) >= MAX_MEMO:
            self._lookups.clear()
        self._lookups[key] = resolved
        return provider_id, ref, resolved

    def _find(self, ref: str, provider_id: str | None) -> _Resolved | None:
        try:
            found_provider, found_model = self._snapshot.find_provider_model(
                ref, None, provider_id, None)
        except LookupError:
            # an unknown provider is not guessed from the model name: a self-hosted
            # `llama-3` is not the cloud's `llama-3`
            return None
        return _Resolved(found_provider, found_model, not _has_time_of_day(found_model))

    def override(self, provider: str | None, model: str) -> Rates | None:
        return self._overrides.get((provider, model.lower())) or \
            self._overrides.get((None, model.lower()))

    def price(self, provider: str | None, model: str, start_ns: int, *, input_tokens: int,
              output_tokens: int, cache_read: int = 0, cache_write: int = 0,
              service_tier: str | None = None) -> Price | None:
        """The cost of one call, or None when no price is known for the model."""
        if provider is not None and provider in self._free:
            return Price(_ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, provider, model, "free", None)
        override = self.override(provider, model)
        if override is not None:
            return self._apply(provider, _override_price(
                override, provider, model, input_tokens, output_tokens, cache_read, cache_write))
        _, _, resolved = self.lookup(provider, model)
        if resolved is None:
            return None
        context = service_tier if service_tier and service_tier != "auto" else None
        day = start_ns // 86_400_000_000_000
        plan_key = (resolved.provider.id, resolved.model.id, day if resolved.by_day else start_ns,
                    context)
        plan = self._plans.get(plan_key)
        if plan is None:
            when = _when(start_ns)
            plan = _plan(resolved.model, when, {"service_tier": context} if context else None)
            if len(self._plans) >= MAX_MEMO:
                self._plans.clear()
            if resolved.by_day:
                self._plans[plan_key] = plan
        source = DATA_VERSION
        if plan.fast:
            total_input = input_tokens
            uncached = input_tokens
            cr = cw = _ZERO
            if plan.cache_read is not None:
                uncached -= cache_read
                cr = _part(plan.cache_read, cache_read, total_input)
            if plan.cache_write is not None:
                uncached -= cache_write
                cw = _part(plan.cache_write, cache_write, total_input)
            plain = _part(plan.input, uncached, total_input)
            out = _part(plan.output, output_tokens, total_input)
            inp = plain + cr + cw
            calc = Price(inp + out, inp, out, plain, cr, cw, resolved.provider.id,
                         resolved.model.id, source, plan.price_date)
        else:
            try:
                result = plan.price.calc_price(Usage(
                    input_tokens=input_tokens, output_tokens=output_tokens,
                    cache_read_tokens=cache_read, cache_write_tokens=cache_write))
            except (ValueError, ArithmeticError):
                # a price shape the library refuses for this usage: unpriced, not a crash
                return None
            calc = Price(result["total_price"], result["input_price"], result["output_price"],
                         None, None, None, resolved.provider.id, resolved.model.id, source,
                         plan.price_date)
        return self._apply(provider, calc)

    def fast_rates(self, provider: str | None, model: str, start_ns: int,
                   service_tier: str | None = None) -> FastRates | None:
        """Integer rates for `price`'s fast path, memoised per (provider, model, UTC day,
        tier); None when the call takes another path (free provider, override,
        multiplier, unknown model, prices by time of day or of another shape): then
        `price` decides."""
        day = start_ns // 86_400_000_000_000
        key = (provider, model, day, service_tier)
        memo = self._fast
        if key in memo:
            return memo[key]
        if (provider is not None and provider in self._free) \
                or self.override(provider, model) is not None \
                or (self._multipliers and (provider or "") in self._multipliers) \
                or len(model) > MAX_NAME or len(provider or "") > MAX_NAME \
                or len(service_tier or "") > MAX_NAME:
            return None  # not kept: these are cheap to tell apart again
        _, _, resolved = self.lookup(provider, model)
        if resolved is None:
            return None  # not kept: the lookup may have been over this request's budget
        if not resolved.by_day:
            return None
        context = service_tier if service_tier and service_tier != "auto" else None
        plan_key = (resolved.provider.id, resolved.model.id, day, context)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = _plan(resolved.model, _when(start_ns),
                         {"service_tier": context} if context else None)
            if len(self._plans) >= MAX_MEMO:
                self._plans.clear()
            self._plans[plan_key] = plan
        rates = _fast_rates(plan, resolved.provider.id, resolved.model.id) if plan.fast \
            else None
        if len(memo) >= MAX_MEMO:
            memo.clear()
        memo[key] = rates
        return rates

    def _apply(self, provider: str | None, calc: Price) -> Price:
        factor = self._multipliers.get(provider or "") if self._multipliers else None
        if factor is None:
            return calc
        scale = [None if v is None else v * factor for v in (
            calc.total, calc.input, calc.output, calc.uncached_input, calc.cache_read,
            calc.cache_write)]
        return Price(scale[0] or _ZERO, scale[1] or _ZERO, scale[2] or _ZERO, scale[3],
                     scale[4], scale[5], calc.provider_id, calc.model_id,
                     f"{calc.source} x{factor}", calc.price_date)


def _when(start_ns: int) -> dt.datetime:
    if start_ns <= 0:
        return dt.datetime.now(dt.UTC)
    return dt.datetime.fromtimestamp(start_ns / 1e9, dt.UTC)


def _override_price(rates: Rates, provider: str | None, model: str, input_tokens: int,
                    output_tokens: int, cache_read: int, cache_write: int) -> Price:
    uncached = input_tokens
    cr = cw = _ZERO
    if rates.cache_read is not None:
        uncached -= cache_read
        cr = rates.cache_read * cache_read / MILLION
    if rates.cache_write is not None:
        uncached -= cache_write
        cw = rates.cache_write * cache_write / MILLION
    plain = rates.input * uncached / MILLION
    out = rates.output * output_tokens / MILLION
    inp = plain + cr + cw
    return Price(inp + out, inp, out, plain, cr, cw, provider or "", model, "override", None)


@dataclass(frozen=True, slots=True)
class Quote:
    """What `sidecar prices` shows for one model."""

    provider_id: str
    model_id: str
    rates: str  # per-million prices, as genai-prices prints them
    price_date: str | None
    source: str
    price: Price


def quote(book: PriceBook, provider: str | None, model: str, start_ns: int, *,
          input_tokens: int, output_tokens: int, cache_read: int = 0,
          cache_write: int = 0) -> Quote | None:
    """The resolved model, its rates and the cost of the given usage; None when unknown."""
    price = book.price(provider, model, start_ns, input_tokens=input_tokens,
                       output_tokens=output_tokens, cache_read=cache_read,
                       cache_write=cache_write)
    if price is None:
        return None
    if price.source == "free":
        return Quote(price.provider_id, price.model_id, "free", None, "free", price)
    override = book.override(provider, model)
    if override is not None:
        parts = [f"${override.input}/input MTok", f"${override.output}/output MTok"]
        if override.cache_read is not None:
            parts.append(f"${override.cache_read}/input cache read MTok")
        if override.cache_write is not None:
            parts.append(f"${override.cache_write}/input cache write MTok")
        return Quote(price.provider_id, price.model_id, ", ".join(parts), None, price.source,
                     price)
    _, _, resolved = book.lookup(provider, model)
    assert resolved is not None
    rates = resolved.model.get_prices(_when(start_ns))
    return Quote(price.provider_id, price.model_id, str(rates), price.price_date, price.source,
                 price)
