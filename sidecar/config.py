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
from yaml.composer import ComposerError
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from sidecar.cache.config import CacheConfig, FileMode
from sidecar.component import ProcessorSettings, exporter_factories, processor_factories
from sidecar.configtypes import ByteSize, Duration, Endpoint, Strict
from sidecar.errors import ConfigError, ConfigProblem
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.memlimit import MemoryConfig
from sidecar.model import Signal
from sidecar.net.security import AuthConfig, ServerTlsConfig, check_local

DEFAULT_EXPORTERS: dict[str, Any] = {"local": {"type": "file", "path": "./data/export"}}


class ListenerConfig(Strict):
    """What every TCP listener of the daemon shares: loopback unless `allow_remote`,
    optional TLS (mTLS with `tls.client_ca_file`) and bearer-token auth."""

    endpoint: Endpoint | None  # null: no TCP listener (then `unix` is needed)
    allow_remote: bool = False
    tls: ServerTlsConfig | None = None
    auth: AuthConfig | None = None
    # OTLP over a unix socket too (or only, with endpoint: null), created with this mode
    unix: str | None = None
    unix_mode: FileMode = 0o660
    unix_group: str | None = None

    @model_validator(mode="after")
    def _local_unless_allowed(self) -> ListenerConfig:
        check_local(self.endpoint, self.allow_remote)
        if self.endpoint is None and self.unix is None:
            raise ValueError("set endpoint, unix or both (or the whole listener to null)")
        return self


class GrpcListenerConfig(ListenerConfig):
    endpoint: Endpoint | None = "127.0.0.1:4317"
    max_recv_msg_size: ByteSize = Field(default=4 * 1024 * 1024, gt=0)
    # grpc holds each call's request until it is whole: calls past this many at once are
    # refused (RESOURCE_EXHAUSTED, retryable) before their request is read, so requests
    # held at once stay under max_concurrent_rpcs x max_recv_msg_size
    max_concurrent_rpcs: int = Field(default=64, gt=0)
    # a connection gets GOAWAY after this long, and is closed `max_connection_age_grace`
    # later: what bounds how long a client that stalls mid-request holds its calls
    max_connection_age: Duration = Field(default=300.0, gt=0)
    max_connection_age_grace: Duration = Field(default=30.0, gt=0)


class HttpListenerConfig(ListenerConfig):
    endpoint: Endpoint | None = "127.0.0.1:4318"
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


class LogsTcpConfig(Strict):
    endpoint: Endpoint = "127.0.0.1:5170"
    allow_remote: bool = False  # anything but loopback must be asked for

    @model_validator(mode="after")
    def _local_unless_allowed(self) -> LogsTcpConfig:
        check_local(self.endpoint, self.allow_remote)
        return self


class LogsBatchConfig(Strict):
    """A connection's lines go on as one request once any of these is reached."""

    max_records: int = Field(default=1024, gt=0)
    max_bytes: ByteSize = Field(default=1024 * 1024, gt=0)  # of input lines
    max_delay: Duration = Field(default=0.2, ge=0)  # since the request's first line


class LogsFilesConfig(Strict):
    """`receivers.logs.files`: JSON log lines tailed from files matching globs (the OTel
    Collector's `filelog` receiver and Fluent Bit's `tail` input are the models)."""

    include: list[str] = Field(min_length=1)  # globs (`**` recursive)
    exclude: list[str] = []  # globs matched against the same paths
    # where to start in a file first seen at startup and not in the checkpoints; a file
    # that appears later is always read from its beginning
    start_at: Literal["beginning", "end"] = "end"
    poll_interval: Duration = Field(default=0.2, gt=0)
    # bytes at the start of a file that identify it with its device and inode, so a
    # copytruncate or a reused inode is seen as a new file
    fingerprint_size: ByteSize = Field(default=1000, ge=16)
    max_files: int = Field(default=1024, gt=0)  # open at once; more are counted and skipped


