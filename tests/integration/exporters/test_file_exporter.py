"""The file exporter through the whole chain, on a real temporary directory."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.protobuf import json_format

from sidecar.component import BuildContext, exporter_factories
from sidecar.errors import StartupError
from sidecar.exporters.file import FileConfig
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import REQUEST_TYPES, Batch, Signal
from sidecar.testing import logs_batch, metrics_batch, traces_batch

ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def file_exporter(path: Path, **overrides: Any) -> ExportChain:
    raw: dict[str, Any] = {"type": "file", "path": str(path), "batch": {"max_delay": 0},
                           "queue": {"concurrency": 1}, **overrides}
    exporter = exporter_factories()["file"].create(
        "local", FileConfig.model_validate(raw), BuildContext())
    assert isinstance(exporter, ExportChain)
    return exporter


async def stop(exporter: ExportChain) -> None:
    await exporter.shutdown(asyncio.get_running_loop().time() + 10)


def hex_ids_to_base64(node: Any) -> Any:
    """Undo OTLP JSON's one difference from proto3 JSON, so json_format can parse it."""
    if isinstance(node, dict):
        return {k: base64.b64encode(bytes.fromhex(v)).decode() if k in ID_KEYS
                else hex_ids_to_base64(v) for k, v in node.items()}
    if isinstance(node, list):
        return [hex_ids_to_base64(v) for v in node]
    return node


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_writes_one_otlp_json_request_per_line(tmp_path: Path) -> None:
    out = tmp_path / "export"
    exporter = file_exporter(out)
    await exporter.start()
    batches = {Signal.TRACES: traces_batch(3), Signal.LOGS: logs_batch(2),
               Signal.METRICS: metrics_batch(2)}
    for batch in batches.values():
        await exporter.consume(batch)
    await stop(exporter)
    for signal, batch in batches.items():
        (doc,) = lines(out / f"{signal.value}.jsonl")
        parsed = json_format.ParseDict(hex_ids_to_base64(doc), REQUEST_TYPES[signal]())
        assert parsed == batch.message


async def test_ids_are_hex_enums_integers_keys_lower_camel_case(tmp_path: Path) -> None:
    exporter = file_exporter(tmp_path)
    await exporter.start()
    batch = traces_batch(1, seed=7)
    await exporter.consume(batch)
    await stop(exporter)
    (doc,) = lines(tmp_path / "traces.jsonl")
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    original = batch.message.resource_spans[0].scope_spans[0].spans[0]  # type: ignore[union-attr]
    assert span["traceId"] == original.trace_id.hex()
    assert span["spanId"] == original.span_id.hex()
    assert span["parentSpanId"] == original.parent_span_id.hex()
    assert span["links"][0]["traceId"] == bytes(range(16)).hex()
    assert span["kind"] == 3  # SPAN_KIND_CLIENT as an integer
    assert "startTimeUnixNano" in span
    assert "start_time_unix_nano" not in span


async def test_size_rotation_keeps_max_files(tmp_path: Path) -> None:
    # measure one line by writing it, so the limit is independent of the encoder
    probe = tmp_path / "probe"
    exporter = file_exporter(probe)
    await exporter.start()
    await exporter.consume(traces_batch(2, seed=10))
    await stop(exporter)
    one_line = (probe / "traces.jsonl").stat().st_size

    out = tmp_path / "rot"
    exporter = file_exporter(out, rotation={"max_bytes": int(one_line * 2.5), "max_files": 2})
    await exporter.start()
    for seed in range(10, 17):  # 7 lines, 2 per file
        await exporter.consume(traces_batch(2, seed=seed))
    await stop(exporter)
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("traces"))
    assert names == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2"]

    def services(name: str) -> list[str]:
        return [doc["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"]
                for doc in lines(out / name)]

    assert services("traces.jsonl.2") == ["svc-12-0", "svc-13-0"]
    assert services("traces.jsonl.1") == ["svc-14-0", "svc-15-0"]
    assert services("traces.jsonl") == ["svc-16-0"]


async def test_large_requests_are_written_whole(tmp_path: Path) -> None:
    exporter = file_exporter(tmp_path, batch={"max_delay": 0, "max_items": 8000})
    await exporter.start()
    big = Batch.from_message(Signal.LOGS, logs_batch(9000).message)
    await exporter.consume(big)
    await stop(exporter)
    raw = (tmp_path / "logs.jsonl").read_bytes().splitlines()
    assert max(len(line) for line in raw) > 1024 * 1024  # above the off-loop threshold
    docs = [orjson.loads(line) for line in raw]
    assert sum(len(d["resourceLogs"][0]["scopeLogs"][0]["logRecords"]) for d in docs) == 9000


async def test_unwritable_path_fails_start_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    exporter = file_exporter(blocker / "export")
    with pytest.raises(StartupError, match=r"^exporters\.local\.path: .*a-file/export: "):
        await exporter.start()


def test_defaults_validate() -> None:
    cfg = FileConfig.model_validate({"type": "file"})
    assert cfg.path == Path("data/export")
    assert cfg.rotation is not None
    assert cfg.compression == "none"
