"""Daemon lifecycle with the real binary: drain on SIGTERM, clear startup errors, validate."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import grpc
import orjson

from sidecar.model import Signal
from sidecar.sample import agent_runs
from sidecar.testing import OtlpSink
from tests.conftest import free_port
from tests.helpers.daemon import SIDECAR, DaemonProcess

REPO = Path(__file__).resolve().parents[2]
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


async def send_runs(endpoint: str, runs: int, seed: int = 1) -> int:
    """Send agent runs over OTLP/gRPC; returns spans acknowledged."""
    acknowledged = 0
    async with grpc.aio.insecure_channel(endpoint) as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        for run in agent_runs(runs, seed=seed):
            await export(run.traces.SerializeToString(), timeout=10)
            acknowledged += run.spans
    return acknowledged


async def test_sigterm_delivers_everything_accepted(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.stall()  # the destination is down while clients send
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
                         "retry": {"initial_interval": "50ms", "max_interval": "200ms"}}})
        await daemon.start()
        acknowledged = await send_runs(daemon.grpc_endpoint, 40)
        assert daemon.proc is not None
        daemon.terminate()  # SIGTERM while everything is still queued
        await asyncio.sleep(0.3)
        assert daemon.proc.poll() is None, "daemon must keep draining, not exit at once"
        sink.resume()
        code, _, err = await daemon.stop(timeout=30)
        assert code == 0, err
        assert sink.items(Signal.TRACES) == acknowledged


async def test_port_in_use_is_one_clear_line(short_tmp: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                               "path": str(short_tmp / "x")}})
        daemon.grpc_port = port
        try:
            await daemon.start()
            raise AssertionError("daemon started on a busy port")
        except RuntimeError as exc:
            message = str(exc)
        assert "receivers.otlp.grpc.endpoint" in message
        assert f"127.0.0.1:{port}" in message
        assert "Traceback" not in message


def test_unwritable_storage_dir_names_the_setting(short_tmp: Path) -> None:
    blocker = short_tmp / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [SIDECAR, "run", "--set", f"storage.dir={blocker}/data",
         "--set", f"receivers.otlp.grpc.endpoint=127.0.0.1:{free_port()}",
         "--set", f"receivers.otlp.http.endpoint=127.0.0.1:{free_port()}",
         "--set", f"admin.endpoint=127.0.0.1:{free_port()}",
         "--set", f"cache.unix={short_tmp}/c.sock",
         "--set", f"exporters.local.path={short_tmp}/export", "--set", "exporters.local.type=file"],
        capture_output=True, text=True, timeout=30, cwd=short_tmp,
    )
    assert result.returncode != 0
    assert "storage.dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_every_error_with_file_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "exporters:\n"
        "  dd: {type: nosuchvendor}\n"
        "  up: {type: otlp, endpoint: 'http://127.0.0.1:4317', protocol: carrier-pigeon}\n"
        "pipelines: {traces: [up, missing]}\n"
        "admin: {endpoint: 9464}\n"
    )
    result = subprocess.run([SIDECAR, "validate", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert any(f"{path}: exporters.dd.type" in line and "nosuchvendor" in line for line in lines)
    assert any(f"{path}: exporters.up.protocol" in line for line in lines)
    assert any(f"{path}: pipelines.traces" in line and "missing" in line for line in lines)
    assert any(f"{path}: admin.endpoint" in line for line in lines)


def test_shipped_configs_validate() -> None:
    # the vendor examples take their keys from the environment
    env = {**os.environ, "HONEYCOMB_API_KEY": "hcaik_example", "DD_API_KEY": "example"}
    for path in sorted((REPO / "config").glob("*.yaml")):
        result = subprocess.run([SIDECAR, "validate", "--config", str(path)],
                                capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"


async def test_send_test_reaches_the_file_exporter(short_tmp: Path) -> None:
    export_dir = short_tmp / "export"
    daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                           "path": str(export_dir)}})
    await daemon.start()
    try:
        for protocol, endpoint in (("http", daemon.http_endpoint),
                                   ("grpc", daemon.grpc_endpoint)):
            result = await asyncio.to_thread(
                subprocess.run,
                [SIDECAR, "send-test", "--protocol", protocol, "--endpoint", endpoint],
                capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
            assert "sent 18 spans and 6 log records" in result.stdout
    finally:
        code, out, err = await daemon.stop()
    assert code == 0, err
    assert str(export_dir) in out  # the banner says where data goes
    spans = 0
    for line in (export_dir / "traces.jsonl").read_text().splitlines():
        for rs in orjson.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                spans += len(ss["spans"])
    assert spans == 2 * 18
