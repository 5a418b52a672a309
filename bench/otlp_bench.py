"""OTLP pipeline benchmark: sidecar vs the Rust collector rotel, same load, same sink.

    loadgen (process) --OTLP/gRPC--> target (sidecar | rotel-agent) --OTLP/gRPC gzip--> sink

For every target, at a steady 10,000 spans/s and at the maximum rate, it measures the
end-to-end spans/s delivered to the sink, the target's CPU time (user+sys, whole process
tree) per delivered span, its CPU % of one core, and its peak RSS (VmHWM). Each
measurement gets a fresh target process (so peak RSS belongs to that load only), a
warm-up, a measured window and a drain; it is repeated and the medians are reported with
the ratios sidecar/rotel. Results go to bench/results/otlp.json.

See bench/README.md ("OTLP pipeline") for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
RESULTS = HERE / "results" / "otlp.json"

# the issue's targets for sidecar (no processors)
TARGET_CPU_RATIO = 0.6     # CPU per span at max rate, sidecar / rotel
TARGET_RSS_RATIO = 0.5     # peak RSS, sidecar / rotel
TARGET_STEADY_CPU = 10.0   # % of one core at 10,000 spans/s


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes


class Child:
    """A subprocess whose stdout lines are read by a thread into a queue."""

    def __init__(self, name: str, argv: list[str], *, cpus: set[int] | None,
                 stdout_lines: bool, log: Path | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.lines: queue.Queue[str] = queue.Queue()
        self._log_file: IO[bytes] | None = None
        self.log = log

        def pin() -> None:  # runs in the child before exec, so every thread inherits it
            os.setsid()
            if cpus:
                os.sched_setaffinity(0, cpus)

        if stdout_lines:
            stdout: Any = subprocess.PIPE
            stderr: Any = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        else:
            stdout = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
            stderr = subprocess.STDOUT
        self._log_file = stderr if stdout_lines else stdout
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
            preexec_fn=pin, text=False)
        if stdout_lines:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put("")  # EOF marker

    def next_json(self, timeout: float, want: str | None = None) -> dict[str, Any]:
        """Next JSON line (with event == want, if given), or BenchError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {want or 'answer'} within {timeout:.0f}s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line == "":
                raise BenchError(f"{self.name} exited (rc={self.proc.wait()}) "
                                 f"before {want or 'answering'}{self.tail()}")
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if want is None or msg.get("event") == want:
                return msg  # type: ignore[no-any-return]

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").splitlines()[-n:]
        return ("\n  " + "\n  ".join(lines)) if lines else ""

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL after `grace`; always reaps."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self._log_file):
            if f is not None and f not in (subprocess.PIPE, subprocess.DEVNULL):
                with contextlib.suppress(Exception):
                    f.close()  # type: ignore[union-attr]
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"{child.name} exited (rc={child.proc.returncode}){child.tail()}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise BenchError(f"{child.name}: port {port} not listening after {timeout:.0f}s{child.tail()}")


def wait_http_ok(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"{child.name} exited (rc={child.proc.returncode}){child.tail()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{child.name}: {url} not ready after {timeout:.0f}s{child.tail()}")


PROCESSOR_CPU_METRIC = "sidecar_processor_cpu_seconds_total"


def processor_cpu(target: Target) -> tuple[dict[str, float], int]:
    """(processor -> CPU seconds so far on traces, from the sidecar's own /metrics; the
    size of that /metrics body in bytes)."""
    if target.admin is None:
        return {}, 0
    url = f"http://127.0.0.1:{target.admin}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError as exc:
        raise BenchError(f"cannot scrape {url}: {exc}") from exc
    return {sample.labels["processor"]: sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == PROCESSOR_CPU_METRIC
            and sample.labels.get("signal") == "traces"}, len(text)


# ---------------------------------------------------------------- process metrics


def tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """user+sys of the process and every live descendant (plus reaped children)."""
    import psutil

    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, all CPUs."""
    import psutil

    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - steal
    busy -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # counted in user
    return busy, steal


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) summed over the process tree, MiB."""
    return sum(_status_kib(p.pid, "VmHWM") for p in tree(pid)) / 1024


def rss_mib(pid: int) -> float:
    return sum(_status_kib(p.pid, "VmRSS") for p in tree(pid)) / 1024


# ---------------------------------------------------------------- targets


