"""Redaction on vs off through the whole daemon: CPU µs per span of the sidecar at maximum
rate, the default pipeline (redaction, cost, spanmetrics, durable queue) vs the same with only
redaction turned off, on the three workloads of the issue: agent spans without secrets,
10 % of spans carrying a secret, 20 attributes x 5 KB per span.

Each measurement is one `otlp_bench.py --scenarios max` run: redaction on is its `sidecar`
target with `--sidecar-processors default` (an empty processors config); redaction off is
a variant target whose config is `processors: {redact: {enabled: false}}`, so everything
else the default runs (spanmetrics, the durable queue) is the same on both sides. The runs
are interleaved (off, on, off, on, ... per workload, repeated) because the machine is
shared and its load drifts, and the table quotes medians and the on/off ratio.

    .venv/bin/python bench/redact_ab.py [--quick] [--repeats N] [--scenario max|50k]
        [--sidecar-cmd CMD]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "redact_ab.json"
# the issue's targets: extra CPU per span with redaction on, as a share of it off
TARGETS = {"agent": 0.10, "secrets": 0.30, "large": None}
LABELS = {"agent": "agent spans, no secrets", "secrets": "10 % of spans with a secret",
          "large": "20 attributes x 5 KB per span"}


# the default config minus redaction, run as an otlp_bench variant target (added to its
# table of variants by the runner below, so otlp_bench itself needs no option for it)
OFF_TARGET = "sidecar-noredact"
OFF_CONFIG = "processors: {redact: {enabled: false}}"
_RUNNER = ("import sys; sys.path.insert(0, sys.argv[1]); import otlp_bench; "
           "otlp_bench.SIDECAR_VARIANTS[sys.argv[2]] = sys.argv[3]; "
           "sys.exit(otlp_bench.main(sys.argv[4:]))")


def one_run(workload: str, processors: str, quick: bool, workdir: Path,
            sidecar_cmd: str | None = None, scenario: str = "max") -> float | None:
    out = workdir / f"{workload}-{processors}.json"
    target = "sidecar" if processors == "default" else OFF_TARGET
    cmd = [sys.executable, "-c", _RUNNER, str(HERE), OFF_TARGET, OFF_CONFIG,
           "--targets", target, "--scenarios", scenario, "--repeats", "1",
           "--workload", workload, "--sidecar-processors", "default", "--output", str(out)]
    if quick:
        cmd.append("--quick")
    if sidecar_cmd:
        cmd += ["--sidecar-cmd", sidecar_cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0 or not out.exists():
        print(f"  {workload}/{processors}: run failed (exit {proc.returncode})\n"
              + proc.stderr[-800:], file=sys.stderr)
        return None
    data: dict[str, Any] = json.loads(out.read_text())
    value = data["summary"].get(target, {}).get(scenario, {}).get("cpu_us_per_span")
    return float(value) if value is not None else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, short windows")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--workloads", default="agent,secrets,large")
    parser.add_argument("--scenario", default="max",
                        help="max, or a steady rate both sides keep up with (e.g. 50k): at max "
                             "rate the side without redaction also runs more spans/s, and a "
                             "fuller loop costs less per span")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--sidecar-cmd", default=None,
                        help="passed to otlp_bench.py (e.g. another tree's code, for an A/B)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    workloads = [w for w in args.workloads.split(",") if w in TARGETS]
    samples: dict[str, dict[str, list[float]]] = {
        w: {"off": [], "default": []} for w in workloads}
    failed = False
    with tempfile.TemporaryDirectory(prefix="redact-ab-") as tmp:
        for rep in range(repeats):
            for workload in workloads:
                for processors in ("off", "default"):
                    value = one_run(workload, processors, args.quick, Path(tmp),
                                    args.sidecar_cmd, args.scenario)
                    print(f"[{rep + 1}/{repeats}] {workload:8} redaction "
                          f"{'on ' if processors == 'default' else 'off'}: "
                          f"{'FAILED' if value is None else f'{value:.1f} µs/span'}",
                          file=sys.stderr, flush=True)
                    if value is None:
                        failed = True
                    else:
                        samples[workload][processors].append(value)
    rate = "max rate" if args.scenario == "max" else f"a steady {args.scenario} spans/s"
    lines = [f"Redaction on vs off (sidecar CPU µs per span at {rate}, default pipeline "
             f"with and without redaction, median of {repeats} interleaved run(s) each)", "",
             f"{'workload':32} {'off':>8} {'on':>8} {'extra':>7} {'target':>7}"]
    report: dict[str, Any] = {}
    for workload in workloads:
        off = samples[workload]["off"]
        on = samples[workload]["default"]
        if not off or not on:
            lines.append(f"{LABELS[workload]:32} FAILED")
            continue
        m_off, m_on = statistics.median(off), statistics.median(on)
        extra = m_on / m_off - 1
        target = TARGETS[workload]
        verdict = "" if target is None else (
            f"<{target:.0%} " + ("PASS" if extra < target else "FAIL"))
        lines.append(f"{LABELS[workload]:32} {m_off:8.1f} {m_on:8.1f} {extra:+7.0%} "
                     f"{verdict:>7}")
        report[workload] = {"off": off, "on": on, "median_off": m_off, "median_on": m_on,
                            "extra": extra, "target": target}
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"runs": report, "table": lines}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
