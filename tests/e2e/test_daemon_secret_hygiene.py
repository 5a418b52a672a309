"""Keys planted in the config never appear in anything the real daemon writes: its logs
(debug level, exporters failing against a dead endpoint), the banner, /metrics, `validate`
output and startup errors."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiohttp
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import free_port
from tests.helpers.daemon import SIDECAR, DaemonProcess

DD_KEY = "dd0123456789abcdef0123456789abcd"
HDR = "hdr-secret-5f4e3d2c1b"
PASS = "url-pass-9a8b7c"
ADMIN = "admin-token-1a2b3c4d"


def exporters(dead: int) -> dict[str, object]:
    return {
        "dd": {"type": "datadog", "api_key": DD_KEY, "endpoint": f"http://127.0.0.1:{dead}",
               "retry": {"initial_interval": "50ms"}},
        "up": {"type": "otlp", "protocol": "http",
               "endpoint": f"http://agent:{PASS}@127.0.0.1:{dead}",
               "retry": {"initial_interval": "50ms"}},
        "hdr": {"type": "otlp", "protocol": "http", "endpoint": f"http://127.0.0.1:{dead}",
                "headers": {"authorization": f"Bearer {HDR}"},
                "retry": {"initial_interval": "50ms"}},
    }


NAMES = ("dd", "up", "hdr")


def failures(metrics: str, exporter: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("sidecar_exporter_send_failed_items_total{")
               and f'exporter="{exporter}"' in line)


def leaks(text: str) -> list[str]:
    return [s for s in (DD_KEY, HDR, PASS, ADMIN) if s in text]


async def test_no_configured_secret_in_logs_banner_or_metrics(short_tmp: Path) -> None:
    dead = free_port()
    daemon = DaemonProcess(short_tmp, exporters=exporters(dead))
    daemon.extra = {
        "service": {"shutdown_timeout": "1s", "log_format": "json", "log_level": "debug"},
        "admin": {"endpoint": f"127.0.0.1:{daemon.admin_port}",
                  "auth": {"bearer_tokens": [ADMIN]}},
    }
    # the helper polls /readyz, which stays open with admin auth on
    await daemon.start()
    metrics = ""
    try:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(
            GrpcSpans(endpoint=daemon.grpc_endpoint, insecure=True)))
        with provider.get_tracer("hygiene").start_as_current_span("leak.check"):
            pass
        provider.shutdown()
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(100):  # bounded: 5 s for both exporters to have failed a send
                async with session.get(f"{daemon.admin_url}/metrics") as response:
                    metrics = await response.text()
                if all(failures(metrics, n) > 0 for n in NAMES):
                    break
                await asyncio.sleep(0.05)
    finally:
        _, out, err = await daemon.stop()
    assert all(failures(metrics, n) > 0 for n in NAMES)  # every exporter tried and failed
    assert all(f"exporter {n}: retrying in" in err for n in NAMES)  # and it was logged
    assert leaks(out) == []
    assert leaks(err) == []
    assert leaks(metrics) == []


def test_validate_and_startup_errors_do_not_echo_secrets(short_tmp: Path) -> None:
    path = short_tmp / "sidecar.yaml"
    bad = {"exporters": exporters(1), "admin": {"endpoint": "127.0.0.1:1x",
                                               "auth": {"bearer_tokens": [ADMIN]}}}
    path.write_text(yaml.safe_dump(bad))
    path.chmod(0o644)
    for args in (["validate"], ["run"]):
        result = subprocess.run([SIDECAR, *args, "--config", str(path)], capture_output=True,
                                text=True, timeout=60, cwd=short_tmp)
        assert result.returncode != 0
        assert "admin.endpoint" in result.stderr
        assert leaks(result.stdout + result.stderr) == []
    bad["admin"] = {"endpoint": "127.0.0.1:0", "auth": {"bearer_tokens": [ADMIN]}}
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run([SIDECAR, "validate", "--config", str(path)], capture_output=True,
                            text=True, timeout=60, cwd=short_tmp)
    assert result.returncode == 0, result.stderr
    assert "holds a secret inline" in result.stderr  # warned about, by key path only
    assert leaks(result.stdout + result.stderr) == []
