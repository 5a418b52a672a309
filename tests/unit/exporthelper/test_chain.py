"""ExportChain with an in-process Sender: what the shared layer does on each outcome."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest

from sidecar.errors import PermanentError, PipelineFullError, RetryableError
from sidecar.exporthelper.body import Body, BodyLimits
from sidecar.exporthelper.chain import ExportChain
from sidecar.exporthelper.compression import gzip_decompress
from sidecar.exporthelper.retry import DestinationRefusedError, NoResendError
from sidecar.exporthelper.settings import ExporterSettings
from sidecar.model import Batch, Signal, parse_request
from sidecar.telemetry.health import HEALTH
from sidecar.telemetry.metrics import REGISTRY
from sidecar.testing import traces_batch


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Peer:
    """A Sender that answers like a strict destination: refuses bytes that do not parse,
    otherwise follows its script (an exception to raise, or None for success)."""

    def __init__(self, *script: Exception | None) -> None:
        self.script: deque[Exception | None] = deque(script)
        self.delivered: list[Batch] = []
        self.attempts = 0
        self.closed = False

    async def start(self) -> None: ...

    async def send(self, batch: Batch) -> int:
        self.attempts += 1
        outcome = self.script.popleft() if self.script else None
        if outcome is not None:
            raise outcome
        parse_request(batch.signal, batch.payload)
        self.delivered.append(batch)
        return 0

    async def close(self) -> None:
        self.closed = True

    def describe(self) -> str:
        return "peer"

    def items(self) -> int:
        return sum(b.items for b in self.delivered)


def settings(**overrides: Any) -> ExporterSettings:
    raw: dict[str, Any] = {"type": "test", "batch": {"max_delay": 0},
                           "retry": {"initial_interval": 0.001, "jitter": 0},
                           "queue": {"concurrency": 1}}
    raw.update(overrides)
    return ExporterSettings.model_validate(raw)


async def no_sleep(_delay: float) -> None:
    await asyncio.sleep(0)


async def drain(chain: ExportChain, within: float = 5.0) -> None:
    await chain.shutdown(asyncio.get_running_loop().time() + within)


async def test_delivers_and_counts_every_item() -> None:
    peer = Peer()
    chain = ExportChain("u-ok", settings(), peer)
    await chain.start()
    batches = [traces_batch(3, seed=i) for i in range(4)]
    for batch in batches:
        await chain.consume(batch)
    await drain(chain)
    assert peer.items() == 12
    assert peer.closed
    assert metric("sidecar_exporter_sent_items_total", exporter="u-ok", signal="traces") == 12


async def test_retryable_errors_are_retried_until_delivered() -> None:
    peer = Peer(RetryableError("503"), RetryableError("503"))
    chain = ExportChain("u-retry", settings(), peer, sleep=no_sleep)
    await chain.start()
    await chain.consume(traces_batch(2))
    await drain(chain)
    assert peer.attempts == 3
    assert peer.items() == 2
    assert metric("sidecar_exporter_retries_total", exporter="u-retry", signal="traces") == 2


async def test_a_permanent_error_drops_only_that_request() -> None:
    peer = Peer(PermanentError("400"))
    chain = ExportChain("u-perm", settings(), peer)
    await chain.start()
    await chain.consume(traces_batch(2, seed=1))
    await chain.consume(traces_batch(3, seed=2))
    await drain(chain)
    assert peer.items() == 3
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-perm", signal="traces",
                  reason="permanent") == 2


async def test_a_sender_bug_drops_the_request_and_the_worker_goes_on() -> None:
    peer = Peer(KeyError("bug"))
    chain = ExportChain("u-bug", settings(), peer)
    await chain.start()
    await chain.consume(traces_batch(2, seed=1))
    await chain.consume(traces_batch(3, seed=2))
    await drain(chain)
    assert peer.items() == 3


async def test_a_bug_in_the_chain_itself_costs_one_request_not_the_worker() -> None:
    class Flaky(ExportChain):
        failures = 1

        async def _deliver(self, batch: Batch, members: list[Batch]) -> bool:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("bug while handling an error")
            return await super()._deliver(batch, members)

    peer = Peer()
    chain = Flaky("u-internal", settings(), peer)
    await chain.start()
    await chain.consume(traces_batch(2, seed=1))
    await chain.consume(traces_batch(3, seed=2))
    await drain(chain)
    assert peer.items() == 3
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-internal",
                  signal="traces", reason="internal_error") == 2
    assert chain.queue.size_bytes == 0  # the dropped request was acked, not stranded


async def test_a_dead_batching_task_is_restarted_and_named_in_health() -> None:
    HEALTH.clear()

    class CrashOnce(ExportChain):
        crashed = False

        async def _batch_loop(self) -> None:
            if not self.crashed:
                self.crashed = True
                raise RuntimeError("batcher bug")
            await super()._batch_loop()

    peer = Peer()
    chain = CrashOnce("u-restart", settings(), peer)
    await chain.start()
    await chain.consume(traces_batch(4))
    async with asyncio.timeout(5):
        while peer.items() < 4:  # noqa: ASYNC110 - bounded by the timeout
            await asyncio.sleep(0.01)
    assert "exporter u-restart" in HEALTH.problems()
    assert "batcher bug" in HEALTH.problems()["exporter u-restart"]
    assert metric("sidecar_component_restarts_total", component="exporter u-restart") == 1
    await drain(chain)
    HEALTH.clear()


async def test_a_full_queue_is_backpressure_and_shutdown_counts_what_is_left() -> None:
    peer = Peer(*[RetryableError("down")] * 1000)
    batch = traces_batch(5)
    chain = ExportChain("u-full", settings(queue={"max_bytes": batch.nbytes * 2,
                                                  "concurrency": 1}), peer, sleep=no_sleep)
    await chain.start()
    admitted = 0
    with pytest.raises(PipelineFullError):  # noqa: PT012 - the loop ends at the refusal
        for seed in range(10):
            await chain.consume(traces_batch(5, seed=seed))
            admitted += 1
    assert admitted == 2
    await drain(chain, within=0.2)
    assert peer.items() == 0
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-full", signal="traces",
                  reason="shutdown") == 10


async def test_a_merged_request_the_peer_may_have_taken_is_never_resent_in_parts() -> None:
    peer = Peer(NoResendError("answer over our limit"))
    chain = ExportChain("u-noresend", settings(batch={"max_delay": 0.2}), peer)
    await chain.start()
    await chain.consume(traces_batch(2, seed=1))
    await chain.consume(traces_batch(3, seed=2))
    await drain(chain)
    assert peer.attempts == 1  # one merged request, not its two members again
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-noresend",
                  signal="traces", reason="permanent") == 5


async def test_a_refused_merged_request_is_resent_as_its_members() -> None:
    peer = Peer(PermanentError("400: one member is bad"))
    chain = ExportChain("u-members", settings(batch={"max_delay": 0.2}), peer)
    await chain.start()
    await chain.consume(traces_batch(2, seed=1))
    await chain.consume(traces_batch(3, seed=2))
    await drain(chain)
    assert peer.attempts == 3
    assert [b.items for b in peer.delivered] == [2, 3]


async def test_a_refusal_of_any_request_is_not_multiplied_over_the_members() -> None:
    peer = Peer(DestinationRefusedError("HTTP 401: bad key"))
    chain = ExportChain("u-refused", settings(batch={"max_delay": 0.2}), peer)
    await chain.start()
    await chain.consume(traces_batch(2, seed=1))
    await chain.consume(traces_batch(3, seed=2))
    await drain(chain)
    assert peer.attempts == 1
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-refused",
                  signal="traces", reason="permanent") == 5


class Inflating:
    """An EncodingSender whose body is `per_item` bytes a span, whatever the OTLP size
    (as a vendor's body can be), under `BodyLimits(max_bytes=limit)`; gzip-compressed by
    the chain. Records every encode, and the spans of every body pushed."""

    off_loop_items = 10_000

    def __init__(self, per_item: int, limit: int, *script: Exception | None,
                 poison: frozenset[bytes] = frozenset()) -> None:
        self.per_item = per_item
        self.poison = poison  # a body holding one of these span ids is refused for good
        self._limits = BodyLimits(max_bytes=limit)
        self.script: deque[Exception | None] = deque(script)
        self.encodes = 0
        self.pushed: list[list[bytes]] = []

    async def start(self) -> None: ...

    def limits(self, signal: Signal) -> BodyLimits:
        return self._limits

    def encode(self, batch: Batch, limits: BodyLimits) -> Body:
        self.encodes += 1
        ids = [s.span_id for rs in batch.message.resource_spans for ss in rs.scope_spans
               for s in ss.spans]
        return Body(b"".join(i * (self.per_item // 8) for i in ids), len(ids), extra=ids)

    async def push(self, batch: Batch, body: Body, data: bytes) -> int:
        assert gzip_decompress(data) == body.data  # compression: the chain's
        outcome = self.script.popleft() if self.script else None
        if outcome is not None:
            raise outcome
        if self.poison.intersection(body.extra):
            raise PermanentError("400: a span the destination refuses")
        self.pushed.append(body.extra)
        return 0

    async def send(self, batch: Batch) -> int:
        raise AssertionError("the chain pushes encoded bodies")

    async def close(self) -> None: ...

    def describe(self) -> str:
        return "inflating"


async def test_a_body_over_the_senders_limit_is_cut_by_its_excess() -> None:
    # 100 spans of ~100 OTLP bytes but 1,000 body bytes: 100 KB against a 30 KB limit,
    # 3.3 times over: 4 pieces (a tenth of margin), each encoded and measured again
    sender = Inflating(1000, 30_000)
    chain = ExportChain("u-inflate", settings(), sender)
    await chain.start()
    batch = traces_batch(100, attrs=0)
    await chain.consume(batch)
    await drain(chain)
    assert [len(p) for p in sender.pushed] == [25, 25, 25, 25]
    pushed = sorted(i for p in sender.pushed for i in p)
    assert pushed == sorted(s.span_id for rs in batch.message.resource_spans
                            for ss in rs.scope_spans for s in ss.spans)
    assert sender.encodes == 5
    assert metric("sidecar_exporter_sent_items_total", exporter="u-inflate",
                  signal="traces") == 100


async def test_a_batch_over_the_otlp_batch_size_whose_body_fits_is_not_cut() -> None:
    # 200 spans are over batch.max_items: 100, but their bodies are 8 bytes each
    sender = Inflating(8, 1_000_000)
    chain = ExportChain("u-shrink", settings(batch={"max_delay": 0, "max_items": 100}),
                        sender)
    await chain.start()
    await chain.consume(traces_batch(200, attrs=0))
    await drain(chain)
    assert [len(p) for p in sender.pushed] == [200]


async def test_a_body_is_encoded_once_and_retried_as_is() -> None:
    sender = Inflating(8, 1_000_000, RetryableError("503"), RetryableError("503"))
    chain = ExportChain("u-once", settings(), sender, sleep=no_sleep)
    await chain.start()
    await chain.consume(traces_batch(3))
    await drain(chain)
    assert (sender.encodes, len(sender.pushed)) == (1, 1)


async def test_one_item_over_the_senders_limit_is_dropped_and_counted() -> None:
    sender = Inflating(1000, 500)
    chain = ExportChain("u-one-over", settings(), sender)
    await chain.start()
    await chain.consume(traces_batch(2, attrs=0))
    await drain(chain)
    assert sender.pushed == []
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-one-over",
                  signal="traces", reason="permanent") == 2


async def test_a_merged_body_over_the_limit_is_cut_along_its_members() -> None:
    # one client's 1-span request (refused by the destination) merged with another's 5
    # spans: 6,000 body bytes against 5,000. Cut by items (3 + 3) the refused piece would
    # take two of the other client's spans with it; cut by members it takes only its own.
    # (five resources of one span: a cut by items packs whole resources, so it mixes)
    bad, good = traces_batch(1, attrs=0, seed=1), traces_batch(1, resources=5, attrs=0,
                                                               seed=2)
    bad_ids = frozenset(s.span_id for rs in bad.message.resource_spans
                        for ss in rs.scope_spans for s in ss.spans)
    sender = Inflating(1000, 5000, poison=bad_ids)
    chain = ExportChain("u-cut-members", settings(batch={"max_delay": 0.2}), sender)
    await chain.start()
    await chain.consume(bad)
    await chain.consume(good)
    await drain(chain)
    assert sorted(i for p in sender.pushed for i in p) == sorted(
        s.span_id for rs in good.message.resource_spans for ss in rs.scope_spans
        for s in ss.spans)
    assert metric("sidecar_exporter_dropped_items_total", exporter="u-cut-members",
                  signal="traces", reason="permanent") == 1
