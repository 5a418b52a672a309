"""CPU µs per span of the redact processor, next to the receiver-side parse
(`Batch.from_bytes`) of the same requests, in one run (perf-notes.md: quote ratios).

Shapes: loadgen's 100-span requests without secrets; the same with 10 % of spans carrying
a secret attribute; and 20 attributes x 5 KB strings per span (the OTel testbed's
large-attribute case). Each figure is the minimum over repeats of process CPU time.

    .venv/bin/python bench/redact_bench.py
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from bench.loadgen import build_request, large_request, with_secrets
from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.redact import RedactProcessor, RedactSettings

REQUESTS = 20
REPEATS = 5


def _cpu(fn: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(name: str, payloads: list[bytes]) -> None:
    spans = sum(Batch.from_bytes(Signal.TRACES, p).items for p in payloads)
    stage = Stage(Signal.TRACES, [RedactProcessor(RedactSettings())])

    def parse() -> None:
        for p in payloads:
            Batch.from_bytes(Signal.TRACES, p)

    def parse_and_redact() -> None:
        for p in payloads:
            stage.run(Batch.from_bytes(Signal.TRACES, p))

    base = _cpu(parse) / spans * 1e6
    total = _cpu(parse_and_redact) / spans * 1e6
    print(f"{name:34s} parse {base:6.2f} µs/span   redact {total - base:6.2f} µs/span   "
          f"({(total - base) / base:5.0%} of the parse)")


def main() -> None:
    rng = random.Random(1)
    clean = [build_request(rng) for _ in range(REQUESTS)]
    measure("100-span requests, no secrets", clean)
    measure("10 % of spans with a secret", [with_secrets(p, rng, 0.1) for p in clean])
    measure("20 attributes x 5 KB per span", [large_request(rng) for _ in range(REQUESTS)])


if __name__ == "__main__":
    main()