def rotel_binary() -> Path:
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        raise BenchError("the 'rotel' package is not installed (it is in the dev extra)")
    path = Path(spec.origin).parent / "rotel-agent"
    if not path.exists():
        raise BenchError(f"rotel-agent not found at {path}")
    return path


def sidecar_binary() -> Path:
    path = Path(PY).parent / "sidecar"
    if not path.exists():
        raise BenchError(f"{path} not found (pip install -e .)")
    return path


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


@dataclass
class Target:
    name: str
    child: Child
    port: int
    admin: int | None = None  # the sidecar's admin port (/metrics)


def start_rotel(workdir: Path, sink_port: int, cpus: set[int] | None,
                batch: int, compression: str) -> Target:
    port, http_port = free_port(), free_port()
    argv = [
        str(rotel_binary()), "start",
        "--otlp-grpc-endpoint", f"127.0.0.1:{port}",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--exporter", "otlp",
        "--otlp-exporter-endpoint", f"http://127.0.0.1:{sink_port}",
        "--otlp-exporter-protocol", "grpc",
        "--otlp-exporter-compression", compression,
        "--traces-batch-max-size", str(batch),
        "--batch-timeout", "200ms",
        "--pid-file", str(workdir / "rotel.pid"),
        "--log-file", str(workdir / "rotel-daemon.log"),
    ]
    # internal telemetry is off unless --enable-internal-telemetry; no network needed
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTEL_", "OTEL_"))}
    child = Child("rotel", argv, cpus=cpus, stdout_lines=False, log=workdir / "rotel.log",
                  env=env, cwd=workdir)
    try:
        wait_tcp(port, child, timeout=20)
    except BaseException:
        child.stop()
        raise
    return Target("rotel", child, port)


SIDECAR_YAML = """\
# generated by bench/otlp_bench.py
storage: {dir: %(dir)s/data, fsync: %(fsync)s}
receivers:
  otlp:
    grpc: {endpoint: "127.0.0.1:%(port)d"}
    http: null
  logs: {unix: %(dir)s/run/logs.sock}
exporters:
  sink:
    type: otlp
    endpoint: "http://127.0.0.1:%(sink)d"
    protocol: %(protocol)s
    compression: %(compression)s
    queue: {type: %(queue)s}
%(batch)s
pipelines: {traces: [sink], logs: [sink], metrics: [sink]}
%(processors)s
cache: {unix: %(dir)s/run/cache.sock}
admin: {endpoint: "127.0.0.1:%(admin)d"}
service: {log_level: warning}
"""


PROCESSORS_OFF = ("processors: {redact: {enabled: false}, cost: {enabled: false}, "
                  "spanmetrics: {enabled: false}}")
# sidecar variants run as their own targets, to tell what one processor adds per span
# (on the standard workload: bench/loadgen.py's spans, a third of them model calls)
SIDECAR_VARIANTS = {
    "sidecar-cost": "processors: {cost: {enabled: true}, spanmetrics: {enabled: true}}",
    "sidecar-nocost": "processors: {cost: {enabled: false}, spanmetrics: {enabled: true}}",
    "sidecar-nospanmetrics": "processors: {cost: {enabled: false}, "
                             "spanmetrics: {enabled: false}}",
    "sidecar-noredact": "processors: {redact: {enabled: false}}",
    "sidecar-bare": PROCESSORS_OFF,
}
# µs per span a processor adds: (label, with it, without it), CPU per span at max rate
PROCESSOR_DELTAS = (("cost", "sidecar-cost", "sidecar-nocost"),
                    ("spanmetrics", "sidecar-nocost", "sidecar-nospanmetrics"),
                    ("redact", "sidecar", "sidecar-noredact"))