class LogsReceiverConfig(Strict):
    """`receivers.logs`: newline-delimited JSON log lines over a unix socket and/or TCP."""

    unix: str | None = "./run/logs.sock"
    unix_mode: FileMode = 0o660
    unix_group: str | None = None
    tcp: LogsTcpConfig | None = None
    # resource service.name for lines that name no service themselves
    service_name: str | None = None
    # a longer line is cut to this and marked `sidecar.log.truncated`
    max_line_length: ByteSize = Field(default=1024 * 1024, gt=0)
    max_connections: int = Field(default=1024, gt=0)  # per listener
    # unfinished lines held across all connections of both listeners; a connection whose
    # partial line takes the total over this has it cut there (marked truncated, counted)
    max_buffered_bytes: ByteSize = Field(default=64 * 1024 * 1024, gt=0)
    # a connection that sends no byte within this is closed (and counted); 0: never
    idle_timeout: Duration = Field(default=300.0, ge=0)
    batch: LogsBatchConfig = LogsBatchConfig()
    files: LogsFilesConfig | None = None


class ReceiversConfig(Strict):
    """One section per receiver type, named as registered (`component.receiver_factories`);
    `app.build_receivers` builds each section that is not `null` with its factory."""

    otlp: OtlpReceiverConfig = OtlpReceiverConfig()
    logs: LogsReceiverConfig | None = LogsReceiverConfig()


class CoalesceConfig(Strict):
    """Requests of one signal that arrive close together go through the processors and into
    the queue as one (README "Coalescing"). A request waits at most `max_delay` for others,
    and only while requests keep coming: one that arrives after `max_delay` without any goes
    on at once, and so does a group once it holds `max_items` items or `max_bytes`. Clients
    are answered once their request is in the queue, as without coalescing."""

    max_delay: Duration = Field(default=0.05, ge=0, le=1.0)  # 0: each request on its own
    max_items: int = Field(default=512, gt=0)
    max_bytes: ByteSize = Field(default=1024 * 1024, gt=0)


class PipelinesConfig(Strict):
    """Exporter names per signal; `null` (the default) means every configured exporter."""

    traces: list[str] | None = None
    logs: list[str] | None = None
    metrics: list[str] | None = None
    coalesce: CoalesceConfig = CoalesceConfig()

    def exporters_for(self, signal: Signal, all_names: list[str]) -> list[str]:
        names: list[str] | None = getattr(self, signal.value)
        return list(all_names) if names is None else names


class StorageConfig(Strict):
    dir: Path = Path("./data")
    # durable queue (one log per signal, shared by the signal's exporters; README "Durable
    # queue"): never = survives a process crash; interval = a power loss loses at most
    # fsync_interval; always = the client's ack waits for the fsync covering its request
    fsync: Literal["never", "interval", "always"] = "interval"
    fsync_interval: Duration = Field(default=0.2, gt=0)
    segment_bytes: ByteSize = Field(default=16 * 1024 * 1024, ge=4096)
    # payloads kept in RAM per log for exporters that keep up; the rest is read from disk
    memory_window: ByteSize = Field(default=8 * 1024 * 1024, ge=0)
    # batches refused for good, kept for `sidecar dlq` (oldest deleted beyond the bound)
    deadletter_max_bytes: ByteSize = Field(default=64 * 1024 * 1024, ge=0)


class AdminConfig(Strict):
    endpoint: Endpoint | None = "127.0.0.1:9464"
    allow_remote: bool = False
    tls: ServerTlsConfig | None = None
    # when set, everything but /healthz and /readyz needs the bearer token
    auth: AuthConfig | None = None

    @model_validator(mode="after")
    def _local_unless_allowed(self) -> AdminConfig:
        check_local(self.endpoint, self.allow_remote)
        return self


class ServiceConfig(Strict):
    # how long SIGTERM may take to flush and deliver before persisting/giving up
    shutdown_timeout: Duration = 30.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    memory: MemoryConfig = MemoryConfig()


