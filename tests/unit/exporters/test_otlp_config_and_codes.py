from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from pydantic import ValidationError

from sidecar.errors import PermanentError, RetryableError
from sidecar.exporters.otlp import GrpcSender, OtlpConfig, classify_grpc_error
from sidecar.exporthelper.retry import DestinationRefusedError, RequestTooLargeError


def rpc_error(code: grpc.StatusCode, retry_delay: float | None = None) -> grpc.aio.AioRpcError:
    trailing: list[tuple[str, bytes]] = []
    if retry_delay is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(retry_delay))))
        status = status_pb2.Status(code=code.value[0], details=[detail])
        trailing.append(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing),
                                details="boom")


RETRYABLE = ["CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE",
             "DATA_LOSS"]
PERMANENT = ["UNKNOWN", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION", "UNIMPLEMENTED",
             "INTERNAL"]


@pytest.mark.parametrize("name", RETRYABLE)
def test_retryable_codes(name: str) -> None:
    error = classify_grpc_error(rpc_error(grpc.StatusCode[name]))
    assert isinstance(error, RetryableError)
    assert error.retry_after is None


@pytest.mark.parametrize("name", PERMANENT)
def test_permanent_codes(name: str) -> None:
    error = classify_grpc_error(rpc_error(grpc.StatusCode[name]))
    assert isinstance(error, PermanentError)
    # refusals of any request are not resent as the parts of a merged one
    refused = name in ("PERMISSION_DENIED", "UNAUTHENTICATED", "UNIMPLEMENTED")
    assert isinstance(error, DestinationRefusedError) == refused


def test_unavailable_with_retry_info_carries_the_delay() -> None:
    error = classify_grpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, retry_delay=7))
    assert isinstance(error, RetryableError)
    assert error.retry_after == 7.0


def test_resource_exhausted_is_retryable_only_with_retry_info() -> None:
    plain = classify_grpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert isinstance(plain, PermanentError)
    hinted = classify_grpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=2))
    assert isinstance(hinted, RetryableError)
    assert hinted.retry_after == 2.0


def test_config_requires_an_http_or_https_url() -> None:
    ok = OtlpConfig.model_validate({"type": "otlp", "endpoint": "https://collector:4317/"})
    assert ok.endpoint == "https://collector:4317"
    assert not ok.plaintext
    assert OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317"}).plaintext
    for bad in ("collector:4317", "ftp://c:1", "http://"):
        with pytest.raises(ValidationError, match="endpoint"):
            OtlpConfig.model_validate({"type": "otlp", "endpoint": bad})


def test_skip_verify_is_refused_for_grpc() -> None:
    with pytest.raises(ValidationError, match="insecure_skip_verify"):
        OtlpConfig.model_validate({"type": "otlp", "endpoint": "https://c:4317",
                                   "tls": {"insecure_skip_verify": True}})
    OtlpConfig.model_validate({"type": "otlp", "endpoint": "https://c:4318", "protocol": "http",
                               "tls": {"insecure_skip_verify": True}})


def test_grpc_size_limit_asks_for_a_split() -> None:
    error = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(),
                                 grpc.aio.Metadata(),
                                 details="Received message larger than max (500 vs. 100)")
    assert isinstance(classify_grpc_error(error), RequestTooLargeError)


def test_grpc_target_from_endpoint() -> None:
    def target(endpoint: str) -> str:
        cfg = OtlpConfig.model_validate({"type": "otlp", "endpoint": endpoint})
        return GrpcSender(cfg)._target

    assert target("http://collector:4317") == "collector:4317"
    assert target("https://collector") == "collector:4317"
    assert target("http://[::1]:5317") == "[::1]:5317"


