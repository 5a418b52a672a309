"""The `cache:` config section: shipped defaults and the errors a bad value gets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidecar.cache.config import CacheConfig


def test_shipped_namespaces_and_defaults() -> None:
    config = CacheConfig()
    ttls = {name: p.ttl for name, p in config.namespaces.items()}
    assert ttls == {"categorization": 3600, "sentiment": 3600, "embeddings": 86400,
                    "duplicateDetection": 7200, "priorityScoring": 900, "specs": 3600,
                    "competitive": 14400}
    assert config.unix == "./run/cache.sock"
    assert config.unix_mode == 0o660
    assert config.redis is None
    assert config.tcp is None
    assert config.allow_flush is False


def test_octal_mode_strings() -> None:
    assert CacheConfig(unix_mode="0600").unix_mode == 0o600
    with pytest.raises(ValidationError, match="octal"):
        CacheConfig(unix_mode="rw-rw----")


@pytest.mark.parametrize(("settings", "message"), [
    ({"tcp": {"endpoint": "0.0.0.0:6380"}}, "not loopback"),
    ({"tcp": {"endpoint": "0.0.0.0:6380", "allow_remote": True}}, "needs a password"),
    ({"redis": "http://x"}, "unsupported URL scheme"),
    ({"namespaces": {"a:b": {}}}, "without ':'"),
    ({"namespaces": {"x": {"ttl": "2h", "max_ttl": "1h"}}}, "larger than max_ttl"),
    ({"memory": {"max_bytes": "lots"}}, "not a size"),
    ({"nonsense": 1}, "Extra inputs"),
])
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CacheConfig.model_validate(settings)


def test_remote_tcp_with_password_is_accepted() -> None:
    config = CacheConfig.model_validate(
        {"tcp": {"endpoint": "0.0.0.0:6380", "allow_remote": True, "password": "s3cret"}})
    assert config.tcp is not None


def test_settings_that_would_be_ignored_are_errors() -> None:
    with pytest.raises(ValidationError, match=r"namespaces specs: l1: false needs cache\.redis"):
        CacheConfig.model_validate({"namespaces": {"specs": {"l1": False}}})
    assert not CacheConfig.model_validate(
        {"redis": "redis://127.0.0.1:6379/0", "namespaces": {"specs": {"l1": False}}},
    ).namespaces["specs"].l1
    with pytest.raises(ValidationError, match="tracking is not supported with redis"):
        CacheConfig.model_validate({"redis": "redis+cluster://127.0.0.1:7000",
                                    "l2": {"tracking": True}})
