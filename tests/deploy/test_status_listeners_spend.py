"""`sidecar status` on a real daemon: every listener bound (ports the kernel chose for
`:0`, unix socket modes, TLS and auth), and today's LLM spend by model, kept across a
restart the same day (priced by a config override, so the test knows each price)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.helpers.daemon import DaemonProcess

SIDECAR = str(Path(sys.executable).with_name("sidecar"))
TOKEN = "status-listeners-token-0123456789"
# USD per million tokens (input, output), given to the daemon as price overrides
PRICES = {"acme-chat-1": (3.0, 15.0), "acme-mini": (0.5, 2.0)}


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_ADMIN_TOKEN"}
    return await asyncio.to_thread(subprocess.run, [SIDECAR, *args], capture_output=True,
                                   text=True, timeout=60, check=False, env=env)


def attr(key: str, value: str | int) -> KeyValue:
    any_value = AnyValue(string_value=value) if isinstance(value, str) else AnyValue(
        int_value=value)
    return KeyValue(key=key, value=any_value)


def model_calls(model: str, count: int, tokens_in: int, tokens_out: int, first: int) -> bytes:
    spans = [Span(name=f"chat {model}", trace_id=b"\x07" * 16,
                  span_id=(first + i).to_bytes(8, "big"),
                  start_time_unix_nano=1_700_000_000_000_000_000,
                  end_time_unix_nano=1_700_000_001_000_000_000,
                  attributes=[attr("gen_ai.operation.name", "chat"),
                              attr("gen_ai.provider.name", "acme"),
                              attr("gen_ai.request.model", model),
                              attr("gen_ai.usage.input_tokens", tokens_in),
                              attr("gen_ai.usage.output_tokens", tokens_out)])
             for i in range(count)]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()


def cost(model: str, tokens_in: int, tokens_out: int) -> float:
    price_in, price_out = PRICES[model]
    return (tokens_in * price_in + tokens_out * price_out) / 1_000_000


async def post(daemon: DaemonProcess, body: bytes) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"{daemon.http_endpoint}/v1/traces", data=body,
            headers={"Content-Type": "application/x-protobuf"}) as response:
        assert response.status == 200, await response.text()


async def admin_json(daemon: DaemonProcess, path: str, token: str | None = TOKEN
                     ) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(
            f"{daemon.admin_url}{path}", headers=headers) as response:
        return response.status, await response.json()


async def spend_reaches(daemon: DaemonProcess, total: float) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        _, today = await admin_json(daemon, "/spend")
        if abs(today["total_usd"] - total) < 1e-9 or time.monotonic() > deadline:
            return dict(today)
        await asyncio.sleep(0.1)


def make_daemon(workdir: Path, **ports: int) -> DaemonProcess:
    daemon = DaemonProcess(workdir, exporters={
        "local": {"type": "file", "path": str(workdir / "export")}}, **ports)
    daemon.extra = {
        "receivers": {
            "otlp": {
                "grpc": {"endpoint": "127.0.0.1:0", "unix": str(workdir / "otlp.sock"),
                         "unix_mode": 0o600, "auth": {"bearer_tokens": [TOKEN]}},
                "http": {"endpoint": f"127.0.0.1:{daemon.http_port}"},
            },
            "logs": {"unix": str(workdir / "logs.sock"), "tcp": {"endpoint": "127.0.0.1:0"},
                     "files": {"include": [str(workdir / "logs" / "*.log")]}},
        },
        "cache": {"unix": str(workdir / "cache.sock"),
                  "tcp": {"endpoint": "127.0.0.1:0", "password": "cache-secret-1"}},
        "admin": {"endpoint": f"127.0.0.1:{daemon.admin_port}",
                  "auth": {"bearer_tokens": [TOKEN]}},
        "processors": {"cost": {"enabled": True, "prices": [
            {"model": m, "input": p_in, "output": p_out}
            for m, (p_in, p_out) in PRICES.items()]}},
    }
    return daemon


def connects(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5):
        return True


async def test_listeners_and_spend_today_survive_a_restart(short_tmp: Path) -> None:
    daemon = make_daemon(short_tmp)
    await daemon.start()
    try:
        # every listener with the address actually bound, behind admin.auth
        refused, _ = await admin_json(daemon, "/listeners", token=None)
        assert refused == 401
        assert (await admin_json(daemon, "/spend", token=None))[0] == 401
        status = await cli("status", "--admin", daemon.admin_url, "--token", TOKEN, "--json")
        assert status.returncode == 0, status.stderr
        rows = {(r["component"], r["transport"]): r
                for r in json.loads(status.stdout)["listeners"]}
        assert set(rows) == {
            ("otlp/grpc", "tcp"), ("otlp/grpc", "unix"), ("otlp/http", "tcp"),
            ("logs/unix", "unix"), ("logs/tcp", "tcp"), ("logs/files", "files"),
            ("cache", "unix"), ("cache", "tcp"), ("admin", "tcp")}
        grpc_tcp = rows["otlp/grpc", "tcp"]
        assert not grpc_tcp["address"].endswith(":0")
        assert connects(grpc_tcp["address"])
        assert (grpc_tcp["tls"], grpc_tcp["auth"]) == (False, True)
        assert rows["otlp/grpc", "unix"] == {
            "component": "otlp/grpc", "transport": "unix",
            "address": str(short_tmp / "otlp.sock"), "tls": False, "auth": True,
            "mode": "0600"}
        assert rows["otlp/http", "tcp"]["address"] == daemon.http_endpoint.removeprefix(
            "http://")
        assert rows["otlp/http", "tcp"]["auth"] is False
        assert rows["logs/unix", "unix"]["mode"] == "0660"
        assert connects(rows["logs/tcp", "tcp"]["address"])
        assert rows["logs/files", "files"]["address"] == str(short_tmp / "logs" / "*.log")
        assert connects(rows["cache", "tcp"]["address"])
        assert rows["cache", "tcp"]["auth"] is True
        assert rows["admin", "tcp"] == {
            "component": "admin", "transport": "tcp", "tls": False, "auth": True,
            "address": daemon.admin_url.removeprefix("http://")}

        # priced model calls: 4 x (1,000 in, 200 out) of acme-chat-1, 2 x 3,000 in of mini
        await post(daemon, model_calls("acme-chat-1", 4, 1_000, 200, first=1))
        await post(daemon, model_calls("acme-mini", 2, 3_000, 0, first=100))
        chat, mini = 4 * cost("acme-chat-1", 1_000, 200), 2 * cost("acme-mini", 3_000, 0)
        today = await spend_reaches(daemon, chat + mini)
        assert abs(today["total_usd"] - (chat + mini)) < 1e-9, today
        assert list(today["by_model"]) == ["acme-chat-1", "acme-mini"]  # largest first
        assert abs(today["by_model"]["acme-chat-1"] - chat) < 1e-9
        assert abs(today["by_model"]["acme-mini"] - mini) < 1e-9

        human = await cli("status", "--admin", daemon.admin_url, "--token", TOKEN)
        assert human.returncode == 0, human.stderr
        lines = human.stdout.splitlines()
        day = today["day"]
        assert f"LLM spend today ({day} UTC): ${chat + mini:.4f}" in lines
        assert any(line.split() == ["acme-chat-1", f"${chat:.4f}"] for line in lines), lines
        assert any(line.split()[:3] == ["otlp/grpc", "tcp", grpc_tcp["address"]]
                   and line.endswith("[tls off, auth on]") for line in lines), lines
        assert any(line.split()[:5] == ["otlp/grpc", "unix", str(short_tmp / "otlp.sock"),
                                        "(mode", "0600)"] for line in lines), lines
    finally:
        code, _, err = await daemon.stop()
    assert code == 0, err

    # the same day, a new process (its cost counter starts at zero): today's spend stays
    again = make_daemon(short_tmp, http_port=daemon.http_port, admin_port=daemon.admin_port)
    await again.start()
    try:
        _, kept = await admin_json(again, "/spend")
        if kept["day"] == day:  # not if the restart crossed UTC midnight
            assert abs(kept["total_usd"] - (chat + mini)) < 1e-9, kept
            await post(again, model_calls("acme-mini", 1, 3_000, 0, first=200))
            more = await spend_reaches(again, chat + mini + mini / 2)
            assert abs(more["by_model"]["acme-mini"] - 1.5 * mini) < 1e-9, more
    finally:
        code, _, err = await again.stop()
    assert code == 0, err
