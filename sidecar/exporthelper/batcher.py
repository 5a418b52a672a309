"""Forms export requests from queued batches: by max items, max bytes and max delay.

The limits count OTLP items and bytes. For a sender whose body is the OTLP request they
are its body limits; a sender that encodes another body declares that body's limits
(`body.BodyLimits`, measured by the chain) and these only bound merging (`cut=False`).

Normal-size batches are merged by concatenating their serialized bytes (`model.merge`),
never by walking spans. Only a batch that alone exceeds a limit is parsed and split,
resource by resource, then scope by scope, then by slices of items.

`Accumulator` is sans-IO (the caller passes the time), so it is tested without a loop; the
chain drives it from its batching task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sidecar.errors import BadInputError
from sidecar.model import Batch, ExportRequest, Signal, merge
from sidecar.signals import SIGNALS

T = TypeVar("T")

@dataclass(slots=True)
class Ticket(Generic[T]):
    """One queued batch's share in requests: `refs` requests carry (part of) it."""

    token: T
    refs: int = 0


@dataclass(slots=True)
class Request(Generic[T]):
    """One export request: `batch` is the merged `members` (the queued batches, or one
    piece of a split batch). The chain falls back to the members when the merged request
    fails for good, so one client's bytes cannot cost another's."""

    batch: Batch
    tickets: list[Ticket[T]]
    members: list[Batch]


@dataclass(slots=True)
class _Pending(Generic[T]):
    started: float
    batches: list[Batch] = field(default_factory=list)
    tickets: list[Ticket[T]] = field(default_factory=list)
    items: int = 0
    nbytes: int = 0


class Accumulator(Generic[T]):
    """Per-signal pending requests. `add` and `flush_due` return requests ready to send."""

    def __init__(self, max_items: int, max_bytes: int, max_delay: float, *,
                 cut: bool = True) -> None:
        """`cut=False`: the limits bound merging only; a batch alone over them becomes one
        request (its sender measures its own encoded body, `body.BodyLimits`)."""
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self.cut = cut
        self._pending: dict[Signal, _Pending[T]] = {}

    @property
    def pending_items(self) -> int:
        return sum(p.items for p in self._pending.values())

    def add(self, batch: Batch, token: T, now: float) -> list[Request[T]]:
        ticket: Ticket[T] = Ticket(token)
        out: list[Request[T]] = []
        if batch.items > self.max_items or batch.nbytes > self.max_bytes:
            # too big on its own: send what is pending first to keep order, then the pieces
            out.extend(self._flush(batch.signal))
            if not self.cut:
                ticket.refs += 1
                out.append(Request(batch, [ticket], [batch]))
                return out
            try:
                pieces = split(batch, self.max_items, self.max_bytes)
            except BadInputError:
                pieces = [batch]  # cannot be parsed here: the sender decides what to do
            for piece in pieces:
                ticket.refs += 1
                out.append(Request(piece, [ticket], [piece]))
            return out
        pending = self._pending.get(batch.signal)
        if pending is not None and (pending.items + batch.items > self.max_items
                                    or pending.nbytes + batch.nbytes > self.max_bytes):
            out.extend(self._flush(batch.signal))
            pending = None
        if pending is None:
            pending = self._pending[batch.signal] = _Pending(now)
        pending.batches.append(batch)
        pending.tickets.append(ticket)
        pending.items += batch.items
        pending.nbytes += batch.nbytes
        ticket.refs += 1
        if (pending.items >= self.max_items or pending.nbytes >= self.max_bytes
                or self.max_delay <= 0):
            out.extend(self._flush(batch.signal))
        return out

    def next_due(self) -> float | None:
        """Loop time at which the oldest pending request must go out, if any."""
        if not self._pending:
            return None
        return min(p.started for p in self._pending.values()) + self.max_delay

    def flush_due(self, now: float) -> list[Request[T]]:
        due = [s for s, p in self._pending.items() if p.started + self.max_delay <= now]
        return [r for s in due for r in self._flush(s)]

    def flush_all(self) -> list[Request[T]]:
        return [r for s in list(self._pending) for r in self._flush(s)]

    def _flush(self, signal: Signal) -> list[Request[T]]:
        pending = self._pending.pop(signal, None)
        if pending is None:
            return []
        return [Request(merge(pending.batches), pending.tickets, pending.batches)]


# --- splitting (rare path: only batches larger than a limit) ------------------------------

def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _framed(n: int) -> int:
    """Bytes a length-delimited field of `n` bytes takes in its parent (1-byte tag)."""
    return 1 + _varint_len(n) + n


def _leaf_items(signal: Signal, leaf: Any) -> int:
    if signal is not Signal.METRICS:
        return 1
    kind = leaf.WhichOneof("data")
    return 0 if kind is None else len(getattr(leaf, kind).data_points)


def _pieces(signal: Signal, parent: Any, level: int, max_items: int, max_bytes: int,
            ) -> Iterator[tuple[Any, int, int]]:
    """Yield (message, items, bytes) copies of `parent` (a resource or scope container),
    each holding a run of its children that fits the limits. A single leaf larger than a
    limit goes alone: it cannot be split further."""
    child_field = SIGNALS[signal].levels[level]
    children = getattr(parent, child_field)
    if level == 2:
        sizes = [(c, _leaf_items(signal, c), _framed(c.ByteSize())) for c in children]
    else:
        sizes = []
        for c in children:
            items, nbytes = _count(signal, c, level + 1), _framed(c.ByteSize())
            if items > max_items or nbytes > max_bytes:
                sizes.extend((p, i, _framed(b)) for p, i, b in
                             _pieces(signal, c, level + 1, max_items, max_bytes))
            else:
                sizes.append((c, items, nbytes))
    header = parent.ByteSize() - sum(_framed(c.ByteSize()) for c in children)
    run: list[Any] = []
    items = nbytes = 0
    for child, c_items, c_bytes in sizes:
        if run and (items + c_items > max_items or header + nbytes + c_bytes > max_bytes):
            yield _copy_with(parent, child_field, run), items, header + nbytes
            run, items, nbytes = [], 0, 0
        run.append(child)
        items += c_items
        nbytes += c_bytes
    if run:
        yield _copy_with(parent, child_field, run), items, header + nbytes


def _count(signal: Signal, container: Any, level: int) -> int:
    child_field = SIGNALS[signal].levels[level]
    if level == 2:
        if signal is not Signal.METRICS:
            return len(getattr(container, child_field))
        return sum(_leaf_items(signal, m) for m in getattr(container, child_field))
    return sum(_count(signal, c, level + 1) for c in getattr(container, child_field))


def _copy_with(parent: Any, child_field: str, children: list[Any]) -> Any:
    """`parent` with every field but `child_field` copied and `children` as that field."""
    piece = type(parent)()
    for desc, value in parent.ListFields():
        if desc.name == child_field:
            continue
        if desc.is_repeated:
            getattr(piece, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(piece, desc.name).CopyFrom(value)
        else:
            setattr(piece, desc.name, value)
    getattr(piece, child_field).extend(children)
    return piece


def split(batch: Batch, max_items: int, max_bytes: int) -> list[Batch]:
    """Cut an oversize batch into requests within both limits (a single item larger than
    `max_bytes` travels alone). Resources and scopes are repeated in each piece."""
    signal = batch.signal
    request: ExportRequest = batch.message
    out: list[Batch] = []
    for piece, items, _nbytes in _pieces(signal, request, 0, max_items, max_bytes):
        out.append(Batch(signal, items, piece.SerializeToString()))
    return out
