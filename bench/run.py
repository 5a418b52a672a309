"""`make bench`: run every benchmark as its own subprocess and print its table.

    .venv/bin/python bench/run.py [--quick]

1. bench/otlp_bench.py  -- OTLP pipeline, sidecar vs rotel (results/otlp.json)
2. bench/queue_bench.py -- durable vs memory queue, per fsync policy; RSS with the exporter down
3. bench/cache_bench.py -- cache server, if present
4. bench/datadog_encoding.py -- Datadog native encoding vs OTLP pass-through, CPU us per
   span, with rotel-agent's Datadog exporter as the peer in the same run
5. bench/redact_ab.py   -- redaction on vs off through the daemon, three workloads
6. bench/logs_bench.py  -- log-file tailing, sidecar vs otelcol-contrib filelog (results/logs.json)
7. bench/cost_bench.py  -- cost and span metrics in process (back to back, paced), and the
   default stage on coalesced groups of requests
Exit status: non-zero if any benchmark failed to run (missed targets are reported in the
tables, not as failures).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("otlp_bench.py", "queue_bench.py", "cache_bench.py", "datadog_encoding.py",
           "redact_ab.py", "redact_bench.py", "logs_bench.py", "cost_bench.py")
# hard cap per benchmark; a full otlp_bench run takes about 5 minutes
TIMEOUT_S = 30 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the sidecar benchmarks.")
    parser.add_argument("--quick", action="store_true", help="one short repetition each")
    args = parser.parse_args(argv)
    # SIGTERM unwinds through the `finally` below, which stops the running benchmark
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = 0
    for name in BENCHES:
        path = HERE / name
        if not path.exists():
            print(f"== {name}: not present, skipped\n", flush=True)
            continue
        print(f"== {name}{' --quick' if args.quick else ''}", flush=True)
        started = time.monotonic()
        cmd = [sys.executable, str(path)] + (["--quick"] if args.quick else [])
        proc = subprocess.Popen(cmd)
        try:
            rc = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"== {name}: stopped after {TIMEOUT_S}s", flush=True)
            rc = 124
        finally:
            if proc.poll() is None:  # SIGTERM first: the benchmark stops its own processes
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print(f"== {name}: exit {rc} after {time.monotonic() - started:.0f}s\n", flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
