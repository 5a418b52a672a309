"""Namespace policies and their counters.

A key's namespace is its prefix up to the first `:`. Each namespace object carries both its
policy and its counters as plain ints: the hot path does `ns.hits_l1 += 1`, and Prometheus
reads them at scrape time (a prometheus_client `inc()` takes a lock and costs more than the
whole GET)."""

from __future__ import annotations

from sidecar.cache.config import CacheConfig, NamespacePolicy

DEFAULT_NAME = "default"


class Namespace:
    __slots__ = ("bytes_l1", "deletes", "evictions", "expirations", "hits_l1", "hits_l2",
                 "items_l1", "l1", "l2_errors", "l2_writes", "max_ttl_ms", "max_value_size",
                 "misses", "name", "sets", "ttl_ms", "value_usd")

    def __init__(self, name: str, policy: NamespacePolicy) -> None:
        self.name = name
        self.ttl_ms = None if policy.ttl is None else max(1, int(policy.ttl * 1000))
        self.max_ttl_ms = None if policy.max_ttl is None else max(1, int(policy.max_ttl * 1000))
        self.max_value_size = policy.max_value_size
        self.l1 = policy.l1
        self.value_usd = policy.value_usd
        self.hits_l1 = 0
        self.hits_l2 = 0
        self.misses = 0
        self.sets = 0
        self.deletes = 0
        self.evictions = 0
        self.expirations = 0
        self.items_l1 = 0
        self.bytes_l1 = 0
        self.l2_writes = 0
        self.l2_errors = 0

    def ttl_for(self, requested_ms: int | None) -> int | None:
        """Expiry in ms for a write: the client's, else the namespace default, capped."""
        ttl = self.ttl_ms if requested_ms is None else requested_ms
        if self.max_ttl_ms is not None and (ttl is None or ttl > self.max_ttl_ms):
            return self.max_ttl_ms
        return ttl

    def snapshot(self) -> dict[str, object]:
        hits = self.hits_l1 + self.hits_l2
        lookups = hits + self.misses
        return {
            "hits": {"l1": self.hits_l1, "l2": self.hits_l2},
            "misses": self.misses,
            "hit_ratio": round(hits / lookups, 4) if lookups else None,
            "sets": self.sets,
            "deletes": self.deletes,
            "evictions": {"l1": self.evictions},
            "expirations": {"l1": self.expirations},
            "items": {"l1": self.items_l1},
            "bytes": {"l1": self.bytes_l1},
            "l2_writes": self.l2_writes,
            "l2_errors": self.l2_errors,
            "saved_usd": round(hits * self.value_usd, 6),
            "policy": {
                "ttl_s": None if self.ttl_ms is None else self.ttl_ms / 1000,
                "max_ttl_s": None if self.max_ttl_ms is None else self.max_ttl_ms / 1000,
                "max_value_size": self.max_value_size,
                "l1": self.l1,
                "value_usd": self.value_usd,
            },
        }


class Namespaces:
    __slots__ = ("_by_prefix", "all", "default")

    def __init__(self, config: CacheConfig) -> None:
        self.default = Namespace(DEFAULT_NAME, config.default)
        self._by_prefix = {name.encode(): Namespace(name, p)
                           for name, p in config.namespaces.items()}
        self.all = [self.default, *self._by_prefix.values()]
        if config.redis is None:
            # memory only: L1 is the only place a value can live
            for ns in self.all:
                ns.l1 = True

    def of(self, key: bytes) -> Namespace:
        colon = key.find(b":")
        if colon > 0:
            ns = self._by_prefix.get(key[:colon])
            if ns is not None:
                return ns
        return self.default
