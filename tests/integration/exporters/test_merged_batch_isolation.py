"""One queued request that cannot be parsed never costs the requests merged with it, and
never ends an exporter's worker (regressions: a merged batch was dropped whole; a failed
split after a 413 killed the worker for good)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from export_helpers import metric

from sidecar.exporters.file import FileConfig, FileSender
from sidecar.exporters.otlp import GrpcSender, HttpSender, OtlpConfig
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Batch, Signal
from sidecar.testing import OtlpSink, traces_batch

# a length-delimited field whose length runs past the end: no protobuf parser takes it
GARBAGE = Batch(Signal.TRACES, 3, b"\x0a\xff\xff\xff\xff\x0f not a request")


def otlp(name: str, protocol: str, sink: OtlpSink, compression: str = "none") -> ExportChain:
    endpoint = sink.grpc_endpoint if protocol == "grpc" else sink.http_endpoint
    cfg = OtlpConfig.model_validate({
        "type": "otlp", "endpoint": endpoint, "protocol": protocol, "timeout": 5,
        "compression": compression, "queue": {"concurrency": 1},
        # long enough for the three consumes below to merge into one request
        "batch": {"max_delay": 0.3}, "retry": {"initial_interval": 0.01}})
    sender = GrpcSender(cfg) if protocol == "grpc" else HttpSender(cfg)
    return ExportChain(name, cfg, sender)


async def consume_all(exporter: ExportChain, batches: list[Batch]) -> None:
    for batch in batches:
        await exporter.consume(batch)


@pytest.mark.parametrize(("protocol", "compression"),
                         [("http", "none"), ("grpc", "none"), ("grpc", "gzip")])
async def test_a_refused_merged_request_falls_back_to_its_members(
        sink: OtlpSink, protocol: str, compression: str) -> None:
    name = f"iso-{protocol}-{compression}"
    exporter = otlp(name, protocol, sink, compression)
    await exporter.start()
    good = [traces_batch(5, seed=1), traces_batch(7, seed=2)]
    await consume_all(exporter, [good[0], GARBAGE, good[1]])
    await sink.wait_for_items(Signal.TRACES, 12)
    await exporter.shutdown(asyncio.get_running_loop().time() + 5)
    # the merged request was refused, then each member went alone
    assert sink.requests[0].outcome == "failed"
    assert sorted(r.body for r in sink.accepted) == sorted(b.payload for b in good)
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="permanent") == GARBAGE.items


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_a_413_on_a_merged_request_with_a_bad_member_keeps_the_worker(
        sink: OtlpSink, protocol: str) -> None:
    name = f"iso413-{protocol}"
    exporter = otlp(name, protocol, sink)
    await exporter.start()
    sink.fail_next(1, http_status=413, message="too large")
    good = [traces_batch(5, seed=3), traces_batch(6, seed=4)]
    await consume_all(exporter, [good[0], GARBAGE, good[1]])
    await sink.wait_for_items(Signal.TRACES, 11)
    later = traces_batch(4, seed=5)
    await exporter.consume(later)  # the one worker is still there to deliver it
    await sink.wait_for_items(Signal.TRACES, 15)
    await exporter.shutdown(asyncio.get_running_loop().time() + 5)
    delivered = b"".join(r.body for r in sink.accepted)
    for batch in [*good, later]:
        assert batch.payload in delivered
    assert metric("sidecar_exporter_dropped_items_total", exporter=name, signal="traces",
                  reason="internal_error") == 0


async def test_the_file_exporter_writes_the_members_it_can_encode(tmp_path: Path) -> None:
    raw: dict[str, Any] = {"type": "file", "path": str(tmp_path), "batch": {"max_delay": 0.3}}
    cfg = FileConfig.model_validate(raw)
    exporter = ExportChain("iso-file", cfg, FileSender(cfg, frozenset({Signal.TRACES})))
    await exporter.start()
    good = [traces_batch(5, seed=6), traces_batch(2, seed=7)]
    await consume_all(exporter, [good[0], GARBAGE, good[1]])
    await exporter.shutdown(asyncio.get_running_loop().time() + 5)
    lines = (tmp_path / "traces.jsonl").read_bytes().splitlines()
    spans = sum(len(ss["spans"]) for line in lines
                for rs in orjson.loads(line)["resourceSpans"] for ss in rs["scopeSpans"])
    assert spans == 7
    assert metric("sidecar_exporter_dropped_items_total", exporter="iso-file", signal="traces",
                  reason="malformed") == GARBAGE.items
