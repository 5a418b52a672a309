"""Pure parsing helpers of the h2 gRPC client (the transport itself is tested against a
real grpc server in tests/integration/exporters/test_otlp_grpc_h2.py)."""

from __future__ import annotations

import base64

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from sidecar.errors import PermanentError, RetryableError
from sidecar.exporters.otlp import classify_grpc_error
from sidecar.exporthelper.grpc_h2 import GrpcStatusError, _metadata, frame_message, timeout_header
from sidecar.exporthelper.retry import retry_info_delay


def test_bin_metadata_is_decoded_with_or_without_padding() -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=4)))
    status = status_pb2.Status(code=14, details=[detail]).SerializeToString()
    unpadded = base64.b64encode(status).rstrip(b"=")
    assert unpadded != base64.b64encode(status)  # the case under test
    trailing = _metadata([(b"grpc-status", b"14"), (b"grpc-message", b"x"),
                          (b"grpc-status-details-bin", unpadded), (b"x-trace", b"abc")])
    assert trailing == (("grpc-status-details-bin", status), ("x-trace", "abc"))
    assert retry_info_delay(trailing) == 4.0
    error = classify_grpc_error(GrpcStatusError(grpc.StatusCode.UNAVAILABLE, "x", trailing))
    assert isinstance(error, RetryableError)
    assert error.retry_after == 4.0


def test_h2_errors_classify_like_grpc_aio_errors() -> None:
    error = classify_grpc_error(GrpcStatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    assert isinstance(error, PermanentError)
    assert str(error) == "gRPC RESOURCE_EXHAUSTED: full"


def test_message_prefix_and_timeout_header() -> None:
    assert frame_message(b"abc", True) == b"\x01\x00\x00\x00\x03abc"
    assert frame_message(b"", False) == b"\x00\x00\x00\x00\x00"
    assert timeout_header(10) == "10000m"
    assert timeout_header(0.0001) == "1m"
    assert timeout_header(1e9) == "99999999S"