class Config(Strict):
    storage: StorageConfig = StorageConfig()
    receivers: ReceiversConfig = ReceiversConfig()
    exporters: dict[str, ExporterSettings] = Field(default_factory=dict)
    # processor type -> settings; a type left out runs with its defaults (on, for the
    # built-in redaction and cost). Applied in a fixed order, not the YAML order.
    processors: dict[str, ProcessorSettings] = Field(default_factory=dict)
    pipelines: PipelinesConfig = PipelinesConfig()
    cache: CacheConfig = CacheConfig()
    admin: AdminConfig = AdminConfig()
    service: ServiceConfig = ServiceConfig()

    def exporters_for(self, signal: Signal) -> list[str]:
        return self.pipelines.exporters_for(signal, list(self.exporters))


# `${scheme:body}` or, with `$$`, an escaped literal `${`; `[^}]*` keeps this linear
_REF = re.compile(r"(\$?)\$\{([^}]*)(\}?)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what the Collector's env provider takes
_SCHEMES = ("env", "file")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# a config is a few hundred values; these bound what hostile YAML (deep nesting, aliases of
# aliases) can make the loader, the expansion and the validation do
_MAX_DEPTH = 64
_MAX_VALUES = 100_000
_MAX_FILE_BYTES = 8 * 1024 * 1024  # --config
_MAX_SECRET_BYTES = 1024 * 1024  # ${file:...}


def printable(text: str) -> str:
    """`text` with control characters escaped, so a problem prints as one harmless line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _problem(source: str, path: str, message: str) -> ConfigProblem:
    return ConfigProblem(printable(source), printable(path), printable(message))


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer (it recurses per level) refuses nesting beyond _MAX_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {_MAX_DEPTH} levels",
                                    self.get_mark())
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _parse_yaml(text: str) -> tuple[Any, list[tuple[str, Mark, Mark]]]:
    """The document, and every duplicated mapping key as (key path, first, repeat)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(node) if node is not None else []
        return (loader.construct_document(node) if node is not None else None), duplicates
    finally:
        loader.dispose()


def _duplicate_keys(root: Node) -> list[tuple[str, Mark, Mark]]:
    # PyYAML keeps the last of two equal keys without a word; the Collector refuses them.
    # Walks the node graph once (aliases are visited once), merge keys (`<<`) excepted.
    found: list[tuple[str, Mark, Mark]] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[tuple[str, str], Mark] = {}
            for key, value in node.value:
                if not isinstance(key, ScalarNode):
                    continue
                where = f"{path}.{key.value}" if path else str(key.value)
                if key.tag != "tag:yaml.org,2002:merge":
                    earlier = first.setdefault((key.tag, key.value), key.start_mark)
                    if earlier is not key.start_mark:
                        found.append((where, earlier, key.start_mark))
                stack.append((value, where))
        elif isinstance(node, SequenceNode):
            stack.extend((item, f"{path}.{i}" if path else str(i))
                         for i, item in enumerate(node.value))
    return sorted(found, key=lambda d: d[2].index)


def _at(source: str, mark: Mark) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError, source: str, text: str, path: str = "") -> ConfigProblem:
    """One line: `FILE:LINE:COL: invalid YAML: <problem> (<context> at line L, column C)`."""
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "cannot parse"
        began = exc.context_mark
        # the context is worth a mention where it points elsewhere (an unclosed bracket)
        if exc.problem and exc.context and began is not None and began is not mark:
            message += f" ({exc.context} at line {began.line + 1}, column {began.column + 1})"
        where = _at(source, mark) if mark is not None and not path else source
    elif isinstance(exc, ReaderError):
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        where = source if path else f"{source}:{line}:{column}"
        message = f"unacceptable character #x{int(exc.character):04x}: {exc.reason}"
    else:
        where, message = source, str(exc)
    return _problem(where, path, "invalid YAML: " + " ".join(message.split()))


