"""`receivers.logs`: newline-delimited JSON log lines over a unix socket (on by default) and
an optional loopback TCP port.

Each connection is an `asyncio.Protocol`: bytes go through `LineSplitter` (max line length)
into `LogBatchBuilder` (`logparse.py`), and a request goes on once it holds
`batch.max_records` records or `batch.max_bytes` of lines, or `batch.max_delay` after its
first line. `StreamDelivery` hands requests to the logs pipeline in order; while the
pipeline is full it pauses reading, so the writer's socket fills and it blocks: nothing is
dropped. A client that goes away mid-line has its last partial line delivered (as text)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Final, cast

from prometheus_client import Counter
from pydantic import BaseModel

from sidecar.component import (
    BuildContext,
    Consumer,
    ReceiverComponent,
    ReceiverFactory,
    register_receiver,
)
from sidecar.config import LogsReceiverConfig
from sidecar.configtypes import split_endpoint
from sidecar.errors import StartupError
from sidecar.model import Batch, Signal
from sidecar.net.delivery import StreamDelivery
from sidecar.net.framing import Line, LineSplitter
from sidecar.net.listeners import bind_tcp, bind_unix, remove_unix, socket_inode
from sidecar.receivers.filetail import FileTailer
from sidecar.receivers.logparse import LogBatchBuilder
from sidecar.telemetry.metrics import (
    LOGS_BUDGET_CUTS,
    LOGS_BUFFERED_BYTES,
    LOGS_CONNECTIONS,
    LOGS_CONNECTIONS_REFUSED,
    LOGS_IDLE_CLOSED,
    LOGS_LINES,
    LOGS_PARSE_ERRORS,
    LOGS_TRUNCATED,
    RECEIVER_ACCEPTED,
    RECEIVER_REFUSED,
)

log = logging.getLogger("sidecar.receivers.logs")

# requests read from one connection and not yet taken by the pipeline; above this, reading
# pauses (besides while the pipeline refuses). Per connection: max_connections times this,
# plus the unfinished lines of all connections (max_buffered_bytes, `PartialBudget`),
# bounds what clients can make us hold.
_MAX_PENDING_BYTES: Final = 1024 * 1024


class _Counted:
    """The logs pipeline, counting the records it accepted from this listener."""

    __slots__ = ("_accepted", "_inner")

    def __init__(self, inner: Consumer, accepted: Counter) -> None:
        self._inner = inner
        self._accepted = accepted

    async def consume(self, batch: Batch) -> None:
        await self._inner.consume(batch)
        self._accepted.inc(batch.items)

    async def wait_for_room(self, nbytes: int) -> None:
        await self._inner.wait_for_room(nbytes)


class PartialBudget:
    """Bytes of unfinished lines held by all connections of one receiver (both listeners),
    so 1,000 clients each holding a max_line_length partial line cannot take 1,000 times
    it: a connection whose partial line takes the total over `limit` has it cut."""

    __slots__ = ("gauge", "limit", "used")

    def __init__(self, receiver: str, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.gauge = LOGS_BUFFERED_BYTES.labels(receiver)

    def change(self, delta: int) -> None:
        self.used += delta
        self.gauge.inc(delta)


class StreamListener:
    """One listening socket (unix or TCP) and its connections."""

    def __init__(self, receiver: str, transport: str, config: LogsReceiverConfig,
                 consumer: Consumer | None, budget: PartialBudget | None = None) -> None:
        self.receiver = receiver
        self.budget = budget or PartialBudget(receiver, config.max_buffered_bytes)
        self.budget_cuts = LOGS_BUDGET_CUTS.labels(receiver, transport)
        self.idle_closed = LOGS_IDLE_CLOSED.labels(receiver, transport)
        self.transport = transport
        self.config = config
        accepted = RECEIVER_ACCEPTED.labels(receiver, transport, Signal.LOGS.value)
        self.consumer = _Counted(consumer, accepted) if consumer is not None else None
        self.lines = LOGS_LINES.labels(receiver, transport)
        self.parse_errors = LOGS_PARSE_ERRORS.labels(receiver, transport)
        self.truncated = LOGS_TRUNCATED.labels(receiver, transport)
        self.open_connections = LOGS_CONNECTIONS.labels(receiver, transport)
        self.refused_connections = LOGS_CONNECTIONS_REFUSED.labels(receiver, transport)
        self.no_pipeline = RECEIVER_REFUSED.labels(
            receiver, transport, Signal.LOGS.value, "no_pipeline")
        self.lost = RECEIVER_REFUSED.labels(receiver, transport, Signal.LOGS.value, "shutdown")
        # a processor refused a batch (fail closed): a stream has nobody to retry it
        self.processing_failed = RECEIVER_REFUSED.labels(
            receiver, transport, Signal.LOGS.value, "processing_failed")
        self.connections: set[LogConnection] = set()
        # deliveries of closed connections, still handing their last requests on
        self.retiring: set[asyncio.Task[None]] = set()
        self.server: asyncio.AbstractServer | None = None
        self.address = ""

    def protocol(self) -> LogConnection:
        return LogConnection(self)

    def retire(self, delivery: StreamDelivery) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(delivery))
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    async def _retire(self, delivery: StreamDelivery) -> None:
        # no deadline of its own: shutdown cancels it after its own deadline
        lost = await delivery.close(float("inf"))
        self._count_lost(lost)

    def _count_lost(self, lost: int) -> None:
        if lost:
            self.lost.inc(lost)
            log.warning("%d log records undelivered at shutdown", lost,
                        extra={"lost_items": lost, "transport": self.transport})

    async def shutdown(self, deadline: float) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.finish()
        closing = [conn.delivery for conn in list(self.connections) if conn.delivery]
        self.connections.clear()
        lost = await asyncio.gather(*(d.close(deadline) for d in closing))
        self._count_lost(sum(lost))
        if self.retiring:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.0)
            _, not_done = await asyncio.wait(set(self.retiring), timeout=timeout)
            for task in not_done:
                task.cancel()
            await asyncio.gather(*not_done, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self.server.wait_closed()
            self.server = None


class LogConnection(asyncio.Protocol):
    __slots__ = ("_builder", "_finished", "_held", "_idle", "_listener", "_loop",
                 "_splitter", "_timer", "delivery", "transport")

    def __init__(self, listener: StreamListener) -> None:
        self._listener = listener
        config = listener.config
        self._splitter = LineSplitter(config.max_line_length)
        self._builder = LogBatchBuilder(config.service_name)
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._held = 0  # this connection's share of the listener's PartialBudget
        self._finished = False
        self.transport: asyncio.Transport | None = None
        self.delivery: StreamDelivery | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; the interface is the same
        transport = cast(asyncio.Transport, transport)
        listener = self._listener
        self.transport = transport
        if len(listener.connections) >= listener.config.max_connections:
            listener.refused_connections.inc()
            self._finished = True
            transport.abort()
            return
        listener.connections.add(self)
        listener.open_connections.inc()
        if listener.config.idle_timeout > 0:
            self._idle = asyncio.get_running_loop().call_later(
                listener.config.idle_timeout, self._idle_close)
        if listener.consumer is not None:
            self.delivery = StreamDelivery(transport, listener.consumer,
                                           max_pending_bytes=_MAX_PENDING_BYTES,
                                           on_failed=listener.processing_failed.inc)

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        splitter = self._splitter
        lines = splitter.feed(data)
        if splitter.buffered != self._held:
            self._hold(splitter.buffered, lines)
        if not lines:
            return
        builder = self._builder
        batch = self._listener.config.batch
        observed = time.time_ns()
        added = 0
        for line in lines:
            added += builder.add(line, observed)
            if builder.records >= batch.max_records or builder.bytes >= batch.max_bytes:
                self._flush()
        self._listener.lines.inc(added)
        if builder.records and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(batch.max_delay, self._flush)

    def _hold(self, held: int, lines: list[Line]) -> None:
        """Account for this connection's partial line; cut it if over the budget."""
        budget = self._listener.budget
        budget.change(held - self._held)
        self._held = held
        if budget.used > budget.limit and held:
            cut = self._splitter.cut()
            if cut is not None:
                lines.append(cut)
                self._listener.budget_cuts.inc()
            budget.change(-held)
            self._held = 0

    def _idle_close(self) -> None:
        self._idle = None
        if self._finished:
            return
        self._listener.idle_closed.inc()
        log.info("closing a log connection that sent nothing for %ss",
                 self._listener.config.idle_timeout,
                 extra={"transport": self._listener.transport})
        self.connection_lost(None)  # leaves the listener's set: its slot is free again

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self.finish()
        listener = self._listener
        listener.connections.discard(self)
        if self.delivery is not None:
            listener.retire(self.delivery)

    def finish(self) -> None:
        """Deliver what was read (a last line without newline too) and read no more."""
        if self._finished:
            return
        self._finished = True
        self._listener.open_connections.dec()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._held:
            self._listener.budget.change(-self._held)
            self._held = 0
        last = self._splitter.close()
        if last is not None and self._builder.add(last):
            self._listener.lines.inc()
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        builder = self._builder
        listener = self._listener
        if builder.parse_errors:
            listener.parse_errors.inc(builder.parse_errors)
            builder.parse_errors = 0
        if builder.truncated:
            listener.truncated.inc(builder.truncated)
            builder.truncated = 0
        batch = builder.take_batch()
        if batch is None:
            return
        if self.delivery is None:
            listener.no_pipeline.inc(batch.items)
            return
        self.delivery.submit(batch)


