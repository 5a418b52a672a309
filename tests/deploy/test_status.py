"""`sidecar status` against a real daemon (subprocess): plain, with admin.auth, over TLS."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
import yaml

from tests.conftest import free_port
from tests.helpers.daemon import DaemonProcess

SIDECAR = str(Path(sys.executable).with_name("sidecar"))
TOKEN = "status-test-token-0123456789"


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SIDECAR_ADMIN_TOKEN"}
    return await asyncio.to_thread(
        subprocess.run, [SIDECAR, *args], capture_output=True, text=True, timeout=60,
        check=False, env={**base, **(env or {})})


async def redis_cli(sock: Path, *args: str) -> None:
    await asyncio.to_thread(subprocess.run, ["redis-cli", "-s", str(sock), *args],
                            capture_output=True, timeout=10, check=True)


async def test_status_summarises_a_running_daemon(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp, exporters={
        "local": {"type": "file", "path": str(short_tmp / "export")}},
        extra={"processors": {"cost": {"enabled": True}}})
    await daemon.start()
    try:
        sent = await cli("send-test", "--endpoint", daemon.http_endpoint,
                         "--admin", daemon.admin_url)
        assert sent.returncode == 0, sent.stderr
        spans, records = map(int, re.search(r"sent (\d+) spans and (\d+) log records",
                                            sent.stdout).groups())  # type: ignore[union-attr]
        priced = float(re.search(r"priced their model calls at \$([\d.]+)",
                                 sent.stdout).group(1))  # type: ignore[union-attr]
        sock = short_tmp / "cache.sock"
        await redis_cli(sock, "SET", "embeddings:a", "vector")
        await redis_cli(sock, "GET", "embeddings:a")
        await redis_cli(sock, "GET", "embeddings:missing")
        await redis_cli(sock, "GET", "sentiment:missing")
        # the file exporter has written them (the queue has drained) before we look
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if await daemon.metric("sidecar_exporter_sent_items_total") >= spans + records:
                break
            await asyncio.sleep(0.1)

        human = await cli("status", "--admin", daemon.admin_url)
        assert human.returncode == 0, human.stderr
        lines = human.stdout.splitlines()
        assert lines[0] == f"sidecar 0.1.0 at {daemon.admin_url}: ready"
        traces = next(line for line in lines if line.strip().startswith("otlp/http traces"))
        assert re.search(rf"accepted\s+{spans}\s+refused\s+0$", traces), traces
        local = next(line for line in lines if line.strip().startswith("local "))
        assert f"sent {spans + records}, failed 0" in local
        assert " ok " in local
        assert "cache: hit ratio 33.3% (1 hits, 2 misses)" in human.stdout
        assert re.search(r"embeddings\s+50\.0% of 2 lookups", human.stdout)
        assert "gpt-4o" in human.stdout

        machine = await cli("status", "--admin", daemon.admin_url, "--json")
        assert machine.returncode == 0
        found = json.loads(machine.stdout)
        assert found["ready"] is True
        assert found["receivers"]["otlp/http traces"]["accepted"] == spans
        assert found["receivers"]["otlp/http logs"]["accepted"] == records
        assert found["exporters"]["local"]["sent"] == spans + records
        assert found["exporters"]["local"]["queue_capacity_bytes"] > 0
        assert (found["cache_hits"], found["cache_misses"]) == (1, 2)
        assert abs(sum(found["spend_usd_by_model"].values()) - priced) < 1e-5
    finally:
        await daemon.stop()


async def test_status_of_no_daemon_fails() -> None:
    result = await cli("status", "--admin", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the admin server at")
    assert result.stdout == ""


async def test_status_with_admin_auth(short_tmp: Path) -> None:
    port = free_port()
    daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                           "path": str(short_tmp / "x")}},
                           admin_port=port,
                           extra={"admin": {"endpoint": f"127.0.0.1:{port}",
                                            "auth": {"bearer_tokens": [TOKEN]}}})
    await daemon.start()
    try:
        refused = await cli("status", "--admin", daemon.admin_url)
        assert refused.returncode == 1
        assert "401" in refused.stderr
        assert "--token" in refused.stderr
        wrong = await cli("status", "--admin", daemon.admin_url, "--token", "not-the-token")
        assert wrong.returncode == 1
        assert "401" in wrong.stderr
        by_flag = await cli("status", "--admin", daemon.admin_url, "--token", TOKEN)
        assert by_flag.returncode == 0, by_flag.stderr
        assert ": ready" in by_flag.stdout.splitlines()[0]
        by_env = await cli("status", "--admin", daemon.admin_url,
                           env={"SIDECAR_ADMIN_TOKEN": TOKEN})
        assert by_env.returncode == 0, by_env.stderr
    finally:
        await daemon.stop()


@pytest.mark.timeout(300)
async def test_status_over_tls(short_tmp: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    port = free_port()
    daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                           "path": str(short_tmp / "x")}},
                           admin_port=port,
                           extra={"admin": {"endpoint": f"127.0.0.1:{port}", "tls": {
                               "cert_file": str(cert), "key_file": str(key)}}})
    config = short_tmp / "sidecar.yaml"
    config.write_text(yaml.safe_dump(daemon.config()))
    # DaemonProcess.start polls plain http; this one is started by hand
    proc = subprocess.Popen(  # noqa: ASYNC220 - a server, stopped in finally
        [SIDECAR, "run", "--config", str(config)], cwd=short_tmp,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    admin = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        result = await cli("status", "--admin", admin, "--cacert", str(ca_file))
        while result.returncode != 0 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.2)
            result = await cli("status", "--admin", admin, "--cacert", str(ca_file))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"sidecar 0.1.0 at {admin}: ready"
        untrusted = await cli("status", "--admin", admin)
        assert untrusted.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        insecure = await cli("status", "--admin", admin, "--insecure")
        assert insecure.returncode == 0, insecure.stderr
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.communicate, timeout=30)


async def test_status_of_a_draining_daemon_exits_1(short_tmp: Path) -> None:
    """SIGTERM with data queued for a destination that is down: the daemon drains (up to
    service.shutdown_timeout) and /readyz says so; status reports it and exits 1, showing the
    exporter failing with its queue."""
    daemon = DaemonProcess(short_tmp, exporters={"down": {
        "type": "otlp", "protocol": "grpc", "endpoint": f"http://127.0.0.1:{free_port()}",
        # a durable queue keeps what is left on disk and exits at once; a memory queue
        # delivers until shutdown_timeout, which is the draining state shown here
        "queue": {"type": "memory"}}})
    await daemon.start()
    try:
        sent = await cli("send-test", "--endpoint", daemon.http_endpoint,
                         "--admin", daemon.admin_url)
        assert sent.returncode == 0, sent.stderr
        ready = await cli("status", "--admin", daemon.admin_url, "--json")
        assert ready.returncode == 0
        daemon.terminate()
        result = ready
        deadline = time.monotonic() + 8  # shutdown_timeout is 10 s (tests/helpers/daemon.py)
        while result.returncode == 0 and time.monotonic() < deadline:
            result = await cli("status", "--admin", daemon.admin_url)
        assert result.returncode == 1, result.stdout
        assert result.stdout.splitlines()[0].endswith(": starting or stopping"), result.stdout
        down = next(line for line in result.stdout.splitlines()
                    if line.strip().startswith("down "))
        assert "sent 0," in down
    finally:
        await daemon.stop()


def test_the_durable_queue_age_is_shown() -> None:
    from sidecar.status import Status, _summarise, render

    status = Status(admin="http://a", ready=True, state="ready")
    _summarise(status, "\n".join([
        "# TYPE sidecar_exporter_queue_size_items gauge",
        'sidecar_exporter_queue_size_items{exporter="dd"} 12',
        "# TYPE sidecar_queue_oldest_item_age_seconds gauge",
        'sidecar_queue_oldest_item_age_seconds{exporter="dd"} 754.2',
        'sidecar_queue_oldest_item_age_seconds{exporter="local"} 0',
    ]) + "\n")
    lines = render(status).splitlines()
    assert any(line.strip().startswith("dd ") and "12 items" in line and "oldest 754s" in line
               for line in lines), lines
    assert not any("oldest" in line for line in lines if line.strip().startswith("local "))


def test_listeners_and_spend_today_are_shown_and_control_characters_are_not() -> None:
    from sidecar.status import Status, render

    status = Status(admin="http://a", ready=True, state="ready", listeners=[
        {"component": "otlp/grpc", "transport": "tcp", "address": "127.0.0.1:41234",
         "tls": True, "auth": False},
        {"component": "cache", "transport": "unix", "address": "/run/c.sock", "mode": "0660"},
    ], spend_today={"day": "2026-03-01", "total_usd": 1.5,
                    "by_model": {"gpt-4o": 1.25, "evil\x1b]0;owned\x07": 0.25}})
    lines = render(status).splitlines()
    assert "  otlp/grpc    tcp   127.0.0.1:41234  [tls on, auth off]" in lines
    assert "  cache        unix  /run/c.sock (mode 0660)" in lines
    assert "LLM spend today (2026-03-01 UTC): $1.5000" in lines
    assert any(line.split() == ["evil?]0;owned?", "$0.2500"] for line in lines), lines
    assert not any("\x1b" in line or "\x07" in line for line in lines)
