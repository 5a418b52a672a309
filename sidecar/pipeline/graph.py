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
from sidecar.config import CoalesceConfig, Config
from sidecar.errors import StartupError
from sidecar.exporthelper.chain import ExportChain
from sidecar.exporthelper.deadletter import DeadLetterBox
from sidecar.exporthelper.durable import DurableQueue, LogSettings, SharedLog
from sidecar.model import Signal
from sidecar.pipeline.fanout import Fanout
from sidecar.reload import ReloadPlan
from sidecar.telemetry.health import HEALTH


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
        (a durable queue keeps the rest on disk), then close the logs. Requests still
        waiting to be coalesced go into the queues first."""
        await asyncio.gather(*(f.drain() for f in self.consumers.values()))
        await asyncio.gather(*(e.shutdown(deadline) for e in self.exporters.values()))
        for queue_log in self.logs.values():
            await queue_log.close()


class Switch:
    """A signal's pipeline as receivers see it. A reload points it at a new fan-out
    without touching the receivers; `consume` is the fan-out's own bound method, so a
    request pays no extra call."""

    __slots__ = ("consume", "fanout", "wait_for_room")

    def __init__(self, fanout: Fanout) -> None:
        self.point(fanout)

    def point(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.consume = fanout.consume
        self.wait_for_room = fanout.wait_for_room


def build_processors(config: Config) -> tuple[Processor, ...]:
    built = []
    for factory in processor_factories():
        settings = config.processors.get(factory.type_name) or factory.config_type()
        if settings.enabled:
            built.append(factory.create(settings))
    return tuple(built)


def build_graph(config: Config) -> Graph:
    """Build without I/O (also the `validate` dry run)."""
    routes = {signal: config.exporters_for(signal) for signal in Signal}
    exporters = {name: exporter for name in config.exporters
                 if (exporter := _build_exporter(config, name, routes)) is not None}
    processors = build_processors(config)
    logs: dict[Signal, SharedLog] = {}
    attach_durable_queues(config, exporters, routes, logs)
    return Graph(exporters, _fanouts(routes, exporters, processors, logs,
                                     config.pipelines.coalesce), processors, logs)


def _build_exporter(config: Config, name: str,
                    routes: dict[Signal, list[str]]) -> ExporterComponent | None:
    signals = frozenset(s for s, names in routes.items() if name in names)
    if not signals:
        return None  # in no pipeline: not built
    settings = config.exporters[name]
    return exporter_factories()[settings.type].create(name, settings,
                                                      BuildContext(signals=signals))


def _fanouts(routes: dict[Signal, list[str]], exporters: dict[str, ExporterComponent],
             processors: tuple[Processor, ...], logs: dict[Signal, SharedLog],
             coalesce: CoalesceConfig) -> dict[Signal, Fanout]:
    return {
        signal: Fanout(signal, [exporters[n] for n in names], processors, logs.get(signal),
                       logs[signal].cursors if signal in logs else (), coalesce)
        for signal, names in routes.items()
        if names
    }


def attach_durable_queues(config: Config, exporters: dict[str, ExporterComponent],
                          routes: dict[Signal, list[str]], logs: dict[Signal, SharedLog],
                          only: frozenset[str] | None = None) -> None:
    """Give each exporter with `queue.type: durable` its cursors (no I/O until `open`), and
    every exporter built on the shared chain its dead-letter box. `logs` holds the signals'
    logs (a reload passes the running ones; new ones are added) and `only` limits the work
    to the exporters a reload built anew."""
    storage = config.storage
    settings = LogSettings(segment_bytes=storage.segment_bytes, fsync=storage.fsync,
                           fsync_interval=storage.fsync_interval,
                           memory_window=storage.memory_window)
    for name, exporter in exporters.items():
        if not isinstance(exporter, ExportChain) or (only is not None and name not in only):
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


async def reconfigure(graph: Graph, new: Config, plan: ReloadPlan,
                      deadline: float) -> Graph:
    """The graph for `new`, keeping what `plan` says is unchanged running (the same
    exporter objects, their queues and in-flight sends). Changed and removed exporters are
    stopped first (they deliver until `deadline`; a durable one leaves the rest in the log,
    where its successor of the same name picks it up, leases included); then the new ones
    start and the fan-outs are rebuilt. Meanwhile the old fan-outs refuse with backpressure
    (clients retry), so nothing is accepted that no exporter will take."""
    routes = {signal: new.exporters_for(signal) for signal in Signal}
    rebuilt = frozenset(plan.added) | frozenset(plan.changed)
    # built before anything stops: a factory's error leaves the running graph untouched
    exporters: dict[str, ExporterComponent] = {}
    for name in new.exporters:
        if name in rebuilt:
            built = _build_exporter(new, name, routes)
            if built is not None:
                exporters[name] = built
        elif name in graph.exporters:
            exporters[name] = graph.exporters[name]
    processors = build_processors(new) if plan.processors_changed else graph.processors
    stopping = [graph.exporters[n] for n in (*plan.changed, *plan.removed)
                if n in graph.exporters]
    # what waits to be coalesced goes in while its exporters still take it
    await asyncio.gather(*(f.drain() for f in graph.consumers.values()))
    await asyncio.gather(*(e.shutdown(deadline) for e in stopping))
    logs = dict(graph.logs)
    for exporter in stopping:
        if isinstance(exporter, ExportChain) and isinstance(exporter.queue, DurableQueue):
            for cursor in exporter.queue.cursors:
                cursor.release()
    attach_durable_queues(new, exporters, routes, logs, only=rebuilt)
    # cursors of exporters that no longer read a signal's log
    for queue_log in logs.values():
        for name in list(queue_log.cursors):
            reader = exporters.get(name)
            reads = (isinstance(reader, ExportChain)
                     and isinstance(reader.queue, DurableQueue)
                     and any(c is queue_log.cursors[name] for c in reader.queue.cursors))
            if not reads:
                await queue_log.detach(name)
    for queue_log in logs.values():
        await queue_log.open()  # new logs scan and recover; running ones return at once
        await queue_log.persist()  # a new cursor is on disk before data is accepted
    failed: list[str] = []
    for name in sorted(rebuilt):
        if name in exporters:
            try:
                await exporters[name].start()
            except StartupError as exc:
                # left in the graph, not running: its pipelines answer backpressure (clients
                # retry, nothing is lost) until a reload fixes it; /readyz names it
                HEALTH.failed(f"exporter {name}", str(exc))
                failed.append(str(exc))
    reconfigured = Graph(exporters, _fanouts(routes, exporters, processors, logs,
                                             new.pipelines.coalesce), processors, logs)
    if failed:
        raise ReconfigureError("; ".join(failed), reconfigured)
    return reconfigured


class ReconfigureError(Exception):
    """Some rebuilt exporters failed to start; `graph` is what now runs (without them)."""

    def __init__(self, message: str, graph: Graph) -> None:
        super().__init__(message)
        self.graph = graph
