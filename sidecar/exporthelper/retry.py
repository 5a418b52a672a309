"""Exponential backoff with jitter, the peer's wait hints, and the retry loop.

The loop takes its clock, sleep and random source as arguments so tests drive it without
waiting; the chain passes the event loop's."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import TypeVar

from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from sidecar.errors import PermanentError, RetryableError, SidecarError
from sidecar.exporthelper.settings import RetrySettings
from sidecar.signals import GRPC_STATUS_DETAILS_KEY

T = TypeVar("T")


class GiveUpError(SidecarError):
    """Retrying stopped before success. `reason` is the dropped-items metric label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NoResendError(PermanentError):
    """The peer may already have taken the request (e.g. its answer was over our limit):
    sending it again, whole or in parts, could deliver it twice."""


class DestinationRefusedError(PermanentError):
    """The destination refuses any request, whatever it holds (401, 403, 404: a wrong key
    or path): sending a merged request again as its parts would only multiply refusals."""


class MalformedBatchError(PermanentError):
    """The batch itself cannot be parsed (or encoded) for this destination."""


class RequestTooLargeError(PermanentError):
    """The peer refused the request for its size (HTTP 413, gRPC message too large): the
    chain splits it in halves instead of dropping it."""


class Backoff:
    """Delay before retry number `attempt` (0 = first retry)."""

    def __init__(self, settings: RetrySettings, rand: Callable[[], float] = random.random,
                 ) -> None:
        self.settings = settings
        self._rand = rand

    def delay(self, attempt: int, hint: float | None = None) -> float:
        if hint is not None:
            # The peer knows its own load: wait exactly what it asked (the reference
            # OTLP client does the same), with no jitter that could undercut it.
            return max(hint, 0.0)
        s = self.settings
        base = min(s.initial_interval * s.multiplier ** attempt, s.max_interval)
        # "full range" jitter around the base spreads clients that failed together
        spread = s.jitter * base
        return min(base - spread + 2 * spread * self._rand(), s.max_interval)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time,
                      ) -> float | None:
    """HTTP Retry-After: delay seconds or an HTTP-date. None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now(), 0.0)


def retry_info_delay(trailing_metadata: Iterable[object] | None) -> float | None:
    """`google.rpc.RetryInfo.retry_delay` from a gRPC status' trailing metadata, given as
    (key, value) pairs (grpc.aio.Metadata iterates so)."""
    for pair in trailing_metadata or ():
        if not isinstance(pair, tuple) or len(pair) != 2:
            continue
        key, value = pair
        if key != GRPC_STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:  # a peer's malformed detail must not crash us
            return None
        for detail in status.details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                delay = info.retry_delay
                return float(delay.seconds) + float(delay.nanos) / 1e9
    return None


async def retry_call(
    attempt_fn: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
    give_up_at: Callable[[], float | None] = lambda: None,
    on_retry: Callable[[RetryableError, float], None] = lambda _e, _d: None,
) -> T:
    """Call `attempt_fn` until it returns, raises a non-retryable error, or retrying must
    stop: `max_elapsed` since the first attempt, or `give_up_at()` (the shutdown
    deadline, read before every wait because shutdown may start while we retry)."""
    settings = backoff.settings
    started = clock()
    attempt = 0
    while True:
        try:
            return await attempt_fn()
        except RetryableError as exc:
            if not settings.enabled:
                raise GiveUpError(f"{exc} (retry disabled)", "retry_disabled") from exc
            delay = backoff.delay(attempt, exc.retry_after)
            now = clock()
            if settings.max_elapsed > 0 and now + delay - started > settings.max_elapsed:
                raise GiveUpError(f"{exc} (gave up after {attempt + 1} attempts)",
                                  "retries_exhausted") from exc
            deadline = give_up_at()
            if deadline is not None and now + delay >= deadline:
                raise GiveUpError(f"{exc} (shutting down)", "shutdown") from exc
            on_retry(exc, delay)
            await sleep(delay)
            attempt += 1
