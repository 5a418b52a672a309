"""CPU per span added by the `cost` and `spanmetrics` processors, against the receiver-side
validation of the same batches (`Batch.from_bytes`: the C wire check, or a parse where it
is not sure; reported as `parse_us_per_span`) as a same-run baseline.

Workloads: `bench/loadgen.py`'s requests (100 spans, one in three a model call) and
`sidecar.sample.agent_runs` (6 spans, 3 model calls). CPU time by `time.process_time()`,
min over repeats. The cost stage time includes the re-serialisation it causes.

    .venv/bin/python bench/cost_bench.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import build_pool

from sidecar.model import Batch, Signal
from sidecar.pipeline.stage import Stage
from sidecar.processors.llm_cost import CostSettings, LlmCost
from sidecar.processors.spanmetrics import SpanMetrics, SpanMetricsSettings
from sidecar.sample import agent_runs


def best(repeats: int, body: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.process_time()
        body()
        times.append(time.process_time() - start)
    return min(times)


def measure(name: str, pool: list[bytes], repeats: int, processor: str,
            ) -> dict[str, object]:
    spans = sum(Batch.from_bytes(Signal.TRACES, p).items for p in pool)
    stage = Stage(Signal.TRACES, [LlmCost(CostSettings()) if processor == "cost"
                                  else SpanMetrics(SpanMetricsSettings())])
    for payload in pool:  # warm the price memo
        stage.run(Batch.from_bytes(Signal.TRACES, payload))

    def parse() -> None:
        for payload in pool:
            Batch.from_bytes(Signal.TRACES, payload)

    batches: list[Batch] = []

    def prepare() -> None:
        batches[:] = [Batch.from_bytes(Signal.TRACES, p) for p in pool]

    def cost() -> None:
        for batch in batches:
            stage.run(batch)

    base = best(repeats, parse)
    runs = []
    for _ in range(repeats):
        prepare()
        runs.append(best(1, cost))
    added = min(runs)
    return {"workload": name, "processor": processor, "spans": spans,
            "parse_us_per_span": round(base / spans * 1e6, 3),
            "processor_us_per_span": round(added / spans * 1e6, 3),
            "ratio": round(added / base, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    loadgen = build_pool(40)
    sample = [run.traces.SerializeToString() for run in agent_runs(400, seed=1)]
    for processor in ("cost", "spanmetrics"):
        for name, pool in (("loadgen", loadgen), ("sample.agent_runs", sample)):
            print(json.dumps(measure(name, pool, args.repeats, processor)))


if __name__ == "__main__":
    main()