def _read_text(path: Path, source: str, limit: int) -> str:
    """The file's text: UTF-8 (a BOM is allowed), at most `limit` bytes; else ConfigError."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)  # bounded: `--config /dev/zero` must not hang
    except OSError as exc:
        raise ConfigError([_problem(source, "", f"cannot read: {exc.strerror or exc}")]) from exc
    if len(data) > limit:
        raise ConfigError([_problem(source, "", f"larger than {limit // 1024 // 1024} MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([_problem(
            f"{source}:{line}", "",
            f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} ({exc.reason})",
        )]) from None


class _Expander:
    """Replaces ${env:NAME}, ${env:NAME:-default} and ${file:PATH} in every string, and `$${`
    by a literal `${`; a malformed or unknown reference is a problem naming the key path.
    Copies the tree, so aliases become copies: `_MAX_VALUES` bounds the copy."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        self.budget = _MAX_VALUES
        self.active: set[int] = set()  # containers being copied: meeting one again is a cycle
        self.refused = False  # the tree's shape is unusable: validating it would only add noise

    def expand(self, value: Any, path: str = "", depth: int = 0) -> Any:
        if self.budget == 0:
            if not self.refused:
                self.refuse("", f"more than {_MAX_VALUES} values (after expanding YAML aliases)")
            return None
        self.budget -= 1
        if isinstance(value, dict | list):
            if depth >= _MAX_DEPTH:
                self.refuse(path, f"nested deeper than {_MAX_DEPTH} levels")
                return None
            if id(value) in self.active:
                self.refuse(path, "a YAML alias refers to a value that contains it")
                return None
            self.active.add(id(value))
            try:
                if isinstance(value, dict):
                    return {k: self.expand(v, f"{path}.{k}" if path else str(k), depth + 1)
                            for k, v in value.items()}
                return [self.expand(v, f"{path}.{i}" if path else str(i), depth + 1)
                        for i, v in enumerate(value)]
            finally:
                self.active.discard(id(value))
        if not isinstance(value, str) or "${" not in value:
            return value
        return _REF.sub(lambda match: self.substitute(match, path), value)

    def problem(self, path: str, message: str) -> None:
        self.problems.append(_problem(self.source, path, message))

    def refuse(self, path: str, message: str) -> None:
        self.problem(path, message)
        self.refused = True

    def substitute(self, match: re.Match[str], path: str) -> str:
        escaped, body, closed = match.group(1), match.group(2), match.group(3)
        if escaped:
            return "${" + body + closed
        ref = match.group(0) if len(match.group(0)) <= 60 else match.group(0)[:57] + "..."
        scheme, colon, rest = body.partition(":")
        if not closed:
            self.problem(path, f"{ref!r}: reference is not closed with '}}'")
        elif "${" in body:
            self.problem(path, f"{ref!r}: nested references are not supported")
        elif not colon:
            self.problem(path, f"{ref!r}: reference needs a scheme, e.g. "
                               f"${{env:{body or 'NAME'}}}")
        elif scheme not in _SCHEMES:
            known = ", ".join(_SCHEMES)
            self.problem(path, f"{ref!r}: unknown reference scheme {scheme!r} (known: {known})")
        elif scheme == "env":
            name, has_default, default = rest.partition(":-")
            if not name:
                self.problem(path, f"{ref!r}: empty environment variable name")
            elif not _ENV_NAME.fullmatch(name):
                self.problem(path, f"{ref!r}: invalid environment variable name {name!r}")
            elif name in os.environ:
                return os.environ[name]
            elif has_default:
                return default
            else:
                self.problem(path, f"environment variable {name} is not set")
        elif not rest:
            self.problem(path, f"{ref!r}: empty file path")
        else:
            try:
                return _read_text(Path(rest), rest, _MAX_SECRET_BYTES).strip()
            except ConfigError as exc:
                self.problems.extend(_problem(self.source, path, str(p)) for p in exc.problems)
        return ""


def _apply_set(tree: dict[str, Any], assignment: str) -> None:
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError([_problem("--set", assignment, "expected key.path=value")])
    try:
        value, duplicates = _parse_yaml(raw) if raw else (None, [])
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, "--set", raw, key)]) from None
    if duplicates:
        raise ConfigError([_problem("--set", f"{key}.{where}", "duplicate key")
                           for where, _, _ in duplicates])
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _problems_from(exc: ValidationError, source: str, prefix: str = "") -> list[ConfigProblem]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        out.append(_problem(source, path, message))
    return out


