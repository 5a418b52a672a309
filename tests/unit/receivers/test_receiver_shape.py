"""The OTLP receivers have the shape the daemon wires: Lifecycle, banner, bound port."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.app import build_daemon
from sidecar.component import Lifecycle
from sidecar.config import GrpcListenerConfig, HttpListenerConfig, from_tree
from sidecar.model import Batch, Signal
from sidecar.receivers.otlp import OtlpReceiver
from sidecar.receivers.otlp_grpc import OtlpGrpcReceiver
from sidecar.receivers.otlp_http import OtlpHttpReceiver


class Sink:
    async def consume(self, batch: Batch) -> None:
        pass


@pytest.mark.parametrize(
    ("receiver", "banner"),
    [
        (OtlpGrpcReceiver("otlp", GrpcListenerConfig(),
                          {Signal.TRACES: Sink(), Signal.LOGS: Sink()}),
         "otlp/grpc  127.0.0.1:4317  traces logs"),
        (OtlpHttpReceiver("otlp", HttpListenerConfig(), {s: Sink() for s in Signal}),
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


def test_daemon_builds_one_receiver_per_section_from_the_registry(tmp_path: Path) -> None:
    config = from_tree({"storage": {"dir": str(tmp_path)},
                        "receivers": {"otlp": {"grpc": None}},
                        "pipelines": {"metrics": []}})
    daemon = build_daemon(config)
    assert [r.name for r in daemon.receivers] == ["otlp", "logs"]
    assert isinstance(daemon.receivers[0], OtlpReceiver)
    assert daemon.banner()[:1] == ["otlp/http  127.0.0.1:4318  traces logs"]
