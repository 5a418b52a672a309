"""The loopback rule and bearer-token checks every listener shares."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from sidecar import config
from sidecar.errors import ConfigError
from sidecar.net.security import AuthConfig, BearerAuth, is_loopback_host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost",
                                  "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com", "",
                                  "127.0.0.1.example.com", "localhost.evil"])
def test_everything_else_is_remote(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(("tree", "key"), [
    ({"receivers": {"otlp": {"grpc": {"endpoint": "0.0.0.0:4317"}}}}, "receivers.otlp.grpc"),
    ({"receivers": {"otlp": {"http": {"endpoint": "[::]:4318"}}}}, "receivers.otlp.http"),
    ({"admin": {"endpoint": "10.1.2.3:9464"}}, "admin"),
    ({"admin": {"endpoint": "metrics.example.com:9464"}}, "admin"),
])
def test_a_remote_bind_needs_allow_remote(tree: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree(tree)
    (problem,) = info.value.problems
    assert problem.path == key
    assert "allow_remote: true" in problem.message


def test_allow_remote_permits_it() -> None:
    cfg = config.from_tree({
        "receivers": {"otlp": {"grpc": {"endpoint": "0.0.0.0:4317", "allow_remote": True}}},
        "admin": {"endpoint": "0.0.0.0:9464", "allow_remote": True},
    })
    assert cfg.admin.endpoint == "0.0.0.0:9464"


def test_auth_needs_a_token() -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree({"admin": {"auth": {"bearer_tokens": []}}})
    assert info.value.problems[0].path == "admin.auth.bearer_tokens"


@pytest.mark.parametrize("token", ["", "two words", "tab\there", "nl\n"])
def test_an_unusable_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree({"admin": {"auth": {"bearer_tokens": ["fine-token", token]}}})
    (problem,) = info.value.problems
    assert problem.path == "admin.auth.bearer_tokens"
    assert "token [1]" in problem.message
    if token:
        assert token not in str(info.value)


def test_bearer_check() -> None:
    auth = BearerAuth(AuthConfig(bearer_tokens=[SecretStr("old"), SecretStr("new")]))
    for right in ("Bearer old", b"Bearer new", "bearer old", "BEARER  new "):
        assert auth.check(right), right
    for wrong in (None, "", "old", "Bearer", "Bearer ", "Bearer ol", "Bearer oldx",
                  "Basic old", "Bearerold", "Bearer new\n", "Bearer old new"):
        assert not auth.check(wrong), wrong
    assert auth.check_metadata([("user-agent", "x"), ("authorization", "Bearer new")])
    assert not auth.check_metadata([("x-authorization", "Bearer new")])
    assert not auth.check_metadata(None)


def test_tokens_never_print() -> None:
    cfg = config.from_tree({"admin": {"auth": {"bearer_tokens": ["hunter2-token"]}}})
    assert "hunter2-token" not in repr(cfg)
    assert "hunter2-token" not in str(cfg.model_dump())


@pytest.mark.parametrize(("tree", "key"), [
    ({"receivers": {"logs": {"tcp": {"endpoint": "0.0.0.0:5170"}}}}, "receivers.logs.tcp"),
    # a name that merely starts like a loopback address is a remote host name
    ({"cache": {"tcp": {"endpoint": "127.0.0.1.nip.example:6380"}}}, "cache.tcp"),
])
def test_every_listener_uses_the_one_loopback_rule(tree: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.from_tree(tree)
    (problem,) = info.value.problems
    assert problem.path == key
    assert "not loopback" in problem.message
