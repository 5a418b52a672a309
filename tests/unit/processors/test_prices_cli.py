"""`sidecar prices`: what the cost processor will charge, from the command line."""

from __future__ import annotations

from click.testing import CliRunner

from sidecar.cli import main


def test_prices_uses_the_config_overrides_and_shows_the_cost() -> None:
    result = CliRunner().invoke(main, [
        "prices", "house-llama", "--provider", "vllm", "--input", "3000", "--cache-read",
        "1000", "--output", "200", "--set",
        "processors.cost.prices=[{provider: vllm, model: house-llama, input: 0.5, "
        "output: 1.5, cache_read: 0.05}]"])
    assert result.exit_code == 0, result.output
    # (2000 * 0.5 + 1000 * 0.05 + 200 * 1.5) / 1e6
    assert result.output.splitlines() == [
        "house-llama: vllm house-llama (override)",
        "  prices: $0.5/input MTok, $1.5/output MTok, $0.05/input cache read MTok",
        "  cost of 3000 input (1000 cache read, 0 cache write) + 200 output tokens: "
        "$0.00135",
    ]


def test_prices_of_a_library_model_and_an_unknown_one() -> None:
    result = CliRunner().invoke(main, ["prices", "gpt-4o-2024-08-06", "no-such-model",
                                       "--provider", "openai", "--input", "10000",
                                       "--cache-read", "8000", "--output", "500"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "gpt-4o-2024-08-06: openai gpt-4o (genai-prices 0.2.3)"
    assert lines[1].startswith("  prices: $2.5/input MTok, $10/output MTok, "
                               "$1.25/input cache read MTok")
    assert lines[2].endswith("output tokens: $0.02")  # the shared doc's worked figure
    assert lines[3] == ("no-such-model: no price (provider openai); add it under "
                        "processors.cost.prices")


def test_cache_counts_above_the_input_are_refused() -> None:
    result = CliRunner().invoke(main, ["prices", "gpt-4o", "--input", "10", "--cache-read",
                                       "11"])
    assert result.exit_code == 1
    assert "must not exceed --input" in result.output
