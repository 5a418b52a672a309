"""Run the real `sidecar` binary as a subprocess on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import free_port

SIDECAR = str(Path(sys.executable).with_name("sidecar"))


@dataclass
class DaemonProcess:
    workdir: Path
    exporters: dict[str, Any]
    pipelines: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    terminated: bool = False

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "storage": {"dir": str(self.workdir / "data")},
            "receivers": {"otlp": {
                "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
            }},
            "exporters": self.exporters,
            "cache": {"unix": str(self.workdir / "cache.sock")},
            "admin": {"endpoint": f"127.0.0.1:{self.admin_port}"},
            "service": {"shutdown_timeout": "10s", "log_format": "text"},
        }
        if self.pipelines is not None:
            cfg["pipelines"] = self.pipelines
        cfg.update(self.extra)
        return cfg

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def start(self) -> None:
        path = self.workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(self.config()))
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
            [SIDECAR, "run", "--config", str(path)],
            cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    _, err = self.proc.communicate()
                    raise RuntimeError(f"sidecar exited {self.proc.returncode}: {err.decode()}")
                try:
                    async with session.get(f"{self.admin_url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("sidecar did not become ready in 20 s")

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        async with aiohttp.ClientSession() as session, \
                session.get(f"{self.admin_url}/metrics") as response:
            text = await response.text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    async def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        """SIGTERM, wait for exit; returns (exit code, stdout, stderr)."""
        self.terminate()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(), err.decode()

    def terminate(self) -> None:
        """Send SIGTERM once (a second one would skip the drain)."""
        assert self.proc is not None
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