class LogsReceiver:
    def __init__(self, name: str, config: LogsReceiverConfig,
                 consumers: Mapping[Signal, Consumer],
                 context: BuildContext | None = None) -> None:
        self.name = name
        self.config = config
        consumer = consumers.get(Signal.LOGS)
        self._listeners: list[StreamListener] = []
        self.unix: StreamListener | None = None
        self.tcp: StreamListener | None = None
        budget = PartialBudget(name, config.max_buffered_bytes)
        if config.unix is not None:
            self.unix = StreamListener(name, "unix", config, consumer, budget)
            self.unix.address = f"unix:{config.unix}"
            self._listeners.append(self.unix)
        if config.tcp is not None:
            self.tcp = StreamListener(name, "tcp", config, consumer, budget)
            self.tcp.address = config.tcp.endpoint
            self._listeners.append(self.tcp)
        self._pipelined = consumer is not None
        self._unix_inode: int | None = None
        self.files: FileTailer | None = None
        if config.files is not None:
            storage = (context or BuildContext()).storage_dir
            self.files = FileTailer(name, config, config.files, consumer,
                                    storage / "filetail" / f"{name}.json")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        try:
            if self.unix is not None and config.unix is not None:
                sock = bind_unix(config.unix, f"receivers.{self.name}.unix", config.unix_mode,
                                 config.unix_group)
                self._unix_inode = socket_inode(config.unix)
                self.unix.server = await loop.create_unix_server(self.unix.protocol, sock=sock)
            if self.tcp is not None and config.tcp is not None:
                host, port = split_endpoint(config.tcp.endpoint)
                sock = bind_tcp(host, port, f"receivers.{self.name}.tcp.endpoint",
                                config.tcp.allow_remote)
                bound = sock.getsockname()[1]
                self.tcp.address = f"{config.tcp.endpoint.rpartition(':')[0]}:{bound}"
                self.tcp.server = await loop.create_server(self.tcp.protocol, sock=sock)
            if self.files is not None:
                await self.files.start()
        except StartupError:
            await self.shutdown(loop.time())
            raise

    async def shutdown(self, deadline: float) -> None:
        tailing = [self.files.shutdown(deadline)] if self.files is not None else []
        await asyncio.gather(*(listener.shutdown(deadline) for listener in self._listeners),
                             *tailing)
        if self.config.unix is not None and self._unix_inode is not None:
            remove_unix(self.config.unix, self._unix_inode)
            self._unix_inode = None

    def describe(self) -> list[str]:
        signals = "logs" if self._pipelined else "(no pipelines)"
        lines = [f"{self.name}/{listener.transport}  {listener.address}  {signals}"
                 for listener in self._listeners]
        if self.files is not None:
            lines.append(self.files.describe())
        return lines


def create(name: str, config: BaseModel, consumers: Mapping[Signal, Consumer],
           context: BuildContext) -> ReceiverComponent:
    assert isinstance(config, LogsReceiverConfig)
    return LogsReceiver(name, config, consumers, context)


FACTORY = register_receiver(ReceiverFactory("logs", LogsReceiverConfig, create))
