"""Every registered receiver type passes the same checks: its factory builds it from the
default config of its section without I/O; it starts on free ports, says in its banner
where it listens, accepts connections there, and stops listening on shutdown.

To add a receiver type: register it under its `receivers:` section name; if its default
config binds something other than `endpoint` keys, teach `on_free_addresses` about it."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.component import BuildContext, Lifecycle, ReceiverComponent, receiver_factories
from sidecar.config import ReceiversConfig
from sidecar.errors import StartupError
from sidecar.model import Batch, Signal
from sidecar.signals import SIGNALS
from sidecar.telemetry.metrics import REGISTRY
from sidecar.testing import traces_batch


class CapturingConsumer:
    """Keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)

    async def wait_for_room(self, nbytes: int) -> None: ...

FACTORIES = receiver_factories()


def on_free_addresses(tree: Any, tmp: Path) -> Any:
    """The default config with every listener moved to a free loopback port, and every unix
    socket (a `unix` key) into `tmp`."""
    if isinstance(tree, dict):
        return {k: "127.0.0.1:0" if k == "endpoint" and isinstance(v, str)
                else str(tmp / f"{k}.sock") if k == "unix" and isinstance(v, str)
                else on_free_addresses(v, tmp) for k, v in tree.items()}
    if isinstance(tree, list):
        return [on_free_addresses(v, tmp) for v in tree]
    return tree


def build(type_name: str, tmp: Path, consumers: dict[Signal, Any] | None = None,
          name: str | None = None) -> ReceiverComponent:
    factory = FACTORIES[type_name]
    default = getattr(ReceiversConfig(), type_name)
    config = factory.config_type.model_validate(
        on_free_addresses(default.model_dump(mode="json"), tmp))
    consumers = {s: CapturingConsumer() for s in Signal} if consumers is None else consumers
    return factory.create(name or type_name, config, consumers, BuildContext())


def address(line: str) -> tuple[str, int]:
    """The `host:port` (or `unix:path`, port -1) a banner line
    (`name/transport  host:port  signals`) names."""
    host, _, port = line.split()[1].rpartition(":")
    if host == "unix":
        return port, -1
    return host.strip("[]"), int(port)


def connects(host: str, port: int) -> bool:
    if port == -1:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2)
            return probe.connect_ex(host) == 0
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(2)
        return probe.connect_ex((host, port)) == 0


def test_registry_keys_are_the_config_sections() -> None:
    assert set(FACTORIES) == set(ReceiversConfig.model_fields)
    for name, factory in FACTORIES.items():
        assert factory.type_name == name
        assert isinstance(getattr(ReceiversConfig(), name), factory.config_type)


@pytest.mark.parametrize("type_name", sorted(FACTORIES))
async def test_builds_from_defaults_without_io(
        type_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative default paths would land here
    factory = FACTORIES[type_name]
    receiver = factory.create(type_name, getattr(ReceiversConfig(), type_name),
                              {s: CapturingConsumer() for s in Signal}, BuildContext())
    assert isinstance(receiver, Lifecycle)
    assert receiver.name == type_name
    lines = receiver.describe()
    assert lines
    assert all(line.startswith(f"{type_name}/") for line in lines)
    assert await asyncio.to_thread(os.listdir, tmp_path) == []
    # never started: shutting down is a no-op
    await receiver.shutdown(asyncio.get_running_loop().time() + 1)


@pytest.mark.parametrize("type_name", sorted(FACTORIES))
async def test_starts_on_free_ports_describes_and_stops(type_name: str, tmp_path: Path) -> None:
    receiver = build(type_name, tmp_path)
    await receiver.start()
    try:
        lines = receiver.describe()
        addresses = [address(line) for line in lines]
        assert all(port != 0 for _, port in addresses), lines  # the bound port, not the 0
        # each line names the signals it feeds: every one, for a receiver taking all
        fed = {"logs": " logs"}.get(type_name, " traces logs metrics")
        assert all(line.endswith(fed) for line in lines)
        for host, port in addresses:
            assert await asyncio.to_thread(connects, host, port)
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    for host, port in addresses:
        assert not await asyncio.to_thread(connects, host, port)
    # a second shutdown is a no-op
    await receiver.shutdown(asyncio.get_running_loop().time() + 1)


@pytest.mark.parametrize("type_name", sorted(FACTORIES))
async def test_without_pipelines_the_banner_says_so(type_name: str, tmp_path: Path) -> None:
    receiver = build(type_name, tmp_path, consumers={})
    assert all(line.endswith("(no pipelines)") for line in receiver.describe())


async def test_the_receiver_name_labels_its_metrics(tmp_path: Path) -> None:
    sink = CapturingConsumer()
    receiver = build("otlp", tmp_path, {Signal.TRACES: sink}, name="edge")
    await receiver.start()
    try:
        (http_line,) = [line for line in receiver.describe() if line.startswith("edge/http")]
        host, port = address(http_line)
        async with aiohttp.ClientSession() as session:
            url = f"http://{host}:{port}{SIGNALS[Signal.TRACES].http_path}"
            async with session.post(url, data=traces_batch(3).payload,
                                    headers={"Content-Type": "application/x-protobuf"}) as r:
                assert r.status == 200
            async with session.post(f"http://{host}:{port}/nowhere") as r:
                assert r.status == 404
    finally:
        await receiver.shutdown(asyncio.get_running_loop().time() + 1)
    assert sum(b.items for b in sink.batches) == 3
    labels = {"receiver": "edge", "transport": "http", "signal": "traces"}
    assert REGISTRY.get_sample_value("sidecar_receiver_accepted_items_total", labels) == 3
    assert REGISTRY.get_sample_value("sidecar_receiver_bad_requests_total", {
        "receiver": "edge", "transport": "http", "reason": "not_found"}) == 1


async def test_a_listener_that_cannot_bind_releases_the_others(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        factory = FACTORIES["otlp"]
        config = factory.config_type.model_validate({
            "grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": f"127.0.0.1:{port}"}})
        receiver = factory.create("otlp", config, {}, BuildContext())
        with pytest.raises(StartupError, match=rf"receivers\.otlp\.http\.endpoint: .*:{port}"):
            await receiver.start()
    grpc_line = receiver.describe()[0]
    assert grpc_line.startswith("otlp/grpc")
    assert not await asyncio.to_thread(connects, *address(grpc_line))