def load(path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    source = str(path) if path is not None else "<defaults>"
    problems: list[ConfigProblem] = []
    tree: Any = {}
    if path is not None:
        text = _read_text(Path(path), source, _MAX_FILE_BYTES)
        try:
            tree, duplicates = _parse_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError([_yaml_problem(exc, source, text)]) from None
        tree = tree if tree is not None else {}
        if not isinstance(tree, dict):
            raise ConfigError([_problem(source, "", "top level must be a mapping")])
        problems.extend(
            _problem(_at(source, repeat), key, f"duplicate key (first at line {first.line + 1})")
            for key, first, repeat in duplicates)
    for assignment in overrides:
        try:
            _apply_set(tree, assignment)
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        config = from_tree(tree, source)
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    if problems:
        raise ConfigError(problems)
    return config


def from_tree(tree: dict[str, Any], source: str = "<config>") -> Config:
    problems: list[ConfigProblem] = []
    expander = _Expander(source, problems)
    tree = expander.expand(tree)
    if expander.refused:
        raise ConfigError(problems)
    # a key whose reference failed was given "": its validation error would only repeat that
    unresolved = {p.path for p in problems}

    raw_exporters = tree.pop("exporters", None)
    if raw_exporters is None:
        raw_exporters = DEFAULT_EXPORTERS
    exporters: dict[str, ExporterSettings] = {}
    if not isinstance(raw_exporters, dict):
        problems.append(_problem(source, "exporters", "must be a mapping of name -> settings"))
        raw_exporters = {}
    factories = exporter_factories()
    for name, raw in raw_exporters.items():
        where = f"exporters.{name}"
        if not isinstance(raw, dict) or "type" not in raw:
            problems.append(_problem(source, where, "needs a 'type'"))
            continue
        factory = factories.get(str(raw["type"]))
        if factory is None:
            known = ", ".join(sorted(factories))
            problems.append(_problem(
                source, f"{where}.type", f"unknown exporter type {raw['type']!r} (known: {known})"))
            continue
        try:
            exporters[str(name)] = factory.config_type.model_validate(raw)
        except ValidationError as exc:
            problems.extend(p for p in _problems_from(exc, source, where)
                            if p.path not in unresolved)

    processors = _processors(tree.pop("processors", None), source, problems)

    config = None
    try:
        config = Config.model_validate(tree)
    except ValidationError as exc:
        problems.extend(p for p in _problems_from(exc, source) if p.path not in unresolved)

    # checked on the raw tree so a problem elsewhere does not hide a dangling reference
    raw_pipelines = tree.get("pipelines")
    if isinstance(raw_pipelines, dict):
        for signal in Signal:
            names = raw_pipelines.get(signal.value)
            for name in names if isinstance(names, list) else ():
                # not a string: the model reports the type
                if isinstance(name, str) and name not in raw_exporters:
                    problems.append(_problem(
                        source, f"pipelines.{signal.value}", f"unknown exporter {name!r}"))
    if problems or config is None:
        raise ConfigError(problems)
    return config.model_copy(update={"exporters": exporters, "processors": processors})


def _processors(raw: Any, source: str, problems: list[ConfigProblem],
                ) -> dict[str, ProcessorSettings]:
    """Every processor type's settings: from the file where given, else its defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(ConfigProblem(
            source, "processors", "must be a mapping of type -> settings"))
        return {}
    factories = {f.type_name: f for f in processor_factories()}
    for name in raw:
        if name not in factories:
            known = ", ".join(sorted(factories)) or "none"
            problems.append(ConfigProblem(
                source, f"processors.{name}", f"unknown processor type (known: {known})"))
    out: dict[str, ProcessorSettings] = {}
    for name, factory in factories.items():
        settings = raw.get(name)
        try:
            out[name] = factory.config_type.model_validate({} if settings is None else settings)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, source, f"processors.{name}"))
    return out