def start_sidecar(workdir: Path, sink_port: int, cpus: set[int] | None,
                  batch: int | None, command: list[str] | None, compression: str,
                  protocol: str = "grpc", processors: str = "default", queue: str = "durable",
                  fsync: str = "interval") -> Target:
    port, admin = free_port(), free_port()
    (workdir / "run").mkdir(exist_ok=True)
    config = workdir / "sidecar.yaml"
    config.write_text(SIDECAR_YAML % {
        "dir": workdir, "port": port, "admin": admin, "sink": sink_port,
        "compression": compression, "protocol": protocol, "queue": queue, "fsync": fsync,
        "batch": f"    batch: {{max_items: {batch}}}" if batch else "",
        # default: what an empty config runs (redaction, cost, spanmetrics); none: every processor
        # off; a SIDECAR_VARIANTS name: that variant
        "processors": PROCESSORS_OFF if processors == "none"
        else SIDECAR_VARIANTS.get(processors, ""),
    })
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    argv = [*(command or [str(sidecar_binary())]), "run", "--config", str(config)]
    child = Child("sidecar", argv,
                  cpus=cpus, stdout_lines=False, log=workdir / "sidecar.log", env=env,
                  cwd=workdir)
    try:
        wait_http_ok(f"http://127.0.0.1:{admin}/readyz", child, timeout=30)
        wait_tcp(port, child, timeout=10)
    except BaseException:
        child.stop()
        raise
    return Target("sidecar", child, port, admin)


def start_floor(workdir: Path, cpus: set[int] | None) -> Target:
    """The Python floor: a bare grpc.aio server that only counts spans (bench/sink.py),
    no export. What any grpc.aio receiver pays per request on this machine."""
    child = Child("pyfloor", [PY, str(HERE / "sink.py"), "--port", "0", "--uvloop"], cpus=cpus,
                  stdout_lines=True, log=workdir / "pyfloor.log")
    try:
        port = int(child.next_json(30)["port"])
    except BaseException:
        child.stop()
        raise
    return Target("pyfloor", child, port)


# ---------------------------------------------------------------- one measurement


@dataclass
class Scenario:
    name: str
    rate: float          # spans/s, 0 = max
    concurrency: int


@dataclass
class Options:
    warmup: float
    duration: float
    drain_timeout: float
    pin: bool
    rotel_batch: int
    sidecar_batch: int | None
    quick: bool
    sidecar_cmd: list[str] | None = None
    compression: str = "gzip"
    profile_dir: Path | None = None
    sidecar_protocol: str = "grpc"
    sidecar_processors: str = "default"
    sidecar_queue: str = "durable"
    sidecar_fsync: str = "interval"
    workload: str = "agent"
    extra: dict[str, Any] = field(default_factory=dict)


