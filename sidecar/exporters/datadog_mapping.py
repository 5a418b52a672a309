"""OTLP spans -> Datadog spans, as the Datadog Agent's OTLP translation does it ("v2" name
and resource rules; docs/vendors.md §2.3). Pure functions: no I/O, no config beyond
`Defaults`.

One `TracerPayload` per OTLP resource, one `TraceChunk` per trace id within it. Spans whose
trace or span id is all zeros are skipped (the Agent's indexing skips them too) and
counted, so the exporter reports them as rejected; so are spans whose ids are not 16 and 8
bytes long (pdata cannot hold them, and Datadog's ids are 64-bit)."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from sidecar.exporters import datadog_proto
from sidecar.exporters.datadog_sql import SPAN_TYPES as SQL_SPAN_TYPES
from sidecar.exporters.datadog_sql import obfuscate_sql
from sidecar.exporthelper.body import BodyTooLargeError
from sidecar.protowire import encode_varint as _varint

if TYPE_CHECKING:
    from sidecar._proto.datadog_trace_pb2 import TracerPayload

DEFAULT_SERVICE = "otlpresourcenoservicename"
MAX_SERVICE = 100
MAX_RESOURCE = 5000
MAX_META_KEY = 200
MAX_META_VALUE = 25_000
PRIORITY_AUTO_KEEP = 1
# a Datadog Span's fields by their proto names (meta and metrics as dicts)
SpanFields = dict[str, Any]

_KIND_META: dict[int, str] = {  # meta span.kind (the Agent's OTelSpanKindName)
    Span.SPAN_KIND_UNSPECIFIED: "unspecified", Span.SPAN_KIND_INTERNAL: "internal",
    Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
    Span.SPAN_KIND_PRODUCER: "producer", Span.SPAN_KIND_CONSUMER: "consumer",
}
# the operation-name fallback: pdata's SpanKind.String(); unspecified counts as internal
_KIND_NAME: dict[int, str] = {
    Span.SPAN_KIND_UNSPECIFIED: "Internal", Span.SPAN_KIND_INTERNAL: "Internal",
    Span.SPAN_KIND_SERVER: "Server", Span.SPAN_KIND_CLIENT: "Client",
    Span.SPAN_KIND_PRODUCER: "Producer", Span.SPAN_KIND_CONSUMER: "Consumer",
}
_STATUS: dict[int, str] = {Status.STATUS_CODE_UNSET: "Unset", Status.STATUS_CODE_OK: "Ok",
           Status.STATUS_CODE_ERROR: "Error"}
_SQL = frozenset({"postgresql", "mysql", "mssql", "oracle", "sqlite", "mariadb", "clickhouse",
                  "db2", "derby", "h2", "hsqldb", "ingres", "informix", "cockroachdb",
                  "firebird", "adabas", "cache", "hive", "sap", "sybase", "teradata",
                  "vertica", "pointbase", "pervasive", "netezza", "interbase", "instantdb",
                  "filemaker", "edb", "cloudscape", "trino", "spanner", "redshift"})
_DB_TYPES = {"cassandra": "cassandra", "redis": "redis", "memcached": "memcached",
             "mongodb": "mongodb", "elasticsearch": "elasticsearch",
             "opensearch": "opensearch"}
# OTel semantic-convention keys renamed to Datadog's (the Agent's attributes.HTTPMappings;
# method and server.address renames are what rotel sends, the rest read from Datadog's
# sources and not seen on the wire)
_RENAMES = {
    "server.address": "http.server_name",
    "http.request.method": "http.method",
    "url.full": "http.url",
    "user_agent.original": "http.useragent",
    "client.address": "http.client_ip",
    "http.request.body.size": "http.request.content_length",
    "http.response.body.size": "http.response.content_length",
}
_HEADER_PREFIXES = (("http.request.header.", "http.request.headers."),
                    ("http.response.header.", "http.response.headers."))
_CONSUMED = frozenset({"service.name", "operation.name", "resource.name", "span.type"})
_SERVICE_INVALID = re.compile(r"[^a-z0-9_.\-/:]")


@dataclass(frozen=True, slots=True)
class Defaults:
    """Collector-level values for what a resource does not say."""

    hostname: str = ""
    env: str = ""
    top_level_by_span_kind: bool = True


@dataclass(frozen=True, slots=True)
class Base:
    """The meta every span of one scope starts from (its resource's attributes, then the
    scope's), as a dict for lookups and, serialized once, as the bytes of a Span holding
    only that meta."""

    meta: dict[str, str]
    raw: bytes


@dataclass(slots=True)
class MappedPayload:
    """One TracerPayload: its fields but chunks, and per chunk its spans (Span fields,
    each with only its own meta) paired with their scope's Base."""

    header: TracerPayload
    chunks: list[list[tuple[SpanFields, Base]]]

    def serialize(self) -> bytes:
        """The TracerPayload's bytes. Built by concatenation, which protobuf defines as a
        merge: a span is its Base's bytes then its own, so its map entries are the union
        with its own winning, exactly as if one meta map were filled; each span is placed
        in its chunk without the copy `repeated.append` makes (~9 µs per span) and the
        resource's and scope's meta is encoded once per scope, not once per span."""
        new_span = datadog_proto.load().Span
        parts = [self.header.SerializeToString()]
        for chunk in self.chunks:
            body = [_chunk_header()]
            for span, base in chunk:
                # the maps filled by hand: the constructor fills them through
                # MutableMapping.update, two lookups per entry in Python
                message = new_span(
                    service=span["service"], name=span["name"], resource=span["resource"],
                    traceID=span["traceID"], spanID=span["spanID"],
                    parentID=span["parentID"], start=span["start"],
                    duration=span["duration"], error=span["error"], type=span["type"])
                target = message.meta
                for key, value in span["meta"].items():
                    target[key] = value
                target = message.metrics
                for key, value in span["metrics"].items():
                    target[key] = value
                own = message.SerializeToString()
                body += (_SPANS_TAG, _varint(len(base.raw) + len(own)), base.raw, own)
            joined = b"".join(body)
            parts += (_CHUNKS_TAG, _varint(len(joined)), joined)
        return b"".join(parts)


@dataclass(slots=True)
class Mapped:
    mapped: list[MappedPayload] = field(default_factory=list)
    spans: int = 0
    skipped: int = 0  # all-zero trace or span ids

    @property
    def payloads(self) -> list[TracerPayload]:
        """The TracerPayloads as the intake decodes them (for tests and tools; the
        exporter sends `serialize()` bytes)."""
        pb = datadog_proto.load()
        return [pb.TracerPayload.FromString(p.serialize()) for p in self.mapped]


# length-delimited field keys (field number << 3 | 2), written by hand with the lengths:
# TraceChunk.spans = 3, TracerPayload.chunks = 6, AgentPayload.tracerPayloads = 5
_SPANS_TAG, _CHUNKS_TAG, TRACER_PAYLOADS_TAG = b"\x1a", b"\x32", b"\x2a"


@functools.cache
def _chunk_header() -> bytes:
    return bytes(datadog_proto.load().TraceChunk(priority=PRIORITY_AUTO_KEEP).SerializeToString())


def length_delimited(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


# --- OTLP values --------------------------------------------------------------------------

def py_value(value: AnyValue) -> Any:
    """An AnyValue as plain JSON-able Python (bytes as base64, as pdata's AsRaw does)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind == "array_value":
        return [py_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: py_value(kv.value) for kv in value.kvlist_value.values}
    return None


def as_string(value: AnyValue) -> str:
    """pdata's Value.AsString: strings as they are, bool as true/false, numbers in decimal,
    bytes as base64, arrays and maps as compact JSON, empty as ""."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return _float_text(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind is None:
        return ""
    return orjson.dumps(py_value(value)).decode()


def _float_text(number: float) -> str:
    text = repr(number)
    return text[:-2] if text.endswith(".0") else text


def _strings(attributes: Iterable[KeyValue]) -> dict[str, str]:
    return {kv.key: as_string(kv.value) for kv in attributes}


def normalize_service(name: str) -> str:
    normalized = _SERVICES.get(name)
    if normalized is None:
        normalized = _SERVICE_INVALID.sub("_", name.strip().lower())[:MAX_SERVICE]
        normalized = normalized or DEFAULT_SERVICE
        if len(_SERVICES) < _NAME_CACHE:  # a few services per process; bounded all the same
            _SERVICES[name] = normalized
    return normalized


_SERVICES: dict[str, str] = {}


# --- rules of §2.3 ------------------------------------------------------------------------

class _Lookup:
    """String attribute lookups on the span first, then the resource (the Agent's
    GetOTelAttrFromEitherMap): every span key before any resource key."""

    __slots__ = ("resource", "resource_env", "resource_version", "span")

    def __init__(self, span: Mapping[str, str], resource: _Resource) -> None:
        self.span = span
        self.resource = resource.strings
        self.resource_env = resource.env
        self.resource_version = resource.version

    def has_any(self, keys: frozenset[str]) -> bool:
        """Whether the span or the resource has any of `keys` (a C-level set test: the
        rules below only need their lookups when one of their keys is there)."""
        return not (keys.isdisjoint(self.span) and keys.isdisjoint(self.resource))

    def get(self, *keys: str, lower: bool = False) -> str:
        for source in (self.span, self.resource):
            for key in keys:
                value = source.get(key)
                if value:
                    return value.lower() if lower else value
        return ""


# the keys each rule reads: without any of them, the rule's answer is its fallback
_OPERATION_KEYS = frozenset({
    "operation.name", "http.request.method", "http.method", "db.system", "messaging.system",
    "messaging.operation", "rpc.system", "faas.invoked_provider", "faas.invoked_name",
    "faas.trigger", "graphql.operation.type", "network.protocol.name"})
_RESOURCE_KEYS = frozenset({
    "resource.name", "http.request.method", "http.method", "messaging.operation",
    "rpc.method", "graphql.operation.type", "db.system"})
_TYPE_KEYS = frozenset({"span.type", "db.system"})
_ENV_KEYS = frozenset({"deployment.environment.name", "deployment.environment"})
_PLAIN_TYPE: dict[int, str] = {Span.SPAN_KIND_SERVER: "web", Span.SPAN_KIND_CLIENT: "http"}


def operation_name(kind: int, attrs: _Lookup) -> str:
    if not attrs.has_any(_OPERATION_KEYS):
        if kind == Span.SPAN_KIND_SERVER:
            return "server.request"
        if kind == Span.SPAN_KIND_CLIENT:
            return "client.request"
        return _KIND_NAME.get(kind, "Internal")
    name = attrs.get("operation.name", lower=True)
    if name:
        return name
    client, server = kind == Span.SPAN_KIND_CLIENT, kind == Span.SPAN_KIND_SERVER
    if attrs.get("http.request.method", "http.method"):
        if server:
            return "http.server.request"
        if client:
            return "http.client.request"
    db = attrs.get("db.system", lower=True)
    if db and client:
        return f"{db}.query"
    system = attrs.get("messaging.system", lower=True)
    op = attrs.get("messaging.operation", lower=True)
    if system and op and kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER,
                                  Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER):
        return f"{system}.{op}"
    rpc = attrs.get("rpc.system", lower=True)
    if rpc == "aws-api" and client:
        service = attrs.get("rpc.service", lower=True)
        return f"aws.{service}.request" if service else "aws.client.request"
    if rpc and client:
        return f"{rpc}.client.request"
    if rpc and server:
        return f"{rpc}.server.request"
    provider = attrs.get("faas.invoked_provider", lower=True)
    invoked = attrs.get("faas.invoked_name", lower=True)
    if provider and invoked and client:
        return f"{provider}.{invoked}.invoke"
    trigger = attrs.get("faas.trigger", lower=True)
    if trigger and server:
        return f"{trigger}.invoke"
    if attrs.get("graphql.operation.type"):
        return "graphql.server.request"
    protocol = attrs.get("network.protocol.name", lower=True)
    if server:
        return f"{protocol}.server.request" if protocol else "server.request"
    if client:
        return f"{protocol}.client.request" if protocol else "client.request"
    return _KIND_NAME.get(kind, "Internal")


def resource_name(span: Span, attrs: _Lookup) -> str:
    if not attrs.has_any(_RESOURCE_KEYS):
        return span.name[:MAX_RESOURCE]
    name = attrs.get("resource.name")
    if not name:
        name = _resource_from_semconv(span, attrs)
    return name[:MAX_RESOURCE]


def _resource_from_semconv(span: Span, attrs: _Lookup) -> str:
    method = attrs.get("http.request.method", "http.method")
    if method:
        name = "HTTP" if method == "_OTHER" else method
        if span.kind == Span.SPAN_KIND_SERVER:
            route = attrs.get("http.route")
            if route:
                name = f"{name} {route}"
        return name
    op = attrs.get("messaging.operation")
    if op:
        dest = attrs.get("messaging.destination", "messaging.destination.name")
        return f"{op} {dest}" if dest else op
    method = attrs.get("rpc.method")
    if method:
        service = attrs.get("rpc.service")
        return f"{method} {service}" if service else method
    op_type = attrs.get("graphql.operation.type")
    if op_type:
        op_name = attrs.get("graphql.operation.name")
        return f"{op_type} {op_name}" if op_name else op_type
    if attrs.get("db.system"):
        statement = attrs.get("db.statement", "db.query.text")
        if statement:
            return statement
    return span.name


def span_type(kind: int, attrs: _Lookup) -> str:
    if not attrs.has_any(_TYPE_KEYS):
        return _PLAIN_TYPE.get(kind, "custom")
    explicit = attrs.get("span.type")
    if explicit:
        return explicit
    if kind == Span.SPAN_KIND_SERVER:
        return "web"
    if kind == Span.SPAN_KIND_CLIENT:
        db = attrs.get("db.system", lower=True)
        if not db:
            return "http"
        if db in _SQL:
            return "sql"
        return _DB_TYPES.get(db, "db")
    return "custom"


# --- one span -----------------------------------------------------------------------------

@dataclass(slots=True)
class _Resource:
    strings: dict[str, str]  # every resource attribute as a string
    service: str  # normalized, or "" when the resource has none
    env: str
    version: str


def _resource(rs: ResourceSpans) -> _Resource:
    strings = _strings(rs.resource.attributes)
    service = strings.get("service.name", "")
    env = strings.get("deployment.environment.name") or strings.get(
        "deployment.environment", "")
    return _Resource(strings, service, env, strings.get("service.version", ""))


def _put_meta(meta: dict[str, str], key: str, value: str) -> None:
    if len(key) > MAX_META_KEY:
        key = key[:MAX_META_KEY] + "..."
    if len(value) > MAX_META_VALUE:
        value = value[:MAX_META_VALUE] + "..."
    meta[key] = value


@functools.lru_cache(maxsize=4096)  # keys repeat from span to span; bounded for hostile ones
def _rename(key: str) -> str:
    renamed = _RENAMES.get(key)
    if renamed is not None:
        return renamed
    for old, new in _HEADER_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


# per attribute key, what the loop in map_span needs (renamed, truncated, or None for a key
# the mapping consumes): computed once per key, bounded for hostile key sets
_META_NAMES: dict[str, str | None] = {}
_METRIC_NAMES: dict[str, tuple[str, ...]] = {}
_NAME_CACHE = 4096


def _truncated_key(key: str) -> str:
    return key if len(key) <= MAX_META_KEY else key[:MAX_META_KEY] + "..."


def _meta_name(key: str) -> str | None:
    name = None if key in _CONSUMED else _truncated_key(_rename(key))
    if len(_META_NAMES) < _NAME_CACHE:
        _META_NAMES[key] = name
    return name


def _metric_names(key: str) -> tuple[str, ...]:
    names: tuple[str, ...] = (_truncated_key(_rename(key)),)
    if key in ("http.response.status_code", "http.status_code"):
        names += ("http.status_code",)
    elif key == "sampling.priority":
        names += ("_sampling_priority_v1",)
    if len(_METRIC_NAMES) < _NAME_CACHE:
        _METRIC_NAMES[key] = names
    return names


def base_meta(res: _Resource, scope_meta: Mapping[str, str]) -> dict[str, str]:
    """The meta every span of a scope starts from: resource attributes, then scope ones."""
    meta: dict[str, str] = {}
    for key, value in res.strings.items():
        if key not in _CONSUMED:
            _put_meta(meta, key, value)
    for key, value in scope_meta.items():
        _put_meta(meta, key, value)
    return meta


def map_span(span: Span, res: _Resource, base: Mapping[str, str],
             defaults: Defaults, trace_id: bytes | None = None) -> SpanFields:
    """The Datadog span's fields with only its own meta: `base` (resource and scope meta)
    is merged in when serialized (`MappedPayload.serialize`), its own entries winning.
    Plain Python until then: top-level marking and APM stats read dicts, not protobuf.
    `trace_id`: `span.trace_id` when the caller has it (each read of a bytes field
    copies it)."""
    span_strings: dict[str, str] = {}
    metrics: dict[str, float] = {}
    meta: dict[str, str] = {}
    meta_names = _META_NAMES
    for kv in span.attributes:
        key, value = kv.key, kv.value
        # a non-empty string (a oneof: no other kind has one) is the common case, read
        # without a WhichOneof call
        text = value.string_value
        if not text:
            kind = value.WhichOneof("value")
            if kind == "int_value" or kind == "double_value":
                if kind == "int_value":
                    number: float = float(value.int_value)
                    span_strings[key] = str(value.int_value)
                else:
                    number = value.double_value
                    span_strings[key] = _float_text(number)
                for metric_name in _METRIC_NAMES.get(key) or _metric_names(key):
                    metrics[metric_name] = number
                continue
            text = "" if kind == "string_value" else as_string(value)
        span_strings[key] = text
        name = meta_names.get(key, _UNKNOWN)
        if name is _UNKNOWN:
            name = _meta_name(key)
        if name is not None:
            meta[name] = text if len(text) <= MAX_META_VALUE else (
                text[:MAX_META_VALUE] + "...")
    if trace_id is None:
        trace_id = span.trace_id
    attrs = _Lookup(span_strings, res)
    service = span_strings.get("service.name") or res.service
    status = span.status
    code = status.code
    error = 1 if code == Status.STATUS_CODE_ERROR else 0
    span_kind = span.kind
    start = span.start_time_unix_nano
    parent = span.parent_span_id

    # --- added meta (the Agent's): kind, env, version, ids, status, links, events
    meta["span.kind"] = _KIND_META.get(span_kind, "unspecified")
    if _ENV_KEYS.isdisjoint(span_strings):  # the resource's, found once per resource
        env = res.env or defaults.env
    else:
        env = attrs.get("deployment.environment.name", "deployment.environment") or defaults.env
    if env:
        meta["env"] = env
    version = span_strings.get("service.version") or res.version
    if version:
        meta["version"] = version
    meta["otel.trace_id"] = trace_id.hex()
    meta["otel.status_code"] = _STATUS.get(code, "Unset")
    message = status.message
    if message:
        _put_meta(meta, "otel.status_description", message)
    trace_state = span.trace_state
    if trace_state:
        _put_meta(meta, "w3c.tracestate", trace_state)
    namespace = span_strings.get("db.namespace") or res.strings.get("db.namespace")
    if namespace and "db.name" not in meta and "db.name" not in base:
        _put_meta(meta, "db.name", namespace)
    if span.events:
        _events(span, meta)
    if span.links:
        _links(span, meta)
    if error and "error.msg" not in meta and "error.msg" not in base:
        if message:
            _put_meta(meta, "error.msg", message)
        else:
            http_code = metrics.get("http.status_code")
            if http_code is not None:
                meta["error.msg"] = _http_reason(int(http_code))
    resource = resource_name(span, attrs)
    kind_type = span_type(span_kind, attrs)
    if kind_type in SQL_SPAN_TYPES and resource:
        # the Agent obfuscates these before the intake and its stats see them
        resource = meta["sql.query"] = obfuscate_sql(resource)
    return {
        "service": normalize_service(service) if service else DEFAULT_SERVICE,
        "name": operation_name(span_kind, attrs),
        "resource": resource,
        "traceID": int.from_bytes(trace_id[8:], "big"),
        "spanID": int.from_bytes(span.span_id, "big"),
        "parentID": int.from_bytes(parent, "big") if parent else 0,
        "start": start,
        "duration": max(span.end_time_unix_nano - start, 0),
        "error": error,
        "type": kind_type,
        "meta": meta,
        "metrics": metrics,
    }


_UNKNOWN = "\x00unknown"  # a _META_NAMES miss (None there means "consumed")


def _links(span: Span, meta: dict[str, str]) -> None:
    _put_meta(meta, "_dd.span_links", orjson.dumps([{
        "trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
        **({"tracestate": link.trace_state} if link.trace_state else {}),
        **({"attributes": _strings(link.attributes)} if link.attributes else {}),
        **({"dropped_attributes_count": link.dropped_attributes_count}
           if link.dropped_attributes_count else {}),
    } for link in span.links]).decode())


def _http_reason(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _events(span: Span, meta: dict[str, str]) -> None:
    events = []
    for event in span.events:
        item: dict[str, Any] = {"time_unix_nano": event.time_unix_nano, "name": event.name}
        if event.attributes:
            item["attributes"] = {kv.key: py_value(kv.value) for kv in event.attributes}
        if event.dropped_attributes_count:
            item["dropped_attributes_count"] = event.dropped_attributes_count
        events.append(item)
        if event.name == "exception":
            found = _strings(event.attributes)
            for source, target in (("exception.type", "error.type"),
                                   ("exception.message", "error.msg"),
                                   ("exception.stacktrace", "error.stack")):
                if found.get(source):
                    _put_meta(meta, target, found[source])
            meta["_dd.span_events.has_exception"] = "true"
    _put_meta(meta, "events", orjson.dumps(events).decode())


# --- payloads -----------------------------------------------------------------------------

def _top_level(spans: list[SpanFields], by_span_kind: bool, kinds: list[int]) -> None:
    """`_top_level` (and `_dd.measured` in span-kind mode) as the Agent computes them."""
    if by_span_kind:
        for span, kind in zip(spans, kinds, strict=True):
            if span["parentID"] == 0 or kind in (Span.SPAN_KIND_SERVER,
                                                 Span.SPAN_KIND_CONSUMER):
                span["metrics"]["_top_level"] = 1.0
            if kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_PRODUCER):
                span["metrics"]["_dd.measured"] = 1.0
        return
    services = {span["spanID"]: span["service"] for span in spans}
    for span in spans:
        parent = services.get(span["parentID"]) if span["parentID"] else None
        if parent is None or parent != span["service"]:
            span["metrics"]["_top_level"] = 1.0


def map_request(request: ExportTraceServiceRequest, defaults: Defaults,
                max_bytes: int | None = None) -> Mapped:
    """With `max_bytes`, raises BodyTooLargeError before mapping any span when the payload
    is sure to exceed it: every span carries its resource's and scope's meta, so a few KB
    of OTLP can stand for megabytes of Datadog spans, and mapping them only to find the
    payload too large would cost seconds on every cut."""
    mapped = Mapped()
    pb = datadog_proto.load()
    resources = []
    floor = 0  # a lower bound of the payload's size: each span's copy of its scope's Base
    for rs in request.resource_spans:
        res = _resource(rs)
        scopes = []
        for ss in rs.scope_spans:
            if not ss.spans:
                continue
            meta = base_meta(res, _scope_meta(ss.scope))
            base = Base(meta, pb.Span(meta=meta).SerializeToString())
            floor += len(ss.spans) * len(base.raw)
            scopes.append((ss, base))
        resources.append((rs, res, scopes))
    if max_bytes is not None and floor > max_bytes:
        raise BodyTooLargeError(
            f"Datadog payload of over {floor} bytes (the spans' resource and scope "
            f"attributes) is over the intake's {max_bytes}", floor / max_bytes)
    for _rs, res, scopes in resources:
        header: TracerPayload = pb.TracerPayload(
            containerID=res.strings.get("container.id", ""),
            languageName=res.strings.get("telemetry.sdk.language", ""),
            tracerVersion=f"otlp-{res.strings['telemetry.sdk.version']}"
            if res.strings.get("telemetry.sdk.version") else "",
            env=res.env or defaults.env,
            hostname=res.strings.get("host.name") or defaults.hostname,
            appVersion=res.version,
        )
        chunks: dict[bytes, tuple[list[tuple[SpanFields, Base]], list[int]]] = {}
        for ss, base in scopes:
            meta = base.meta
            for span in ss.spans:
                trace_id = span.trace_id  # read once: each read copies the bytes
                if not _valid_ids(span, trace_id):
                    mapped.skipped += 1
                    continue
                entry = chunks.get(trace_id)
                if entry is None:
                    entry = chunks[trace_id] = ([], [])
                dd = map_span(span, res, meta, defaults, trace_id)
                if not entry[0]:
                    high = trace_id[:8]
                    if any(high):
                        dd["meta"]["_dd.p.tid"] = high.hex()
                entry[0].append((dd, base))
                entry[1].append(span.kind)
                mapped.spans += 1
        if chunks:
            for pairs, kinds in chunks.values():
                _top_level([dd for dd, _ in pairs], defaults.top_level_by_span_kind, kinds)
            mapped.mapped.append(MappedPayload(header, [pairs for pairs, _ in chunks.values()]))
    return mapped


def _valid_ids(span: Span, trace: bytes) -> bool:
    span_id, parent = span.span_id, span.parent_span_id
    return (len(trace) == 16 and any(trace) and len(span_id) == 8 and any(span_id)
            and len(parent) in (0, 8))


def _scope_meta(scope: Any) -> dict[str, str]:
    meta = _strings(scope.attributes)
    if scope.name:
        meta["otel.scope.name"] = meta["otel.library.name"] = scope.name
    if scope.version:
        meta["otel.scope.version"] = meta["otel.library.version"] = scope.version
    return meta
