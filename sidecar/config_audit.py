"""`sidecar validate` warnings: a valid config that is still unsafe to run.

- a config file others can read that holds a secret inline (not `${env:}`/`${file:}`);
- a listener open to other hosts (`allow_remote`) with nobody asked to authenticate;
- an exporter that sends plaintext to a remote host or does not verify its TLS peer.
Warnings never print a secret's value, only where it is."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import Config
from sidecar.net.security import is_loopback_host
from sidecar.telemetry.secrets import names_a_secret

_REFERENCE = "${"


def audit(config: Config, path: str | Path | None) -> list[str]:
    found = list(_listener_warnings(config))
    found.extend(_exporter_warnings(config))
    if path is not None:
        found.extend(_inline_secret_warnings(Path(path)))
    return found


def _listener_warnings(config: Config) -> Iterator[str]:
    otlp = config.receivers.otlp
    for key, listener in (("receivers.otlp.grpc", otlp.grpc), ("receivers.otlp.http", otlp.http),
                          ("admin", config.admin)):
        if listener is None or not listener.allow_remote or listener.endpoint is None:
            continue
        if listener.auth is None:
            yield (f"{key}: allow_remote is on without auth: anyone who reaches "
                   f"{listener.endpoint} can use it (set {key}.auth.bearer_tokens)")
        if listener.tls is None:
            yield f"{key}: allow_remote is on without tls: traffic crosses the network in clear"
    logs = config.receivers.logs
    if logs is not None and logs.tcp is not None and logs.tcp.allow_remote:
        yield ("receivers.logs.tcp: allow_remote is on and this listener has no auth: anyone "
               f"who reaches {logs.tcp.endpoint} can write log records")


def _exporter_warnings(config: Config) -> Iterator[str]:
    for name, settings in config.exporters.items():
        tls = getattr(settings, "tls", None)
        if tls is None:
            continue
        if getattr(tls, "insecure_skip_verify", False):
            yield (f"exporters.{name}.tls.insecure_skip_verify is on: the destination's "
                   "certificate is not checked (anyone on the path can read the data)")
        endpoint = getattr(settings, "endpoint", None)
        if getattr(tls, "insecure", False) and isinstance(endpoint, str):
            host = _host_of(endpoint)
            if host is not None and not is_loopback_host(host):
                yield (f"exporters.{name}.tls.insecure is on: telemetry goes to {host} "
                       "in plaintext")


def _host_of(endpoint: str) -> str | None:
    rest = endpoint.split("://", 1)[-1]
    authority = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority else None


def _inline_secret_warnings(path: Path) -> Iterator[str]:
    try:
        mode = path.stat().st_mode
        tree = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # the loader already reported whatever is wrong with the file
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return
    readers = "everyone" if mode & stat.S_IROTH else "its group"
    for key_path in _inline_secrets(tree, ""):
        yield (f"{path}: {key_path} holds a secret inline and the file is readable by "
               f"{readers} (mode {stat.S_IMODE(mode):o}): use ${{env:...}} or "
               f"${{file:...}}, or chmod 600 {os.fspath(path)}")


def _inline_secrets(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            key_path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and names_a_secret(key) and _holds_literal(value):
                yield key_path
            else:
                yield from _inline_secrets(value, key_path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _inline_secrets(value, f"{where}[{index}]")


def _holds_literal(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value) and _REFERENCE not in value
    if isinstance(value, list):
        return any(_holds_literal(v) for v in value)
    return False
