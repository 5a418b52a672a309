"""`type: datadog` config and the shared classification options it uses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sidecar.component import BuildContext
from sidecar.errors import PermanentError, RetryableError
from sidecar.exporters.datadog import DATADOG_RULES, DatadogConfig, create
from sidecar.exporthelper.http import classify
from sidecar.exporthelper.retry import RequestTooLargeError


def dd(**raw: Any) -> DatadogConfig:
    return DatadogConfig.model_validate({"type": "datadog", "api_key": "secret-key", **raw})


@pytest.mark.parametrize(("site", "base"), [
    ("datadoghq.com", "https://trace.agent.datadoghq.com"),
    ("datadoghq.eu", "https://trace.agent.datadoghq.eu"),
    ("us5.datadoghq.com", "https://trace.agent.us5.datadoghq.com"),
    ("ap1.datadoghq.com", "https://trace.agent.ap1.datadoghq.com")])
def test_site_picks_the_trace_intake(site: str, base: str) -> None:
    assert dd(site=site).base_url == base


def test_endpoint_replaces_the_site() -> None:
    assert dd(endpoint="http://127.0.0.1:8126/").base_url == "http://127.0.0.1:8126"


@pytest.mark.parametrize(("raw", "message"), [
    ({"site": "https://datadoghq.com"}, "expected a Datadog site"),
    ({"site": "evil.com/x"}, "expected a Datadog site"),
    ({"endpoint": "trace.agent.datadoghq.com"}, "expected a base URL"),
    ({"api_key": ""}, "api_key is required with mode: native"),
    ({"api_key": "k\r\nX-Injected: 1"}, "whitespace or non-printable"),
    ({"compression": "none"}, "takes gzip"),
    ({"mode": "zipkin"}, "mode"),
])
def test_config_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        dd(**raw)


def test_key_is_not_shown() -> None:
    cfg = dd()
    assert "secret-key" not in repr(cfg)
    assert "secret-key" not in create("dd", cfg, BuildContext()).describe()


def test_datadog_batches_by_a_smaller_otlp_size_than_otlp() -> None:
    assert dd().batch.max_bytes == 1024 * 1024


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_vendor_retryable_statuses_honour_retry_after(status: int) -> None:
    with pytest.raises(RetryableError) as info:
        classify(status, {"Retry-After": "7"}, b"", DATADOG_RULES)
    assert info.value.retry_after == 7.0


def test_otlp_default_still_ignores_retry_after_on_502() -> None:
    with pytest.raises(RetryableError) as info:
        classify(502, {"Retry-After": "7"}, b"")
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_vendor_permanent_statuses(status: int) -> None:
    with pytest.raises(PermanentError) as info:
        classify(status, {}, b'{"errors":["Forbidden"]}', DATADOG_RULES)
    assert not isinstance(info.value, RequestTooLargeError)
    assert "Forbidden" in str(info.value)
    with pytest.raises(RequestTooLargeError):
        classify(413, {}, b"", DATADOG_RULES)


def test_mode_otlp_targets_the_agentless_intake_per_signal() -> None:
    traces, other = dd(mode="otlp").intake_otlp()
    assert (traces.endpoint, traces.protocol) == ("https://trace.agent.datadoghq.com", "http")
    assert traces.headers == {"dd-api-key": "secret-key", "compute_stats": "true"}
    assert (other.endpoint, other.headers) == ("https://otlp.datadoghq.com",
                                               {"dd-api-key": "secret-key"})
    traces, other = dd(mode="otlp", site="datadoghq.eu", compute_stats=False,
                       endpoint="http://127.0.0.1:9").intake_otlp()
    assert traces.endpoint == other.endpoint == "http://127.0.0.1:9"
    assert "compute_stats" not in traces.headers


def test_mode_agent_needs_no_key() -> None:
    cfg = DatadogConfig.model_validate({"type": "datadog", "mode": "agent",
                                        "agent_protocol": "http",
                                        "agent_endpoint": "http://127.0.0.1:4318"})
    otlp = cfg.agent_otlp()
    assert (otlp.endpoint, otlp.protocol, otlp.headers) == ("http://127.0.0.1:4318", "http", {})
    assert DatadogConfig.model_validate({"type": "datadog", "mode": "agent"}).agent_otlp(
        ).endpoint == "http://localhost:4317"
    with pytest.raises(ValidationError, match="api_key is required with mode: otlp"):
        DatadogConfig.model_validate({"type": "datadog", "mode": "otlp"})
    with pytest.raises(ValidationError, match="api_key is required with mode: native"):
        DatadogConfig.model_validate({"type": "datadog"})
    with pytest.raises(ValidationError, match="expected http://host:port"):
        DatadogConfig.model_validate({"type": "datadog", "mode": "agent",
                                      "agent_endpoint": "localhost:4317"})
