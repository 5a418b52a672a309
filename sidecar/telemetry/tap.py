"""A live sample of what the pipelines export, for `sidecar tail` (`GET /tail` on the admin
server).

`Fanout.consume` calls `TAPS.publish(batch)` after the exporters accepted a processed batch,
only while somebody is subscribed (`bool(TAPS)`): with no subscriber the pipeline pays one
attribute test. Each subscriber has a bounded buffer of items (one span or log record, as a
small dict for display); `publish` converts at most as many items as there is room for in
some matching subscriber's buffer and drops the rest, counted. It never awaits, so a slow
reader costs the pipeline nothing but the dropped items; the admin handler drains the buffer
to its HTTP response at the reader's pace."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from sidecar.model import Batch, Signal
from sidecar.telemetry.metrics import TAIL_DROPPED, TAIL_SENT, TAIL_SUBSCRIBERS

_MAX_STRING: Final = 2000  # characters of one value shown
_MAX_DEPTH: Final = 4
_MAX_ITEMS_PER_BATCH: Final = 500  # converted per published batch per subscriber at most
DEFAULT_BUFFER: Final = 1000
# `publish` runs on the event loop for every exported batch: its work is items x readers x
# terms, so readers and terms are bounded (a local client could otherwise open thousands of
# feeds with long filters and stall every pipeline)
MAX_SUBSCRIBERS: Final = 8
MAX_TERMS: Final = 16

Item = dict[str, Any]


def value(any_value: AnyValue, depth: int = 0) -> Any:
    """A display value of an OTLP AnyValue: cut strings, bounded depth."""
    kind = any_value.WhichOneof("value")
    if kind == "string_value":
        text = any_value.string_value
        return text if len(text) <= _MAX_STRING else text[:_MAX_STRING] + "…"
    if kind in ("int_value", "double_value", "bool_value"):
        return getattr(any_value, kind)
    if kind == "bytes_value":
        return any_value.bytes_value[:64].hex()
    if depth >= _MAX_DEPTH:
        return "…"
    if kind == "array_value":
        return [value(v, depth + 1) for v in any_value.array_value.values[:50]]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values, depth + 1)
    return None


def attributes(kvs: Any, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs[:200]:
        assert isinstance(kv, KeyValue)
        out[kv.key] = value(kv.value, depth)
    return out


def _service(resource_attributes: Any) -> str:
    for kv in resource_attributes:
        if kv.key == "service.name":
            return str(kv.value.string_value)
    return ""


def items(batch: Batch) -> Iterator[Item]:
    """The batch's spans or log records as display items, lazily."""
    message = batch.message
    if batch.signal is Signal.TRACES:
        for resource_spans in message.resource_spans:  # type: ignore[union-attr]
            service = _service(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield {"signal": "traces", "service": service, "name": span.name,
                           "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                           "parent_span_id": span.parent_span_id.hex(),
                           "start": span.start_time_unix_nano,
                           "end": span.end_time_unix_nano, "status": span.status.code,
                           "status_message": span.status.message,
                           "attributes": attributes(span.attributes)}
    elif batch.signal is Signal.LOGS:
        for resource_logs in message.resource_logs:  # type: ignore[union-attr]
            service = _service(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    yield {"signal": "logs", "service": service,
                           "time": record.time_unix_nano or record.observed_time_unix_nano,
                           "severity": record.severity_text,
                           "severity_number": record.severity_number,
                           "body": value(record.body), "trace_id": record.trace_id.hex(),
                           "span_id": record.span_id.hex(),
                           "attributes": attributes(record.attributes)}


_TERM: Final = re.compile(r"([^\s=~!<>]+)\s*(=|!=|~|>=)\s*(\S+)")
_SEVERITY: Final = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13,
                    "error": 17, "fatal": 21}


@dataclass(frozen=True, slots=True)
class Filter:
    """`key=value`, `key!=value`, `key~substring`, `level>=warn`, space-separated, all must
    hold. A key is `name`, `service`, `body`, `level`, `trace_id`, or an attribute key."""

    terms: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, expr: str) -> Filter:
        terms = []
        rest = expr.strip()
        while rest:
            match = _TERM.match(rest)
            if match is None:
                raise ValueError(f"cannot read filter term at {rest[:40]!r}: "
                                 "use key=value, key!=value, key~text or level>=warn")
            key, op, expected = match.groups()
            if op == ">=" and (key not in ("level", "severity")
                               or expected.lower() not in _SEVERITY):
                raise ValueError(f"'>=' compares levels: level>=warn, not {match.group(0)}")
            terms.append((key, op, expected))
            if len(terms) > MAX_TERMS:
                raise ValueError(f"a filter has at most {MAX_TERMS} terms")
            rest = rest[match.end():].lstrip()
        return cls(tuple(terms))

    def matches(self, item: Item) -> bool:
        for key, op, expected in self.terms:
            if op == ">=":
                if item.get("severity_number", 0) < _SEVERITY[expected.lower()]:
                    return False
                continue
            if key in ("level", "severity"):  # level names in any case
                actual: Any = str(item.get("severity", "")).lower()
                expected = expected.lower()
            elif key in item and key != "attributes":
                actual = item[key]
            else:
                actual = item.get("attributes", {}).get(key)
            text = "" if actual is None else str(actual)
            if op == "=" and text != expected:
                return False
            if op == "!=" and text == expected:
                return False
            if op == "~" and expected.lower() not in text.lower():
                return False
        return True


@dataclass(eq=False)
class Subscriber:
    signals: frozenset[Signal]
    filter: Filter = Filter()
    capacity: int = DEFAULT_BUFFER
    buffer: deque[Item] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def room(self) -> int:
        return self.capacity - len(self.buffer)

    def take(self) -> list[Item]:
        out = list(self.buffer)
        self.buffer.clear()
        self.ready.clear()
        return out


class Taps:
    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()

    def __bool__(self) -> bool:
        return bool(self.subscribers)

    def subscribe(self, subscriber: Subscriber) -> bool:
        """False when `MAX_SUBSCRIBERS` readers are already subscribed."""
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            return False
        self.subscribers.add(subscriber)
        TAIL_SUBSCRIBERS.set(len(self.subscribers))
        return True

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        TAIL_SUBSCRIBERS.set(len(self.subscribers))

    def publish(self, batch: Batch) -> None:
        """Offer a batch the exporters accepted to every subscriber of its signal."""
        wanting = [s for s in self.subscribers if batch.signal in s.signals]
        if not wanting:
            return
        budget = min(max(s.room() for s in wanting), _MAX_ITEMS_PER_BATCH)
        converted = 0
        for item in items(batch) if budget > 0 else ():  # no room: not even parsed
            if converted >= budget:
                break
            converted += 1
            for subscriber in wanting:
                if not subscriber.filter.matches(item):
                    continue
                if subscriber.room() > 0:
                    subscriber.buffer.append(item)
                    subscriber.ready.set()
                else:
                    subscriber.dropped += 1
                    TAIL_DROPPED.inc()
        unseen = batch.items - converted
        if unseen > 0:  # past every buffer's room: not even looked at
            for subscriber in wanting:
                subscriber.dropped += unseen
            TAIL_DROPPED.inc(unseen * len(wanting))

    @staticmethod
    def sent(n: int) -> None:
        TAIL_SENT.inc(n)


TAPS: Final = Taps()
