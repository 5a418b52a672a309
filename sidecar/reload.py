"""Hot reload: what a new config changes, decided before anything is touched.

`plan(old, new)` compares the running config with a validated new one, section by section
(config models are frozen pydantic models, so `==` compares values). The daemon then
applies the plan (`app.Daemon.reload`): components whose settings did not change keep
running untouched; changed or removed exporters drain into their queue and stop (a durable
queue keeps what is left on disk for the successor of the same name); added and changed
exporters start; receivers are restarted (and rebind) only when their own section changed
or the set of signals with a pipeline did. Sections that hold state which cannot move to a
new instance without loss or a window of refusals (`storage`, `cache`, `admin`,
`service`) make the reload fail with "restart required"; nothing is changed then."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import Config
from sidecar.model import Signal

RESTART_SECTIONS = ("storage", "cache", "admin", "service")


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    restart_required: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    kept: tuple[str, ...]
    processors_changed: bool
    pipelines_changed: bool
    receivers: tuple[str, ...]  # receiver sections to restart

    @property
    def noop(self) -> bool:
        return not (self.added or self.removed or self.changed or self.processors_changed
                    or self.pipelines_changed or self.receivers)

    def describe(self) -> str:
        if self.restart_required:
            return "restart required: " + ", ".join(self.restart_required) + " changed"
        if self.noop:
            return "no change"
        parts = []
        for label, names in (("added", self.added), ("removed", self.removed),
                             ("changed", self.changed)):
            if names:
                parts.append(f"exporters {label}: {', '.join(names)}")
        if self.processors_changed:
            parts.append("processors changed")
        if self.pipelines_changed:
            parts.append("pipelines changed")
        if self.receivers:
            parts.append(f"receivers restarted: {', '.join(self.receivers)}")
        return "; ".join(parts)


def _routes(config: Config) -> dict[Signal, tuple[str, ...]]:
    return {s: tuple(config.exporters_for(s)) for s in Signal}


def _signals_of(config: Config, name: str) -> frozenset[Signal]:
    return frozenset(s for s, names in _routes(config).items() if name in names)


def plan(old: Config, new: Config) -> ReloadPlan:
    restart = tuple(s for s in RESTART_SECTIONS if getattr(old, s) != getattr(new, s))
    old_names, new_names = set(old.exporters), set(new.exporters)
    changed = tuple(sorted(
        n for n in old_names & new_names
        if old.exporters[n] != new.exporters[n] or _signals_of(old, n) != _signals_of(new, n)))
    kept = tuple(sorted((old_names & new_names) - set(changed)))
    old_routes, new_routes = _routes(old), _routes(new)
    signals_changed = ({s for s, n in old_routes.items() if n}
                       != {s for s, n in new_routes.items() if n})
    receivers = tuple(sorted(
        name for name, section in new.receivers
        if signals_changed or section != getattr(old.receivers, name)))
    return ReloadPlan(
        restart_required=restart,
        added=tuple(sorted(new_names - old_names)),
        removed=tuple(sorted(old_names - new_names)),
        changed=changed,
        kept=kept,
        processors_changed=old.processors != new.processors,
        pipelines_changed=old_routes != new_routes,
        receivers=receivers,
    )
