"""/readyz: 503 while starting or stopping, and naming a component whose task died."""

from __future__ import annotations

import aiohttp

from sidecar.admin import AdminServer
from sidecar.telemetry.health import HEALTH, Health


async def test_readyz_names_a_component_that_failed_recently() -> None:
    HEALTH.clear()
    admin = AdminServer("127.0.0.1:0")
    await admin.start()
    url = f"http://127.0.0.1:{admin.bound_port}/readyz"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                assert response.status == 503  # not ready yet
            admin.set_ready(True)
            async with session.get(url) as response:
                assert response.status == 200
            HEALTH.failed("exporter dd", "task dd-worker-0 failed: KeyError: 'x'")
            async with session.get(url) as response:
                assert response.status == 503
                body = await response.json()
            assert body == {"status": "degraded",
                            "components": {"exporter dd": "task dd-worker-0 failed: KeyError: 'x'"}}
    finally:
        HEALTH.clear()
        await admin.shutdown(0)


def test_a_failure_stops_counting_after_the_window() -> None:
    now = [100.0]
    health = Health(window=60, clock=lambda: now[0])
    health.failed("exporter a", "boom")
    assert health.problems() == {"exporter a": "boom"}
    now[0] += 59
    assert health.problems() == {"exporter a": "boom"}
    now[0] += 2
    assert health.problems() == {}
