"""Fan-out over durable queues: one write per request for every durable exporter of the
signal, all-or-nothing with the memory queues beside them, refused whole when the disk is."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar import config as config_module
from sidecar.errors import StorageFullError
from sidecar.model import Signal
from sidecar.pipeline.graph import build_graph
from sidecar.testing import traces_batch


def config(tmp_path: Path) -> config_module.Config:
    def file(name: str, **extra: object) -> dict[str, object]:
        return {"type": "file", "path": str(tmp_path / name), "batch": {"max_delay": 60},
                **extra}

    return config_module.from_tree({
        "storage": {"dir": str(tmp_path / "data")},
        "exporters": {"a": file("a"), "b": file("b"), "m": file("m", queue={"type": "memory"})},
        "pipelines": {"traces": ["a", "b", "m"], "logs": ["a"], "metrics": ["a"]},
        "processors": {"redact": {"enabled": False}, "cost": {"enabled": False}},
    })


async def test_one_write_serves_every_durable_exporter(tmp_path: Path) -> None:
    graph = build_graph(config(tmp_path))
    await graph.start()
    try:
        for _ in range(3):
            await graph.consumers[Signal.TRACES].consume(traces_batch(4))
        log = graph.logs[Signal.TRACES]
        assert log.wal.disk_records == 3  # not 6: a and b share the write
        assert set(log.cursors) == {"a", "b"}
        assert {s for s, lg in graph.logs.items() if "a" in lg.cursors} == set(Signal)
        assert [graph.exporters[n].pending_items() for n in "abm"] == [12, 12, 12]
    finally:
        await graph.shutdown(asyncio.get_running_loop().time())


async def test_a_refused_write_admits_the_request_nowhere(tmp_path: Path) -> None:
    graph = build_graph(config(tmp_path))
    await graph.start()
    try:
        await graph.logs[Signal.TRACES].wal.close()  # every append now fails
        with pytest.raises(StorageFullError):
            await graph.consumers[Signal.TRACES].consume(traces_batch(4))
        assert [graph.exporters[n].pending_items() for n in "abm"] == [0, 0, 0]
    finally:
        await graph.shutdown(asyncio.get_running_loop().time())
