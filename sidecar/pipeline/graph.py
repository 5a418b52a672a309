"""Config -> pipeline graph. Exporters are built first and started first (downstream-first),
so a receiver never hands data to something not yet running; on stop the order reverses.
Processors are built once, in their fixed order, and each signal's stage takes those that
apply to it.

Durable queues: one `SharedLog` per signal under `<storage.dir>/queue/<signal>/`, with a
cursor for each exporter of that signal whose `queue.type` is durable (the default); an
exporter in several pipelines reads several logs through one `DurableQueue`. Logs open
(scan, recover) before any exporter starts and close after every exporter stopped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sidecar.component import (
    BuildContext,
    ExporterComponent,
    Processor,
    exporter_factories,
    processor_factories,
)
from sidecar.config import Config
from sidecar.exporthelper.chain import ExportChain
from sidecar.exporthelper.deadletter import DeadLetterBox
from sidecar.exporthelper.durable import DurableQueue, LogSettings, SharedLog
from sidecar.model import Signal
from sidecar.pipeline.fanout import Fanout


@dataclass(slots=True)
class Graph:
    exporters: dict[str, ExporterComponent]
    consumers: dict[Signal, Fanout]
    processors: tuple[Processor, ...] = ()
    logs: dict[Signal, SharedLog] = field(default_factory=dict)

    async def start(self) -> None:
        started: list[ExporterComponent] = []
        try:
            for queue_log in self.logs.values():
                await queue_log.open()
            for exporter in self.exporters.values():
                await exporter.start()
                started.append(exporter)
        except BaseException:
            deadline = asyncio.get_running_loop().time()
            for exporter in reversed(started):
                await exporter.shutdown(deadline)
            for queue_log in self.logs.values():
                await queue_log.close()
            raise

    async def shutdown(self, deadline: float) -> None:
        """Drain every exporter at once: each delivers what it holds until `deadline`
        (a durable queue keeps the rest on disk), then close the logs."""
        await asyncio.gather(*(e.shutdown(deadline) for e in self.exporters.values()))
        for queue_log in self.logs.values():
            await queue_log.close()


def build_processors(config: Config) -> tuple[Processor, ...]:
    built = []
    for factory in processor_factories():
        settings = config.processors.get(factory.type_name) or factory.config_type()
        if settings.enabled:
            built.append(factory.create(settings))
    return tuple(built)


def build_graph(config: Config) -> Graph:
    """Build without I/O (also the `validate` dry run)."""
    factories = exporter_factories()
    routes = {signal: config.exporters_for(signal) for signal in Signal}
    exporters: dict[str, ExporterComponent] = {}
    for name, settings in config.exporters.items():
        signals = frozenset(s for s, names in routes.items() if name in names)
        if signals:
            context = BuildContext(signals=signals)
            exporters[name] = factories[settings.type].create(name, settings, context)
    processors = build_processors(config)
    logs = attach_durable_queues(config, exporters, routes)
    consumers = {
        signal: Fanout(signal, [exporters[n] for n in names], processors, logs.get(signal),
                       logs[signal].cursors if signal in logs else ())
        for signal, names in routes.items()
        if names
    }
    return Graph(exporters, consumers, processors, logs)


def attach_durable_queues(config: Config, exporters: dict[str, ExporterComponent],
                          routes: dict[Signal, list[str]]) -> dict[Signal, SharedLog]:
    """Give each exporter with `queue.type: durable` its cursors (no I/O until `open`), and
    every exporter built on the shared chain its dead-letter box."""
    storage = config.storage
    settings = LogSettings(segment_bytes=storage.segment_bytes, fsync=storage.fsync,
                           fsync_interval=storage.fsync_interval,
                           memory_window=storage.memory_window)
    logs: dict[Signal, SharedLog] = {}
    for name, exporter in exporters.items():
        if not isinstance(exporter, ExportChain):
            continue
        exporter.deadletters = DeadLetterBox(storage.dir / "deadletter", name,
                                             storage.deadletter_max_bytes)
        queue_settings = config.exporters[name].queue
        if queue_settings.type != "durable":
            continue
        cursors = []
        for signal, names in routes.items():
            if name in names:
                if signal not in logs:
                    logs[signal] = SharedLog(signal, storage.dir / "queue" / signal.value,
                                             settings)
                cursors.append(logs[signal].cursor(name))
        exporter.attach_queue(DurableQueue(name, queue_settings.max_bytes,
                                           queue_settings.when_full, cursors))
    return logs
