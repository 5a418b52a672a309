"""Config -> pipeline graph. Exporters are built first and started first (downstream-first),
so a receiver never hands data to something not yet running; on stop the order reverses."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.component import BuildContext, ExporterComponent, exporter_factories
from sidecar.config import Config
from sidecar.model import Signal
from sidecar.pipeline.fanout import Fanout


@dataclass(slots=True)
class Graph:
    exporters: dict[str, ExporterComponent]
    consumers: dict[Signal, Fanout]

    async def start(self) -> None:
        started: list[ExporterComponent] = []
        try:
            for exporter in self.exporters.values():
                await exporter.start()
                started.append(exporter)
        except BaseException:
            deadline = asyncio.get_running_loop().time()
            for exporter in reversed(started):
                await exporter.shutdown(deadline)
            raise

    async def shutdown(self, deadline: float) -> None:
        """Drain every exporter at once: each delivers what it holds until `deadline`."""
        await asyncio.gather(*(e.shutdown(deadline) for e in self.exporters.values()))


def build_graph(config: Config) -> Graph:
    """Build without I/O (also the `validate` dry run)."""
    context = BuildContext(storage_dir=config.storage.dir)
    factories = exporter_factories()
    used = {name for signal in Signal for name in config.exporters_for(signal)}
    exporters: dict[str, ExporterComponent] = {}
    for name, settings in config.exporters.items():
        if name in used:
            exporters[name] = factories[settings.type].create(name, settings, context)
    consumers = {
        signal: Fanout(signal, [exporters[n] for n in config.exporters_for(signal)])
        for signal in Signal
        if config.exporters_for(signal)
    }
    return Graph(exporters, consumers)
