"""Honeycomb and Jaeger configs resolve to the OTLP exporter's config, or fail loading
with a message that says what to change."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sidecar.component import BuildContext
from sidecar.exporters.honeycomb import HoneycombConfig, is_classic_key
from sidecar.exporters.honeycomb import create as create_honeycomb
from sidecar.exporters.jaeger import JaegerConfig, is_local_host

ENV_KEY = "hcaik_01hxyzexampleenvironmentkey"
CLASSIC_HEX = "0123456789abcdef0123456789abcdef"
CLASSIC_INGEST = "hcxic_" + "a1" * 29


def honeycomb(**raw: Any) -> HoneycombConfig:
    return HoneycombConfig.model_validate({"type": "honeycomb", "api_key": ENV_KEY, **raw})


def jaeger(endpoint: str, **raw: Any) -> JaegerConfig:
    return JaegerConfig.model_validate({"type": "jaeger", "endpoint": endpoint, **raw})


@pytest.mark.parametrize(("key", "classic"), [
    (CLASSIC_HEX, True), (CLASSIC_INGEST, True), (ENV_KEY, False),
    (CLASSIC_HEX.upper(), False), (CLASSIC_HEX[:-1], False), ("hcxic_short", False)])
def test_classic_keys_are_recognised(key: str, classic: bool) -> None:
    assert is_classic_key(key) is classic


@pytest.mark.parametrize(("region", "endpoint"), [
    ("us", "https://api.honeycomb.io:443"), ("eu", "https://api.eu1.honeycomb.io:443")])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_region_picks_the_endpoint(region: str, endpoint: str, protocol: str) -> None:
    otlp = honeycomb(region=region, protocol=protocol).otlp()
    assert otlp.endpoint == endpoint
    assert otlp.protocol == protocol
    assert not otlp.plaintext


def test_headers_team_always_and_dataset_when_set() -> None:
    assert honeycomb().otlp().headers == {"x-honeycomb-team": ENV_KEY}
    assert honeycomb(dataset=" llm ").otlp().headers == {
        "x-honeycomb-team": ENV_KEY, "x-honeycomb-dataset": "llm"}


@pytest.mark.parametrize("key", [CLASSIC_HEX, CLASSIC_INGEST])
def test_classic_key_without_dataset_is_an_error(key: str) -> None:
    with pytest.raises(ValidationError, match="dataset is required with a Classic API key"):
        honeycomb(api_key=key)
    assert honeycomb(api_key=key, dataset="d").otlp().headers["x-honeycomb-dataset"] == "d"


@pytest.mark.parametrize(("key", "message"), [
    ("", "api_key is empty"), ("  ", "api_key is empty"),
    ("abc\n", "whitespace or non-printable")])
def test_bad_keys_are_errors_that_do_not_show_the_key(key: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        honeycomb(api_key=key)


def test_shared_settings_and_overrides_reach_the_otlp_config() -> None:
    otlp = honeycomb(endpoint="http://127.0.0.1:9999", protocol="http", timeout="3s",
                     compression="none", batch={"max_items": 7}).otlp()
    assert (otlp.endpoint, otlp.timeout, otlp.compression, otlp.batch.max_items) == (
        "http://127.0.0.1:9999", 3.0, "none", 7)
    with pytest.raises(ValidationError, match="endpoint"):
        honeycomb(endpoint="api.honeycomb.io")
    with pytest.raises(ValidationError, match="keepalive is for protocol: grpc"):
        honeycomb(protocol="http", keepalive={"time": 5})


def test_the_key_stays_out_of_repr_and_describe() -> None:
    cfg = honeycomb(dataset="d")
    assert ENV_KEY not in repr(cfg)
    assert ENV_KEY not in create_honeycomb("hc", cfg, BuildContext()).describe()


@pytest.mark.parametrize("port", [5778, 6831, 6832, 9411, 14250, 14268])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_jaeger_legacy_ports_are_refused(port: int, protocol: str) -> None:
    with pytest.raises(ValidationError, match=rf"port {port} is .*deprecated.*4317.*4318"):
        jaeger(f"http://jaeger:{port}", protocol=protocol)


@pytest.mark.parametrize("host", [
    "127.0.0.1", "[::1]", "localhost", "jaeger", "10.1.2.3", "192.168.0.9",
    "jaeger-collector.tracing.svc", "jaeger.tracing.svc.cluster.local", "j.corp.internal"])
def test_jaeger_plaintext_to_local_hosts(host: str) -> None:
    assert jaeger(f"http://{host}:4317").otlp().plaintext


@pytest.mark.parametrize("host", ["jaeger.example.com", "8.8.8.8", "[2001:4860::1]"])
def test_jaeger_plaintext_to_other_hosts_needs_allow_plaintext(host: str) -> None:
    with pytest.raises(ValidationError, match="not local; use https://"):
        jaeger(f"http://{host}:4317")
    with pytest.raises(ValidationError, match="not local"):
        jaeger(f"https://{host}:4317", tls={"insecure": True})
    assert jaeger(f"http://{host}:4317", allow_plaintext=True).otlp().plaintext
    assert not jaeger(f"https://{host}:4317").otlp().plaintext


def test_is_local_host_is_not_fooled_by_suffixes() -> None:
    assert not is_local_host("evil-svc.com")
    assert not is_local_host("localhost.example.com")
    assert is_local_host("LOCALHOST.")
