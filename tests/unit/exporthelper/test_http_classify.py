from __future__ import annotations

import gzip

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from sidecar.errors import PermanentError, RetryableError
from sidecar.exporters.otlp import partial_success
from sidecar.exporthelper.compression import gzip_compress, gzip_decompress
from sidecar.exporthelper.http import StatusRules, classify
from sidecar.exporthelper.retry import DestinationRefusedError, RequestTooLargeError
from sidecar.model import Signal

PROTO_TYPE = "application/x-protobuf"
PROTO = {"Content-Type": PROTO_TYPE}


@pytest.mark.parametrize("status", [200, 202, 204])
def test_any_2xx_is_success(status: int) -> None:
    classify(status, PROTO, b"nothing to read here")  # returns: the body is the sender's


def test_partial_success_protobuf_returns_rejected_count() -> None:
    body = ExportTraceServiceResponse()
    body.partial_success.rejected_spans = 3
    body.partial_success.error_message = "bad spans"
    assert partial_success(Signal.TRACES, body.SerializeToString(), PROTO_TYPE) == (
        3, "bad spans")
    logs = ExportLogsServiceResponse()
    logs.partial_success.rejected_log_records = 2
    assert partial_success(Signal.LOGS, logs.SerializeToString(), PROTO_TYPE) == (2, "")


def test_partial_success_json_returns_rejected_count() -> None:
    body = orjson.dumps({"partialSuccess": {"rejectedSpans": "4", "errorMessage": "x"}})
    assert partial_success(Signal.TRACES, body, "application/json") == (4, "x")


def test_a_warning_only_partial_success_rejects_nothing() -> None:
    body = ExportTraceServiceResponse()
    body.partial_success.error_message = "just a warning"
    assert partial_success(Signal.TRACES, body.SerializeToString(), PROTO_TYPE) == (
        0, "just a warning")


def test_an_unreadable_2xx_body_rejects_nothing() -> None:
    assert partial_success(Signal.TRACES, b"\xff\xff not protobuf", PROTO_TYPE) == (0, "")
    assert partial_success(Signal.TRACES, b"[1, 2", "application/json") == (0, "")


@pytest.mark.parametrize(("status", "hint"), [(429, 5.0), (503, 5.0), (502, None),
                                              (504, None)])
def test_retryable_statuses_and_retry_after_only_on_429_and_503(
        status: int, hint: float | None) -> None:
    with pytest.raises(RetryableError) as info:
        classify(status, {"Retry-After": "5"}, b"")
    assert info.value.retry_after == hint


def test_retryable_without_retry_after_has_no_hint() -> None:
    with pytest.raises(RetryableError) as info:
        classify(429, {}, b"")
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 415, 500, 501])
def test_every_other_status_is_permanent(status: int) -> None:
    with pytest.raises(PermanentError, match=f"HTTP {status}: nope"):
        classify(status, {"Retry-After": "1"}, b"nope")


def test_vendor_specific_extra_retryable_statuses() -> None:
    with pytest.raises(RetryableError):
        classify(500, {}, b"", StatusRules(retryable=frozenset({408, 500})))


def test_gzip_round_trip_is_standard_gzip() -> None:
    data = b"span " * 10_000
    packed = gzip_compress(data)
    assert len(packed) < len(data) // 10
    assert gzip.decompress(packed) == data  # the stdlib reads what we write
    assert gzip_decompress(gzip.compress(data)) == data  # and we read what it writes


def test_gzip_decompress_limits_size_and_rejects_truncation() -> None:
    packed = gzip_compress(b"x" * 10_000)
    with pytest.raises(ValueError, match="exceeds"):
        gzip_decompress(packed, max_size=1000)
    with pytest.raises(ValueError, match="truncated"):
        gzip_decompress(packed[: len(packed) // 2])


def test_413_asks_for_a_split() -> None:
    with pytest.raises(RequestTooLargeError):
        classify(413, {}, b"")


def test_gzip_decompress_rejects_non_gzip() -> None:
    with pytest.raises(ValueError, match="not a gzip body"):
        gzip_decompress(b"\x1f\x8bnot gzip at all")


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_refusals_that_do_not_depend_on_content_are_marked(status: int) -> None:
    with pytest.raises(DestinationRefusedError):
        classify(status, {}, b"")


def test_a_400_is_about_the_content() -> None:
    with pytest.raises(PermanentError) as caught:
        classify(400, {}, b"")
    assert not isinstance(caught.value, DestinationRefusedError)