def measure(target_name: str, scenario: Scenario, sink: Child, opts: Options) -> dict[str, Any]:
    target_cpus = {0} if opts.pin else None
    aux_cpu = 1 if opts.pin else None
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{target_name}-"))
    sink_port = int(opts.extra["sink_port"])
    target: Target | None = None
    loadgen: Child | None = None
    profiler: tuple[Child, Path] | None = None
    try:
        if target_name == "pyfloor":
            target = start_floor(workdir, target_cpus)
        elif target_name == "rotel":
            target = start_rotel(workdir, sink_port, target_cpus, opts.rotel_batch,
                                 opts.compression)
        else:
            sidecar_sink = (sink_port if opts.sidecar_protocol == "grpc"
                            else int(opts.extra["sink_http_port"]))
            target = start_sidecar(workdir, sidecar_sink, target_cpus, opts.sidecar_batch,
                                   opts.sidecar_cmd, opts.compression, opts.sidecar_protocol,
                                   target_name if target_name in SIDECAR_VARIANTS
                                   else opts.sidecar_processors, opts.sidecar_queue,
                                   opts.sidecar_fsync)
        pid = target.child.proc.pid
        # spans are counted where they end up: the sink, or the floor server itself
        counter = target.child if target_name == "pyfloor" else sink
        time.sleep(0.5)
        rss_idle = rss_mib(pid)
        base = sink_stats(counter)
        argv = [PY, str(HERE / "loadgen.py"), "--target", f"127.0.0.1:{target.port}",
                "--rate", str(scenario.rate), "--concurrency", str(scenario.concurrency),
                "--warmup", str(opts.warmup), "--duration", str(opts.duration),
                "--grace", "10"]
        if aux_cpu is not None:
            argv += ["--cpu", str(aux_cpu)]
        if opts.workload != "agent":  # the redaction workloads (loadgen.WORKLOADS)
            argv += ["--workload", opts.workload]
        loadgen = Child("loadgen", argv, cpus=None, stdout_lines=True,
                        log=workdir / "loadgen.log")
        ready = loadgen.next_json(60, "ready")
        loadgen.next_json(opts.warmup + 15, "measure_start")
        # the scrape before the window's CPU reading: a scrape is measured on its own, after
        # the window (`scrape_cpu_ms`), not counted as spans' CPU
        p0, _ = processor_cpu(target)
        t0, c0, s0 = time.monotonic(), cpu_seconds(pid), sink_stats(counter)
        lg0 = cpu_seconds(loadgen.proc.pid)
        sys0, sk0 = machine_busy(), sink_stats(sink)["cpu_s"]
        if opts.profile_dir is not None and target_name.startswith("sidecar"):
            profiler = start_profiler(pid, opts, f"{target_name}-{scenario.name}", workdir)
        end = loadgen.next_json(opts.duration + 15, "measure_end")
        t1, c1, s1 = time.monotonic(), cpu_seconds(pid), sink_stats(counter)
        lg1 = cpu_seconds(loadgen.proc.pid)
        sys1, sk1 = machine_busy(), sink_stats(sink)["cpu_s"]
        done = loadgen.next_json(30, "done")
        if profiler is not None:
            finish_profiler(profiler)
            profiler = None
        # drain: wait until everything the target acknowledged reached the sink
        accepted = int(done["spans_ok"])
        deadline = time.monotonic() + opts.drain_timeout
        s2 = sink_stats(counter)
        while s2["spans"] - base["spans"] < accepted and time.monotonic() < deadline:
            if not target.child.alive():
                raise BenchError(f"{target_name} died during the drain{target.child.tail()}")
            time.sleep(0.05)
            s2 = sink_stats(counter)
        t2, c2 = time.monotonic(), cpu_seconds(pid)
        p2, metrics_bytes = processor_cpu(target)
        scrape_cpu = cpu_seconds(pid) - c2  # the daemon's CPU for one /metrics scrape
        peak = peak_rss_mib(pid)
        if not target.child.alive():
            raise BenchError(f"{target_name} exited during the run{target.child.tail()}")
        delivered_window = s1["spans"] - s0["spans"]
        delivered_total = s2["spans"] - base["spans"]
        drained = s2["spans"] - s0["spans"]
        window = t1 - t0
        return {
            "target": target_name, "scenario": scenario.name, "ok": True,
            "rate_target": scenario.rate, "concurrency": scenario.concurrency,
            "window_s": round(window, 3),
            "spans_per_s": delivered_window / window,
            "sent_per_s": end["window_sent"] / max(end["window_s"], 1e-9),
            "cpu_us_per_span": (c2 - c0) / drained * 1e6 if drained else None,
            "cpu_pct_core": (c1 - c0) / window * 100,
            "peak_rss_mib": peak,
            "idle_rss_mib": rss_idle,
            "spans_accepted": accepted,
            "spans_delivered": delivered_total,
            "delivered_ratio": delivered_total / accepted if accepted else None,
            "drain_s": round(t2 - t1, 3),
            "resource_exhausted_retries": done["resource_exhausted_retries"],
            "errors": done["errors"],
            "latency_p50_ms": done["latency_p50_ms"],
            "latency_p99_ms": done["latency_p99_ms"],
            "loadgen_cpu_pct": (lg1 - lg0) / window * 100,
            # CPU used by anything but target, loadgen and sink: other work on the machine
            "background_cpu_pct": max(0.0, (sys1[0] - sys0[0]) - (c1 - c0) - (lg1 - lg0)
                                      - (sk1 - sk0)) / window * 100,
            "steal_pct": (sys1[1] - sys0[1]) / window * 100,
            "sink_cpu_pct": None if counter is not sink
            else (s1["cpu_s"] - s0["cpu_s"]) / window * 100,
            "sink_requests": s2["requests"] - base["requests"],
            "sink_bad_requests": s2["bad"] - base["bad"],
            "bytes_per_span": ready["bytes_per_span"],
            # µs per span each processor took in the daemon (its own thread-CPU counter)
            "scrape_cpu_ms": scrape_cpu * 1e3 if target.admin is not None else None,
            "metrics_kib": metrics_bytes / 1024 if target.admin is not None else None,
            "processor_us_per_span": {name: (p2[name] - p0.get(name, 0.0)) / drained * 1e6
                                      for name in p2} if drained else {},
        }
    except BenchError as exc:
        return {"target": target_name, "scenario": scenario.name, "ok": False,
                "error": str(exc)}
    finally:
        if profiler is not None:
            profiler[0].stop(grace=2)
        if loadgen is not None:
            loadgen.stop(grace=2)
        if target is not None:
            if target_name == "pyfloor":
                with contextlib.suppress(Exception):
                    target.child.send("quit")
            rc = target.child.stop(grace=10)
            if rc not in (0, -signal.SIGTERM, 143, None):
                print(f"  note: {target_name} exited with {rc} on SIGTERM", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


def start_profiler(pid: int, opts: Options, name: str,
                   workdir: Path) -> tuple[Child, Path] | None:
    """py-spy (if installed in the venv) on the target for the measured window, on the
    loadgen's CPU. Writes collapsed stacks (flamegraph.pl / speedscope can read them)."""
    spy = Path(PY).parent / "py-spy"
    if not spy.exists():
        print("  note: --profile needs py-spy in the venv (pip install py-spy)", file=sys.stderr)
        return None
    assert opts.profile_dir is not None
    opts.profile_dir.mkdir(parents=True, exist_ok=True)
    out = opts.profile_dir / f"{name}-{int(time.time())}.txt"
    argv = [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, int(opts.duration))),
            "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out)]
    child = Child("py-spy", argv, cpus={1} if opts.pin else None, stdout_lines=False,
                  log=workdir / "py-spy.log")
    return child, out


