"""Load, expand and validate the YAML config into typed, immutable objects.

Every key has a default (an empty file is valid); unknown keys and wrong types are errors
naming the file and the key path; all problems are reported at once."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from sidecar.cache.config import CacheConfig
from sidecar.component import exporter_factories
from sidecar.configtypes import ByteSize, Duration, Endpoint, Strict
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Signal

DEFAULT_EXPORTERS: dict[str, Any] = {"local": {"type": "file", "path": "./data/export"}}


class GrpcListenerConfig(Strict):
    endpoint: Endpoint = "127.0.0.1:4317"
    max_recv_msg_size: ByteSize = Field(default=4 * 1024 * 1024, gt=0)


class HttpListenerConfig(Strict):
    endpoint: Endpoint = "127.0.0.1:4318"
    # measured after decompression, as the OTLP spec asks
    max_body_size: ByteSize = Field(default=20 * 1024 * 1024, gt=0)
    # a body must arrive whole within this (408 otherwise): a stalled upload holds memory
    body_timeout: Duration = Field(default=30.0, gt=0)
    # request-body bytes held at once across all connections; above it, 503 + Retry-After
    max_in_flight_bytes: ByteSize = Field(default=64 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _budget_fits_a_body(self) -> HttpListenerConfig:
        if self.max_in_flight_bytes < self.max_body_size:
            raise ValueError(
                f"max_in_flight_bytes ({self.max_in_flight_bytes}) must be at least "
                f"max_body_size ({self.max_body_size}), or no largest body is ever read")
        return self


class OtlpReceiverConfig(Strict):
    grpc: GrpcListenerConfig | None = GrpcListenerConfig()
    http: HttpListenerConfig | None = HttpListenerConfig()


class ReceiversConfig(Strict):
    """One section per receiver type, named as registered (`component.receiver_factories`);
    `app.build_receivers` builds each section that is not `null` with its factory."""

    otlp: OtlpReceiverConfig = OtlpReceiverConfig()


class PipelinesConfig(Strict):
    """Exporter names per signal; `null` (the default) means every configured exporter."""

    traces: list[str] | None = None
    logs: list[str] | None = None
    metrics: list[str] | None = None

    def exporters_for(self, signal: Signal, all_names: list[str]) -> list[str]:
        names: list[str] | None = getattr(self, signal.value)
        return list(all_names) if names is None else names


class StorageConfig(Strict):
    dir: Path = Path("./data")


class AdminConfig(Strict):
    endpoint: Endpoint | None = "127.0.0.1:9464"


class ServiceConfig(Strict):
    # how long SIGTERM may take to flush and deliver before persisting/giving up
    shutdown_timeout: Duration = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"


class Config(Strict):
    storage: StorageConfig = StorageConfig()
    receivers: ReceiversConfig = ReceiversConfig()
    exporters: dict[str, ExporterSettings] = Field(default_factory=dict)
    pipelines: PipelinesConfig = PipelinesConfig()
    cache: CacheConfig = CacheConfig()
    admin: AdminConfig = AdminConfig()
    service: ServiceConfig = ServiceConfig()

    def exporters_for(self, signal: Signal) -> list[str]:
        return self.pipelines.exporters_for(signal, list(self.exporters))


_REF = re.compile(r"\$\{(env|file):([^}:]+)(?::-([^}]*))?\}")


def _expand(value: Any, path: str, source: str, problems: list[ConfigProblem]) -> Any:
    """Replace ${env:NAME}, ${env:NAME:-default} and ${file:PATH} in every string."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), source, problems)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}.{i}", source, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        kind, name, default = match.group(1), match.group(2), match.group(3)
        if kind == "env":
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(ConfigProblem(source, path, f"environment variable {name} is not set"))
            return ""
        try:
            return Path(name).read_text().strip()
        except OSError as exc:
            problems.append(ConfigProblem(source, path, f"cannot read {name}: {exc.strerror}"))
            return ""

    return _REF.sub(substitute, value)


def _apply_set(tree: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError([ConfigProblem("--set", assignment, "expected key.path=value")])
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw else None


def _problems_from(exc: ValidationError, source: str, prefix: str = "") -> list[ConfigProblem]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        out.append(ConfigProblem(source, path, message))
    return out


def load(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    source = str(path) if path is not None else "<defaults>"
    tree: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([ConfigProblem(source, "", f"cannot read: {exc.strerror}")]) from exc
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([ConfigProblem(source, "", f"invalid YAML: {exc}")]) from exc
        if not isinstance(tree, dict):
            raise ConfigError([ConfigProblem(source, "", "top level must be a mapping")])
    for assignment in overrides:
        _apply_set(tree, assignment)
    return from_tree(tree, source)


def from_tree(tree: dict[str, Any], source: str = "<config>") -> Config:
    problems: list[ConfigProblem] = []
    tree = _expand(tree, "", source, problems)

    raw_exporters = tree.pop("exporters", None)
    if raw_exporters is None:
        raw_exporters = DEFAULT_EXPORTERS
    exporters: dict[str, ExporterSettings] = {}
    if not isinstance(raw_exporters, dict):
        problems.append(ConfigProblem(source, "exporters", "must be a mapping of name -> settings"))
        raw_exporters = {}
    factories = exporter_factories()
    for name, raw in raw_exporters.items():
        where = f"exporters.{name}"
        if not isinstance(raw, dict) or "type" not in raw:
            problems.append(ConfigProblem(source, where, "needs a 'type'"))
            continue
        factory = factories.get(str(raw["type"]))
        if factory is None:
            known = ", ".join(sorted(factories))
            problems.append(ConfigProblem(
                source, f"{where}.type", f"unknown exporter type {raw['type']!r} (known: {known})"))
            continue
        try:
            exporters[str(name)] = factory.config_type.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, source, where))

    config = None
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, source))

    # checked on the raw tree so a problem elsewhere does not hide a dangling reference
    raw_pipelines = tree.get("pipelines")
    if isinstance(raw_pipelines, dict):
        for signal in Signal:
            names = raw_pipelines.get(signal.value)
            for name in names if isinstance(names, list) else ():
                if name not in raw_exporters:
                    problems.append(ConfigProblem(
                        source, f"pipelines.{signal.value}", f"unknown exporter {name!r}"))
    if problems or config is None:
        raise ConfigError(problems)
    return config.model_copy(update={"exporters": exporters})
