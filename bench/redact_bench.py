"""CPU µs per span of the redact processor, next to the receiver-side parse
(`Batch.from_bytes`) of the same requests, in one run (perf-notes.md: quote ratios).

Shapes: loadgen's 100-span requests without secrets; the same with 10 % of spans carrying
a secret attribute; and 20 attributes x 5 KB strings per span (the OTel testbed's
large-attribute case). Each figure is the minimum over repeats of process CPU time.
The last two lines run the processor as the daemon does on coalesced groups (the bytes of
5 requests joined, nothing parsed: `model.merge`), next to the cost of building them.

    .venv/bin/python bench/redact_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from bench.loadgen import build_request, large_request, with_secrets
from sidecar.model import Batch, Signal, merge
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


GROUP = 5


def measure_grouped(name: str, payloads: list[bytes]) -> None:
    spans = sum(Batch.from_bytes(Signal.TRACES, p).items for p in payloads)
    stage = Stage(Signal.TRACES, [RedactProcessor(RedactSettings())])
    # fresh groups each round: redaction replaces a group's bytes
    parts = [payloads[i:i + GROUP] for i in range(0, len(payloads), GROUP)]

    def build() -> None:
        for part in parts:
            merge([Batch(Signal.TRACES, 100, p) for p in part])

    def build_and_redact() -> None:
        for part in parts:
            stage.run(merge([Batch(Signal.TRACES, 100, p) for p in part]))

    base = _cpu(build) / spans * 1e6
    total = _cpu(build_and_redact) / spans * 1e6
    print(f"{name:34s} redact {total - base:6.2f} µs/span")


def main() -> None:
    global REPEATS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    if parser.parse_args().quick:
        REPEATS = 2
    rng = random.Random(1)
    clean = [build_request(rng) for _ in range(REQUESTS)]
    secrets = [with_secrets(p, rng, 0.1) for p in clean]
    measure("100-span requests, no secrets", clean)
    measure("10 % of spans with a secret", secrets)
    measure("20 attributes x 5 KB per span", [large_request(rng) for _ in range(REQUESTS)])
    measure_grouped("groups of 5, bytes only, no secrets", clean)
    measure_grouped("groups of 5, bytes only, secrets", secrets)


if __name__ == "__main__":
    main()
