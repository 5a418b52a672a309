"""Node's pino, through the pino-socket transport configured as the README says, writes JSON
lines to the real daemon's logs socket; the daemon sends them on as OTLP log records to a
real OTLP/HTTP server and to the file exporter. Every line arrives once, mapped.

Needs `node` and the npm packages from tests/e2e/node (installed by `make node`, which
`make test` runs); missing either is a failure, not a skip."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from sidecar.model import Signal
from sidecar.testing import OtlpSink
from tests.helpers.daemon import SIDECAR, DaemonProcess

NODE_DIR = Path(__file__).resolve().parent / "node"
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
LINES = 2000


async def run_pino(way: str, sock: Path, count: int) -> tuple[int, dict[str, Any]]:
    """(node's pid, its last stdout line as JSON)."""
    node = shutil.which("node")
    assert node is not None, "node not found: install Node.js 20"
    assert (NODE_DIR / "node_modules" / "pino-socket").is_dir(), "run `make node` first"
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "logs_pino_socket.js"), way, str(sock), str(count), TRACE, SPAN,
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert out.strip(), f"no result from node: {err.decode()}"
    return process.pid, json.loads(out.decode().strip().splitlines()[-1])


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: MessageToDict(kv.value) for kv in kvs}


@pytest.mark.node
@pytest.mark.parametrize("way", ["stream", "pino-socket"])
async def test_pino_lines_reach_otlp_and_file_exporters_once_each(
        short_tmp: Path, way: str) -> None:
    async with OtlpSink() as sink:
        out = short_tmp / "out"
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint},
            "local": {"type": "file", "path": str(out)}})
        daemon.extra["receivers"] = {
            "otlp": {"grpc": {"endpoint": daemon.grpc_endpoint},
                     "http": {"endpoint": f"127.0.0.1:{daemon.http_port}"}},
            "logs": {"service_name": "agent-app"}}  # unix: ./run/logs.sock, the default
        await daemon.start()
        try:
            sock = short_tmp / "run" / "logs.sock"
            pid, result = await run_pino(way, sock, LINES)
            assert result == {"sent": LINES + 2}
            # a line that is not JSON, from a plain client
            with socket.socket(socket.AF_UNIX) as raw:
                raw.connect(str(sock))
                raw.sendall(b"Error: printed by the runtime\n")
            await sink.wait_for_items(Signal.LOGS, LINES + 3, timeout=30)
            assert await daemon.metric("sidecar_logs_lines_total", receiver="logs",
                                       transport="unix") == LINES + 3
            assert await daemon.metric("sidecar_logs_parse_errors_total",
                                       receiver="logs") == 1
        finally:
            code, stdout, stderr = await daemon.stop()
    assert code == 0, stderr
    assert "logs/unix  unix:./run/logs.sock  logs" in stdout

    by_seq: dict[int, Any] = {}
    plain = []
    for request in (r.message for r in sink.accepted if r.signal is Signal.LOGS):
        for resource_logs in request.resource_logs:
            resource = attrs(resource_logs.resource.attributes)
            for scope in resource_logs.scope_logs:
                for record in scope.log_records:
                    fields = attrs(record.attributes)
                    if "seq" not in fields:
                        plain.append(record)
                        continue
                    seq = int(fields["seq"]["intValue"])
                    assert seq not in by_seq, f"line {seq} arrived twice"
                    by_seq[seq] = (resource, record, fields)
    assert sorted(by_seq) == list(range(LINES + 2))
    resource, first, fields = by_seq[0]
    assert resource["service.name"] == {"stringValue": "agent-app"}
    assert resource["process.pid"] == {"intValue": str(pid)}
    assert resource["host.name"] == {"stringValue": socket.gethostname()}
    assert (first.severity_number, first.severity_text) == (9, "info")
    assert first.body.string_value == "planned step"
    assert first.trace_id.hex() == TRACE
    assert first.span_id.hex() == SPAN
    assert first.flags == 1
    assert first.time_unix_nano > 0
    assert first.time_unix_nano % 1_000_000 == 0  # pino's epoch milliseconds
    assert fields["agent"] == {"stringValue": "planner"}
    assert fields["run"] == {"kvlistValue": {"values": [
        {"key": "id", "value": {"stringValue": "run-1"}}]}}
    _, error, error_fields = by_seq[LINES]
    assert (error.severity_number, error.severity_text) == (17, "error")
    assert error_fields["exception.message"] == {"stringValue": "tool timed out"}
    assert error_fields["exception.type"] == {"stringValue": "Error"}
    assert "logs_pino_socket.js" in error_fields["exception.stacktrace"]["stringValue"]
    assert error_fields["err"] == {"kvlistValue": {"values": [
        {"key": "code", "value": {"stringValue": "ETIMEDOUT"}}]}}
    assert by_seq[LINES + 1][1].severity_number == 5
    (text,) = plain
    assert text.body.string_value == "Error: printed by the runtime"

    # the file exporter wrote the same records
    written = 0
    for line in (out / "logs.jsonl").read_text().splitlines():
        for resource_logs in json.loads(line)["resourceLogs"]:
            for scope in resource_logs["scopeLogs"]:
                written += len(scope["logRecords"])
    assert written == LINES + 3


