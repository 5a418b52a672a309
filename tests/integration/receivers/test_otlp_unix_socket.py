"""OTLP over unix sockets: the real SDK's gRPC exporter on `unix://`, an HTTP client on
the HTTP receiver's socket; mode, a stale file from a crash, a live socket, cleanup."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from receiver_helpers import Consumers

from sidecar import config
from sidecar.config import GrpcListenerConfig, HttpListenerConfig
from sidecar.errors import ConfigError, StartupError
from sidecar.model import Signal
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver


def grpc_export(path: Path, spans: tuple[ReadableSpan, ...]) -> SpanExportResult:
    exporter = OTLPSpanExporter(endpoint=f"unix://{path}", insecure=True, timeout=5)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


async def test_grpc_over_a_unix_socket_only(
    short_tmp: Path, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
) -> None:
    path = short_tmp / "run" / "otlp-grpc.sock"
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(
        endpoint=None, unix=str(path), unix_mode=0o600), consumers)
    await receiver.start()
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"unix:{path}" in receiver.describe()
        result = await asyncio.to_thread(grpc_export, path, sdk_spans)
        assert result is SpanExportResult.SUCCESS
        (batch,) = consumers[Signal.TRACES].batches
        assert batch.message == encode_spans(sdk_spans)
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert not path.exists()  # our socket file is removed at shutdown


async def test_http_over_tcp_and_a_unix_socket(
    short_tmp: Path, consumers: Consumers, sdk_spans: tuple[ReadableSpan, ...],
) -> None:
    path = short_tmp / "otlp-http.sock"
    receiver = OtlpHttpReceiver("otlp", HttpListenerConfig(
        endpoint="127.0.0.1:0", unix=str(path)), consumers)
    await receiver.start()
    body = encode_spans(sdk_spans).SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        unix = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=unix) as over_unix, \
                over_unix.post("http://sidecar/v1/traces", data=body, headers=headers) as r:
            assert r.status == 200
        url = f"http://127.0.0.1:{receiver.bound_port}/v1/traces"
        async with aiohttp.ClientSession() as over_tcp, \
                over_tcp.post(url, data=body, headers=headers) as r:
            assert r.status == 200
        assert len(consumers[Signal.TRACES].batches) == 2
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert not path.exists()


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(
    short_tmp: Path, consumers: Consumers,
) -> None:
    path = short_tmp / "otlp.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves
    receiver = OtlpGrpcReceiver("otlp", GrpcListenerConfig(endpoint=None, unix=str(path)),
                                consumers)
    await receiver.start()
    try:
        for make in (
            lambda: OtlpGrpcReceiver("otlp", GrpcListenerConfig(endpoint=None, unix=str(path)),
                                     consumers),
            lambda: OtlpHttpReceiver("otlp", HttpListenerConfig(endpoint=None, unix=str(path)),
                                     consumers),
        ):
            with pytest.raises(StartupError, match="already listening"):
                await make().start()  # type: ignore[attr-defined]
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # the live one was left alone
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)


def test_a_listener_needs_an_endpoint_or_a_socket() -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree({"receivers": {"otlp": {"grpc": {"endpoint": None}}}})
    assert info.value.problems[0].path == "receivers.otlp.grpc"
    assert "endpoint, unix or both" in str(info.value)
