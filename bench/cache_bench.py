"""Cache benchmark: redis-benchmark against the sidecar's cache socket and against a real
redis-server socket, in the same run, so the ratios compare like with like on this machine.

    .venv/bin/python bench/cache_bench.py [--repeat 3] [--quick]

Targets: `redis` (redis-server, unix socket), `sidecar` (memory only), `sidecar+l2`
(redis-server as L2). Tests: GET and SET, -P 1 and -P 16, 50 clients, 10,000 random keys.
Each (target, P) is run `--repeat` times, interleaved across targets; medians are reported.
The sidecar runs in its own process with uvloop, as the daemon does. Prints a table and
writes bench/results/cache.json. Every redis-benchmark run has a hard timeout."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENTS = 50
KEYSPACE = 10_000
# requests per redis-benchmark run: enough for a stable median, bounded in time
REQUESTS = {1: 100_000, 16: 400_000}
RUN_TIMEOUT = 90.0
# the targets: sidecar ops/s as a fraction of redis-server's, and p99
TARGET_RATIO = {1: 0.5, 16: 0.3}
TARGET_P99_MS = 2.0


def serve(sock: str, redis_url: str | None) -> None:
    """Child process: run only the cache service until SIGTERM."""
    from sidecar.cache.testing import running_cache

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        settings = {"redis": redis_url} if redis_url else {}
        async with running_cache(sock, **settings):
            print("ready", flush=True)
            await stop.wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def wait_socket(path: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(path)
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{path} did not answer PING within {timeout} s")


def run_benchmark(sock: str, pipeline: int) -> dict[str, dict[str, float]]:
    """One redis-benchmark run of SET then GET; returns test -> {rps, p50, p99} (ms)."""
    command = ["redis-benchmark", "-s", sock, "-t", "set,get", "-P", str(pipeline),
               "-c", str(CLIENTS), "-n", str(REQUESTS[pipeline]), "-r", str(KEYSPACE),
               "-d", "64", "--csv"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          check=True)
    results: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(done.stdout)):
        results[row["test"]] = {"rps": float(row["rps"]),
                                "p50_ms": float(row["p50_latency_ms"]),
                                "p99_ms": float(row["p99_latency_ms"])}
    return results


def warm_up(sock: str) -> None:
    """Fill the keyspace once, unmeasured, on every target alike: a daemon that has been
    running a while has its keys and its long-lived objects in place."""
    subprocess.run(["redis-benchmark", "-s", sock, "-t", "set", "-c", str(CLIENTS),
                    "-n", str(KEYSPACE * 3), "-r", str(KEYSPACE), "-d", "64", "-q"],
                   capture_output=True, timeout=RUN_TIMEOUT, check=True)


def start_sidecar(sock: str, redis_url: str | None) -> subprocess.Popen[bytes]:
    args = [sys.executable, __file__, "--serve", sock]
    if redis_url:
        args += ["--redis", redis_url]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_socket(sock)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def median_of(runs: list[dict[str, dict[str, float]]], test: str, field: str) -> float:
    return statistics.median(run[test][field] for run in runs if test in run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one run each, fewer requests")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "cache.json"))
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, options.redis)
        return 0
    for binary in ("redis-server", "redis-benchmark"):
        if shutil.which(binary) is None:
            print(f"{binary} not found (make sysdeps installs it)", file=sys.stderr)
            return 2
    repeat = 1 if options.quick else max(1, options.repeat)
    if options.quick:
        for p in REQUESTS:
            REQUESTS[p] //= 4

    from sidecar.cache.testing import RedisServer

    workdir = Path(tempfile.mkdtemp(prefix="cb-", dir="/tmp"))
    redis = RedisServer(workdir / "redis")
    (workdir / "redis").mkdir()
    redis.start()
    side_sock = str(workdir / "side.sock")
    l2_sock = str(workdir / "side-l2.sock")
    sidecar = start_sidecar(side_sock, None)
    sidecar_l2 = start_sidecar(l2_sock, redis.url)
    targets = {"redis": redis.socket, "sidecar": side_sock, "sidecar+l2": l2_sock}
    runs: dict[tuple[str, int], list[dict[str, dict[str, float]]]] = {}
    started = time.monotonic()
    try:
        for sock in targets.values():
            warm_up(sock)
        for pipeline in (1, 16):
            for _ in range(repeat):
                for name, sock in targets.items():  # interleaved: drift hits all alike
                    runs.setdefault((name, pipeline), []).append(run_benchmark(sock, pipeline))
    finally:
        stop(sidecar)
        stop(sidecar_l2)
        redis.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for (name, pipeline), results in runs.items():
        for test in ("SET", "GET"):
            rps = median_of(results, test, "rps")
            base = median_of(runs[("redis", pipeline)], test, "rps")
            rows.append({
                "target": name, "test": test, "pipeline": pipeline, "clients": CLIENTS,
                "rps": rps, "p50_ms": median_of(results, test, "p50_ms"),
                "p99_ms": median_of(results, test, "p99_ms"),
                "ratio_vs_redis": round(rps / base, 3) if base else None,
                "runs": len(results)})
    checks = []
    for row in rows:
        if row["target"] == "redis":
            continue
        ratio_ok = row["ratio_vs_redis"] is not None and \
            row["ratio_vs_redis"] >= TARGET_RATIO[row["pipeline"]]
        checks.append({"target": row["target"], "test": row["test"],
                       "pipeline": row["pipeline"], "ratio_ok": ratio_ok,
                       "p99_ok": row["p99_ms"] < TARGET_P99_MS})
    print(f"\nCache: redis-benchmark, {CLIENTS} clients, {KEYSPACE} keys, 64-byte values, "
          f"median of {repeat} (ops/s ratio vs redis-server in the same run)")
    print(f"{'target':<12}{'test':<6}{'-P':>4}{'ops/s':>12}{'ratio':>8}{'p50 ms':>9}"
          f"{'p99 ms':>9}")
    for row in rows:
        print(f"{row['target']:<12}{row['test']:<6}{row['pipeline']:>4}{row['rps']:>12,.0f}"
              f"{row['ratio_vs_redis']:>8.2f}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}")
    print(f"targets: ratio >= {TARGET_RATIO[1]} at -P 1, >= {TARGET_RATIO[16]} at -P 16; "
          f"p99 < {TARGET_P99_MS} ms (the -P 16 p99 includes 16 queued requests)")
    result = {
        "benchmark": "cache", "tool": "redis-benchmark", "clients": CLIENTS,
        "keyspace": KEYSPACE, "value_bytes": 64, "repeat": repeat,
        "requests": dict(REQUESTS), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(), "seconds": round(time.monotonic() - started, 1),
        "rows": rows, "checks": checks,
        "targets": {"ratio": TARGET_RATIO, "p99_ms": TARGET_P99_MS},
    }
    out = Path(options.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