@pytest.mark.parametrize("endpoint", ["http://c:99999", "http://c:0", "http://c:abc",
                                      "https://c:-1"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_endpoint_port_must_be_a_valid_port(endpoint: str, protocol: str) -> None:
    with pytest.raises(ValidationError, match="port must be a number from 1 to 65535"):
        OtlpConfig.model_validate({"type": "otlp", "endpoint": endpoint, "protocol": protocol})


@pytest.mark.parametrize("endpoint", ["http://c:4317/v1", "http://c:4317?tenant=a",
                                      "http://c:4317#x", "http://user:pw@c:4317"])
def test_grpc_endpoint_is_scheme_host_and_port_only(endpoint: str) -> None:
    # both transports would silently drop the rest
    with pytest.raises(ValidationError, match="protocol grpc takes scheme://host:port only"):
        OtlpConfig.model_validate({"type": "otlp", "endpoint": endpoint})


def test_http_endpoint_may_have_a_path_prefix() -> None:
    cfg = OtlpConfig.model_validate({"type": "otlp", "endpoint": "https://v.example/otlp/",
                                     "protocol": "http"})
    assert cfg.endpoint == "https://v.example/otlp"


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("bad key", "v", "not a gRPC metadata key"),
    ("", "v", "not a gRPC metadata key"),
    (":authority", "x", "not a gRPC metadata key"),
    ("grpc-timeout", "1S", "reserved for gRPC"),
    ("grpc-encoding", "identity", "reserved for gRPC"),
    ("x-trace-bin", "abc", "binary"),
    ("te", "gzip", "set by the gRPC transport"),
    ("Host", "evil", "set by the gRPC transport"),
    ("connection", "close", "set by the gRPC transport"),
    ("content-type", "text/plain", "set by the gRPC transport"),
    ("x-key", "a\nb", "printable ASCII"),
    ("x-key", "naïve", "printable ASCII"),
])
def test_grpc_metadata_both_transports_cannot_send_is_refused(
        key: str, value: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem) as info:
        OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317",
                                   "headers": {key: value}})
    assert info.value.errors()[0]["loc"] == ("headers",)
    # the same headers are fine for HTTP, which has its own rules
    if key != "":
        OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4318",
                                   "protocol": "http", "headers": {key: "v"}})


def test_grpc_metadata_keys_differing_in_case_only_are_refused() -> None:
    with pytest.raises(ValidationError, match="given twice"):
        OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317",
                                   "headers": {"X-Key": "a", "x-key": "b"}})


def test_grpc_metadata_that_both_transports_send() -> None:
    headers = {"Authorization": "Bearer abc", "x_tenant": "a", "x.dot": "1",
               "User-Agent": "acme/1", "x-api-key": " trailing newline\n"}
    cfg = OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317",
                                     "headers": headers})
    assert cfg.headers == headers  # normalized by the sender, not in the config


@pytest.mark.parametrize(("details", "split"), [
    ("Received message larger than max (500 vs. 100)", True),  # older grpc servers
    ("SERVER: Received message larger than max (500 vs. 100)", True),
    ("grpc: received message larger than max (500 vs. 100)", True),  # grpc-go
    # our own limit on the answer: the peer took the request, splitting would resend it
    ("Stream removed (CLIENT: Received message larger than max (5242881 vs. 4194304))", False),
    ("CLIENT: Received message larger than max (5242881 vs. 4194304)", False),  # h2 client
])
def test_only_the_peers_size_limit_asks_for_a_split(details: str, split: bool) -> None:
    error = classify_grpc_error(grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details=details))
    assert isinstance(error, RequestTooLargeError) == split
    assert isinstance(error, PermanentError)


def test_keepalive_defaults_and_grpc_only() -> None:
    cfg = OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317"})
    assert (cfg.keepalive.time, cfg.keepalive.timeout) == (30.0, 10.0)
    cfg = OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317",
                                     "keepalive": {"time": "1m", "timeout": "5s"}})
    assert (cfg.keepalive.time, cfg.keepalive.timeout) == (60.0, 5.0)
    with pytest.raises(ValidationError, match="keepalive is for protocol: grpc"):
        OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4318",
                                   "protocol": "http", "keepalive": {"time": "1m"}})
    with pytest.raises(ValidationError, match="greater than 0"):
        OtlpConfig.model_validate({"type": "otlp", "endpoint": "http://c:4317",
                                   "keepalive": {"timeout": 0}})


@pytest.mark.parametrize("tls", [{"ca_file": "/etc/ssl/ca.pem"},
                                 {"cert_file": "/c.pem", "key_file": "/k.pem"},
                                 {"insecure_skip_verify": True}])
def test_tls_settings_on_a_plaintext_endpoint_are_errors(tls: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="have no effect"):
        OtlpConfig.model_validate({"endpoint": "http://collector:4318", "protocol": "http",
                                   "tls": tls})
    with pytest.raises(ValidationError, match=r"tls\.insecure is true"):
        OtlpConfig.model_validate({"endpoint": "https://collector:4318", "protocol": "http",
                                   "tls": {**tls, "insecure": True}})
    assert OtlpConfig.model_validate({"endpoint": "https://collector:4318", "protocol": "http",
                                      "tls": tls})


def test_credentials_in_the_url_and_an_authorization_header_are_refused() -> None:
    # aiohttp refuses such a request, so every send would have failed for good
    with pytest.raises(ValidationError, match="use one of them"):
        OtlpConfig(type="otlp", protocol="http", endpoint="https://u:p@collector:4318",
                   headers={"Authorization": "Bearer t"})
    OtlpConfig(type="otlp", protocol="http", endpoint="https://u:p@collector:4318")
    OtlpConfig(type="otlp", protocol="http", endpoint="https://collector:4318",
               headers={"authorization": "Bearer t"})
