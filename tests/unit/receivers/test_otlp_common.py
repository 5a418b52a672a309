"""Shared receiver helpers: canned responses, Status bodies, retry hints, banner line."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from sidecar.errors import PipelineFullError
from sidecar.model import Signal
from sidecar.receivers.otlp_common import (
    CODE_RESOURCE_EXHAUSTED,
    EMPTY_RESPONSE,
    describe,
    partial_success_response,
    retry_after_seconds,
    rpc_status,
)


@pytest.mark.parametrize(("hint", "seconds"), [(0.0, 1), (0.2, 1), (1.0, 1), (2.01, 3), (30, 30)])
def test_retry_after_is_whole_seconds_at_least_one(hint: float, seconds: int) -> None:
    assert retry_after_seconds(PipelineFullError("full", hint)) == seconds


def test_status_carries_retry_info_only_when_asked() -> None:
    assert not rpc_status(3, "bad").details
    status = rpc_status(CODE_RESOURCE_EXHAUSTED, "full", 4)
    assert (status.code, status.message) == (8, "full")
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds == 4


def test_empty_responses_are_empty_messages() -> None:
    assert set(EMPTY_RESPONSE) == set(Signal)
    assert all(body == b"" for body in EMPTY_RESPONSE.values())


def test_partial_success_names_the_signal_items() -> None:
    logs = partial_success_response(Signal.LOGS, 2, "bad ids")
    assert isinstance(logs, ExportLogsServiceResponse)
    assert logs.partial_success.rejected_log_records == 2
    assert logs.partial_success.error_message == "bad ids"
    metrics = partial_success_response(Signal.METRICS, 1, "x")
    assert isinstance(metrics, ExportMetricsServiceResponse)
    assert metrics.partial_success.rejected_data_points == 1


def test_banner_lists_signals_in_a_fixed_order() -> None:
    signals = {Signal.METRICS: 1, Signal.TRACES: 1}
    line = describe("otlp", "grpc", "127.0.0.1:4317", None, signals)
    assert line == "otlp/grpc  127.0.0.1:4317  traces metrics"
    # the bound port replaces a configured 0
    assert describe("otlp", "http", "[::1]:0", 4318, {}) == "otlp/http  [::1]:4318  (no pipelines)"
    # the receiver's name, not a fixed "otlp"
    assert describe("edge", "http", "127.0.0.1:1", None, {}).startswith("edge/http  ")
