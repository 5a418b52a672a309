"""`reconfigure`: a changed durable exporter hands its cursor, with what it had leased and
never acked, to its successor; a kept exporter is the same object; a removed one's cursor is
gone from the log. A real OTLP sink answering UNAVAILABLE keeps the records leased (the old
exporter is retrying them) when the reload stops it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sidecar import config as config_module
from sidecar.model import Signal
from sidecar.pipeline.graph import build_graph, reconfigure
from sidecar.reload import plan
from sidecar.testing import OtlpSink, traces_batch


def tree(tmp_path: Path, sink: OtlpSink, **exporters: Any) -> config_module.Config:
    """`up` (durable, to the sink), `keep` (a file) and any others."""
    return config_module.from_tree({
        "storage": {"dir": str(tmp_path / "data")},
        "exporters": {
            "up": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
                   "timeout": "30s", "batch": {"max_delay": "10ms"}},
            "keep": {"type": "file", "path": str(tmp_path / "keep")},
            **exporters},
        "processors": {"redact": {"enabled": False}, "cost": {"enabled": False}},
    })


async def test_a_changed_durable_exporter_redelivers_its_leases(tmp_path: Path) -> None:
    async with OtlpSink() as sink:
        old = tree(tmp_path, sink, gone={"type": "file", "path": str(tmp_path / "gone")})
        graph = build_graph(old)
        await graph.start()
        loop = asyncio.get_running_loop()
        try:
            sink.fail_next(10_000)  # every send fails: its records stay leased, retried
            sent = [traces_batch(10, seed=i) for i in range(6)]
            for batch in sent[:5]:
                await graph.consumers[Signal.TRACES].consume(batch)
            up = graph.logs[Signal.TRACES].cursors["up"]
            for _ in range(100):  # bounded: the workers take leases
                if up.leased:
                    break
                await asyncio.sleep(0.02)
            assert up.leased
            kept = graph.exporters["keep"]

            changed = config_module.from_tree({
                "storage": {"dir": str(tmp_path / "data")},
                "exporters": {
                    "up": {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
                           "timeout": "30s", "batch": {"max_delay": "10ms", "max_items": 7}},
                    "keep": {"type": "file", "path": str(tmp_path / "keep")}},
                "processors": {"redact": {"enabled": False}, "cost": {"enabled": False}},
            })
            change = plan(old, changed)
            assert (change.changed, change.removed, change.kept) == (("up",), ("gone",),
                                                                    ("keep",))
            graph = await reconfigure(graph, changed, change, loop.time() + 0.2)
            assert graph.exporters["keep"] is kept
            assert "gone" not in graph.logs[Signal.TRACES].cursors
            assert graph.logs[Signal.TRACES].cursors["up"] is up
            sink.clear()  # the destination is back; nothing was accepted before
            await graph.consumers[Signal.TRACES].consume(sent[5])
            await sink.wait_for_items(Signal.TRACES, 60, timeout=20)
        finally:
            await graph.shutdown(loop.time() + 2)
    # every span of the six requests arrived: the five the old exporter held went through
    # its successor
    expected = {s.span_id for b in sent for rs in b.message.resource_spans
                for ss in rs.scope_spans for s in ss.spans}
    assert len(expected) == 60
    assert {s.span_id for s in sink.spans()} >= expected
