"""`ExportChain`: queue -> batcher -> workers -> metrics -> retry -> timeout -> sender.

An exporter writes only an `EncodingSender` (encode, push, classify the answer);
everything that makes delivery reliable lives here once (OpenTelemetry Collector's
exporterhelper): the chain encodes a request once, measures the body against the sender's
`BodyLimits` and cuts the batch in as many pieces as the excess asks (each encoded and
measured again; an item alone over them is dropped, counted), compresses it once and
retries the push with the same bytes.

Isolation: `consume` only enqueues, so a slow destination fills its own queue and answers
backpressure; it never delays the pipeline or another exporter. Each chain has its own
queue, batching task and `queue.concurrency` workers.

With a durable queue (`attach_queue`, done by the graph) the pipeline writes the signal's
log itself and `consume` is not called; at shutdown the chain stops retrying at once (what
it holds stays on disk) instead of retrying until the deadline. Batches dropped as
`permanent` or `malformed` go to the dead-letter box when one is attached.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sidecar.errors import (
    BadInputError,
    PermanentError,
    PipelineFullError,
    RetryableError,
    StartupError,
)
from sidecar.exporthelper.batcher import Accumulator, Request, Ticket, split
from sidecar.exporthelper.body import Body, BodyLimits, BodyTooLargeError
from sidecar.exporthelper.compression import gzip_body
from sidecar.exporthelper.deadletter import DeadLetterBox
from sidecar.exporthelper.queue import MemoryQueue, Queue
from sidecar.exporthelper.retry import (
    Backoff,
    DestinationRefusedError,
    GiveUpError,
    MalformedBatchError,
    NoResendError,
    RequestTooLargeError,
    retry_call,
)
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Batch, Signal, merge
from sidecar.telemetry import metrics
from sidecar.telemetry.health import supervised

log = logging.getLogger(__name__)

DROP_REASONS = ("permanent", "malformed", "rejected", "retries_exhausted", "retry_disabled",
                "shutdown", "internal_error", "queue_full", "corrupt")
DEAD_LETTER_REASONS = frozenset({"permanent", "malformed"})


class Sender(Protocol):
    """What an exporter implements when the batch's OTLP bytes are what it sends, as they
    are (the file exporter, test peers)."""

    async def start(self) -> None:
        """Open connections/files; raise StartupError naming the setting on failure."""

    async def send(self, batch: Batch) -> int:
        """Deliver one request. Returns how many items the peer rejected (OTLP partial
        success); raises PermanentError or RetryableError."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...


@runtime_checkable
class EncodingSender(Protocol):
    """What a network exporter implements: encoding and classification only. The chain
    encodes once per request (in a worker thread above `off_loop_items`), measures the
    body against `limits` and cuts the batch when it is over, compresses the body
    (`compression` setting) and retries `push` with the same bytes."""

    off_loop_items: int

    async def start(self) -> None: ...

    def limits(self, signal: Signal) -> BodyLimits:
        """The peer's limits on one body of `signal` (NO_LIMITS: none)."""
        ...

    def encode(self, batch: Batch, limits: BodyLimits) -> Body:
        """The body for `batch`; raises PermanentError for a signal it does not send,
        BadInputError for a batch that does not parse, BodyTooLargeError when it can tell
        early that the body is over `limits`. Pure CPU: it may run in a thread."""
        ...

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        """Send `data` (`body.data`, compressed per the settings) and classify the answer:
        rejected items (a partial success), or PermanentError / RetryableError."""
        ...

    async def send(self, batch: Batch) -> int:
        """One batch outside the chain (`send_once`: the health check, dead-letter
        replay)."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...


async def send_once(sender: EncodingSender, batch: Batch, compression: str) -> int:
    """Encode, compress and push one batch without the chain, uncut: RequestTooLargeError
    when its body is over the sender's limits. What `EncodingSender.send` does."""
    limits = sender.limits(batch.signal)
    try:
        body = sender.encode(batch, limits)
    except BodyTooLargeError as exc:
        raise RequestTooLargeError(str(exc)) from exc
    if limits.excess(body.items, len(body.data)) > 1:
        raise RequestTooLargeError(f"a body of {body.items} items and {len(body.data)} "
                                   "bytes is over the destination's limits")
    if not body.items:
        return body.skipped
    data = await compress(body.data, compression)
    return body.skipped + await sender.push(batch, body, data)


