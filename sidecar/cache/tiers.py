"""The two tiers behind one small API: L1 memory, optional L2 Redis.

Synchronous methods answer from L1 (and the pending-write queue) and return `UNKNOWN` when
only Redis can answer; the async ones then ask Redis. Commands stay synchronous (no task,
no await) for every L1 hit, which is what keeps the hot path fast."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from sidecar.cache.config import CacheConfig
from sidecar.cache.memory import Entry, MemoryStore
from sidecar.cache.namespaces import Namespace, Namespaces
from sidecar.cache.ops import NEVER, OP_DEL, OP_EXPIRE, OP_SET, UNAVAILABLE

if TYPE_CHECKING:
    from sidecar.cache.l2 import RedisTier


class _Unknown:
    pass


UNKNOWN: Final = _Unknown()
# what is known about a key without asking Redis: (value, expire_at) | absent | unknown
Known = tuple[bytes, float] | None | _Unknown


class Tiers:
    def __init__(self, config: CacheConfig) -> None:
        self.namespaces = Namespaces(config)
        self.l1 = MemoryStore(config.memory.max_bytes)
        self.l2: RedisTier | None = None
        if config.redis is not None:
            from sidecar.cache.l2 import RedisTier  # redis-py only when L2 is configured

            self.l2 = RedisTier(config)
        self.staleness = config.l2.max_staleness
        self.seq = 0  # bumped on each local write (see Entry.seq)
        if self.l2 is not None:
            self.l2.on_invalidate = self._invalidate

    # --- reads ---------------------------------------------------------------------------------
    def fresh(self, entry: Entry, now: float) -> bool:
        """May this L1 entry be served without asking Redis?"""
        l2 = self.l2
        return (l2 is None or now < entry.fresh_until or not l2.up
                or (l2.tracking_ok and entry.epoch == l2.epoch))

    def known(self, key: bytes, now: float, count: bool = False) -> Known:
        """The key's value if L1 or the write queue can tell, else UNKNOWN."""
        entry = self.l1.get(key, now)
        if entry is not None and self.fresh(entry, now):
            if count:
                entry.ns.hits_l1 += 1
            return entry.value, entry.expire_at
        l2 = self.l2
        if l2 is None:
            if count:
                self.namespaces.of(key).misses += 1
            return None
        op = l2.pending.get(key)
        if op is not None and op.kind != OP_EXPIRE:
            ns = self.namespaces.of(key)
            if op.kind == OP_SET and op.expire_at > now:
                assert op.value is not None
                if count:
                    ns.hits_l1 += 1
                return op.value, op.expire_at
            if count:
                ns.misses += 1
            return None
        return UNKNOWN

    async def read(self, key: bytes, count: bool = True) -> tuple[bytes, float] | None:
        """Read through to Redis (after `known` said UNKNOWN). Never raises for Redis trouble:
        an unreachable Redis means "serve the stale L1 copy, or miss"."""
        l2 = self.l2
        assert l2 is not None
        now = time.monotonic()
        stale = self.l1.peek(key, now)
        ns = stale.ns if stale is not None else self.namespaces.of(key)
        start_seq = self.seq
        invalidations = l2.invalidations
        result = await l2.fetch(key) if l2.up else UNAVAILABLE
        now = time.monotonic()
        current = self.l1.peek(key, now)
        if current is not None and current.seq > start_seq:
            # written locally while the read was in flight: the local write is newer
            if count:
                ns.hits_l1 += 1
            return current.value, current.expire_at
        op = l2.pending.get(key)
        if op is not None and op.kind != OP_EXPIRE:
            known = self.known(key, now, count)
            assert not isinstance(known, _Unknown)
            return known
        if result is UNAVAILABLE:
            if current is not None:  # Redis away: a stale copy beats a miss
                if count:
                    ns.hits_l1 += 1
                return current.value, current.expire_at
            if count:
                ns.misses += 1
            return None
        if result is None:
            if current is not None:
                self.l1.delete(key)
            if count:
                ns.misses += 1
            return None
        assert isinstance(result, tuple)
        value, expire_at = result
        if count:
            ns.hits_l2 += 1
        if ns.l1:
            # an invalidation during the read may concern it: then only the cap applies
            epoch = l2.epoch if invalidations == l2.invalidations else -1
            self.l1.put(key, value, expire_at, now + self.staleness, epoch, start_seq, ns)
        return value, expire_at

    async def lookup(self, key: bytes, count: bool = False) -> tuple[bytes, float] | None:
        known = self.known(key, time.monotonic(), count)
        if isinstance(known, _Unknown):
            return await self.read(key, count)
        return known

    def _invalidate(self, keys: list[bytes] | None) -> None:
        """Redis says these keys changed (None: everything, a flush): revalidate copies."""
        data = self.l1.data
        entries = data.values() if keys is None else (data.get(k) for k in keys)
        for entry in entries:
            if entry is not None:
                entry.fresh_until = 0.0
                entry.epoch = -1

    # --- writes --------------------------------------------------------------------------------
    def write(self, key: bytes, value: bytes, expire_at: float, ns: Namespace) -> None:
        self.seq = seq = self.seq + 1
        ns.sets += 1
        l2 = self.l2
        if l2 is None:  # memory only: nothing to revalidate, no queue
            self.l1.put(key, value, expire_at, NEVER, 0, seq, ns)
            return
        if ns.l1:
            self.l1.put(key, value, expire_at, time.monotonic() + self.staleness, l2.epoch,
                        seq, ns)
        else:
            self.l1.delete(key)
        l2.enqueue(key, OP_SET, value, expire_at)

    def delete(self, key: bytes) -> None:
        self.seq += 1
        entry = self.l1.delete(key)
        if entry is not None:
            entry.ns.deletes += 1
        if self.l2 is not None:
            self.l2.enqueue(key, OP_DEL, None, NEVER)

    def expire(self, key: bytes, expire_at: float) -> None:
        """Change the expiry of a key known to exist (NEVER = persist)."""
        self.seq += 1
        entry = self.l1.peek(key, time.monotonic())
        if entry is not None:
            self.l1.set_expiry(key, entry, expire_at)
            entry.seq = self.seq
        if self.l2 is not None:
            self.l2.enqueue(key, OP_EXPIRE, None, expire_at)

    def clear(self) -> None:
        self.l1.clear(self.namespaces.all)
        if self.l2 is not None:
            self.l2.pending.clear()
            self.l2.pending_bytes = 0
