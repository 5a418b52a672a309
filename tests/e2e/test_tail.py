"""`sidecar tail` in a real terminal (tmux, installed by `make sysdeps`) against the real
daemon: logs with level colours after redaction, an agent run's spans as a tree with
durations and cost. And the feed's contract: a reader that stops reading is dropped from,
counted, while the pipeline delivers everything to the exporter."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import orjson

from sidecar.model import Signal
from sidecar.sample import agent_run
from sidecar.testing import OtlpSink
from tests.helpers.daemon import SIDECAR, DaemonProcess

SECRET = "sk-" + "A1b2C3d4" * 5  # a key shape the default redaction rules mask


class Tmux:
    """A tmux server of our own (its socket in the test's directory), one window."""

    def __init__(self, workdir: Path) -> None:
        tmux = shutil.which("tmux")
        assert tmux is not None, "tmux not found: `make sysdeps` installs it"
        self.base = [tmux, "-S", str(workdir / "tmux.sock")]

    def start(self, command: list[str]) -> None:
        subprocess.run([*self.base, "new-session", "-d", "-x", "160", "-y", "60",
                        "-e", f"PATH={os.environ['PATH']}", " ".join(command)], check=True)

    def screen(self, escapes: bool = False) -> str:
        args = [*self.base, "capture-pane", "-p", "-J"] + (["-e"] if escapes else [])
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout

    async def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = await asyncio.to_thread(self.screen)
            if text in screen:
                return screen
            assert time.monotonic() < deadline, f"{text!r} not on screen:\n{screen}"
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], check=False, capture_output=True)


def daemon_with_sink(workdir: Path, sink: OtlpSink) -> DaemonProcess:
    daemon = DaemonProcess(workdir, exporters={
        "upstream": {"type": "otlp", "protocol": "http", "endpoint": sink.http_endpoint,
                     "batch": {"max_delay": "10ms"}}})
    daemon.extra["receivers"] = {
        "otlp": {"grpc": {"endpoint": daemon.grpc_endpoint},
                 "http": {"endpoint": f"127.0.0.1:{daemon.http_port}"}},
        "logs": {"service_name": "agent-app", "batch": {"max_delay": "10ms"}}}
    daemon.extra["processors"] = {"cost": {"enabled": True}}
    return daemon


def send_logs(path: Path, lines: list[dict[str, object]]) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(b"".join(orjson.dumps(line) + b"\n" for line in lines))


async def test_tail_in_a_terminal_shows_logs_and_span_trees(short_tmp: Path) -> None:
    tmux = Tmux(short_tmp)
    async with OtlpSink() as sink:
        daemon = daemon_with_sink(short_tmp, sink)
        await daemon.start()
        try:
            tmux.start([SIDECAR, "tail", "--admin", f"127.0.0.1:{daemon.admin_port}",
                        "--color", "always"])
            await tmux.wait_for("tailing logs, traces")
            await asyncio.to_thread(send_logs, short_tmp / "run" / "logs.sock", [
                {"level": 30, "time": 1_700_000_000_000, "msg": "planned step",
                 "agent": "planner", "trace_id": "0af7651916cd43dd8448eb211c80319c"},
                {"level": 50, "time": 1_700_000_001_000, "msg": f"auth failed {SECRET}"}])
            run = agent_run(rng=random.Random(3))
            async with aiohttp.ClientSession() as session, session.post(
                    f"{daemon.http_endpoint}/v1/traces",
                    data=run.traces.SerializeToString(),
                    headers={"Content-Type": "application/x-protobuf"}) as response:
                assert response.status == 200
            screen = await tmux.wait_for("└─ ")
            await sink.wait_for_items(Signal.LOGS, 2)
            colored = await asyncio.to_thread(tmux.screen, True)
        finally:
            tmux.kill()
            code, _, stderr = await daemon.stop()
    assert code == 0, stderr
    lines = screen.splitlines()
    info = next(line for line in lines if "planned step" in line)
    assert "INFO" in info
    assert "agent-app" in info
    assert "agent=planner" in info
    assert "trace=0af76519" in info
    error = next(line for line in lines if "auth failed" in line)
    assert "ERROR" in error
    assert SECRET not in screen  # what is shown is what is exported: redacted
    # the trace: a header, the root, its model calls as children with durations and cost
    root_span = next(s for s in sink.spans() if not s.parent_span_id)
    header = next(line for line in lines if f"trace {root_span.trace_id.hex()[:16]}" in line)
    assert f"{len(sink.spans())} spans" in header
    assert "$" in header
    tree = [line for line in lines if "─ " in line]
    assert tree[0].strip().startswith("└─ " + root_span.name)
    assert len(tree) == len(sink.spans())
    assert all(" ms" in line or " s" in line for line in tree)
    assert any("$0.0" in line and "in " in line and "out " in line for line in tree[1:])
    # level colours: tmux re-emits the SGR codes it was given
    error_row = next(line for line in colored.splitlines() if "auth failed" in line)
    assert "\x1b[31mERROR" in error_row
    info_row = next(line for line in colored.splitlines() if "planned step" in line)
    assert "\x1b[32mINFO" in info_row


