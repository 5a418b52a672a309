"""The pipeline's unit of work.

A `Batch` carries one OTLP Export*ServiceRequest. It is kept as the serialized bytes the
client sent for as long as nothing needs to change it: concatenating two serialized
requests is itself a valid request (protobuf merges repeated fields), so batching and
re-sending never walk spans in Python. The parsed message is materialised lazily, in C
(upb), only when a processor asks for it.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from sidecar.errors import BadInputError
from sidecar.signals import REQUEST_TYPES, SIGNALS, ExportRequest, Signal
from sidecar.wirecheck import Checker

__all__ = ["REQUEST_TYPES", "Batch", "ExportRequest", "Signal", "count_items", "merge",
           "parse_request"]


def count_items(signal: Signal, request: ExportRequest) -> int:
    """Spans, log records or metric data points, as the OpenTelemetry Collector counts them.
    Loops over resources and scopes only; `len()` of a repeated field is O(1) in upb."""
    resources, scopes, items = SIGNALS[signal].levels
    total = 0
    if signal is not Signal.METRICS:
        for resource in getattr(request, resources):
            for scope in getattr(resource, scopes):
                total += len(getattr(scope, items))
        return total
    for resource in getattr(request, resources):
        for scope in getattr(resource, scopes):
            for metric in getattr(scope, items):
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


# traces and logs: the items are the entries of one repeated field (metrics count data
# points, by kind: parsed)
_CHECKERS = {
    Signal.TRACES: Checker(REQUEST_TYPES[Signal.TRACES].DESCRIPTOR,
                           frozenset({("opentelemetry.proto.trace.v1.ScopeSpans", "spans")})),
    Signal.LOGS: Checker(REQUEST_TYPES[Signal.LOGS].DESCRIPTOR,
                         frozenset({("opentelemetry.proto.logs.v1.ScopeLogs", "log_records")})),
}


def parse_request(signal: Signal, payload: bytes) -> ExportRequest:
    try:
        return REQUEST_TYPES[signal].FromString(payload)
    except DecodeError as exc:
        raise BadInputError(f"malformed OTLP {signal} protobuf: {exc}", "malformed") from exc


class Batch:
    """One OTLP request as serialized bytes, with its signal and item count. Immutable: every
    exporter queue may hold the same Batch, so nothing can change it under another.

    `message` parses the bytes afresh on each access: the caller owns that copy, and editing
    it changes nothing here. Only the processing stage (`pipeline/stage.py`) changes
    content, by building a new Batch from an edited message.

    A Batch made by a receiver may carry the message the receiver already decoded, for the
    processing stage to take (`take_decoded`) instead of parsing again; the stage's output
    never carries one, so queued batches hold bytes only (a parsed message takes ~3.4x the
    bytes in memory: measured, bench/)."""

    __slots__ = ("_decoded", "items", "payload", "signal")

    signal: Signal
    items: int
    payload: bytes
    _decoded: ExportRequest | None

    def __init__(self, signal: Signal, items: int, payload: bytes,
                 decoded: ExportRequest | None = None) -> None:
        object.__setattr__(self, "signal", signal)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "_decoded", decoded)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Batch is immutable (tried to set {name!r})")

    @classmethod
    def from_bytes(cls, signal: Signal, payload: bytes) -> Batch:
        """Validate and count a client's request: by the wire check where it is sure the
        parser takes the request (no message is made then; a processor that needs one
        parses it), else by parsing it (in C), which decides what is refused."""
        checker = _CHECKERS.get(signal)
        if checker is not None:
            items = checker.items(payload)
            if items >= 0:
                return cls(signal, items, payload)
        message = parse_request(signal, payload)
        return cls(signal, count_items(signal, message), payload, message)

    @classmethod
    def from_message(cls, signal: Signal, message: ExportRequest) -> Batch:
        """Serialize `message` now; the message itself must not be edited afterwards."""
        return cls(signal, count_items(signal, message), message.SerializeToString(), message)

    @property
    def message(self) -> ExportRequest:
        """A fresh parse of the payload, owned by the caller."""
        return parse_request(self.signal, self.payload)

    def take_decoded(self) -> ExportRequest | None:
        """The receiver's parse of this request, handed over once (processing stage only)."""
        decoded = self._decoded
        object.__setattr__(self, "_decoded", None)
        return decoded

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    def __repr__(self) -> str:
        return f"Batch(signal={self.signal.value}, items={self.items}, bytes={self.nbytes})"


def merge(batches: list[Batch]) -> Batch:
    """Concatenate same-signal batches into one request without parsing them (protobuf
    merges repeated fields, so the bytes of two requests are one valid request)."""
    if len(batches) == 1:
        return batches[0]
    signal = batches[0].signal
    return Batch(signal, sum(b.items for b in batches), b"".join(b.payload for b in batches))


class Work:
    """What processors see of one request in the processing stage: its bytes (for cheap
    pre-scans that decide whether to look further) and a message parsed on first use.

    Bytes and message cannot drift apart: after a mutating processor read the message, the
    stage counts it as edited and `payload` re-serializes it (once, on next use); a
    processor that read it without changing anything says so with `read_only()`. A
    processor that edits the message *and* splices the same fields into the bytes itself
    (cheaper than re-serializing a whole request) hands those bytes over with
    `edited(payload)`: they must parse to the edited message (tests check it)."""

    __slots__ = ("_message", "_payload", "changed", "signal", "spliced", "touched")

    def __init__(self, signal: Signal, payload: bytes,
                 decoded: ExportRequest | None = None) -> None:
        self.signal = signal
        self._payload: bytes | None = payload
        self._message = decoded
        self.touched = False  # `message` was read since the stage last reset this
        self.spliced = False  # the current processor handed over its bytes (`edited`)
        self.changed = False  # the request differs from the one the stage was given

    @property
    def parsed(self) -> bool:
        return self._message is not None

    @property
    def payload(self) -> bytes:
        """The request's current bytes."""
        if self._payload is None:
            assert self._message is not None
            self._payload = self._message.SerializeToString()
        return self._payload

    @property
    def message(self) -> ExportRequest:
        self.touched = True
        if self._message is None:
            self._message = parse_request(self.signal, self.payload)
        return self._message

    def read_only(self) -> None:
        """The current processor read the message and changed nothing."""
        self.touched = False

    def edited(self, payload: bytes) -> None:
        """The current processor edited the message and gives its serialization."""
        self._payload = payload
        self.spliced = True
        self.changed = True

    def edited_bytes(self, payload: bytes) -> None:
        """The current processor edited the request's bytes and not the message: a message
        parsed already no longer matches them and is dropped (a later processor that
        reads it parses these bytes). For the last processor to read a request, when
        keeping the message in step would cost more than the edit."""
        self._message = None
        self.edited(payload)

    def message_edited(self) -> None:
        """(stage) The message may have changed: the bytes are made again on next use."""
        self._payload = None
        self.changed = True

    def peek_message(self) -> ExportRequest | None:
        """The message if it is parsed already, without parsing it or marking it touched:
        for a processor that edits it in step with the bytes it hands over."""
        return self._message

    def replace_payload(self, payload: bytes) -> None:
        """New bytes for the same items, re-encoded by the processor (redaction splices
        re-encoded items in). A message parsed already must have been edited to match
        (`edited`); one parsed later is parsed from these bytes."""
        self.edited(payload)
