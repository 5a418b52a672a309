"""Both OTLP receivers have the shape the daemon wires: Lifecycle, banner, bound port."""

from __future__ import annotations

import pytest

from sidecar.component import Lifecycle
from sidecar.config import GrpcListenerConfig, HttpListenerConfig
from sidecar.model import Batch, Signal
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver


class Sink:
    async def consume(self, batch: Batch) -> None:
        pass


@pytest.mark.parametrize(
    ("receiver", "banner"),
    [
        (OtlpGrpcReceiver(GrpcListenerConfig(), {Signal.TRACES: Sink(), Signal.LOGS: Sink()}),
         "otlp/grpc  127.0.0.1:4317  traces logs"),
        (OtlpHttpReceiver(HttpListenerConfig(), {s: Sink() for s in Signal}),
         "otlp/http  127.0.0.1:4318  traces logs metrics"),
    ],
    ids=["grpc", "http"],
)
def test_constructed_without_io(receiver: OtlpGrpcReceiver | OtlpHttpReceiver,
                                banner: str) -> None:
    assert isinstance(receiver, Lifecycle)
    assert receiver.describe() == banner
    with pytest.raises(RuntimeError, match="not started"):
        _ = receiver.bound_port
