"""Coalescing through the real daemon (`pipelines.coalesce`): requests of several gRPC
clients that arrive together go through the processors as one group, and one client's
request that redaction refuses costs the others nothing: theirs are accepted and exported,
its own is refused retryable and exported nowhere."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc

from sidecar.signals import SIGNALS, Signal
from tests.e2e.test_daemon_redact_fail_closed import _request
from tests.helpers.daemon import DaemonProcess
from tests.unit.processors.redact_corpus import secrets

METHOD = SIGNALS[Signal.LOGS].grpc_method


async def _send(endpoint: str, payload: bytes) -> grpc.StatusCode:
    """One client: its own channel (connection), one Export call."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            await call(payload, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_a_refused_request_in_a_group_costs_the_other_clients_nothing(
        short_tmp: Path) -> None:
    token = secrets(random.Random(22))["github-token"]
    # over redaction's 50,000-candidate budget (as in test_daemon_redact_fail_closed)
    hostile = _request(f"deploy with {token} " + "4111 1111 1111 1111 " * 60_000)
    good = [f"ordinary line number {n}" for n in range(3)]
    export_dir = short_tmp / "export"
    daemon = DaemonProcess(
        short_tmp,
        exporters={"local": {"type": "file", "path": str(export_dir),
                             "batch": {"max_delay": 0}}},
        # room for the hostile request in a group, and time for all four to arrive
        pipelines={"coalesce": {"max_delay": "500ms", "max_bytes": "8MiB"}})
    await daemon.start()
    try:
        # a first request goes at once; the next ones, within max_delay of it, wait together
        assert await _send(daemon.grpc_endpoint, _request("warm-up line")) is grpc.StatusCode.OK
        codes = await asyncio.gather(_send(daemon.grpc_endpoint, hostile),
                                     *(_send(daemon.grpc_endpoint, _request(g)) for g in good))
        assert codes[0] is grpc.StatusCode.UNAVAILABLE
        assert codes[1:] == [grpc.StatusCode.OK] * 3
        groups = await daemon.metric("sidecar_pipeline_group_requests_count", signal="logs")
        alone = await daemon.metric("sidecar_pipeline_group_requests_bucket", signal="logs",
                                    le="1.0")
        assert groups - alone >= 1, "no two requests went through together"
        # the group once, then the hostile request alone
        assert await daemon.metric("sidecar_redact_failures_total", signal="logs") == 2
        assert await daemon.metric("sidecar_receiver_refused_items_total", signal="logs",
                                   reason="processing_failed") == 1
        assert await daemon.metric("sidecar_receiver_accepted_items_total",
                                   signal="logs") == 4
        path = export_dir / "logs.jsonl"
        for _ in range(100):
            if path.exists() and all(g.encode() in path.read_bytes() for g in good):
                break
            await asyncio.sleep(0.05)
    finally:
        code, _, err = await daemon.stop()
    exported = path.read_bytes()
    for line in ("warm-up line", *good):
        assert exported.count(line.encode()) == 1
    assert token.encode() not in exported
    assert b"deploy with" not in exported
    assert token not in err
    assert code == 0
