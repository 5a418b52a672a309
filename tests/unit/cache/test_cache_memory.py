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


def scan_all(store: MemoryStore, count: int, now: float = 0.0) -> list[bytes]:
    found: list[bytes] = []
    cursor, calls = 0, 0
    while True:
        cursor, keys = store.scan(cursor, count, now)
        assert len(keys) <= count
        found += keys
        calls += 1
        assert calls < 100_000
        if cursor == 0:
            return found


def test_scan_visits_at_most_count_slots_per_call() -> None:
    store = MemoryStore(max_bytes=1 << 30)
    space = ns()
    for i in range(1000):
        store.put(b"k%d" % i, b"v", NEVER, NEVER, 0, 0, space)
    cursor, keys = store.scan(0, 10, 0.0)
    assert cursor != 0
    assert len(keys) == 10
    assert sorted(scan_all(store, 7)) == sorted(b"k%d" % i for i in range(1000))


def test_scan_returns_keys_present_throughout_despite_churn() -> None:
    store = MemoryStore(max_bytes=1 << 30)
    space = ns()
    stable = [b"stable:%d" % i for i in range(500)]
    for key in stable:
        store.put(key, b"v", NEVER, NEVER, 0, 0, space)
    for i in range(500):
        store.put(b"churn:%d" % i, b"v", NEVER, NEVER, 0, 0, space)
    seen: list[bytes] = []
    cursor, step = 0, 0
    while True:
        cursor, keys = store.scan(cursor, 5, 0.0)
        seen += keys
        # between calls: deletes free slots that new keys reuse, hits reorder the LRU,
        # rewrites change sizes, and the byte bound evicts nothing stable
        store.delete(b"churn:%d" % step)
        store.put(b"new:%d" % step, b"v", NEVER, NEVER, 0, 0, space)
        assert store.get(stable[step % 500], 0.0) is not None
        store.put(stable[(step * 7) % 500], b"w" * (step % 50), NEVER, NEVER, 0, 0, space)
        step += 1
        if cursor == 0:
            break
    assert set(stable) <= set(seen)
    assert all(k.startswith((b"stable:", b"churn:", b"new:")) for k in seen)


def test_scan_skips_expired_and_restarts_clean_after_clear() -> None:
    space = ns()
    store = MemoryStore(max_bytes=1 << 30)
    store.put(b"old", b"v", 5.0, NEVER, 0, 0, space)
    store.put(b"live", b"v", NEVER, NEVER, 0, 0, space)
    assert scan_all(store, 10, now=10.0) == [b"live"]
    store.clear([space])
    assert store.scan(0, 10, 0.0) == (0, [])
    assert space.items_l1 == 0
    assert space.bytes_l1 == 0
    assert store.bytes == 0
    store.put(b"again", b"v", NEVER, NEVER, 0, 0, space)
    assert scan_all(store, 10) == [b"again"]
    assert store.scan(10**12, 10, 0.0) == (0, [])  # any cursor is safe: nothing to look up


def test_evicted_and_rejected_keys_give_their_slot_back() -> None:
    space = ns()
    entry_size = 1 + 10 + ENTRY_OVERHEAD
    store = MemoryStore(max_bytes=3 * entry_size)
    for i in range(100):
        store.put(b"%c" % (65 + i % 26), b"x" * 10, NEVER, NEVER, 0, 0, space)
    store.put(b"A", b"x" * 10_000, NEVER, NEVER, 0, 0, space)  # too large: A goes away
    found = scan_all(store, 100)
    assert sorted(found) == sorted(store.data)
    assert b"A" not in found
    assert store.scan(4, 100, 0.0) == (0, [])  # slots are reused: all within the first 4


def test_shed_evicts_the_least_recently_used_half() -> None:
    space = ns()
    entry_size = 1 + 10 + ENTRY_OVERHEAD
    store = MemoryStore(max_bytes=100 * entry_size)
    keys = [bytes([65 + i]) for i in range(10)]
    for key in keys:
        store.put(key, b"x" * 10, NEVER, NEVER, 0, 0, space)
    assert store.get(keys[0], 0.0) is not None  # the oldest becomes the most recent
    freed = store.shed(0.5)
    assert freed == 5 * entry_size
    assert store.bytes == 5 * entry_size == space.bytes_l1
    assert {k for k in keys if store.get(k, 0.0)} == {keys[0], *keys[6:]}
    assert space.evictions == 5
    assert store.shed(0.5) == 3 * entry_size  # down to at most half of 5 entries: 2 stay
    assert MemoryStore(max_bytes=10).shed() == 0
