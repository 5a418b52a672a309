"""L1: the in-process tier. LRU bounded by bytes, per-entry expiry.

Expiry is lazy (checked on access) plus an active sweep from a heap of expiry times, so
keys nobody reads again still give their memory back. Times are `time.monotonic()`
seconds; a wall-clock jump cannot expire or resurrect entries.

SCAN walks slots, not the LRU order (which every hit changes): each entry holds a slot in
`_slots` from its insert to its removal, freed slots are reused, and a cursor is a slot
index. A key present for a whole scan keeps its slot, so it is returned; a call costs
O(COUNT) plus one `bytearray.find` over empty slots."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable

from sidecar.cache.namespaces import Namespace

# what an entry costs beyond key and value (Entry object, dict slot, bytes headers);
# rough, but it keeps "64 MiB" meaning roughly 64 MiB of process memory for small values
ENTRY_OVERHEAD = 160
NEVER = float("inf")


class Entry:
    # `reply` is the value already encoded as a RESP bulk string: a GET hit writes it as is,
    # so formatting happens once per write instead of once per read
    __slots__ = ("epoch", "expire_at", "fresh_until", "ns", "reply", "seq", "size", "slot")

    def __init__(self, value: bytes, expire_at: float, fresh_until: float, epoch: int,
                 seq: int, ns: Namespace, size: int) -> None:
        self.reply = b"$%d\r\n%b\r\n" % (len(value), value)
        self.expire_at = expire_at  # NEVER = no expiry
        # with an L2 shared by other sidecars, serve without asking Redis until then
        self.fresh_until = fresh_until
        self.epoch = epoch  # tracking epoch the entry was validated in (see l2.py)
        self.seq = seq  # write sequence number: an older L2 read never overwrites it
        self.ns = ns
        self.size = size
        self.slot = 0  # set by MemoryStore.put

    @property
    def value(self) -> bytes:
        reply = self.reply
        return reply[reply.index(b"\n") + 1:-2]


class MemoryStore:
    __slots__ = ("_free", "_heap", "_slots", "_used", "bytes", "data", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        # public for the GET fast path in commands.py (one dict lookup, no method call)
        self.data: OrderedDict[bytes, Entry] = OrderedDict()
        self._heap: list[tuple[float, bytes]] = []
        self._slots: list[bytes | None] = []  # slot -> key (see scan)
        self._used = bytearray()  # 1 where _slots holds a key: holes are skipped by find()
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self.data)

    def get(self, key: bytes, now: float) -> Entry | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry.expire_at <= now:
            self._remove(key, entry)
            entry.ns.expirations += 1
            return None
        self.data.move_to_end(key)
        return entry

    def peek(self, key: bytes, now: float) -> Entry | None:
        """Like get, without touching LRU order."""
        entry = self.data.get(key)
        if entry is None or entry.expire_at <= now:
            return None
        return entry

    def put(self, key: bytes, value: bytes, expire_at: float, fresh_until: float, epoch: int,
            seq: int, ns: Namespace) -> Entry | None:
        """Store; returns the entry, or None when the value is larger than the whole tier."""
        size = len(key) + len(value) + ENTRY_OVERHEAD
        data = self.data
        old = data.get(key)
        if old is not None:
            if old.ns is ns and size <= self.max_bytes:
                # overwrite in place: no allocation, no dict resize, one size delta
                old.reply = b"$%d\r\n%b\r\n" % (len(value), value)
                old.fresh_until = fresh_until
                old.epoch = epoch
                old.seq = seq
                delta = size - old.size
                if delta:
                    old.size = size
                    self.bytes += delta
                    ns.bytes_l1 += delta
                    if delta > 0 and self.bytes > self.max_bytes:
                        data.move_to_end(key)
                        self._evict()
                if old.expire_at != expire_at:
                    self.set_expiry(key, old, expire_at)
                data.move_to_end(key)
                return old
            del self.data[key]
            self._account(old, -1)
            if size > self.max_bytes:
                self._release(old.slot)
                return None
            slot = old.slot  # a rewritten key keeps its place in a running SCAN
        elif size > self.max_bytes:
            return None
        else:
            free = self._free
            if free:
                slot = free.pop()
                self._slots[slot] = key
                self._used[slot] = 1
            else:
                slot = len(self._slots)
                self._slots.append(key)
                self._used.append(1)
        entry = Entry(value, expire_at, fresh_until, epoch, seq, ns, size)
        entry.slot = slot
        self.data[key] = entry
        self._account(entry, 1)
        if expire_at != NEVER:
            heapq.heappush(self._heap, (expire_at, key))
        if self.bytes > self.max_bytes:
            self._evict()
        return entry

    def set_expiry(self, key: bytes, entry: Entry, expire_at: float) -> None:
        entry.expire_at = expire_at
        if expire_at != NEVER:
            heapq.heappush(self._heap, (expire_at, key))

    def delete(self, key: bytes) -> Entry | None:
        entry = self.data.pop(key, None)
        if entry is not None:
            self._account(entry, -1)
            self._release(entry.slot)
        return entry

    def clear(self, namespaces: Iterable[Namespace]) -> None:
        """Drop everything; `namespaces` are all the namespaces entries can be in (their
        L1 counters go to zero without visiting each entry)."""
        self.data.clear()
        self._heap.clear()
        self._slots.clear()
        self._used.clear()
        self._free.clear()
        self.bytes = 0
        for ns in namespaces:
            ns.bytes_l1 = 0
            ns.items_l1 = 0

    def scan(self, cursor: int, count: int, now: float) -> tuple[int, list[bytes]]:
        """Up to `count` slots from `cursor` on: (next cursor, 0 when done; live keys)."""
        used, slots, data = self._used, self._slots, self.data
        keys: list[bytes] = []
        i = cursor
        for _ in range(count):
            i = used.find(1, i)
            if i < 0:
                return 0, keys
            key = slots[i]
            assert key is not None
            entry = data.get(key)
            if entry is not None and entry.expire_at > now:
                keys.append(key)
            i += 1
        return (i if used.find(1, i) >= 0 else 0), keys

    def sweep(self, now: float, budget: int = 2000) -> int:
        """Remove up to `budget` expired entries; returns how many were removed."""
        heap = self._heap
        removed = 0
        while heap and heap[0][0] <= now and removed < budget:
            expire_at, key = heapq.heappop(heap)
            entry = self.data.get(key)
            # stale heap items (key rewritten or expiry changed) are skipped
            if entry is not None and entry.expire_at == expire_at:
                self._remove(key, entry)
                entry.ns.expirations += 1
                removed += 1
        if len(heap) > 2 * len(self.data) + 1024:
            # rewrites leave dead heap items behind; rebuild so the heap stays bounded
            self._heap = [(e.expire_at, k) for k, e in self.data.items() if e.expire_at != NEVER]
            heapq.heapify(self._heap)
        return removed

    def _remove(self, key: bytes, entry: Entry) -> None:
        del self.data[key]
        self._account(entry, -1)
        self._release(entry.slot)

    def _release(self, slot: int) -> None:
        self._slots[slot] = None
        self._used[slot] = 0
        self._free.append(slot)

    def _account(self, entry: Entry, sign: int) -> None:
        self.bytes += sign * entry.size
        entry.ns.bytes_l1 += sign * entry.size
        entry.ns.items_l1 += sign

    def shed(self, fraction: float = 0.5) -> int:
        """Evict the least recently used entries until `fraction` of the bytes is gone
        (the memory limiter over its hard limit). Returns the bytes freed."""
        target = int(self.bytes * (1.0 - fraction))
        before = self.bytes
        data = self.data
        while self.bytes > target and data:
            _, entry = data.popitem(last=False)
            self._account(entry, -1)
            self._release(entry.slot)
            entry.ns.evictions += 1
        return before - self.bytes

    def _evict(self) -> None:
        # the entry just written is the most recent and fits on its own, so it survives
        data = self.data
        while self.bytes > self.max_bytes and data:
            _, entry = data.popitem(last=False)
            self._account(entry, -1)
            self._release(entry.slot)
            entry.ns.evictions += 1
