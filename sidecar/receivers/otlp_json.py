"""OTLP/JSON <-> protobuf messages, both ways.

OTLP/JSON is the proto3 JSON mapping with one wire difference: trace and span ids are hex,
not base64 (in spans, links, log records and metric exemplars). Decoding swaps those ids to
base64 in the parsed dict and lets protobuf's `json_format` do the rest, which also gives
the leniency the spec asks of receivers: enum names or numbers, int64 as strings or
numbers, lowerCamelCase or snake_case keys, unknown fields ignored.

A span or log record whose id is not valid hex of the right length is dropped and counted
(partial success); everything else malformed fails the whole request."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf import json_format

from sidecar.errors import BadInputError
from sidecar.model import REQUEST_TYPES, ExportRequest, Signal

TRACE_ID_BYTES: Final = 16
SPAN_ID_BYTES: Final = 8

# (camelCase key, snake_case key, id size in bytes)
_IdField = tuple[str, str, int]
_TRACE_AND_SPAN: Final[tuple[_IdField, ...]] = (
    ("traceId", "trace_id", TRACE_ID_BYTES),
    ("spanId", "span_id", SPAN_ID_BYTES),
)
_SPAN_IDS: Final[tuple[_IdField, ...]] = (
    *_TRACE_AND_SPAN,
    ("parentSpanId", "parent_span_id", SPAN_ID_BYTES),
)
_METRIC_KINDS: Final = (
    ("gauge", "gauge"),
    ("sum", "sum"),
    ("histogram", "histogram"),
    ("exponentialHistogram", "exponential_histogram"),
    ("summary", "summary"),
)


@dataclass(frozen=True, slots=True)
class DecodedJson:
    """A request decoded from OTLP/JSON, minus the items that had to be rejected."""

    message: ExportRequest
    rejected: int = 0
    error_message: str = ""


# --- decoding -------------------------------------------------------------------------------


class _InvalidId(Exception):
    pass


def _children(node: Any, camel: str, snake: str) -> list[Any]:
    """A repeated field under either spelling; anything else is left for json_format to
    reject with its own message."""
    if not isinstance(node, dict):
        return []
    value = node.get(camel)
    if value is None and snake != camel:
        value = node.get(snake)
    return value if isinstance(value, list) else []


def _hex_to_base64(value: object, size: int, key: str) -> str:
    if not isinstance(value, str):
        raise _InvalidId(f"{key} must be a hex string, got {type(value).__name__}")
    if len(value) != 2 * size:
        raise _InvalidId(f"{key} {value!r} is not {2 * size} hex digits")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _InvalidId(f"{key} {value!r} is not hex") from None
    # fromhex skips whitespace, so a right-length string can still decode short
    if len(raw) != size:
        raise _InvalidId(f"{key} {value!r} is not hex")
    return base64.b64encode(raw).decode("ascii")


def _fix_ids(node: Any, fields: tuple[_IdField, ...]) -> None:
    """Rewrite hex ids in `node` to base64 in place; an empty id means unset and stays."""
    if not isinstance(node, dict):
        return
    for camel, snake, size in fields:
        for key in (camel, snake):
            value = node.get(key)
            if value is not None and value != "":
                node[key] = _hex_to_base64(value, size, key)


def _keep_valid(items: list[Any], fix: Any) -> tuple[list[Any], int, str]:
    kept: list[Any] = []
    first_error = ""
    for item in items:
        try:
            fix(item)
        except _InvalidId as exc:
            first_error = first_error or str(exc)
            continue
        kept.append(item)
    return kept, len(items) - len(kept), first_error


def _fix_span(span: Any) -> None:
    _fix_ids(span, _SPAN_IDS)
    for link in _children(span, "links", "links"):
        _fix_ids(link, _TRACE_AND_SPAN)


def _fix_log_record(record: Any) -> None:
    _fix_ids(record, _TRACE_AND_SPAN)


def _filter_leaves(
    tree: dict[str, Any], path: tuple[tuple[str, str], ...], fix: Any, what: str
) -> tuple[int, str]:
    """Walk resource -> scope -> leaf lists, fixing ids and dropping leaves with bad ones."""
    (res_camel, res_snake), (scope_camel, scope_snake), (leaf_camel, leaf_snake) = path
    rejected = 0
    first_error = ""
    for resource in _children(tree, res_camel, res_snake):
        for scope in _children(resource, scope_camel, scope_snake):
            leaves = _children(scope, leaf_camel, leaf_snake)
            if not leaves:
                continue
            kept, dropped, error = _keep_valid(leaves, fix)
            if dropped:
                key = leaf_camel if leaf_camel in scope else leaf_snake
                scope[key] = kept
                rejected += dropped
                first_error = first_error or error
    if rejected:
        return rejected, f"{rejected} {what} rejected: {first_error}"
    return 0, ""


def _fix_metrics(tree: dict[str, Any]) -> None:
    # Exemplars are not counted items, so a bad exemplar id fails the whole request.
    for resource in _children(tree, "resourceMetrics", "resource_metrics"):
        for scope in _children(resource, "scopeMetrics", "scope_metrics"):
            for metric in _children(scope, "metrics", "metrics"):
                if not isinstance(metric, dict):
                    continue
                for camel, snake in _METRIC_KINDS:
                    data = metric.get(camel, metric.get(snake))
                    for point in _children(data, "dataPoints", "data_points"):
                        for exemplar in _children(point, "exemplars", "exemplars"):
                            _fix_ids(exemplar, _TRACE_AND_SPAN)


def decode_request(signal: Signal, data: bytes) -> DecodedJson:
    """OTLP/JSON bytes -> request message, dropping spans/log records with invalid ids.
    Raises `BadInputError` when the body as a whole is not a valid request."""
    try:
        tree = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadInputError(f"malformed OTLP {signal} JSON: {exc}", "malformed") from exc
    if not isinstance(tree, dict):
        raise BadInputError(f"malformed OTLP {signal} JSON: expected an object", "malformed")
    rejected, error_message = 0, ""
    try:
        if signal is Signal.TRACES:
            path = (("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans"),
                    ("spans", "spans"))
            rejected, error_message = _filter_leaves(tree, path, _fix_span, "spans")
        elif signal is Signal.LOGS:
            path = (("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs"),
                    ("logRecords", "log_records"))
            rejected, error_message = _filter_leaves(tree, path, _fix_log_record, "log records")
        else:
            _fix_metrics(tree)
        message = json_format.ParseDict(tree, REQUEST_TYPES[signal](), ignore_unknown_fields=True)
    except _InvalidId as exc:
        raise BadInputError(f"invalid OTLP {signal} JSON: {exc}", "malformed") from exc
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise BadInputError(f"invalid OTLP {signal} JSON: {exc}", "malformed") from exc
    return DecodedJson(message, rejected, error_message)


def request_from_json_bytes(signal: Signal, data: bytes) -> ExportRequest:
    """Strict decode: any invalid id fails the whole request with `BadInputError`."""
    decoded = decode_request(signal, data)
    if decoded.rejected:
        raise BadInputError(f"invalid OTLP {signal} JSON: {decoded.error_message}", "malformed")
    return decoded.message


# --- encoding -------------------------------------------------------------------------------


def _base64_to_hex(node: Any, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = node.get(key)
        if value:
            node[key] = binascii.a2b_base64(value).hex()


_ENCODE_SPAN_KEYS: Final = ("traceId", "spanId", "parentSpanId")
_ENCODE_REF_KEYS: Final = ("traceId", "spanId")


def _ids_to_hex(signal: Signal, tree: dict[str, Any]) -> None:
    """MessageToDict writes bytes as base64 and keys in lowerCamelCase; OTLP wants hex ids."""
    if signal is Signal.TRACES:
        for rs in tree.get("resourceSpans", ()):
            for ss in rs.get("scopeSpans", ()):
                for span in ss.get("spans", ()):
                    _base64_to_hex(span, _ENCODE_SPAN_KEYS)
                    for link in span.get("links", ()):
                        _base64_to_hex(link, _ENCODE_REF_KEYS)
    elif signal is Signal.LOGS:
        for rl in tree.get("resourceLogs", ()):
            for sl in rl.get("scopeLogs", ()):
                for record in sl.get("logRecords", ()):
                    _base64_to_hex(record, _ENCODE_REF_KEYS)
    else:
        for rm in tree.get("resourceMetrics", ()):
            for sm in rm.get("scopeMetrics", ()):
                for metric in sm.get("metrics", ()):
                    for kind, _ in _METRIC_KINDS:
                        for point in metric.get(kind, {}).get("dataPoints", ()):
                            for exemplar in point.get("exemplars", ()):
                                _base64_to_hex(exemplar, _ENCODE_REF_KEYS)


def request_to_dict(signal: Signal, message: ExportRequest) -> dict[str, Any]:
    """The OTLP/JSON object for a request: hex ids, integer enums, lowerCamelCase keys."""
    tree: dict[str, Any] = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(signal, tree)
    return tree


def request_to_json_bytes(signal: Signal, message: ExportRequest) -> bytes:
    return orjson.dumps(request_to_dict(signal, message))
