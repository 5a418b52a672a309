"""/metrics writes the per-span tables' text itself (`Tables.text`, `exposition`): it must be
byte for byte what prometheus_client's generate_latest writes for the same families."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.telemetry import metrics
from sidecar.telemetry.metrics import CallsOf, CounterTable, HistogramTable, Tables

LABELS = ["provider", "model", "service", "agent", "tenant"]  # `le` sorts among them
BOUNDS = (0.01, 0.5, 2.0, 10.0, 1_500_000.0)


def fresh() -> tuple[CounterTable, HistogramTable, CallsOf, Tables]:
    counter = CounterTable("t_calls", 'Calls "seen"\nback\\slash', LABELS)
    histogram = HistogramTable("t_duration_seconds", "Durations", LABELS, BOUNDS)
    calls = CallsOf("t_spans", "Observations", histogram)
    return counter, histogram, calls, Tables(counter, histogram, calls)


def reference(tables: Tables) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(tables)
    return generate_latest(registry).decode()


def test_text_is_generate_latest_byte_for_byte() -> None:
    counter, histogram, _, tables = fresh()
    keys = [("openai", "gpt-4o", "svc", "planner", "t1"),
            ('we"ird', "back\\slash", "new\nline", "ünïcødé", ""),
            ("anthropic", "claude", "svc", "planner", "t2")]
    for n, key in enumerate(keys):
        counter.add(key, 0.1 * (n + 1))  # not whole: floatToGoString's repr
        counter.cell(key)[0] += 3
        for value in (0.005, 0.3, 7.0, 1e9, float(n)):
            histogram.observe(key, value)
    counter.add(("x", "y", "z", "w", "big"), 12_345_678.0)  # Go's exponent form: 1.2345678e+07
    counter.add(("x", "y", "z", "w", "neg"), -2.0)
    counter.add(("x", "y", "z", "w", "inf"), math.inf)
    counter.add(("x", "y", "z", "w", "nan"), math.nan)
    text = tables.text()
    assert text == reference(tables)
    assert 'le="1.5e+06"' in text  # the cases are exercised
    assert "1.2345678e+07" in text
    # and again, from the text kept since the first scrape: one histogram series and one
    # counter changed, the rest not
    histogram.observe(keys[0], 0.02)
    counter.cell(keys[2])[0] += 1
    again = tables.text()
    assert again == reference(tables)
    assert again != text


def test_a_cleared_series_is_gone_from_the_text() -> None:
    counter, histogram, _, tables = fresh()
    key = ("p", "m", "s", "a", "t")
    counter.add(key)
    histogram.observe(key, 1.0)
    assert "tenant" in tables.text()
    counter.values.clear()
    histogram.rows.clear()
    text = tables.text()
    assert text == reference(tables)
    assert 'tenant="t"' not in text


safe_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.tuples(*[safe_text] * 5),
                          st.floats(allow_nan=False, min_value=0, max_value=1e12)),
                max_size=8))
def test_any_labels_and_values(series: list[tuple[tuple[str, ...], float]]) -> None:
    """Twice: the second scrape after every other series changed, so both the kept text of
    unchanged series and the new text of changed ones are checked."""
    counter, histogram, _, tables = fresh()
    for key, value in series:
        counter.add(key, value)
        histogram.observe(key, value)
    assert tables.text() == reference(tables)
    for key, value in series[::2]:
        counter.add(key, value + 1)
        histogram.observe(key, value / 3)
    assert tables.text() == reference(tables)


def test_histogram_bounds_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        HistogramTable("t_neg", "d", ["a"], (-1.0, 1.0))


def test_exposition_is_the_whole_registry() -> None:
    """The daemon's tables with series in them: /metrics' body holds the same families and
    samples as generate_latest(REGISTRY), and parses."""
    key = ("unit-provider", "unit-model", "unit-service", "unit-agent", "unit-tenant")
    metrics.LLM_CALLS.cell(key)[0] += 2
    metrics.LLM_DURATION.observe(key, 0.7)
    try:
        body = metrics.exposition().decode()
        whole = generate_latest(metrics.REGISTRY).decode()
        assert sorted(body.splitlines()) == sorted(whole.splitlines())
        families = {f.name: f for f in text_string_to_metric_families(body)}
        calls = [s for s in families["sidecar_llm_calls"].samples
                 if s.labels.get("tenant") == "unit-tenant"]
        assert [s.value for s in calls] == [2.0]
        assert "sidecar_receiver_accepted_items" in families  # and the BASE registry's
    finally:
        metrics.LLM_CALLS.cells.pop(key, None)
        metrics.LLM_DURATION.rows.pop(key, None)