async def compress(data: bytes, compression: str) -> bytes:
    return await gzip_body(data) if compression == "gzip" else data


@dataclass(slots=True)
class _Encoded:
    body: Body
    data: bytes  # compressed


class _Labels:
    """Metric children taken once, so the hot path is a dict lookup and an increment."""

    def __init__(self, name: str) -> None:
        self.sent = {s: metrics.EXPORTER_SENT.labels(name, s.value) for s in Signal}
        self.failed = {s: metrics.EXPORTER_FAILED.labels(name, s.value) for s in Signal}
        self.retried = {s: metrics.EXPORTER_RETRIED.labels(name, s.value) for s in Signal}
        self.dropped = {(s, r): metrics.EXPORTER_DROPPED.labels(name, s.value, r)
                        for s in Signal for r in DROP_REASONS}
        self.queue_bytes = metrics.EXPORTER_QUEUE_BYTES.labels(name)
        self.queue_items = metrics.EXPORTER_QUEUE_ITEMS.labels(name)
        self.capacity = metrics.EXPORTER_QUEUE_CAPACITY.labels(name)
        self.batch_items = metrics.EXPORTER_BATCH_ITEMS.labels(name)
        self.latency = metrics.EXPORTER_LATENCY.labels(name)


class ExportChain:
    """An `ExporterComponent` built from a `Sender` and the shared settings."""

    def __init__(
        self,
        name: str,
        settings: ExporterSettings,
        sender: Sender | EncodingSender,
        queue: Queue | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.sender = sender
        self._encoder = sender if isinstance(sender, EncodingSender) else None
        self.queue: Queue = queue if queue is not None else MemoryQueue(
            settings.queue.max_bytes, settings.queue.when_full)
        self.deadletters: DeadLetterBox | None = None
        self._stopping = asyncio.Event()
        self._sleep = sleep
        self._rand = rand
        self._backoff = Backoff(settings.retry) if rand is None else Backoff(settings.retry, rand)
        b = settings.batch
        # a sender that measures its own body: the batch limits only bound merging, a
        # batch alone over them goes whole to the encoder, which measures what counts
        measured = self._encoder is not None and any(
            self._encoder.limits(s).declared for s in Signal)
        self._acc: Accumulator[int] = Accumulator(b.max_items, b.max_bytes, b.max_delay,
                                                  cut=not measured)
        # One slot: the batcher hands a request over only when a worker is about to take
        # it, so under load data waits in the bounded queue (and backpressure starts).
        self._requests: asyncio.Queue[Request[int] | None] = asyncio.Queue(maxsize=1)
        self._tasks: list[asyncio.Task[None]] = []
        self._deadline: float | None = None
        self._accepting = False
        self._m = _Labels(name)
        self.attach_queue(self.queue)

    def attach_queue(self, queue: Queue) -> None:
        """Use `queue` (before `start`): the graph gives durable exporters theirs."""
        self.queue = queue
        self._m.capacity.set(queue.capacity_bytes)
        # read at scrape time: the fill level costs nothing per request
        self._m.queue_bytes.set_function(lambda: queue.size_bytes)
        self._m.queue_items.set_function(lambda: queue.size_items)
        dropped = self._m.dropped
        queue.on_drop = lambda signal, items, reason: dropped[signal, reason].inc(items)
        if queue.durable and self.settings.retry.max_elapsed > 0:
            # on disk, data waits for the destination however long it is down (bounded
            # by queue.max_bytes): giving up after max_elapsed would drop what is safe
            retry = self.settings.retry.model_copy(update={"max_elapsed": 0.0})
            self._backoff = Backoff(retry) if self._rand is None else Backoff(retry, self._rand)

    # --- ExporterComponent ------------------------------------------------------------
    def has_room(self, batch: Batch) -> bool:
        return self._accepting and self.queue.has_room(batch.nbytes)

    async def wait_for_room(self, nbytes: int) -> None:
        await self.queue.wait_for_room(nbytes)

    async def consume(self, batch: Batch) -> None:
        if not self._accepting:
            raise PipelineFullError(f"exporter {self.name} is not running", retry_after=1.0)
        if not await self.queue.put(batch):
            raise PipelineFullError(
                f"exporter {self.name}: queue full ({self.queue.size_bytes} bytes)",
                retry_after=max(self.settings.batch.max_delay, 1.0))

    async def start(self) -> None:
        try:
            await self.sender.start()
        except StartupError as exc:
            # senders name the setting relative to their config; the user needs the full path
            raise StartupError(f"exporters.{self.name}.{exc}") from exc
        self._accepting = True
        component = f"exporter {self.name}"
        self._tasks.append(supervised(component, f"{self.name}-batcher", self._batch_loop))
        self._tasks.extend(
            supervised(component, f"{self.name}-worker-{i}", self._worker)
            for i in range(self.settings.queue.concurrency))

    async def shutdown(self, deadline: float) -> None:
        """Stop admitting, flush and deliver until `deadline` (loop time), then give up on
        what is left: a durable queue keeps it, a memory queue loses it (counted)."""
        loop = asyncio.get_running_loop()
        self._accepting = False
        self._deadline = deadline
        self._stopping.set()
        self.queue.seal()
        if self._tasks:
            _done, pending = await asyncio.wait(
                self._tasks, timeout=max(deadline - loop.time(), 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._tasks.clear()
        lost = await self.queue.close()
        if lost:
            by_signal: dict[Signal, int] = {}
            for batch in lost:
                by_signal[batch.signal] = by_signal.get(batch.signal, 0) + batch.items
            for signal, items in by_signal.items():
                self._m.dropped[signal, "shutdown"].inc(items)
            log.warning("exporter %s: shutdown deadline reached; dropped undelivered data",
                        self.name, extra={"exporter": self.name,
                                          "dropped_items": sum(by_signal.values())})
        await self.sender.close()

    def pending_items(self) -> int:
        return self.queue.size_items

    def describe(self) -> str:
        return f"{self.name} ({self.settings.type}) -> {self.sender.describe()}"

    def __repr__(self) -> str:
        return (f"ExportChain(name={self.name!r}, accepting={self._accepting}, "
                f"queue={self.queue!r}, tasks={len(self._tasks)})")

    # --- batching task ----------------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        acc, queue = self._acc, self.queue
        while True:
            due = acc.next_due()
            if queue.drained:
                timeout: float | None = 0.0
            else:
                timeout = None if due is None else max(due - loop.time(), 0.0)
            lease = await queue.get(timeout)
            if lease is None:
                if queue.drained:
                    for request in acc.flush_all():
                        await self._requests.put(request)
                    # workers pass this on to each other and stop once all is delivered
                    await self._requests.put(None)
                    return
                for request in acc.flush_due(loop.time()):
                    await self._requests.put(request)
                continue
            # take what is already queued without yielding: cheap merging under load
            while lease is not None:
                try:
                    requests = acc.add(lease.batch, lease.token, loop.time())
                except Exception as exc:
                    # a bug must not strand the lease (its bytes would stay counted forever)
                    self._drop(lease.batch, "internal_error", exc)
                    queue.ack(lease.token)
                    requests = []
                for request in requests:
                    await self._requests.put(request)
                lease = queue.get_nowait()
            for request in acc.flush_due(loop.time()):
                await self._requests.put(request)

    # --- workers ----------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            request = await self._requests.get()
            if request is None:
                self._requests.put_nowait(None)  # the slot we just emptied: never full
                return
            try:
                done = await self._deliver(request.batch, request.members)
            except Exception as exc:
                # a bug while handling one request must not end the worker (the queue
                # would fill while the daemon keeps accepting): drop that request, counted
                done = self._drop(request.batch, "internal_error", exc)
            if done:
                self._release(request.tickets)

    async def _deliver(self, batch: Batch, members: list[Batch]) -> bool:
        """Send with retries. True when done with the batch (delivered or dropped for
        good); False when shutdown interrupted it, so it stays un-acked in the queue.

        `members` are the queued batches `batch` merges. When the merged request fails for
        good, each member is sent on its own, so a member the destination (or our own
        encoding) refuses costs only its own items."""
        m, signal = self._m, batch.signal
        loop = asyncio.get_running_loop()
        encoded: _Encoded | None = None
        if self._encoder is not None:
            try:
                outcome = await self._encode(self._encoder, batch)
            except PermanentError as exc:
                if len(members) > 1 and isinstance(exc, MalformedBatchError):
                    # one member's bytes must not cost the others theirs
                    log.warning("exporter %s: %s; encoding its %d merged requests one by "
                                "one", self.name, exc, len(members),
                                extra={"exporter": self.name})
                    return all([await self._deliver(one, [one]) for one in members])
                reason = "malformed" if isinstance(exc, MalformedBatchError) else "permanent"
                return self._drop(batch, reason, exc)
            if isinstance(outcome, float):
                return await self._deliver_cut(batch, members, outcome)
            if not outcome.body.items:  # nothing left to send: all skipped
                return self._count_sent(batch, outcome.body.skipped)
            encoded = outcome
        m.batch_items.observe(batch.items)

        def on_retry(exc: RetryableError, delay: float) -> None:
            m.retried[signal].inc()
            log.info("exporter %s: retrying in %.2fs: %s", self.name, delay, exc,
                     extra={"exporter": self.name})

        try:
            rejected = await retry_call(
                lambda: self._attempt(batch, encoded), self._backoff, clock=loop.time,
                sleep=self._backoff_sleep, give_up_at=self._give_up_at, on_retry=on_retry)
        except RequestTooLargeError as exc:
            # the peer's size limit is below ours: halve and send each half (OTLP spec:
            # never resend a 413 as is; splitting is allowed) - by members while there are
            # several, then by items, which needs a parse
            if len(members) > 1:
                half = len(members) // 2
                parts = [members[:half], members[half:]]
                log.warning("exporter %s: %s; sending %d requests in two halves", self.name,
                            exc, len(members), extra={"exporter": self.name})
                return all([await self._deliver(merge(p), p) for p in parts])
            try:
                halves = (split(batch, (batch.items + 1) // 2, batch.nbytes)
                          if batch.items > 1 else [])
            except BadInputError as parse_error:
                return self._drop(batch, "malformed", parse_error)
            if len(halves) > 1:
                log.warning("exporter %s: %s; splitting %d items", self.name, exc, batch.items,
                            extra={"exporter": self.name})
                return all([await self._deliver(h, [h]) for h in halves])
            return self._drop(batch, "permanent", exc)
        except PermanentError as exc:
            if len(members) > 1 and not isinstance(exc, NoResendError | DestinationRefusedError):
                log.warning("exporter %s: %s; sending its %d merged requests one by one",
                            self.name, exc, len(members), extra={"exporter": self.name})
                return all([await self._deliver(one, [one]) for one in members])
            reason = "malformed" if isinstance(exc, MalformedBatchError) else "permanent"
            return self._drop(batch, reason, exc)
        except GiveUpError as exc:
            if exc.reason == "shutdown":
                return False
            return self._drop(batch, exc.reason, exc)
        if encoded is not None:
            rejected += encoded.body.skipped
        return self._count_sent(batch, rejected)

    def _count_sent(self, batch: Batch, rejected: int) -> bool:
        rejected = min(max(rejected, 0), batch.items)
        self._m.sent[batch.signal].inc(batch.items - rejected)
        if rejected:
            self._m.dropped[batch.signal, "rejected"].inc(rejected)
        return True

    async def _encode(self, encoder: EncodingSender, batch: Batch) -> _Encoded | float:
        """The batch's body, compressed; or how many times over the sender's limits the
        body is. Raises PermanentError (MalformedBatchError: does not parse)."""
        limits = encoder.limits(batch.signal)
        try:
            if batch.items > encoder.off_loop_items:
                body = await asyncio.to_thread(encoder.encode, batch, limits)
            else:
                body = encoder.encode(batch, limits)
        except BodyTooLargeError as exc:
            return max(exc.ratio, 1.01)
        except BadInputError as exc:
            raise MalformedBatchError(str(exc)) from exc
        except PermanentError:
            raise
        except Exception as exc:
            log.exception("exporter %s: unexpected error from the encoder", self.name)
            raise PermanentError(f"unexpected {type(exc).__name__}: {exc}") from exc
        ratio = limits.excess(body.items, len(body.data))
        if ratio > 1:
            return ratio
        return _Encoded(body, await compress(body.data, self.settings.compression))

    async def _deliver_cut(self, batch: Batch, members: list[Batch], ratio: float) -> bool:
        """A batch whose body is `ratio` times over the sender's limits: cut it in that
        many pieces, plus a tenth for items of uneven size, each delivered (encoded and
        measured) on its own. An item alone over the limits is dropped, counted.

        A merged request is cut along its members first (consecutive runs of about the
        piece size), as the 413 path halves by members: a piece refused for good then
        costs only the members in it, never part of another client's request."""
        if batch.items <= 1:
            return self._drop(batch, "permanent", RequestTooLargeError(
                f"one item encodes {ratio:.3g} times over the destination's limits"))
        pieces_wanted = min(math.ceil(ratio * 1.1), batch.items)
        if len(members) > 1:
            # >= 2 runs: each run closes before a member that would take it past `size`,
            # and size < batch.items (pieces_wanted >= 2), so progress is guaranteed
            size = math.ceil(batch.items / pieces_wanted)
            runs: list[list[Batch]] = [[]]
            items = 0
            for member in members:
                if runs[-1] and items + member.items > size:
                    runs.append([])
                    items = 0
                runs[-1].append(member)
                items += member.items
            log.info("exporter %s: the encoded body of %d merged requests is %.3g times "
                     "over the destination's limits; sending them in %d requests",
                     self.name, len(members), ratio, len(runs), extra={"exporter": self.name})
            return all([await self._deliver(merge(run), run) for run in runs])
        try:
            pieces = split(batch, math.ceil(batch.items / pieces_wanted), sys.maxsize)
        except BadInputError as exc:
            return self._drop(batch, "malformed", exc)
        if len(pieces) < 2:  # cannot happen with items > 1; never loop on one piece
            return self._drop(batch, "permanent", RequestTooLargeError(
                f"{batch.items} items encode {ratio:.3g} times over the limits"))
        log.info("exporter %s: the encoded body of %d items is %.3g times over the "
                 "destination's limits; sending it as %d requests", self.name, batch.items,
                 ratio, len(pieces), extra={"exporter": self.name})
        return all([await self._deliver(p, [p]) for p in pieces])

    def _give_up_at(self) -> float | None:
        if self._deadline is not None and self.queue.durable:
            return asyncio.get_running_loop().time()  # stored for the next start
        return self._deadline

    async def _backoff_sleep(self, delay: float) -> None:
        """The retry wait; with a durable queue, shutdown ends it at once."""
        if not self.queue.durable:
            await self._sleep(delay)
            return
        if self._stopping.is_set():
            raise GiveUpError("shutting down", "shutdown")
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
        if self._stopping.is_set():
            raise GiveUpError("shutting down", "shutdown")

    def _drop(self, batch: Batch, reason: str, exc: Exception) -> bool:
        """Count and log items given up on; True: done with them."""
        self._m.dropped[batch.signal, reason].inc(batch.items)
        if reason in DEAD_LETTER_REASONS and self.deadletters is not None:
            self.deadletters.write(batch, reason, str(exc))
        # a bug in this layer gets its traceback; a peer's or the data's fault does not
        log.error("exporter %s: dropped %d items: %s", self.name, batch.items, exc,
                  exc_info=exc if reason == "internal_error" else None,
                  extra={"exporter": self.name, "reason": reason})
        return True

    async def _attempt(self, batch: Batch, encoded: _Encoded | None) -> int:
        timeout = self.settings.timeout
        if self._deadline is not None:
            timeout = min(timeout, max(self._deadline - asyncio.get_running_loop().time(), 0))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if encoded is not None:
                    assert self._encoder is not None
                    return await self._encoder.push(batch, encoded.body, encoded.data)
                assert not isinstance(self.sender, EncodingSender)
                return await self.sender.send(batch)
        except TimeoutError as exc:
            self._m.failed[batch.signal].inc(batch.items)
            raise RetryableError(f"no answer within {timeout:.3g}s") from exc
        except (PermanentError, RetryableError):
            self._m.failed[batch.signal].inc(batch.items)
            raise
        except BadInputError as exc:  # the batch does not parse: our encoding cannot work
            self._m.failed[batch.signal].inc(batch.items)
            raise MalformedBatchError(str(exc)) from exc
        except Exception as exc:
            # a sender bug must not kill the worker, and retrying a bug will not help
            self._m.failed[batch.signal].inc(batch.items)
            log.exception("exporter %s: unexpected error from sender", self.name)
            raise PermanentError(f"unexpected {type(exc).__name__}: {exc}") from exc
        finally:
            self._m.latency.observe(time.perf_counter() - started)

    def _release(self, tickets: list[Ticket[int]]) -> None:
        for ticket in tickets:
            ticket.refs -= 1
            if ticket.refs == 0:
                self.queue.ack(ticket.token)
