"""`type: file` - OTLP-JSON lines on local disk: `traces.jsonl`, `logs.jsonl`, `metrics.jsonl`.

Each line is one Export*ServiceRequest in the OTLP JSON mapping (lowerCamelCase keys,
enums as integers, trace and span ids as hex), so `otel-cli`, the Collector's `otlpjsonfile`
receiver or `jq` can read it back. Files rotate by size: `traces.jsonl.1` is the newest
rotated file, `.{max_files}` the oldest."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
from pydantic import Field, field_validator

from sidecar.component import BuildContext, ExporterComponent, ExporterFactory, register_exporter
from sidecar.configtypes import ByteSize, Strict
from sidecar.errors import RetryableError, StartupError
from sidecar.exporthelper.chain import ExportChain
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Batch, Signal
from sidecar.otlp_json import request_to_dict

# Writes below this size go to the page cache in microseconds, cheaper than a thread hop;
# bigger ones run in a thread so a slow disk never stalls the event loop.
_WRITE_OFF_LOOP = 1024 * 1024
_CLOSE_WAIT = 10.0  # seconds for a local write in flight to finish at close

class RotationSettings(Strict):
    max_bytes: ByteSize = Field(default=100 * 1024 * 1024, gt=0)
    max_files: int = Field(default=5, ge=0)  # rotated files kept besides the live one


class FileConfig(ExporterSettings):
    type: Literal["file"] = "file"
    path: Path = Path("./data/export")  # a directory
    rotation: RotationSettings | None = RotationSettings()  # null: never rotate
    # lines are written uncompressed (greppable, `tail -f`-able): only "none" is accepted,
    # so a `gzip` copied from an otlp exporter is an error instead of silently ignored
    compression: Literal["none"] = "none"

    @field_validator("compression", mode="before")
    @classmethod
    def _uncompressed(cls, value: object) -> object:
        if value != "none":
            raise ValueError(f"{value!r} is not supported: the file exporter writes "
                             "uncompressed lines (only 'none' is accepted)")
        return value


def to_otlp_json(batch: Batch) -> dict[str, Any]:
    """The request as an OTLP-JSON document."""
    return request_to_dict(batch.signal, batch.message)


class _JsonlFile:
    """One signal's live file with size-based rotation."""

    def __init__(self, path: Path, rotation: RotationSettings | None) -> None:
        self.path = path
        self.rotation = rotation
        self.lock = asyncio.Lock()
        self._file: BinaryIO = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        r = self.rotation
        if r is not None and self._size > 0 and self._size + len(data) > r.max_bytes:
            self._rotate(r.max_files)
        self._file.write(data)
        self._file.flush()  # readers (tail -f, tests) see whole lines at once
        self._size += len(data)

    def _rotate(self, keep: int) -> None:
        self._file.close()
        if keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            self.path.with_name(f"{self.path.name}.{keep}").unlink(missing_ok=True)
            for i in range(keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    older.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


class FileSender:
    def __init__(self, config: FileConfig, signals: frozenset[Signal]) -> None:
        self.config = config
        self.signals = signals
        self._files: dict[Signal, _JsonlFile] = {}
        # writes running in threads; close() waits for them, since cancelling the task
        # that awaits one (shutdown deadline) does not stop the thread
        self._writes: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        path = self.config.path
        try:
            path.mkdir(parents=True, exist_ok=True)
            for signal in sorted(self.signals):
                self._open(signal)
        except OSError as exc:
            await self.close()
            raise StartupError(f"path: {path}: {exc.strerror or exc}") from exc

    async def send(self, batch: Batch) -> int:
        line = orjson.dumps(to_otlp_json(batch)) + b"\n"
        try:
            target = self._files.get(batch.signal) or self._open(batch.signal)
            async with target.lock:
                if len(line) > _WRITE_OFF_LOOP:
                    write = asyncio.ensure_future(asyncio.to_thread(target.write, line))
                    self._writes.add(write)
                    write.add_done_callback(self._writes.discard)
                    await asyncio.shield(write)
                else:
                    target.write(line)
        except OSError as exc:
            # a full disk can recover; the chain's max_elapsed bounds the retries
            raise RetryableError(f"{self.config.path}: {exc.strerror or exc}") from exc
        return 0

    def _open(self, signal: Signal) -> _JsonlFile:
        # files for signals the pipelines do not route here are opened on first use
        target = _JsonlFile(self.config.path / f"{signal.value}.jsonl", self.config.rotation)
        self._files[signal] = target
        return target

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=_CLOSE_WAIT)
        for target in self._files.values():
            target.close()
        self._files.clear()

    def describe(self) -> str:
        return f"file {os.path.abspath(self.config.path)}/{{traces,logs,metrics}}.jsonl"


def create(name: str, settings: ExporterSettings, ctx: BuildContext) -> ExporterComponent:
    assert isinstance(settings, FileConfig)
    return ExportChain(name, settings, FileSender(settings, ctx.signals))


FACTORY = register_exporter(ExporterFactory("file", FileConfig, create))
