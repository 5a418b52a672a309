"""What a reload changes, decided from two configs before anything is touched."""

from __future__ import annotations

from typing import Any

from sidecar import config
from sidecar.reload import plan

BASE: dict[str, Any] = {
    "exporters": {
        "a": {"type": "otlp", "endpoint": "http://127.0.0.1:4317"},
        "b": {"type": "file", "path": "./data/b"},
    },
}


def cfg(**changes: Any) -> config.Config:
    tree = {**BASE, **changes}
    return config.from_tree(tree)


def test_identical_configs_change_nothing() -> None:
    result = plan(cfg(), cfg())
    assert result.noop
    assert result.kept == ("a", "b")
    assert result.describe() == "no change"


def test_exporter_changes() -> None:
    new = cfg(exporters={
        "a": {"type": "otlp", "endpoint": "http://127.0.0.1:4317", "batch": {"max_items": 10}},
        "c": {"type": "file", "path": "./data/c"},
    })
    result = plan(cfg(), new)
    assert (result.added, result.removed, result.changed, result.kept) == (
        ("c",), ("b",), ("a",), ())
    assert result.pipelines_changed  # b left and c joined every pipeline
    assert result.receivers == ()  # the same signals still have pipelines
    assert result.restart_required == ()


def test_a_route_change_counts_as_a_change_of_that_exporter() -> None:
    new = cfg(pipelines={"traces": ["a", "b"], "logs": ["a", "b"], "metrics": ["a"]})
    result = plan(cfg(), new)
    assert result.changed == ("b",)
    assert result.kept == ("a",)
    assert result.receivers == ()


def test_losing_a_signal_restarts_the_receivers() -> None:
    new = cfg(pipelines={"traces": ["a"], "logs": ["a"], "metrics": []})
    assert set(plan(cfg(), new).receivers) == {"otlp", "logs"}


def test_a_changed_listener_restarts_only_its_receiver() -> None:
    new = cfg(receivers={"otlp": {"grpc": {"endpoint": "127.0.0.1:14317"}}})
    result = plan(cfg(), new)
    assert result.receivers == ("otlp",)
    assert not result.noop


def test_processors_and_restart_sections() -> None:
    result = plan(cfg(), cfg(processors={"redact": {"enabled": False}}))
    assert result.processors_changed
    assert result.kept == ("a", "b")
    restart = plan(cfg(), cfg(admin={"endpoint": "127.0.0.1:19464"},
                              storage={"dir": "/tmp/elsewhere"}))
    assert restart.restart_required == ("storage", "admin")
    assert restart.describe() == "restart required: storage, admin changed"
