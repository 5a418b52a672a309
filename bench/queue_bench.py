"""Durable vs memory queue: CPU µs per span and spans/s per queue type and fsync policy,
and peak RSS while the exporter is down for the whole run.

    .venv/bin/python bench/queue_bench.py [--quick] [--repeats N] [--duration S]

1. Throughput: `otlp_bench.py --targets sidecar --scenarios max` once per configuration
   (memory; durable with fsync never / interval / always) and once for rotel, the
   configurations interleaved within each repetition; medians over the repetitions.
2. Exporter down: the sidecar's exporter points at a port nobody listens on for the whole
   run, the load generator sends at full speed (backpressure retried); peak RSS (VmHWM)
   of the daemon, spans it acknowledged, bytes on disk. With the default
   `queue.max_bytes` (64 MiB) the memory queue holds the backlog in RAM, the durable queue
   on disk with only `storage.memory_window` (8 MiB) of payloads in RAM.
Every phase is bounded in time; loopback only. The machine is shared: read the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import otlp_bench  # noqa: E402  (the sibling benchmark's helpers)

CONFIGS = (("memory", "never"), ("durable", "never"), ("durable", "interval"),
           ("durable", "always"))


def throughput(queue: str, fsync: str, target: str, duration: float, warmup: float
               ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "otlp.json"
        cmd = [sys.executable, str(HERE / "otlp_bench.py"), "--targets", target,
               "--scenarios", "max", "--repeats", "1", "--duration", str(duration),
               "--warmup", str(warmup), "--queue", queue, "--fsync", fsync,
               "--output", str(out)]
        subprocess.run(cmd, check=False, timeout=300, stdout=subprocess.DEVNULL)
        if not out.exists():
            return {"ok": False}
        runs = json.loads(out.read_text())["runs"]
    return runs[0] if runs else {"ok": False}


def exporter_down(queue: str, duration: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    dead = otlp_bench.free_port()
    target = otlp_bench.start_sidecar(workdir, dead, None, None, None, "gzip",
                                      queue=queue, fsync="interval")
    pid = target.child.proc.pid
    loadgen = None
    try:
        argv = [otlp_bench.PY, str(HERE / "loadgen.py"), "--target",
                f"127.0.0.1:{target.port}", "--rate", "0", "--concurrency", "16",
                "--warmup", "0.5", "--duration", str(duration), "--grace", "5"]
        loadgen = otlp_bench.Child("loadgen", argv, cpus=None, stdout_lines=True,
                                   log=workdir / "loadgen.log")
        loadgen.next_json(60, "ready")
        done = loadgen.next_json(duration + 40, "done")
        time.sleep(0.5)
        disk = sum(p.stat().st_size for p in (workdir / "data").rglob("*.seg"))
        return {"ok": True, "queue": queue, "peak_rss_mib": otlp_bench.peak_rss_mib(pid),
                "spans_acknowledged": int(done["spans_ok"]),
                "backpressure_retries": done["resource_exhausted_retries"],
                "disk_mib": disk / 2**20}
    finally:
        if loadgen is not None:
            loadgen.stop(grace=2)
        target.child.stop(grace=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, short windows")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per run (default 8, --quick 4)")
    parser.add_argument("--down-duration", type=float, default=None,
                        help="seconds of load with the exporter down (default 20, --quick 8)")
    parser.add_argument("--no-rotel", action="store_true")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    duration = args.duration or (4.0 if args.quick else 8.0)
    warmup = 1.5 if args.quick else 3.0
    down_duration = args.down_duration or (8.0 if args.quick else 20.0)

    rows: dict[str, list[dict[str, Any]]] = {}
    for rep in range(repeats):
        plan = [(q, f, "sidecar") for q, f in CONFIGS]
        if not args.no_rotel:
            plan.append(("memory", "never", "rotel"))
        for queue, fsync, target in plan:
            name = "rotel" if target == "rotel" else f"sidecar {queue}" + (
                f" fsync={fsync}" if queue == "durable" else "")
            print(f"[{rep + 1}/{repeats}] {name} ...", end=" ", flush=True, file=sys.stderr)
            result = throughput(queue, fsync, target, duration, warmup)
            rows.setdefault(name, []).append(result)
            print(f"{result.get('spans_per_s', 0):,.0f} spans/s "
                  f"{result.get('cpu_us_per_span') or 0:.2f} µs/span" if result.get("ok")
                  else "failed", file=sys.stderr)
    print("\nmax rate, 100 spans/request, default pipeline (redaction, cost), medians of "
          f"{repeats} interleaved runs of {duration:g}s (shared machine: noisy)")
    print(f"{'configuration':34} {'spans/s':>10} {'CPU µs/span':>12} {'peak RSS MiB':>13}")
    for name, results in rows.items():
        ok = [r for r in results if r.get("ok") and r.get("cpu_us_per_span")]
        if not ok:
            print(f"{name:34} {'failed':>10}")
            continue
        print(f"{name:34} {statistics.median(r['spans_per_s'] for r in ok):>10,.0f} "
              f"{statistics.median(r['cpu_us_per_span'] for r in ok):>12.2f} "
              f"{statistics.median(r['peak_rss_mib'] for r in ok):>13.0f}")

    print(f"\nexporter down for the whole run ({down_duration:g}s of full-speed load, "
          "queue.max_bytes 64MiB)")
    print(f"{'queue':10} {'peak RSS MiB':>13} {'spans acked':>12} {'on disk MiB':>12}")
    for queue in ("memory", "durable"):
        down = exporter_down(queue, down_duration)
        print(f"{queue:10} {down['peak_rss_mib']:>13.0f} {down['spans_acknowledged']:>12,} "
              f"{down['disk_mib']:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
