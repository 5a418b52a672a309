"""What the OTLP gRPC and HTTP receivers share: signal routing, canned responses,
`google.rpc.Status` bodies, and the accept/refuse bookkeeping around `Consumer.consume`.

Transport modules only map these outcomes to their own status codes."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from sidecar.errors import PipelineFullError, ProcessingError
from sidecar.model import Batch, Signal
from sidecar.signals import HTTP_PATHS, SIGNALS
from sidecar.telemetry.metrics import RECEIVER_ACCEPTED, RECEIVER_BAD_REQUESTS, RECEIVER_REFUSED

if TYPE_CHECKING:
    from prometheus_client import Counter

    from sidecar.component import Consumer

log = logging.getLogger("sidecar.receivers")

__all__ = ["HTTP_PATHS"]

# An empty Export*ServiceResponse serializes to zero bytes; built once so the hot path
# never allocates a response message.
EMPTY_RESPONSE: Final[dict[Signal, bytes]] = {
    signal: spec.response_type().SerializeToString() for signal, spec in SIGNALS.items()
}


def partial_success_response(signal: Signal, rejected: int, message: str) -> Message:
    """An Export*ServiceResponse telling the client `rejected` items were dropped for good."""
    spec = SIGNALS[signal]
    partial = spec.partial_success_type(
        **{spec.rejected_field: rejected}, error_message=message)
    return spec.response_type(partial_success=partial)  # type: ignore[arg-type]


def retry_after_seconds(exc: PipelineFullError) -> int:
    """Whole seconds, at least 1: HTTP's Retry-After has no fractions, and 0 invites a
    tight retry loop against a full pipeline."""
    return max(1, math.ceil(exc.retry_after))


def rpc_status(code: int, message: str, retry_after: int | None = None) -> status_pb2.Status:
    """A `google.rpc.Status`, with `RetryInfo` in its details when the client should retry."""
    status = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
        detail = any_pb2.Any()
        detail.Pack(info)
        status.details.append(detail)
    return status


def backpressure_status(signal: Signal, exc: PipelineFullError) -> tuple[int, status_pb2.Status]:
    """The retry delay in whole seconds, and the RESOURCE_EXHAUSTED status carrying it."""
    seconds = retry_after_seconds(exc)
    message = f"{signal.value} pipeline is full, retry in {seconds}s"
    return seconds, rpc_status(code_pb2.RESOURCE_EXHAUSTED, message, seconds)


# google.rpc.Code values for HTTP error bodies (typed ints; code_pb2 is untyped)
CODE_INVALID_ARGUMENT: Final[int] = code_pb2.INVALID_ARGUMENT
CODE_RESOURCE_EXHAUSTED: Final[int] = code_pb2.RESOURCE_EXHAUSTED
CODE_NOT_FOUND: Final[int] = code_pb2.NOT_FOUND
CODE_INTERNAL: Final[int] = code_pb2.INTERNAL
CODE_UNAVAILABLE: Final[int] = code_pb2.UNAVAILABLE
CODE_DEADLINE_EXCEEDED: Final[int] = code_pb2.DEADLINE_EXCEEDED
CODE_UNAUTHENTICATED: Final[int] = code_pb2.UNAUTHENTICATED


class Intake:
    """One signal's way into the pipeline for one receiver transport: consume, count, and
    turn backpressure into an exception the transport maps to its own status.

    `receiver` is the receiver's name (its config section), the `receiver` metric label.
    Counter children are taken once here so the hot path is one `inc()`."""

    __slots__ = ("_accepted", "_backpressure", "_bad_input", "_internal", "_processing",
                 "consumer", "signal")

    def __init__(self, receiver: str, transport: str, signal: Signal, consumer: Consumer) -> None:
        self.signal = signal
        self.consumer = consumer
        self._accepted = RECEIVER_ACCEPTED.labels(receiver, transport, signal.value)
        refused = RECEIVER_REFUSED
        self._backpressure = refused.labels(receiver, transport, signal.value, "backpressure")
        self._bad_input = refused.labels(receiver, transport, signal.value, "bad_input")
        self._internal = refused.labels(receiver, transport, signal.value, "internal_error")
        self._processing = refused.labels(receiver, transport, signal.value, "processing_failed")

    async def deliver(self, batch: Batch) -> None:
        """Hand the batch on. Raises `PipelineFullError` (counted) for the client to retry,
        or `InternalError` (counted, logged) when a downstream stage failed unexpectedly."""
        items = batch.items
        if items == 0:
            # Valid and must succeed (OTLP), but there is nothing to send downstream.
            return
        try:
            await self.consumer.consume(batch)
        except PipelineFullError:
            self._backpressure.inc(items)
            raise
        except ProcessingError as exc:
            # fail closed and retryable: nothing of the batch went on; the client keeps it.
            # No traceback: the message is content-free, the frames' locals are not.
            self._processing.inc(items)
            log.error("refused a %s batch (the client may retry): %s", self.signal.value, exc)
            raise RetryLater(str(exc), exc.retry_after) from None
        except Exception as exc:
            # The boundary where a pipeline bug becomes an answer instead of a dropped
            # connection; the client is told not to retry a batch that breaks us.
            self._internal.inc(items)
            log.exception("pipeline failed on a %s batch", self.signal.value)
            raise InternalError(f"internal error while processing {self.signal.value}") from exc
        self._accepted.inc(items)

    def rejected(self, items: int) -> None:
        """Items dropped from an otherwise accepted request (partial success)."""
        if items:
            self._bad_input.inc(items)


class InternalError(Exception):
    """A downstream stage raised something other than backpressure."""


class RetryLater(Exception):
    """A processor failed on the batch; nothing of it went on, the client should retry."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_later_status(exc: RetryLater) -> tuple[int, status_pb2.Status]:
    """The retry delay in whole seconds, and the UNAVAILABLE status carrying it."""
    seconds = max(1, math.ceil(exc.retry_after))
    return seconds, rpc_status(code_pb2.UNAVAILABLE, f"{exc}, retry in {seconds}s", seconds)


class BadRequestCounters:
    """`RECEIVER_BAD_REQUESTS` children for one receiver transport, created on first use
    per reason."""

    __slots__ = ("_children", "_receiver", "_transport")

    def __init__(self, receiver: str, transport: str) -> None:
        self._receiver = receiver
        self._transport = transport
        self._children: dict[str, Counter] = {}

    def inc(self, reason: str) -> None:
        child = self._children.get(reason)
        if child is None:
            child = RECEIVER_BAD_REQUESTS.labels(self._receiver, self._transport, reason)
            self._children[reason] = child
        child.inc()


def build_intakes(
    receiver: str, transport: str, consumers: Mapping[Signal, Consumer]
) -> dict[Signal, Intake]:
    return {signal: Intake(receiver, transport, signal, c) for signal, c in consumers.items()}


def describe(
    receiver: str, transport: str, endpoint: str | None, port: int | None,
    signals: Mapping[Signal, object], protection: str = "", unix: str | None = None,
) -> str:
    """The startup banner line, e.g. `otlp/grpc  127.0.0.1:4317  traces logs metrics`,
    with the port actually bound once started (the config may say 0)."""
    addresses = []
    if endpoint is not None:
        address = endpoint
        if port is not None:
            host, _, _ = endpoint.rpartition(":")
            address = f"{host}:{port}"
        addresses.append(address)
    if unix is not None:
        addresses.append(f"unix:{unix}")
    names = " ".join(s.value for s in Signal if s in signals) or "(no pipelines)"
    return f"{receiver}/{transport}  {' '.join(addresses)}  {names}{protection}"