@pytest.mark.node
async def test_node_stdout_through_sidecar_pipe(short_tmp: Path) -> None:
    """`node app.js | sidecar pipe`: pino's default stdout output reaches the daemon."""
    node = shutil.which("node")
    assert node is not None, "node not found: install Node.js 20"
    async with OtlpSink() as sink:
        daemon = DaemonProcess(short_tmp, exporters={
            "upstream": {"type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint}})
        await daemon.start()
        try:
            config = short_tmp / "sidecar.yaml"  # the daemon's: pipe finds the socket in it
            read, write = os.pipe()
            producer = await asyncio.create_subprocess_exec(
                node, str(NODE_DIR / "logs_pino_socket.js"), "stdout", "-", str(LINES),
                TRACE, SPAN, cwd=NODE_DIR, stdout=write, stderr=asyncio.subprocess.PIPE)
            pipe = await asyncio.create_subprocess_exec(
                SIDECAR, "pipe", "--config", str(config), cwd=short_tmp, stdin=read,
                stderr=asyncio.subprocess.PIPE)
            os.close(read)
            os.close(write)
            _, produced = await asyncio.wait_for(producer.communicate(), 60)
            _, piped = await asyncio.wait_for(pipe.communicate(), 60)
            assert producer.returncode == 0, produced.decode()
            assert json.loads(produced.decode().strip().splitlines()[-1]) == {
                "sent": LINES + 2}
            assert pipe.returncode == 0, piped.decode()
            assert f"sidecar pipe: {LINES + 2} lines to ./run/logs.sock" in piped.decode()
            await sink.wait_for_items(Signal.LOGS, LINES + 2, timeout=30)
        finally:
            code, _, stderr = await daemon.stop()
    assert code == 0, stderr
    seqs = sorted(int(attrs(r.attributes)["seq"]["intValue"]) for r in sink.log_records())
    assert seqs == list(range(LINES + 2))
    assert all(r.trace_id.hex() == TRACE for r in sink.log_records()
               if int(attrs(r.attributes)["seq"]["intValue"]) < LINES)


async def test_sidecar_pipe_without_a_daemon_says_so(short_tmp: Path) -> None:
    pipe = await asyncio.create_subprocess_exec(
        SIDECAR, "pipe", "--socket", str(short_tmp / "none.sock"), cwd=short_tmp,
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(pipe.communicate(b'{"msg":"x"}\n'), 30)
    assert pipe.returncode == 1
    assert "no daemon listening at" in err.decode()
    assert "start `sidecar run` first" in err.decode()
