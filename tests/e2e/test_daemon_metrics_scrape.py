"""A real scrape of the running daemon's /metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.daemon import DaemonProcess


async def test_metrics_carry_no_created_series(
        short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # prometheus_client's own switch must not be what turns them off
    monkeypatch.delenv("PROMETHEUS_DISABLE_CREATED_SERIES", raising=False)
    daemon = DaemonProcess(short_tmp, exporters={"local": {"type": "file",
                                                           "path": str(short_tmp / "export")}})
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(f"{daemon.admin_url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    finally:
        code, _, err = await daemon.stop()
    assert code == 0, err
    samples = [s.name for family in text_string_to_metric_families(text)
               for s in family.samples]
    assert "sidecar_exporter_sent_items_total" in samples  # counters are there
    assert "sidecar_exporter_send_duration_seconds_count" in samples  # and histograms
    assert [name for name in samples if name.endswith("_created")] == []
