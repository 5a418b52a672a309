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


def parse_request(signal: Signal, payload: bytes) -> ExportRequest:
    try:
        return REQUEST_TYPES[signal].FromString(payload)
    except DecodeError as exc:
        raise BadInputError(f"malformed OTLP {signal} protobuf: {exc}", "malformed") from exc


class Batch:
    """One OTLP request: serialized bytes and/or parsed message, plus its item count."""

    __slots__ = ("_message", "_payload", "items", "signal")

    def __init__(
        self,
        signal: Signal,
        items: int,
        payload: bytes | None = None,
        message: ExportRequest | None = None,
    ) -> None:
        if payload is None and message is None:
            raise ValueError("a Batch needs a payload or a message")
        self.signal = signal
        self.items = items
        self._payload = payload
        self._message = message

    @classmethod
    def from_bytes(cls, signal: Signal, payload: bytes) -> Batch:
        """Validate and count a client's request (parsing in C), keeping only its bytes.

        The parsed message is let go: it takes ~3.4x the bytes in memory, and a queued
        batch holding it made a full 64 MiB queue cost ~4.4x that (measured, bench/).
        A processor that needs the message parses it again, lazily."""
        message = parse_request(signal, payload)
        return cls(signal, count_items(signal, message), payload=payload)

    @classmethod
    def from_message(cls, signal: Signal, message: ExportRequest) -> Batch:
        return cls(signal, count_items(signal, message), message=message)

    @property
    def payload(self) -> bytes:
        if self._payload is None:
            assert self._message is not None
            self._payload = self._message.SerializeToString()
        return self._payload

    @property
    def message(self) -> ExportRequest:
        """The parsed request. A processor that mutates it must call `mark_changed()`."""
        if self._message is None:
            assert self._payload is not None
            self._message = parse_request(self.signal, self._payload)
        return self._message

    def mark_changed(self) -> None:
        """Drop the cached bytes after an in-place edit of `message`, and recount."""
        self._payload = None
        assert self._message is not None
        self.items = count_items(self.signal, self._message)

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    def __repr__(self) -> str:
        return f"Batch(signal={self.signal.value}, items={self.items}, bytes={self.nbytes})"


def merge(batches: list[Batch]) -> Batch:
    """Concatenate same-signal batches into one request without parsing them."""
    if len(batches) == 1:
        return batches[0]
    signal = batches[0].signal
    return Batch(
        signal,
        sum(b.items for b in batches),
        payload=b"".join(b.payload for b in batches),
    )
