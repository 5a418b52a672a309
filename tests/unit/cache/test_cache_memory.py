"""L1 store: byte bound, LRU order, expiry (lazy and swept), accounting per namespace."""

from __future__ import annotations

from sidecar.cache.config import CacheConfig, NamespacePolicy
from sidecar.cache.memory import ENTRY_OVERHEAD, NEVER, MemoryStore
from sidecar.cache.namespaces import Namespace, Namespaces


def ns(name: str = "t") -> Namespace:
    return Namespace(name, NamespacePolicy())


def test_evicts_least_recently_used_within_the_byte_bound() -> None:
    space = ns()
    entry_size = 1 + 10 + ENTRY_OVERHEAD
    store = MemoryStore(max_bytes=3 * entry_size)
    for key in (b"a", b"b", b"c"):
        store.put(key, b"x" * 10, NEVER, NEVER, 0, 0, space)
    assert store.get(b"a", 0.0) is not None  # a becomes most recent; b is now the oldest
    store.put(b"d", b"x" * 10, NEVER, NEVER, 0, 0, space)
    assert store.get(b"b", 0.0) is None
    assert {k for k in (b"a", b"c", b"d") if store.get(k, 0.0)} == {b"a", b"c", b"d"}
    assert store.bytes == 3 * entry_size == space.bytes_l1
    assert space.evictions == 1
    assert space.items_l1 == 3


def test_value_larger_than_the_tier_is_not_stored() -> None:
    store = MemoryStore(max_bytes=100)
    assert store.put(b"k", b"x" * 200, NEVER, NEVER, 0, 0, ns()) is None
    assert len(store) == 0
    assert store.bytes == 0


def test_overwrite_keeps_accounting_exact() -> None:
    space = ns()
    store = MemoryStore(max_bytes=10_000)
    store.put(b"k", b"x" * 10, NEVER, NEVER, 0, 0, space)
    store.put(b"k", b"y" * 100, 5.0, NEVER, 0, 1, space)
    entry = store.get(b"k", 1.0)
    assert entry is not None
    assert entry.value == b"y" * 100
    assert entry.reply == b"$100\r\n" + b"y" * 100 + b"\r\n"
    assert store.bytes == 1 + 100 + ENTRY_OVERHEAD == space.bytes_l1
    assert space.items_l1 == 1


def test_expired_entries_vanish_on_read_and_in_the_sweep() -> None:
    space = ns()
    store = MemoryStore(max_bytes=100_000)
    store.put(b"short", b"v", 10.0, NEVER, 0, 0, space)
    store.put(b"never", b"v", NEVER, NEVER, 0, 0, space)
    store.put(b"later", b"v", 20.0, NEVER, 0, 0, space)
    assert store.get(b"short", 9.9) is not None
    assert store.get(b"short", 10.0) is None
    assert space.expirations == 1
    assert store.sweep(now=25.0) == 1  # "later"; "short" is already gone
    assert len(store) == 1
    assert space.expirations == 2
    assert store.bytes == space.bytes_l1 == 1 + 5 + ENTRY_OVERHEAD


def test_rewrite_with_new_expiry_is_not_swept_at_the_old_time() -> None:
    space = ns()
    store = MemoryStore(max_bytes=100_000)
    store.put(b"k", b"v", 10.0, NEVER, 0, 0, space)
    store.put(b"k", b"w", 30.0, NEVER, 0, 1, space)
    assert store.sweep(now=15.0) == 0
    assert store.get(b"k", 15.0) is not None


def test_namespace_lookup_and_ttl_policy() -> None:
    config = CacheConfig(namespaces={
        "embeddings": NamespacePolicy(ttl="24h"),
        "capped": NamespacePolicy(ttl="1m", max_ttl="2m"),
    })
    spaces = Namespaces(config)
    assert spaces.of(b"embeddings:abc").name == "embeddings"
    assert spaces.of(b"embeddings").name == "default"  # no colon: no namespace
    assert spaces.of(b"other:abc").name == "default"
    assert spaces.of(b"embeddings:abc").ttl_for(None) == 24 * 3600 * 1000
    capped = spaces.of(b"capped:x")
    assert capped.ttl_for(None) == 60_000
    assert capped.ttl_for(10 * 60_000) == 120_000
    assert capped.ttl_for(1000) == 1000
    assert spaces.default.ttl_for(None) is None