async def test_a_reader_that_stops_reading_is_dropped_from_never_waited_for(
        short_tmp: Path) -> None:
    total = 20_000
    async with OtlpSink() as sink:
        daemon = daemon_with_sink(short_tmp, sink)
        await daemon.start()
        try:
            # a raw socket that sends the request, then never reads a byte
            reader = socket.create_connection(("127.0.0.1", daemon.admin_port))
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.sendall(b"GET /tail?signal=logs HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 10
            while await daemon.metric("sidecar_tail_subscribers") != 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            payload = [{"level": 30, "msg": "x" * 200, "seq": i} for i in range(total)]
            await asyncio.to_thread(send_logs, short_tmp / "run" / "logs.sock", payload)
            await sink.wait_for_items(Signal.LOGS, total, timeout=60)
            dropped = await daemon.metric("sidecar_tail_items_dropped_total")
            sent = await daemon.metric("sidecar_tail_items_sent_total")
            reader.close()
        finally:
            code, _, stderr = await daemon.stop()
    assert code == 0, stderr
    assert sink.items(Signal.LOGS) == total
    assert dropped > 0
    assert sent + dropped <= total
    assert sent < total


async def test_tail_says_when_no_daemon_is_there(short_tmp: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        SIDECAR, "tail", "--admin", "127.0.0.1:9", cwd=short_tmp,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "no daemon admin server at http://127.0.0.1:9" in err.decode()


async def test_tail_refuses_a_filter_it_cannot_read(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        daemon = daemon_with_sink(short_tmp, sink)
        await daemon.start()
        try:
            process = await asyncio.create_subprocess_exec(
                SIDECAR, "tail", "--admin", f"127.0.0.1:{daemon.admin_port}",
                "--filter", "level>=loud", cwd=short_tmp,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(process.communicate(), 30)
        finally:
            await daemon.stop()
    assert process.returncode == 1
    assert "'>=' compares levels" in err.decode()


async def test_tail_sends_its_token_and_renders_a_feed_that_ends(short_tmp: Path) -> None:
    """Against an admin server that wants a bearer token (a stand-in: the daemon's own
    admin auth lives elsewhere); the feed ends, tail says so and exits 0."""
    from aiohttp import web

    seen: list[str | None] = []

    async def feed(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.json_response({"error": "token"}, status=401)
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"subscribed": ["logs"]}\n' + orjson.dumps(
            {"signal": "logs", "time": 0, "severity": "warn", "severity_number": 13,
             "body": "disk almost full", "service": "svc", "attributes": {}}) + b"\n")
        return response

    app = web.Application()
    app.router.add_get("/tail", feed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        refused = await asyncio.create_subprocess_exec(
            SIDECAR, "tail", "--admin", f"127.0.0.1:{port}", cwd=short_tmp,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(refused.communicate(), 30)
        process = await asyncio.create_subprocess_exec(
            SIDECAR, "tail", "--admin", f"127.0.0.1:{port}", "--signal", "logs",
            cwd=short_tmp, env={**os.environ, "SIDECAR_ADMIN_TOKEN": "s3cret"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await runner.cleanup()
    assert refused.returncode == 1
    assert "401" in err.decode()
    assert process.returncode == 0
    lines = out.decode().splitlines()
    assert lines[0] == "tailing logs (Ctrl-C to stop)"  # no colours: not a terminal
    assert lines[1].endswith("WARN  svc disk almost full")
    assert lines[-1] == "(the daemon closed the feed)"
    assert seen == [None, "Bearer s3cret"]
