"""Config -> graph: what is built, in which order it starts and stops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from sidecar import config as config_module
from sidecar.component import (
    Processor,
    ProcessorFactory,
    ProcessorSettings,
    register_processor,
    unregister_processor,
)
from sidecar.errors import ConfigError, StartupError
from sidecar.exporters.file import FileSender
from sidecar.exporthelper.chain import ExportChain
from sidecar.model import Batch, Signal, Work
from sidecar.pipeline.graph import Graph, build_graph


class Named:
    mutates = False

    def __init__(self, name: str, signals: frozenset[Signal] = frozenset(Signal)) -> None:
        self.name = name
        self.signals = signals

    def process(self, work: Work) -> None: ...


class OnByDefault(ProcessorSettings):
    pass


class OffByDefault(ProcessorSettings):
    enabled: bool = False


def planted(processors: Iterable[Processor]) -> list[str]:
    """The names of this module's processors (built-in types run beside them)."""
    return [p.name for p in processors if p.name in ("first", "second")]


@pytest.fixture
def two_processors() -> Iterator[None]:
    # registered in the opposite of their order, to show the order is not registration's
    register_processor(ProcessorFactory("test_second", OffByDefault, 992,
                                        lambda _s: Named("second")))
    register_processor(ProcessorFactory("test_first", OnByDefault, 991,
                                        lambda _s: Named("first", frozenset({Signal.TRACES}))))
    yield
    unregister_processor("test_second")
    unregister_processor("test_first")


def test_only_routed_exporters_are_built_and_know_their_signals() -> None:
    cfg = config_module.from_tree({
        "exporters": {"a": {"type": "file", "path": "/tmp/never-a"},
                      "b": {"type": "file", "path": "/tmp/never-b"},
                      "unused": {"type": "file", "path": "/tmp/never-c"}},
        "pipelines": {"traces": ["a", "b"], "logs": ["a"], "metrics": []},
    })
    graph = build_graph(cfg)
    assert set(graph.exporters) == {"a", "b"}
    assert set(graph.consumers) == {Signal.TRACES, Signal.LOGS}
    assert [e.name for e in graph.consumers[Signal.TRACES].exporters] == ["a", "b"]
    a, b = graph.exporters["a"], graph.exporters["b"]
    assert isinstance(a, ExportChain)
    assert isinstance(b, ExportChain)
    assert isinstance(a.sender, FileSender)
    assert isinstance(b.sender, FileSender)
    assert a.sender.signals == {Signal.TRACES, Signal.LOGS}
    assert b.sender.signals == {Signal.TRACES}


def test_processors_apply_in_fixed_order_whatever_the_yaml_says(two_processors: None) -> None:
    cfg = config_module.from_tree({
        "processors": {"test_second": {"enabled": True}, "test_first": {}},
        "exporters": {"a": {"type": "file", "path": "/tmp/never-a"}},
    })
    graph = build_graph(cfg)
    assert planted(graph.processors) == ["first", "second"]
    assert planted(graph.consumers[Signal.TRACES].stage.processors) == ["first", "second"]
    assert planted(graph.consumers[Signal.LOGS].stage.processors) == ["second"]


def test_a_processor_left_out_runs_with_its_defaults(two_processors: None) -> None:
    graph = build_graph(config_module.from_tree({}))
    assert planted(graph.processors) == ["first"]  # test_second is off by default


def test_unknown_processor_types_and_bad_settings_are_config_errors(
        two_processors: None) -> None:
    with pytest.raises(ConfigError) as caught:
        config_module.from_tree({"processors": {"nope": {}, "test_first": {"enabled": "x"},
                                                "test_second": {"colour": 1}}})
    text = str(caught.value)
    assert "processors.nope: unknown processor type" in text
    assert "processors.test_first.enabled" in text
    assert "processors.test_second.colour: unknown key" in text


class FakeExporter:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail = fail

    async def start(self) -> None:
        if self.fail:
            raise StartupError(f"exporters.{self.name}.endpoint: refused")
        self.log.append(f"start {self.name}")

    async def shutdown(self, deadline: float) -> None:
        self.log.append(f"stop {self.name}")

    async def consume(self, batch: Batch) -> None: ...

    async def wait_for_room(self, nbytes: int) -> None: ...

    def has_room(self, batch: Batch) -> bool:
        return True

    def pending_items(self) -> int:
        return 0

    def describe(self) -> str:
        return self.name


async def test_a_failed_start_stops_what_had_started() -> None:
    log: list[str] = []
    graph = Graph({"a": FakeExporter("a", log), "b": FakeExporter("b", log),
                   "c": FakeExporter("c", log, fail=True)}, {})
    with pytest.raises(StartupError, match=r"exporters\.c"):
        await graph.start()
    assert log == ["start a", "start b", "stop b", "stop a"]


async def test_shutdown_drains_every_exporter() -> None:
    log: list[str] = []
    graph = Graph({"a": FakeExporter("a", log), "b": FakeExporter("b", log)}, {})
    await graph.start()
    await graph.shutdown(0)
    assert sorted(log[2:]) == ["stop a", "stop b"]


def test_the_built_in_processors_run_in_their_fixed_order() -> None:
    # redaction, cost and span metrics are all on by default; span metrics read the message
    # before cost hands on bytes only
    assert [p.name for p in build_graph(config_module.from_tree({})).processors] == [
        "redact", "spanmetrics", "cost"]
    off = build_graph(config_module.from_tree({"processors": {"cost": {"enabled": False}}}))
    assert [p.name for p in off.processors] == ["redact", "spanmetrics"]
