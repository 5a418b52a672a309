"""Signals to the real daemon under load: SIGHUP loses nothing; a second SIGTERM says what
it costs."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from sidecar.model import Signal
from sidecar.sample import agent_runs
from sidecar.testing import OtlpSink
from tests.e2e.test_lifecycle import send_runs
from tests.helpers.daemon import DaemonProcess


def upstream(sink: OtlpSink, queue: str = "durable") -> dict[str, object]:
    return {"type": "otlp", "protocol": "grpc", "endpoint": sink.grpc_endpoint,
            "retry": {"initial_interval": "50ms", "max_interval": "200ms"},
            "queue": {"type": queue}}


async def test_sighup_under_load_keeps_the_daemon_and_every_span(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.stall()  # everything acknowledged is still queued when SIGHUP comes
        daemon = DaemonProcess(short_tmp, exporters={"upstream": upstream(sink)})
        await daemon.start()
        assert daemon.proc is not None
        sending = asyncio.create_task(send_runs(daemon.grpc_endpoint, 60, seed=3))
        await asyncio.sleep(0.2)
        daemon.proc.send_signal(signal.SIGHUP)
        acknowledged = await sending
        acknowledged += await send_runs(daemon.grpc_endpoint, 5, seed=4)  # still serving
        await asyncio.sleep(0.2)
        assert daemon.proc.poll() is None, "SIGHUP must not stop the daemon"
        sink.resume()
        code, _, err = await daemon.stop(timeout=30)
        assert code == 0, err
        assert "SIGHUP" in err
        assert sink.items(Signal.TRACES) == acknowledged


async def test_a_second_sigterm_exits_at_once_and_says_how_much_is_lost(
        short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.stall()
        # the memory queue: what it holds is lost, and the daemon says how much
        daemon = DaemonProcess(short_tmp, exporters={"upstream": upstream(sink, "memory")})
        await daemon.start()
        assert daemon.proc is not None
        acknowledged = await send_runs(daemon.grpc_endpoint, 20, seed=5)
        daemon.terminate()
        await asyncio.sleep(0.3)
        assert daemon.proc.poll() is None  # draining, waiting for the stalled peer
        daemon.proc.send_signal(signal.SIGTERM)
        code, _, err = await daemon.stop(timeout=10)
        sink.resume()
        assert code == 1
        match = re.search(r"(\d+) undelivered items lost", err)
        assert match is not None, err
        assert int(match.group(1)) == acknowledged


async def test_a_second_sigterm_with_the_durable_queue_loses_nothing(short_tmp: Path) -> None:
    async with OtlpSink() as sink:
        sink.stall()
        daemon = DaemonProcess(short_tmp, exporters={"upstream": upstream(sink)})
        await daemon.start()
        assert daemon.proc is not None
        acknowledged = await send_runs(daemon.grpc_endpoint, 20, seed=5)
        daemon.terminate()
        await asyncio.sleep(0.3)
        assert daemon.proc.poll() is None  # the attempt in flight may still finish
        daemon.proc.send_signal(signal.SIGTERM)
        code, _, err = await daemon.stop(timeout=10)
        assert code == 1
        assert "0 undelivered items lost" in err
        sink.resume()
        again = DaemonProcess(short_tmp, exporters={"upstream": upstream(sink)})
        await again.start()
        try:
            await sink.wait_for_items(Signal.TRACES, acknowledged, timeout=30)
        finally:
            code, _, err = await again.stop()
        assert code == 0, err
        sent = {(s.trace_id, s.span_id) for run in agent_runs(20, seed=5)
                for rs in run.traces.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert len(sent) == acknowledged
        assert sent <= {(s.trace_id, s.span_id) for s in sink.spans()}  # at least once
