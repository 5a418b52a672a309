"""CPU cost of the logs receiver's hot path: framing, parsing and request building for
realistic pino lines, without sockets.

    .venv/bin/python bench/logs_parse_bench.py [--lines 1000000] [--repeats 3]

Lines are what a pino child logger of an agent app writes (level, epoch-ms time, pid,
hostname, child bindings, trace context, a few fields, one in 20 with an `err`), about
330 bytes each. They are fed in 64 KiB chunks (what a socket read returns) through
`LineSplitter.split` and `LogBatchBuilder`, and every 1024 records become a `Batch` (serialized
ExportLogsServiceRequest), as `receivers/ndjson.py` does. Reports CPU time
(`time.process_time`), the minimum over the repeats."""

from __future__ import annotations

import argparse
import random
import time

import orjson

from sidecar.net.framing import LineSplitter
from sidecar.receivers.logparse import LogBatchBuilder

AGENTS = ("planner", "researcher", "coder", "reviewer", "triage", "writer", "critic", "router")


def pino_lines(count: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    start_ms = 1_764_633_600_000
    out = []
    for i in range(count):
        line: dict[str, object] = {
            "level": rng.choice((30, 30, 30, 30, 20, 40, 50)),
            "time": start_ms + i,
            "pid": 4242, "hostname": "agent-host-1",
            "agent": rng.choice(AGENTS), "session": f"s-{rng.randrange(10_000):05d}",
            "run": {"id": f"run-{i // 50}", "step": i % 50},
            "trace_id": f"{rng.getrandbits(128):032x}", "span_id": f"{rng.getrandbits(64):016x}",
            "trace_flags": "01",
            "model": "gpt-4o", "tokens": {"input": rng.randrange(4000), "output": 120},
            "msg": "model call finished",
        }
        if i % 20 == 0:
            line["err"] = {"type": "Error", "message": "rate limited",
                           "stack": "Error: rate limited\n    at call (agent.js:12:7)",
                           "code": "E429"}
        out.append(orjson.dumps(line))
    return b"\n".join(out) + b"\n"


def run_once(data: bytes, chunk: int = 64 * 1024, max_records: int = 1024) -> tuple[
        float, int, int]:
    """(CPU seconds, records, requests)."""
    splitter = LineSplitter(1024 * 1024)
    builder = LogBatchBuilder("agent-app")
    records = requests = 0
    started = time.process_time()
    for pos in range(0, len(data), chunk):
        observed = time.time_ns()
        for line in splitter.split(data[pos:pos + chunk]):
            builder.add(line, observed)
            if builder.records >= max_records:
                records += builder.records
                assert builder.take_batch() is not None
                requests += 1
    if builder.records:
        records += builder.records
        assert builder.take_batch() is not None
        requests += 1
    return time.process_time() - started, records, requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = pino_lines(args.lines)
    print(f"{args.lines} pino lines, {len(data) / args.lines:.0f} bytes each")
    best = None
    for _ in range(args.repeats):
        cpu, records, requests = run_once(data)
        assert records == args.lines
        best = cpu if best is None else min(best, cpu)
        print(f"  run: {cpu:.2f} s CPU, {requests} requests")
    assert best is not None
    print(f"best: {args.lines / best:,.0f} lines per CPU-second, "
          f"{best / args.lines * 1e6:.2f} µs CPU per line (parse + batch building)")


if __name__ == "__main__":
    main()