def finish_profiler(profiler: tuple[Child, Path]) -> None:
    child, out = profiler
    try:
        child.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.stop(grace=2)
    if not out.exists():
        print(f"  note: py-spy wrote no profile{child.tail()}", file=sys.stderr)
        return
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    print(f"  profile: {out} ({total} samples); most own time:", file=sys.stderr)
    for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {100 * n / max(total, 1):5.1f}%  {leaf}", file=sys.stderr)


def sink_stats(sink: Child) -> dict[str, Any]:
    sink.send("stats")
    return sink.next_json(10)


# ---------------------------------------------------------------- report


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = ("spans_per_s", "cpu_us_per_span", "cpu_pct_core", "peak_rss_mib", "idle_rss_mib",
            "delivered_ratio", "resource_exhausted_retries", "latency_p99_ms",
            "loadgen_cpu_pct", "sink_cpu_pct", "background_cpu_pct", "steal_pct",
            "scrape_cpu_ms", "metrics_kib")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["target"], r["scenario"]), []).append(r)
    for (target, scenario), rs in groups.items():
        good = [r for r in rs if r["ok"]]
        entry: dict[str, Any] = {"runs": len(rs), "ok_runs": len(good)}
        for k in keys:
            entry[k] = median([r.get(k) for r in good])
        entry["processor_us_per_span"] = {
            name: median([r["processor_us_per_span"].get(name) for r in good
                          if r.get("processor_us_per_span")])
            for name in sorted({n for r in good for n in r.get("processor_us_per_span", {})})}
        entry["min_delivered_ratio"] = min(
            (r["delivered_ratio"] for r in good if r.get("delivered_ratio") is not None),
            default=None)
        entry["errors"] = [r["error"] for r in rs if not r["ok"]]
        entry["failed_requests"] = sum(sum(r["errors"].values()) for r in good)
        out.setdefault(target, {})[scenario] = entry
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratio(summary: dict[str, Any], scenario: str, key: str) -> float | None:
    try:
        a = summary["sidecar"][scenario][key]
        b = summary["rotel"][scenario][key]
    except KeyError:
        return None
    return a / b if a is not None and b else None


