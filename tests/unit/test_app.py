"""The daemon object: what `build_daemon` makes of a config, start/stop order, and the
count a second SIGTERM reports."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from sidecar import config as config_module
from sidecar.app import build_daemon
from sidecar.errors import PipelineFullError, StartupError
from sidecar.model import Signal
from sidecar.testing import traces_batch
from tests.conftest import free_port


def tree(tmp: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "storage": {"dir": str(tmp / "data")},
        "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                               "http": {"endpoint": f"127.0.0.1:{free_port()}"}},
                      "logs": {"unix": str(tmp / "logs.sock")}},
        "exporters": {"local": {"type": "file", "path": str(tmp / "out")}},
        "cache": {"unix": str(tmp / "c.sock")},
        "admin": {"endpoint": f"127.0.0.1:{free_port()}"},
    }
    base.update(overrides)
    return base


def test_null_listeners_are_not_built(short_tmp: Path) -> None:
    daemon = build_daemon(config_module.from_tree(tree(
        short_tmp, cache={"unix": None}, admin={"endpoint": None},
        receivers={"otlp": {"grpc": None, "http": None}, "logs": None})))
    assert daemon.cache is None
    assert daemon.admin is None
    assert all("otlp" not in line for line in daemon.banner())


def test_the_banner_names_every_listener_and_where_data_goes(short_tmp: Path) -> None:
    daemon = build_daemon(config_module.from_tree(tree(short_tmp)))
    banner = "\n".join(daemon.banner())
    assert "otlp/grpc" in banner
    assert "otlp/http" in banner
    assert str(short_tmp / "c.sock") in banner
    assert str(short_tmp / "out") in banner
    assert "<- traces logs metrics" in banner


async def test_a_startup_failure_stops_everything_already_started(short_tmp: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        daemon = build_daemon(config_module.from_tree(tree(
            short_tmp, admin={"endpoint": f"127.0.0.1:{port}"})))  # admin starts last
        with pytest.raises(StartupError, match=r"admin\.endpoint"):
            await daemon.start()
    # the receivers, cache and exporters that had started were stopped again
    assert not (short_tmp / "c.sock").exists()
    for receiver_line in daemon.banner()[:2]:
        host_port = receiver_line.split()[1]
        host, _, p = host_port.rpartition(":")
        with socket.socket() as probe:
            probe.bind((host, int(p)))  # free again
    chain = daemon.graph.exporters["local"]
    with pytest.raises(PipelineFullError, match="not running"):
        await chain.consume(traces_batch(1))


async def test_undelivered_items_counts_what_an_exit_would_lose(short_tmp: Path) -> None:
    cfg = config_module.from_tree(tree(
        short_tmp,
        exporters={"a": {"type": "file", "path": str(short_tmp / "a"),
                         "batch": {"max_delay": 60}, "queue": {"type": "memory"}},
                   "b": {"type": "file", "path": str(short_tmp / "b"),
                         "batch": {"max_delay": 60}, "queue": {"type": "memory"}},
                   "c": {"type": "file", "path": str(short_tmp / "c"),
                         "batch": {"max_delay": 60}}}))
    daemon = build_daemon(cfg)
    await daemon.graph.start()
    try:
        await daemon.graph.consumers[Signal.TRACES].consume(traces_batch(7))
        # 7 waiting in each memory queue's batcher; the durable queue (c) keeps its 7
        assert daemon.undelivered_items() == 14
        assert daemon.graph.exporters["c"].pending_items() == 7
    finally:
        await daemon.graph.shutdown(0)
