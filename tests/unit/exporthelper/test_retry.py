from __future__ import annotations

from collections.abc import Awaitable, Callable
from email.utils import formatdate

import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from sidecar.errors import PermanentError, RetryableError
from sidecar.exporthelper.retry import (
    Backoff,
    GiveUpError,
    parse_retry_after,
    retry_call,
    retry_info_delay,
)
from sidecar.exporthelper.settings import RetrySettings

SETTINGS = RetrySettings(initial_interval=1.0, multiplier=2.0, max_interval=10.0, jitter=0.5,
                         max_elapsed=100.0)


@pytest.mark.parametrize(("attempt", "rand", "expected"), [
    (0, 0.0, 0.5),  # base 1 * (1 - 0.5)
    (0, 0.5, 1.0),
    (0, 1.0, 1.5),
    (2, 0.5, 4.0),  # base 1 * 2**2
    (2, 0.0, 2.0),
    (3, 1.0, 10.0),  # 8 * 1.5 = 12, capped at max_interval
    (10, 0.0, 5.0),  # base capped at 10 first, then jitter below it
])
def test_backoff_is_exponential_with_jitter_and_capped(
        attempt: int, rand: float, expected: float) -> None:
    assert Backoff(SETTINGS, rand=lambda: rand).delay(attempt) == pytest.approx(expected)


def test_peer_hint_replaces_backoff() -> None:
    backoff = Backoff(SETTINGS, rand=lambda: 1.0)
    assert backoff.delay(5, hint=3.0) == 3.0
    assert backoff.delay(0, hint=0.0) == 0.0


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=lambda: now) == 30.0
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=lambda: now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None


def _status_bin(seconds: int, nanos: int) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)))
    return bytes(status_pb2.Status(code=14, message="slow down", details=[detail])
                 .SerializeToString())


def test_retry_info_from_grpc_trailing_metadata() -> None:
    metadata = [("other", "x"), ("grpc-status-details-bin", _status_bin(2, 500_000_000))]
    assert retry_info_delay(metadata) == pytest.approx(2.5)
    assert retry_info_delay([("grpc-status-details-bin", b"\xff\xff")]) is None
    no_retry_info = bytes(status_pb2.Status(code=14).SerializeToString())
    assert retry_info_delay([("grpc-status-details-bin", no_retry_info)]) is None
    assert retry_info_delay(None) is None


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


def failing(outcomes: list[Exception | int]) -> tuple[list[int], Callable[[], Awaitable[int]]]:
    calls: list[int] = []

    async def attempt() -> int:
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, attempt


async def test_retries_until_success_using_hints_and_backoff() -> None:
    t = FakeTime()
    calls, attempt = failing([RetryableError("a", retry_after=3.0), RetryableError("b"),
                              RetryableError("c"), 7])
    retried: list[float] = []
    result = await retry_call(attempt, Backoff(SETTINGS, rand=lambda: 0.5),
                              clock=t.clock, sleep=t.sleep,
                              on_retry=lambda _e, d: retried.append(d))
    assert result == 7
    assert len(calls) == 4
    # hint first; then the backoff continues from attempt 1 and 2 (hints count as attempts)
    assert t.sleeps == [3.0, 2.0, 4.0]
    assert retried == t.sleeps


async def test_permanent_errors_are_not_retried() -> None:
    t = FakeTime()
    calls, attempt = failing([PermanentError("400")])
    with pytest.raises(PermanentError):
        await retry_call(attempt, Backoff(SETTINGS), clock=t.clock,
                         sleep=t.sleep)
    assert len(calls) == 1
    assert t.sleeps == []


async def test_gives_up_when_the_next_wait_would_pass_max_elapsed() -> None:
    t = FakeTime()
    settings = SETTINGS.model_copy(update={"max_elapsed": 5.0, "jitter": 0.0})
    calls, attempt = failing([RetryableError("x")] * 10)
    with pytest.raises(GiveUpError) as info:
        await retry_call(attempt, Backoff(settings), clock=t.clock,
                         sleep=t.sleep)
    assert info.value.reason == "retries_exhausted"
    assert t.sleeps == [1.0, 2.0]  # 1 + 2 + 4 > 5
    assert len(calls) == 3


async def test_stops_at_the_shutdown_deadline() -> None:
    t = FakeTime()
    deadline: list[float | None] = [None]
    calls, attempt = failing([RetryableError("x")] * 10)

    async def sleep(delay: float) -> None:
        await t.sleep(delay)
        deadline[0] = t.now + 1.5  # shutdown starts during the first wait

    with pytest.raises(GiveUpError) as info:
        await retry_call(attempt, Backoff(SETTINGS.model_copy(update={"jitter": 0.0})),
                         clock=t.clock, sleep=sleep, give_up_at=lambda: deadline[0])
    assert info.value.reason == "shutdown"
    assert len(calls) == 2  # the second wait (2 s) would end after the deadline


async def test_disabled_retry_gives_up_on_first_retryable_error() -> None:
    t = FakeTime()
    calls, attempt = failing([RetryableError("x")])
    with pytest.raises(GiveUpError) as info:
        await retry_call(attempt, Backoff(SETTINGS.model_copy(update={"enabled": False})),
                         clock=t.clock, sleep=t.sleep)
    assert info.value.reason == "retry_disabled"
    assert len(calls) == 1