def print_report(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        f"OTLP pipeline benchmark ({meta['date']}, commit {meta['commit']}, "
        f"{meta['repeats']} run(s) each, medians; {meta['cpus']} CPUs, "
        f"{'target pinned to CPU 0, loadgen+sink to CPU 1' if meta['pinned'] else 'unpinned'})",
        f"spans: {meta.get('bytes_per_span', 0):.0f} B, ~15 attributes, 100 per request; "
        f"rotel batch {meta['rotel_batch']}, sidecar batch "
        f"{meta['sidecar_batch'] or 'default'}; {meta['compression']} to the sink "
        f"(sidecar exports OTLP/{meta['sidecar_protocol']})",
        "",
        f"{'target':8} {'load':9} {'spans/s':>9} {'µs/span':>8} {'CPU %':>6} "
        f"{'peak RSS':>9} {'idle RSS':>9} {'delivered':>9} {'429s':>6} {'p99 ms':>7} "
        f"{'other %':>7}",
    ]
    for target in ("rotel", "sidecar", "pyfloor", *SIDECAR_VARIANTS):
        for scenario in summary.get(target, {}):
            e = summary.get(target, {}).get(scenario)
            if e is None:
                continue
            if not e["ok_runs"]:
                first = e["errors"][0].splitlines()[0] if e["errors"] else "?"
                lines.append(f"{target:8} {scenario:9} FAILED: {first}")
                continue
            dr = e["min_delivered_ratio"]
            lines.append(
                f"{target:8} {scenario:9} {fmt(e['spans_per_s'], ',.0f'):>9} "
                f"{fmt(e['cpu_us_per_span'], '.1f'):>8} {fmt(e['cpu_pct_core'], '.1f'):>6} "
                f"{fmt(e['peak_rss_mib'], '.0f'):>5} MiB {fmt(e['idle_rss_mib'], '.0f'):>5} MiB "
                f"{fmt(None if dr is None else 100 * dr, '.2f'):>8}% "
                f"{fmt(e['resource_exhausted_retries'], '.0f'):>6} "
                f"{fmt(e['latency_p99_ms'], '.0f'):>7} "
                f"{fmt(e['background_cpu_pct'], '.0f'):>7}")
            if e["ok_runs"] < e["runs"]:
                lines.append(f"{'':18} ({e['runs'] - e['ok_runs']} run(s) failed: "
                             f"{e['errors'][0].splitlines()[0]})")
    for target, scenarios in summary.items():
        for scenario, e in scenarios.items():
            if e.get("failed_requests"):
                lines.append(f"NOTE: {target} {scenario}: {e['failed_requests']} requests failed "
                             "(not retried; see the errors in the JSON)")
    busiest = max((e.get("background_cpu_pct") or 0.0 for t in summary.values()
                   for e in t.values()), default=0.0)
    lines.append("other % = CPU used by other processes on the machine during the window "
                 "(% of one core)")
    if busiest > 10:
        lines.append(f"WARNING: up to {busiest:.0f}% of a core went to other processes: the "
                     "machine was not quiet, spans/s and CPU % are disturbed.")
    lines.append("")
    cpu_r = ratio(summary, "max", "cpu_us_per_span")
    rss_r = ratio(summary, "max", "peak_rss_mib")
    rss10_r = ratio(summary, "10k", "peak_rss_mib")
    tput_r = ratio(summary, "max", "spans_per_s")
    steady = summary.get("sidecar", {}).get("10k", {}).get("cpu_pct_core")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    default = meta.get("sidecar_processors") == "default"
    lines += [
        f"sidecar / rotel (targets from the issue; sidecar processors: "
        f"{'default (redaction, cost, spanmetrics)' if default else 'none'}):",
        f"  CPU per span at max rate   {fmt(cpu_r, '.2f'):>6}x   (target <= {TARGET_CPU_RATIO}x)"
        f"  {verdict(None if cpu_r is None else cpu_r <= TARGET_CPU_RATIO)}",
        f"  peak RSS at max rate       {fmt(rss_r, '.2f'):>6}x   (target <= {TARGET_RSS_RATIO}x)"
        f"  {verdict(None if rss_r is None else rss_r <= TARGET_RSS_RATIO)}",
        f"  peak RSS at 10k spans/s    {fmt(rss10_r, '.2f'):>6}x",
        f"  spans/s at max rate        {fmt(tput_r, '.2f'):>6}x",
        f"  sidecar CPU at 10k spans/s {fmt(steady, '.1f'):>6}%   (target < "
        f"{TARGET_STEADY_CPU:.0f}% of one core)"
        f"  {verdict(None if steady is None else steady < TARGET_STEADY_CPU)}",
        f"  CPU per span at 10k        {fmt(ratio(summary, '10k', 'cpu_us_per_span'), '.2f'):>6}x",
    ]
    rotel_max = summary.get("rotel", {}).get("max", {}).get("cpu_us_per_span")
    for label, with_it, without in PROCESSOR_DELTAS:
        on = summary.get(with_it, {}).get("max", {}).get("cpu_us_per_span")
        off = summary.get(without, {}).get("max", {}).get("cpu_us_per_span")
        if on is not None and off is not None:
            lines.append(f"  {label} adds {on - off:.2f} µs/span at max rate ({with_it} "
                         f"{on:.1f} - {without} {off:.1f}; budget 2)")
    full = summary.get("sidecar-cost", {}).get("max", {}).get("cpu_us_per_span")
    if full is not None and rotel_max:
        lines.append(f"  redaction + cost + spanmetrics {full:.1f} µs/span vs rotel "
                     f"{rotel_max:.1f}: {full / rotel_max:.2f}x")
    for scenario in summary.get("sidecar", {}):
        inside = summary.get("sidecar", {}).get(scenario, {}).get("processor_us_per_span")
        if inside:
            parts = ", ".join(f"{n} {v:.2f}" for n, v in inside.items() if v is not None)
            lines.append(f"  sidecar processors at {scenario}, CPU in the daemon "
                         f"({PROCESSOR_CPU_METRIC}): {parts} µs/span")
        scrape = summary.get("sidecar", {}).get(scenario, {})
        if scrape.get("scrape_cpu_ms") is not None:
            lines.append(f"  sidecar /metrics after the {scenario} window: "
                         f"{scrape['metrics_kib']:,.0f} KiB, {scrape['scrape_cpu_ms']:.0f} ms "
                         "of the daemon's CPU per scrape (not in µs/span)")
    floor = summary.get("pyfloor", {}).get("10k", {}).get("cpu_pct_core")
    if steady is not None and floor:
        lines.append(f"  sidecar CPU at 10k / bare grpc.aio receiver (pyfloor) "
                     f"{steady / floor:.2f}x  ({floor:.1f}% for pyfloor)")
    for line in lines:
        print(line)
    return lines


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "sidecar", "bench"], capture_output=True, text=True,
                               timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition, shorter windows (about a minute)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per run (default 10, --quick 5)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="warm-up seconds per run (default 3, --quick 2)")
    parser.add_argument("--targets", default="rotel,sidecar,pyfloor," + ",".join(SIDECAR_VARIANTS),
                        help="comma-separated: rotel, sidecar, pyfloor (a bare grpc.aio "
                             "server that only counts: the floor for any Python receiver), "
                             + ", ".join(SIDECAR_VARIANTS) + " (sidecar with cost on / off / "
                             "cost on and spanmetrics off; measured at max rate only)")
    parser.add_argument("--scenarios", default="10k,max",
                        help="comma-separated: 10k, max, or another steady rate such as 50k "
                             "(variants run at every scenario but 10k, unless --variants-at-10k)")
    parser.add_argument("--variants-at-10k", action="store_true",
                        help="run the sidecar variants at 10k too (skipped there by default)")
    parser.add_argument("--max-concurrency", type=int, default=64,
                        help="requests in flight at max rate")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin target / loadgen+sink to separate CPUs")
    parser.add_argument("--rotel-batch", type=int, default=100)
    parser.add_argument("--sidecar-batch", type=int, default=None,
                        help="exporters.sink.batch.max_items (default: sidecar's default)")
    parser.add_argument("--sidecar-cmd", default=None,
                        help="command that runs sidecar's CLI instead of .venv/bin/sidecar, "
                             "e.g. 'env PYTHONPATH=/tmp/tree .venv/bin/python -m sidecar'")
    parser.add_argument("--compression", choices=("gzip", "none"), default="gzip",
                        help="export compression to the sink, both targets (default gzip)")
    parser.add_argument("--sidecar-protocol", choices=("grpc", "http"), default="grpc",
                        help="sidecar's exporter protocol to the sink (rotel: always grpc)")
    parser.add_argument("--sidecar-processors", choices=("default", "none"), default="default",
                        help="default: the processors an empty config runs (redaction, "
                             "spanmetrics); "
                             "none: every processor off")
    parser.add_argument("--queue", choices=("durable", "memory"), default="durable",
                        help="sidecar exporter queue type (default durable, as the daemon)")
    parser.add_argument("--fsync", choices=("never", "interval", "always"), default="interval",
                        help="sidecar storage.fsync for the durable queue (default interval)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy the sidecar during each measured window, stacks to DIR "
                             "(needs py-spy in the venv)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--workload", choices=("agent", "secrets", "large"), default="agent",
                        help="loadgen's spans: agent (default); secrets: 10 %% carry a token; "
                             "large: 20 attributes x 5 KB per span, 20 spans a request")
    args = parser.parse_args(argv)

    # SIGTERM (e.g. from run.py's time cap) unwinds through every `finally`, so the
    # target, loadgen and sink processes are always stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    repeats = args.repeats or (1 if args.quick else 3)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    opts = Options(
        warmup=args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0),
        duration=args.duration if args.duration is not None else (5.0 if args.quick else 10.0),
        drain_timeout=15.0, pin=pin, rotel_batch=args.rotel_batch,
        sidecar_batch=args.sidecar_batch, quick=args.quick,
        sidecar_cmd=shlex.split(args.sidecar_cmd) if args.sidecar_cmd else None,
        compression=args.compression, sidecar_protocol=args.sidecar_protocol,
        sidecar_processors=args.sidecar_processors, profile_dir=args.profile,
        sidecar_queue=args.queue, sidecar_fsync=args.fsync, workload=args.workload)
    all_scenarios = {"10k": Scenario("10k", 10_000, 8),
                     "max": Scenario("max", 0, args.max_concurrency)}
    for name in args.scenarios.split(","):  # another steady rate: "50k"
        steady = re.fullmatch(r"([1-9][0-9]{0,2})k", name)
        if steady and name not in all_scenarios:
            rate = int(steady.group(1)) * 1000
            all_scenarios[name] = Scenario(name, rate, 8 if rate <= 20_000 else 32)
    scenarios = [all_scenarios[s] for s in args.scenarios.split(",") if s in all_scenarios]
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets
               if t not in ("rotel", "sidecar", "pyfloor", *SIDECAR_VARIANTS)] + [
        s for s in args.scenarios.split(",") if s and s not in all_scenarios]
    if unknown:
        parser.error(f"unknown target or scenario: {', '.join(unknown)}")

    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(), "cpus": os.cpu_count(), "pinned": pin,
        "repeats": repeats, "warmup_s": opts.warmup, "duration_s": opts.duration,
        "rotel_batch": opts.rotel_batch, "sidecar_batch": opts.sidecar_batch,
        "python": platform.python_version(), "machine": platform.machine(),
        "max_concurrency": args.max_concurrency, "compression": args.compression,
        "sidecar_protocol": args.sidecar_protocol,
        "sidecar_processors": args.sidecar_processors,
        "sidecar_queue": args.queue, "sidecar_fsync": args.fsync,
        "workload": args.workload,
    }
    if "rotel" in targets:
        try:
            meta["rotel_version"] = version_of([str(rotel_binary()), "--version"])
        except BenchError as exc:
            meta["rotel_version"] = str(exc)

    log = Path(tempfile.mkdtemp(prefix="bench-sink-")) / "sink.log"
    sink = Child("sink", [PY, str(HERE / "sink.py"), "--port", "0", "--uvloop"]
                 + (["--cpu", "1"] if pin else [])
                 + (["--http-port", "0"] if args.sidecar_protocol == "http" else []),
                 cpus=None, stdout_lines=True, log=log)
    runs: list[dict[str, Any]] = []
    try:
        ports = sink.next_json(30)
        opts.extra["sink_port"], opts.extra["sink_http_port"] = ports["port"], ports["http_port"]
        for rep in range(repeats):
            for scenario in scenarios:
                for target in targets:
                    if (target in SIDECAR_VARIANTS and scenario.name == "10k"
                            and not args.variants_at_10k):
                        continue
                    print(f"[{rep + 1}/{repeats}] {target:8} {scenario.name:4} ...",
                          end=" ", flush=True, file=sys.stderr)
                    result = measure(target, scenario, sink, opts)
                    result["repeat"] = rep
                    runs.append(result)
                    if result["ok"]:
                        print(f"{result['spans_per_s']:,.0f} spans/s "
                              f"{result['cpu_us_per_span']:.1f} µs/span "
                              f"{result['cpu_pct_core']:.0f}% CPU "
                              f"{result['peak_rss_mib']:.0f} MiB "
                              f"(other load {result['background_cpu_pct']:.0f}%)"
                              + (f" errors: {result['errors']}" if result["errors"] else ""),
                              file=sys.stderr)
                    else:
                        print("FAILED: " + result["error"], file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            sink.send("quit")
        sink.stop(grace=3)
        shutil.rmtree(log.parent, ignore_errors=True)

    sizes = [r["bytes_per_span"] for r in runs if r.get("bytes_per_span")]
    meta["bytes_per_span"] = sizes[0] if sizes else 0
    summary = summarize(runs)
    print()
    table = print_report(summary, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(
        {"meta": meta, "summary": summary, "runs": runs, "table": table}, indent=2))
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"\nraw results: {shown}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
