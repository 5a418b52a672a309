"""Soak: the real daemon under mixed load for a long time while its exporter flaps.

    python bench/soak.py [--minutes 10] [--flap-every 120] [--flap-for 30] [--out bench/results]

Load (each paced, each bounded by the run's duration): OTLP/gRPC spans (bench/loadgen's
realistic agent spans, 100 per request; RESOURCE_EXHAUSTED is retried, so an answer of OK
is an acknowledgement), pino-style JSON log lines on the logs unix socket, and SET/GET on
the cache socket through redis-py. The exporter's destination (a counting OTLP/gRPC sink in
this process) goes down for `--flap-for` seconds every `--flap-every` seconds. Every second
the daemon's RSS, CPU, queue bytes and event-loop lag are written to a CSV, and a PNG plot
is drawn at the end (matplotlib). After the load stops and the sink is up, the run waits
(bounded) until everything acknowledged is delivered.

Exit status 1 when anything acknowledged was not delivered, or when RSS grew by more than
`--max-rss-growth` between the third minute (after the first outage and its drain: the
warm-up) and the last."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import psutil
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import EXPORT_METHOD, SPANS_PER_REQUEST, build_pool
from sink import LOGS_SERVICE, METRICS_SERVICE, TRACE_SERVICE, count_spans

ROOT = Path(__file__).resolve().parents[1]
SIDECAR = ROOT / ".venv" / "bin" / "sidecar"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Counts:
    spans_acked: int = 0
    spans_refused: int = 0
    lines_written: int = 0
    cache_ops: int = 0
    cache_errors: int = 0
    spans_delivered: int = 0
    logs_delivered: int = 0
    sink_up: bool = True
    errors: dict[str, int] = field(default_factory=dict)


class Sink:
    """OTLP/gRPC on a fixed port that can be taken down and brought back."""

    def __init__(self, port: int, counts: Counts) -> None:
        self.port = port
        self.counts = counts
        self._server: grpc.aio.Server | None = None

    async def _traces(self, request: bytes, context: Any) -> bytes:
        self.counts.spans_delivered += count_spans(request)
        return b""

    async def _logs(self, request: bytes, context: Any) -> bytes:
        message = ExportLogsServiceRequest.FromString(request)
        self.counts.logs_delivered += sum(len(sl.log_records) for rl in message.resource_logs
                                          for sl in rl.scope_logs)
        return b""

    async def _ignore(self, request: bytes, context: Any) -> bytes:
        return b""

    async def up(self) -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20),
                                          ("grpc.so_reuseport", 0)])
        handlers = [(TRACE_SERVICE, self._traces), (LOGS_SERVICE, self._logs),
                    (METRICS_SERVICE, self._ignore)]
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {
            "Export": grpc.unary_unary_rpc_method_handler(fn)}) for service, fn in handlers])
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        self.counts.sink_up = True

    async def down(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        self.counts.sink_up = False


async def send_spans(target: str, rate: float, until: float, counts: Counts) -> None:
    pool = build_pool(40)
    interval = SPANS_PER_REQUEST / rate
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(EXPORT_METHOD)
        index = 0
        next_at = time.monotonic()
        inflight: set[asyncio.Task[None]] = set()

        async def one(payload: bytes) -> None:
            while time.monotonic() < until + 60:  # a refused request is retried, bounded
                try:
                    await call(payload, timeout=10)
                    counts.spans_acked += SPANS_PER_REQUEST
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                        counts.spans_refused += SPANS_PER_REQUEST
                        await asyncio.sleep(0.1)
                        continue
                    name = exc.code().name
                    counts.errors[name] = counts.errors.get(name, 0) + 1
                    return

        while time.monotonic() < until:
            now = time.monotonic()
            if now < next_at:
                await asyncio.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            if len(inflight) < 64:
                task = asyncio.create_task(one(pool[index % len(pool)]))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                index += 1
        if inflight:
            await asyncio.wait(inflight, timeout=70)


async def send_lines(path: str, rate: float, until: float, counts: Counts) -> None:
    _, writer = await asyncio.open_unix_connection(path)
    per_tick = max(1, int(rate / 20))
    seq = 0
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            chunk = []
            for _ in range(per_tick):
                seq += 1
                chunk.append(json.dumps({
                    "level": 30, "time": int(time.time() * 1000), "pid": 7, "hostname": "soak",
                    "name": "agent", "agent": "planner", "seq": seq,
                    "msg": "model call finished", "model": "gpt-4o",
                    "usage": {"prompt_tokens": 120, "completion_tokens": 40}}))
            writer.write(("\n".join(chunk) + "\n").encode())
            await writer.drain()  # the receiver's backpressure pauses us here
            counts.lines_written += len(chunk)
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - started)))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def cache_ops(path: str, rate: float, until: float, counts: Counts) -> None:
    import redis.asyncio as redis

    client = redis.Redis(unix_socket_path=path)
    per_tick = max(1, int(rate / 20))
    n = 0
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            for _ in range(per_tick // 2):
                n += 1
                key = f"soak:{n % 5000}"
                try:
                    await client.set(key, b"v" * 256, ex=60)
                    await client.get(key)
                    counts.cache_ops += 2
                except redis.RedisError:
                    counts.cache_errors += 1
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - started)))
    finally:
        await client.aclose()


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url) as response:
        text = await response.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def flapper(sink: Sink, every: float, down_for: float, until: float) -> None:
    while True:
        wait = every - down_for
        if time.monotonic() + wait >= until:
            return
        await asyncio.sleep(wait)
        await sink.down()
        await asyncio.sleep(min(down_for, max(0.0, until - time.monotonic())))
        await sink.up()


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def minute(first: float, last: float) -> dict[str, float]:
        part = [r for r in rows if first <= r["t"] < last]
        if not part:
            return {}
        return {
            "rss_mib": round(sum(r["rss_mib"] for r in part) / len(part), 1),
            "cpu_pct": round(sum(r["cpu_pct"] for r in part) / len(part), 1),
            "loop_lag_ms_max": round(max(r["loop_lag_ms"] for r in part), 1),
            "queue_mib_max": round(max(r["queue_mib"] for r in part), 1),
        }

    end = rows[-1]["t"] if rows else 0.0
    return {"first_minute": minute(0, 60), "second_minute": minute(60, 120),
            "third_minute": minute(120, 180), "last_minute": minute(end - 60, end + 1)}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] / 60 for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    for ax, key, label in zip(axes, ("rss_mib", "cpu_pct", "queue_mib", "loop_lag_ms"),
                              ("RSS (MiB)", "CPU (% of a core)", "queue (MiB)",
                               "loop lag (ms, worst of 15 s)"), strict=True):
        ax.plot(t, [r[key] for r in rows], linewidth=1)
        ax.set_ylabel(label)
        for r in rows:
            if not r["sink_up"]:
                ax.axvspan(r["t"] / 60 - 1 / 120, r["t"] / 60 + 1 / 120, color="red",
                           alpha=0.08, linewidth=0)
    axes[-1].set_xlabel("minutes (red: destination down)")
    fig.suptitle("sidecar soak: spans + log lines + cache ops, exporter flapping")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# Setup and the once-a-second CSV row block the loop for microseconds in this benchmark
# driver (not in the daemon under test): ASYNC2xx is silenced for them on purpose.
async def soak(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="sc-soak-", dir="/tmp"))
    counts = Counts()
    sink = Sink(free_port(), counts)
    await sink.up()
    grpc_port, admin_port = free_port(), free_port()
    config = {
        "storage": {"dir": str(workdir / "data")},
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}, "http": None},
                      "logs": {"unix": str(workdir / "logs.sock")}},
        "exporters": {"upstream": {
            "type": "otlp", "protocol": "grpc", "endpoint": f"http://127.0.0.1:{sink.port}",
            "retry": {"initial_interval": "200ms", "max_interval": "2s", "max_elapsed": 0},
            "queue": {"max_bytes": args.queue_bytes}}},
        "cache": {"unix": str(workdir / "cache.sock")},
        "admin": {"endpoint": f"127.0.0.1:{admin_port}"},
        "service": {"log_format": "text", "shutdown_timeout": "30s"},
    }
    (workdir / "sidecar.yaml").write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen(  # noqa: ASYNC220
        [str(SIDECAR), "run", "--config", str(workdir / "sidecar.yaml")], cwd=workdir,
        stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "wb"))  # noqa: SIM115, ASYNC230
    admin = f"http://127.0.0.1:{admin_port}"
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(400):  # bounded: 20 s to become ready
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{admin}/readyz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.05)
        else:
            daemon.kill()
            print("daemon did not become ready", file=sys.stderr)
            return 2
        process = psutil.Process(daemon.pid)
        begin = time.monotonic()
        until = begin + args.minutes * 60
        loads = [
            asyncio.create_task(send_spans(f"127.0.0.1:{grpc_port}", args.spans, until, counts)),
            asyncio.create_task(send_lines(str(workdir / "logs.sock"), args.lines, until,
                                           counts)),
            asyncio.create_task(cache_ops(str(workdir / "cache.sock"), args.cache_ops, until,
                                          counts)),
            asyncio.create_task(flapper(sink, args.flap_every, args.flap_for, until)),
        ]
        cpu_before = sum(process.cpu_times()[:2])
        wall_before = time.monotonic()
        with open(out / f"soak-{stamp}.csv", "w", newline="") as handle:  # noqa: ASYNC230
            writer: csv.DictWriter[str] | None = None
            while time.monotonic() < until:
                await asyncio.sleep(1.0)
                cpu, wall = sum(process.cpu_times()[:2]), time.monotonic()
                metrics = await scrape(session, f"{admin}/metrics")
                row = {
                    "t": round(wall - begin, 1),
                    "rss_mib": round(process.memory_info().rss / 2**20, 1),
                    "cpu_pct": round(100 * (cpu - cpu_before) / (wall - wall_before), 1),
                    "queue_mib": round(metrics.get("sidecar_exporter_queue_size_bytes", 0.0)
                                       / 2**20, 2),
                    "loop_lag_ms": round(1000 * metrics.get("sidecar_event_loop_lag_seconds",
                                                            0.0), 1),
                    "spans_acked": counts.spans_acked, "spans_delivered": counts.spans_delivered,
                    "lines_written": counts.lines_written,
                    "logs_delivered": counts.logs_delivered, "cache_ops": counts.cache_ops,
                    "sink_up": counts.sink_up,
                }
                cpu_before, wall_before = cpu, wall
                rows.append(row)
                if writer is None:
                    writer = csv.DictWriter(handle, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
                handle.flush()
        await asyncio.gather(*loads)
        if not counts.sink_up:
            await sink.up()
        for _ in range(1200):  # bounded: 2 minutes for the backlog to drain
            if (counts.spans_delivered >= counts.spans_acked
                    and counts.logs_delivered >= counts.lines_written):
                break
            await asyncio.sleep(0.1)
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(timeout=60)
    await sink.down()
    summary = {
        **summarise(rows),
        "spans_acked": counts.spans_acked, "spans_delivered": counts.spans_delivered,
        "spans_refused_then_retried": counts.spans_refused,
        "lines_written": counts.lines_written, "logs_delivered": counts.logs_delivered,
        "cache_ops": counts.cache_ops, "cache_errors": counts.cache_errors,
        "client_errors": counts.errors, "daemon_exit": code,
        "csv": str(out / f"soak-{stamp}.csv"), "plot": str(out / f"soak-{stamp}.png"),
    }
    lost = (counts.spans_delivered < counts.spans_acked
            or counts.logs_delivered < counts.lines_written)
    # warm-up is the first minutes including one whole outage and its drain (the first
    # backlog read back sets the allocator's high-water mark): compare the third minute
    # with the last (the second for runs shorter than four minutes)
    reference = summary["third_minute"] if args.minutes >= 4 else summary["second_minute"]
    last = summary["last_minute"]
    growth = (last["rss_mib"] / reference["rss_mib"] - 1) if reference and last else 0.0
    summary["rss_growth_after_warmup"] = round(growth, 3)
    try:
        plot(rows, out / f"soak-{stamp}.png")
    except ImportError:
        summary["plot"] = "matplotlib is not installed (make soak installs it)"
    (out / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 1 if lost or growth > args.max_rss_growth or code != 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--spans", type=float, default=5000.0, help="spans/s")
    parser.add_argument("--lines", type=float, default=2000.0, help="log lines/s")
    parser.add_argument("--cache-ops", type=float, default=2000.0, help="cache ops/s")
    parser.add_argument("--flap-every", type=float, default=120.0, help="seconds")
    parser.add_argument("--flap-for", type=float, default=30.0, help="seconds down")
    parser.add_argument("--queue-bytes", default="512MiB")
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if os.environ.get("SIDECAR_SOAK_UVLOOP", "1") == "1":
        import uvloop

        return uvloop.run(soak(args))
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
