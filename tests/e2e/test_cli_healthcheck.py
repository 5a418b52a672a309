"""`sidecar validate --healthcheck` against the fake intakes: a wrong key and an
unreachable endpoint are reported per exporter (exit 2), and no telemetry is sent."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

from sidecar.model import Signal
from tests.helpers.daemon import SIDECAR
from tests.helpers.intakes import DatadogIntake, honeycomb_sink, jaeger_sink

HC_KEY = "hcaik_health"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def healthcheck(tmp_path: Path, exporters: dict[str, Any],
                      ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({"exporters": exporters,
                                    "cache": {"unix": str(tmp_path / "c.sock")}}))
    return await asyncio.to_thread(
        subprocess.run, [SIDECAR, "validate", "--healthcheck", "--config", str(path)],
        capture_output=True, text=True, timeout=60)


async def test_every_destination_ok_and_nothing_sent(tmp_path: Path) -> None:
    async with DatadogIntake("dd-ok") as dd, honeycomb_sink(HC_KEY) as hc, \
            jaeger_sink() as jaeger:
        result = await healthcheck(tmp_path, {
            "dd": {"type": "datadog", "api_key": "dd-ok", "endpoint": dd.endpoint},
            "hc": {"type": "honeycomb", "api_key": HC_KEY, "endpoint": hc.grpc_endpoint},
            "jaeger": {"type": "jaeger", "endpoint": jaeger.http_endpoint,
                       "protocol": "http"},
            "local": {"type": "file", "path": str(tmp_path / "out")},
        })
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert any(line.startswith("exporters.dd: ok: API key valid") for line in lines)
        assert any(line.startswith("exporters.hc: ok: an empty export") for line in lines)
        assert any(line.startswith("exporters.jaeger: ok:") for line in lines)
        assert any(line.startswith("exporters.local: skipped") for line in lines)
        assert [(r.path, r.status) for r in dd.requests] == [("/api/v1/validate", 200)]
        assert [r.outcome for r in hc.requests] == ["ok"]
        assert hc.items(Signal.TRACES) == 0
        assert jaeger.items(Signal.TRACES) == 0
        assert not (tmp_path / "out").exists()


async def test_wrong_keys_and_an_unreachable_endpoint_fail(tmp_path: Path) -> None:
    async with DatadogIntake("the-right-key") as dd, honeycomb_sink("the-right-key") as hc:
        result = await healthcheck(tmp_path, {
            "dd": {"type": "datadog", "api_key": "dd-bad-key-7", "endpoint": dd.endpoint},
            "hc": {"type": "honeycomb", "api_key": HC_KEY, "endpoint": hc.http_endpoint,
                   "protocol": "http"},
            "jaeger": {"type": "jaeger", "endpoint": f"http://127.0.0.1:{_closed_port()}",
                       "timeout": "3s"},
        })
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, result.stderr
    assert any("exporters.dd: refused: API key rejected" in e and "403" in e for e in errors)
    assert any("exporters.hc: refused: HTTP 401" in e for e in errors)
    assert any("exporters.jaeger: " in e and ("unreachable" in e or "no answer" in e)
               for e in errors)
    assert "dd-bad-key-7" not in result.stderr
    assert HC_KEY not in result.stderr
