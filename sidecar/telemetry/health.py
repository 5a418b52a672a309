"""What `/readyz` reports beyond "started": components whose tasks died recently.

A long-running task (an exporter's batcher or worker) runs under `supervised`: if it dies
from an exception it is logged, counted, recorded here and restarted after a short pause,
so one bug costs at most the batch in hand, never the component. `/readyz` answers 503
naming the component for `window` seconds after its last failure, so an orchestrator and
an operator see it even though the daemon recovered on its own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sidecar.telemetry.metrics import COMPONENT_RESTARTS

log = logging.getLogger("sidecar")

_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


class Health:
    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.window = window
        self._clock = clock
        self._failures: dict[str, tuple[float, str]] = {}

    def failed(self, component: str, reason: str) -> None:
        self._failures[component] = (self._clock(), reason)

    def problems(self) -> dict[str, str]:
        """component -> last failure, for failures within the window."""
        now = self._clock()
        return {name: reason for name, (when, reason) in self._failures.items()
                if now - when < self.window}

    def clear(self) -> None:
        self._failures.clear()


HEALTH = Health()


def supervised(component: str, name: str,
               run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
    """A task running `run()` until it returns or is cancelled, restarted whenever it
    raises (pausing 0.1 s, doubling up to 5 s between crashes in a row)."""

    async def loop() -> None:
        pause = _FIRST_PAUSE
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except Exception as exc:
                COMPONENT_RESTARTS.labels(component).inc()
                HEALTH.failed(component, f"task {name} failed: {type(exc).__name__}: {exc}")
                log.exception("%s: task %s failed; restarting", component, name,
                              extra={"component": component})
                if time.monotonic() - started > _MAX_PAUSE:
                    pause = _FIRST_PAUSE  # it had been running fine: not a crash loop
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)

    return asyncio.create_task(loop(), name=name)
