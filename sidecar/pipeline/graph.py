"""Config -> pipeline graph. Exporters are built first and started first (downstream-first),
so a receiver never hands data to something not yet running; on stop the order reverses.
Processors are built once, in their fixed order, and each signal's stage takes those that
apply to it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.component import (
    BuildContext,
    ExporterComponent,
    Processor,
    exporter_factories,
    processor_factories,
)
from sidecar.config import Config
from sidecar.model import Signal
from sidecar.pipeline.fanout import Fanout


@dataclass(slots=True)
class Graph:
    exporters: dict[str, ExporterComponent]
    consumers: dict[Signal, Fanout]
    processors: tuple[Processor, ...] = ()

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
    consumers = {
        signal: Fanout(signal, [exporters[n] for n in names], processors)
        for signal, names in routes.items()
        if names
    }
    return Graph(exporters, consumers, processors)
