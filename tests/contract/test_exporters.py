"""Every registered exporter type passes the same checks (OpenTelemetry Collector's
exportertest contract checker).

To add an exporter type: give it a minimal config in `MINIMAL` if it has required keys,
and, if it can be pointed at a test peer, a `Destination` in `DESTINATIONS` so it also gets
the delivery, permanent-error and retry checks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from sidecar.component import BuildContext, ExporterComponent, Lifecycle, exporter_factories
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Signal
from sidecar.telemetry.metrics import REGISTRY
from sidecar.testing import Fault, OtlpSink, traces_batch

# required keys beyond `type`, per exporter type
MINIMAL: dict[str, dict[str, Any]] = {
    "otlp": {"endpoint": "http://127.0.0.1:4317"},
    "honeycomb": {"api_key": "hcaik_contract"},
    "jaeger": {"endpoint": "http://127.0.0.1:4317"},
    # not an OTLP peer: its delivery and fault checks run against tests/helpers/intakes.py
    # in tests/integration/exporters/test_datadog_native.py
    "datadog": {"api_key": "contract"},
}


@dataclass(frozen=True)
class Destination:
    type_name: str
    config: Callable[[OtlpSink, Path], dict[str, Any]]
    delivered: Callable[[OtlpSink, Path], int]  # trace items that arrived
    permanent: Fault | None = None  # a fault the peer can answer with, if it can fail
    retryable: Fault | None = None


def _file_lines(_sink: OtlpSink, path: Path) -> int:
    file = path / "out" / "traces.jsonl"
    if not file.exists():
        return 0
    with file.open() as lines:
        return sum(1 for _ in lines)


def _otlp_grpc(compression: str) -> Destination:
    # the two gRPC transports: gzip goes through the h2 client, none through grpc.aio
    return Destination(
        "otlp", lambda s, _p: {"endpoint": s.grpc_endpoint, "protocol": "grpc",
                               "compression": compression},
        lambda s, _p: s.items(Signal.TRACES),
        Fault(grpc_code=grpc.StatusCode.INVALID_ARGUMENT),
        Fault(grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after=0.05))


DESTINATIONS = {
    "otlp-grpc-gzip": _otlp_grpc("gzip"),
    "otlp-grpc-none": _otlp_grpc("none"),
    "otlp-http": Destination(
        "otlp", lambda s, _p: {"endpoint": s.http_endpoint, "protocol": "http"},
        lambda s, _p: s.items(Signal.TRACES),
        Fault(http_status=400), Fault(http_status=503)),
    "honeycomb-grpc": Destination(
        "honeycomb", lambda s, _p: {"api_key": "k", "endpoint": s.grpc_endpoint},
        lambda s, _p: s.items(Signal.TRACES),
        Fault(grpc_code=grpc.StatusCode.UNAUTHENTICATED),
        Fault(grpc_code=grpc.StatusCode.UNAVAILABLE)),
    "honeycomb-http": Destination(
        "honeycomb", lambda s, _p: {"api_key": "k", "endpoint": s.http_endpoint,
                                    "protocol": "http"},
        lambda s, _p: s.items(Signal.TRACES), Fault(http_status=401), Fault(http_status=429)),
    "jaeger-grpc": Destination(
        "jaeger", lambda s, _p: {"endpoint": s.grpc_endpoint},
        lambda s, _p: s.items(Signal.TRACES),
        Fault(grpc_code=grpc.StatusCode.INVALID_ARGUMENT),
        Fault(grpc_code=grpc.StatusCode.UNAVAILABLE)),
    "jaeger-http": Destination(
        "jaeger", lambda s, _p: {"endpoint": s.http_endpoint, "protocol": "http"},
        lambda s, _p: s.items(Signal.TRACES), Fault(http_status=400), Fault(http_status=503)),
    # a local file cannot be told to fail: delivery checks only (lines, one per request)
    "file": Destination("file", lambda _s, p: {"path": str(p / "out")}, _file_lines),
}

FACTORIES = exporter_factories()


def minimal(type_name: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_name, **MINIMAL.get(type_name, {}), **extra}


@pytest.mark.parametrize("type_name", sorted(FACTORIES))
def test_defaults_validate(type_name: str) -> None:
    factory = FACTORIES[type_name]
    assert factory.type_name == type_name
    assert issubclass(factory.config_type, ExporterSettings)
    config = factory.config_type.model_validate(minimal(type_name))
    assert config.type == type_name
    assert config.timeout > 0
    assert config.queue.max_bytes > 0


@pytest.mark.parametrize("type_name", sorted(FACTORIES))
def test_unknown_keys_are_errors(type_name: str) -> None:
    with pytest.raises(ValidationError, match="colour"):
        FACTORIES[type_name].config_type.model_validate(minimal(type_name, colour="red"))


@pytest.mark.parametrize("type_name", sorted(FACTORIES))
async def test_create_does_no_io_and_refuses_data_until_started(
        type_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative default paths would land here
    factory = FACTORIES[type_name]
    config = factory.config_type.model_validate(minimal(type_name))
    exporter = factory.create("contract", config, BuildContext())
    assert isinstance(exporter, Lifecycle)
    assert exporter.name == "contract"
    assert isinstance(exporter.describe(), str)
    assert not exporter.has_room(traces_batch(1))
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


@pytest.fixture
async def sink() -> AsyncIterator[OtlpSink]:
    async with OtlpSink() as s:
        yield s


def build(dest: Destination, sink: OtlpSink, path: Path, name: str) -> ExporterComponent:
    factory = FACTORIES[dest.type_name]
    raw = {"type": dest.type_name, **dest.config(sink, path),
           "batch": {"max_delay": 0}, "retry": {"initial_interval": 0.01, "jitter": 0}}
    return factory.create(name, factory.config_type.model_validate(raw), BuildContext())


async def stop(exporter: ExporterComponent) -> None:
    await exporter.shutdown(asyncio.get_running_loop().time() + 10)


def dropped(name: str) -> float:
    return REGISTRY.get_sample_value("sidecar_exporter_dropped_items_total", {
        "exporter": name, "signal": "traces", "reason": "permanent"}) or 0.0


@pytest.mark.parametrize("dest_name", sorted(DESTINATIONS))
async def test_delivers_everything_consumed(
        dest_name: str, sink: OtlpSink, tmp_path: Path) -> None:
    dest = DESTINATIONS[dest_name]
    exporter = build(dest, sink, tmp_path, f"contract-deliver-{dest_name}")
    await exporter.start()
    for seed in range(3):
        await exporter.consume(traces_batch(1, seed=seed))
    await stop(exporter)
    assert dest.delivered(sink, tmp_path) == 3


# only destinations a test can make fail (a local file cannot be told to answer 400)
FAILABLE = sorted(n for n, d in DESTINATIONS.items()
                  if d.permanent is not None and d.retryable is not None)


@pytest.mark.parametrize("dest_name", FAILABLE)
async def test_permanent_errors_drop(dest_name: str, sink: OtlpSink, tmp_path: Path) -> None:
    dest = DESTINATIONS[dest_name]
    name = f"contract-perm-{dest_name}"
    exporter = build(dest, sink, tmp_path, name)
    await exporter.start()
    sink.fail_next(1, dest.permanent)
    await exporter.consume(traces_batch(4))
    await stop(exporter)
    assert len(sink.requests) == 1
    assert dest.delivered(sink, tmp_path) == 0
    assert dropped(name) == 4


@pytest.mark.parametrize("dest_name", FAILABLE)
async def test_retryable_errors_retry(dest_name: str, sink: OtlpSink, tmp_path: Path) -> None:
    dest = DESTINATIONS[dest_name]
    exporter = build(dest, sink, tmp_path, f"contract-retry-{dest_name}")
    await exporter.start()
    sink.fail_next(2, dest.retryable)
    await exporter.consume(traces_batch(4))
    await stop(exporter)
    assert [r.outcome for r in sink.requests] == ["failed", "failed", "ok"]
    assert dest.delivered(sink, tmp_path) == 4
