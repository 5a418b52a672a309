"""Fail closed, and retryable, through the real daemon: a request redaction refuses (more
candidate matches than its budget) is answered gRPC UNAVAILABLE / HTTP 503 with a retry
delay, nothing of it is exported, the refusal is counted and logged without the content,
and the daemon goes on serving."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

import aiohttp
import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sidecar.signals import GRPC_STATUS_DETAILS_KEY, SIGNALS, Signal
from tests.helpers.daemon import DaemonProcess
from tests.unit.processors.redact_corpus import secrets

METHOD = SIGNALS[Signal.LOGS].grpc_method


def _request(body: str) -> bytes:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = body
    return request.SerializeToString()


async def test_a_request_redaction_refuses_is_retryable_and_not_exported(
        short_tmp: Path) -> None:
    token = secrets(random.Random(21))["github-token"]
    # 60 000 Visa-shaped runs: each needs a Luhn check, over the 50 000 budget
    hostile = _request(f"deploy with {token} " + "4111 1111 1111 1111 " * 60_000)
    export_dir = short_tmp / "export"
    daemon = DaemonProcess(short_tmp, exporters={
        "local": {"type": "file", "path": str(export_dir), "batch": {"max_delay": 0}}})
    await daemon.start()
    try:
        async with grpc.aio.insecure_channel(daemon.grpc_endpoint) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None,
                                       response_deserializer=None)
            try:
                await call(hostile, timeout=30)
            except grpc.aio.AioRpcError as exc:
                code, details, trailers = exc.code(), exc.details() or "", exc.trailing_metadata()
            else:
                raise AssertionError("the hostile request was accepted")
            await call(_request("an ordinary line"), timeout=10)  # still serving
        assert code is grpc.StatusCode.UNAVAILABLE
        assert token not in details
        assert "4111" not in details
        raw = dict(trailers or ())[GRPC_STATUS_DETAILS_KEY]
        status = status_pb2.Status.FromString(raw)
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info)
        assert info.retry_delay.seconds >= 1

        async with aiohttp.ClientSession() as session, session.post(
                f"{daemon.http_endpoint}/v1/logs", data=io.BytesIO(hostile),
                headers={"Content-Type": "application/x-protobuf"}) as response:
            http_status, retry_after = response.status, response.headers.get("Retry-After")
            http_body = await response.read()
        assert http_status == 503
        assert retry_after is not None
        assert int(retry_after) >= 1
        assert token.encode() not in http_body

        assert await daemon.metric("sidecar_redact_failures_total", signal="logs") == 2
        assert await daemon.metric("sidecar_receiver_refused_items_total",
                                   signal="logs", reason="processing_failed") == 2
        path = export_dir / "logs.jsonl"
        for _ in range(100):
            if path.exists() and b"an ordinary line" in path.read_bytes():
                break
            await asyncio.sleep(0.05)
    finally:
        code_, _, err = await daemon.stop()
    exported = path.read_bytes()
    assert b"an ordinary line" in exported
    assert token.encode() not in exported
    assert b"deploy with" not in exported
    assert "refused a logs batch" in err
    assert token not in err
    assert "4111 1111" not in err
    assert code_ == 0
