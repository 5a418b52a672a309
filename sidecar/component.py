"""Contracts between pipeline stages, and the registries of receiver and exporter types.

Data moves one way: a receiver holds only the `Consumer` of its signal; processors are pure
functions of a batch; receivers and exporters are built by factories registered by type name
(OpenTelemetry Collector: component = config + factory + implementation)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

from sidecar.configtypes import Strict
from sidecar.model import Batch, Signal, Work

if TYPE_CHECKING:
    from pydantic import BaseModel

    from sidecar.exporthelper.settings import ExporterSettings


class Consumer(Protocol):
    """Accepts a batch or raises `PipelineFullError` (backpressure) without keeping it."""

    async def consume(self, batch: Batch) -> None: ...

    async def wait_for_room(self, nbytes: int) -> None:
        """Return once a batch of `nbytes` would be admitted (a hint: `consume` may still
        refuse if another client took the room first). Stream receivers stop reading their
        socket, await this, then try again, instead of polling."""


class Processor(Protocol):
    """A pure, synchronous transform of one request: no I/O, no awaits.

    `process` reads `work.payload` (bytes) and/or `work.message` (parsed on first use) and
    may edit the message in place; it never serializes. `mutates` says whether it may edit:
    the stage re-serializes after a mutating processor read the message, and never after a
    read-only one (so a read-only processor must not edit). Raising fails the request with
    an internal error to the client (nothing half-processed goes on)."""

    name: str
    mutates: bool
    signals: frozenset[Signal]

    def process(self, work: Work) -> None: ...


@runtime_checkable
class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def shutdown(self, deadline: float) -> None:
        """Stop, finishing in-flight work until the loop-time `deadline`."""


class ExporterComponent(Consumer, Lifecycle, Protocol):
    """What the pipeline sees of an exporter: admission control plus lifecycle."""

    name: str

    def has_room(self, batch: Batch) -> bool:
        """Whether `consume(batch)` would be admitted now (fan-out admits all or none)."""
        ...

    async def wait_for_room(self, nbytes: int) -> None: ...

    def pending_items(self) -> int:
        """Items accepted and not yet delivered or dropped."""
        ...

    def describe(self) -> str:
        """One line for the startup banner: where this exporter's data goes."""
        ...


@dataclass(frozen=True, slots=True)
class BuildContext:
    # the signals whose pipelines route to the component being built
    signals: frozenset[Signal] = field(default_factory=lambda: frozenset(Signal))
    # `storage.dir`: where components keep state across restarts (file-tail checkpoints)
    storage_dir: Path = Path("./data")


ExporterCreate = Callable[[str, "ExporterSettings", BuildContext], ExporterComponent]


@dataclass(frozen=True, slots=True)
class ExporterFactory:
    type_name: str
    config_type: type[ExporterSettings]
    create: ExporterCreate


class _HasTypeName(Protocol):
    @property
    def type_name(self) -> str: ...


F = TypeVar("F", bound=_HasTypeName)


class _Registry(Generic[F]):
    """Factories of one component kind by type name; a name registered twice is a bug."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.factories: dict[str, F] = {}

    def add(self, factory: F) -> F:
        if factory.type_name in self.factories:
            raise ValueError(f"{self.kind} type {factory.type_name!r} registered twice")
        self.factories[factory.type_name] = factory
        return factory


_EXPORTERS: _Registry[ExporterFactory] = _Registry("exporter")


def register_exporter(factory: ExporterFactory) -> ExporterFactory:
    return _EXPORTERS.add(factory)


def exporter_factories() -> dict[str, ExporterFactory]:
    # Importing the package registers every built-in exporter type.
    import sidecar.exporters  # noqa: F401

    return dict(_EXPORTERS.factories)


class ProcessorSettings(Strict):
    """Base of every processor config (`processors.<type>`); the key selects the factory."""

    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ProcessorFactory:
    type_name: str
    config_type: type[ProcessorSettings]
    # place in the fixed order of application (redaction 10, span metrics 15, cost 20):
    # nothing unredacted reaches a later processor, whatever the YAML order
    order: int
    create: Callable[[ProcessorSettings], Processor]


_PROCESSORS: _Registry[ProcessorFactory] = _Registry("processor")


def register_processor(factory: ProcessorFactory) -> ProcessorFactory:
    if any(f.order == factory.order for f in _PROCESSORS.factories.values()):
        raise ValueError(f"processor order {factory.order} taken")
    return _PROCESSORS.add(factory)


def unregister_processor(type_name: str) -> None:
    """For tests that plant a processor type."""
    _PROCESSORS.factories.pop(type_name, None)


def processor_factories() -> list[ProcessorFactory]:
    """Every processor type, in order of application."""
    import sidecar.processors  # noqa: F401  (registers the built-in types)

    return sorted(_PROCESSORS.factories.values(), key=lambda f: f.order)


# --- receivers -------------------------------------------------------------------------------

class ReceiverComponent(Lifecycle, Protocol):
    """What the daemon sees of a receiver: lifecycle plus its banner lines. Its `name` (the
    config section, e.g. "otlp") is the `receiver` label on its metrics."""

    name: str

    def describe(self) -> list[str]:
        """One banner line per listener, with the address actually bound once started."""
        ...


ReceiverCreate = Callable[
    [str, "BaseModel", Mapping[Signal, Consumer], BuildContext], ReceiverComponent]


@dataclass(frozen=True, slots=True)
class ReceiverFactory:
    """`type_name` is also the receiver's section under `receivers:` in the config."""

    type_name: str
    config_type: type[BaseModel]
    create: ReceiverCreate


_RECEIVERS: _Registry[ReceiverFactory] = _Registry("receiver")


def register_receiver(factory: ReceiverFactory) -> ReceiverFactory:
    return _RECEIVERS.add(factory)


def receiver_factories() -> dict[str, ReceiverFactory]:
    # Importing the package registers every built-in receiver type.
    import sidecar.receivers  # noqa: F401

    return dict(_RECEIVERS.factories)
