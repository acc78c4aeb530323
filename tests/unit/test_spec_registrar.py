"""The Registrar, the LRU cache in front of the Ledger (specs/registrar.allium), and the
Ledger's entity records (specs/ledger.allium), without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.ledger import ENTITY_PREFIX, EntityRecord, Ledger
from tables.registrar import Registrar
from tables.store import MemoryStore


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads of entity records."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

        self.multi_gets = 0

    def get(self, partition, key):
        if key.startswith(ENTITY_PREFIX):
            self.reads.append(key[len(ENTITY_PREFIX):])
        return super().get(partition, key)

    def get_many(self, partition, keys):
        self.multi_gets += 1
        return [self.get(partition, k) for k in keys]


def rec(quantity: int, version: int = 1, stamp: int = 0) -> EntityRecord:
    return EntityRecord({"quantity": quantity}, version, stamp)


def test_hit_is_served_from_memory() -> None:
    """RegistrarServesHit: a second read of a key does not reach the Ledger."""
    store = CountingStore()
    Ledger(store).put(0, "e1", rec(5))
    r = Registrar(Ledger(store), 10)
    assert r.get(0, "e1") == rec(5)
    assert r.get(0, "e1") == rec(5)
    assert store.reads == [b"e1"] and (r.hits, r.misses) == (1, 1)


def test_miss_reads_through_once_and_remembers_absence() -> None:
    """RegistrarReadsThroughOnMiss: a miss reads the Ledger once and keeps the answer,
    absence included, so a key is read at most once while it stays cached."""
    store = CountingStore()
    r = Registrar(Ledger(store), 10)
    assert r.get(0, "never") is None
    assert r.get(0, "never") is None
    assert store.reads == [b"never"] and len(r) == 1


def test_least_recently_used_entry_is_evicted_and_the_cache_stays_bounded() -> None:
    """RegistrarEvictsLeastRecentlyUsed, RegistrarCacheBounded: over capacity, the least
    recently used entry goes (a read or a write makes an entry recent); the cache never
    holds more than its capacity, and eviction loses nothing (write-through)."""
    store = CountingStore()
    ledger = Ledger(store)
    for k in ("a", "b", "c", "d"):
        ledger.put(0, k, rec(ord(k)))
    r = Registrar(ledger, 2)
    r.get(0, "a")
    r.get(0, "b")
    r.get(0, "a")  # a is now more recent than b
    r.get(0, "c")  # evicts b
    assert len(r) == 2
    store.reads.clear()
    r.get(0, "a")
    assert store.reads == []  # still cached
    r.get(0, "b")
    assert store.reads == [b"b"]  # evicted: read through again
    r.put(0, "d", rec(1, 2, 9))  # a write makes d the most recent, evicting the LRU (a)
    assert len(r) == 2
    store.reads.clear()
    assert r.get(0, "d") == rec(1, 2, 9) and store.reads == []
    assert r.get(0, "a") == rec(ord("a")) and store.reads == [b"a"]


def test_write_goes_through_to_the_ledger_and_into_the_cache() -> None:
    """RegistrarWritesThrough: a write reaches the Ledger at once (a fresh Ledger over
    the same store sees it) and is served from memory next."""
    store = CountingStore()
    r = Registrar(Ledger(store), 10)
    r.put(3, "e1", rec(7, 1, 42))
    assert Ledger(store).get(3, "e1") == rec(7, 1, 42)
    store.reads.clear()
    assert r.get(3, "e1") == rec(7, 1, 42) and store.reads == []


def test_prewarm_resolves_each_key_once() -> None:
    """RegistrarPreWarmsBatch: the keys handed over are each resolved once, in one
    multi-get of the ones not in memory; later reads hit memory."""
    store = CountingStore()
    r = Registrar(Ledger(store), 10)
    r.get(1, "z")
    r.prewarm(1, ["x", "y", "x", "z"])
    assert sorted(store.reads) == [b"x", b"y", b"z"] and store.multi_gets == 1
    store.reads.remove(b"z")
    r.get(1, "x")
    r.get(1, "y")
    assert len(store.reads) == 2


def test_clear_empties_the_cache() -> None:
    """RegistrarClearsOnRebalance: after clear() every read goes to the Ledger again (so
    a partition restored underneath the cache is read afresh)."""
    store = CountingStore()
    ledger = Ledger(store)
    r = Registrar(ledger, 10)
    r.put(0, "e1", rec(1))
    ledger.put(0, "e1", rec(2, 2, 5))  # a restore rewrote the Ledger underneath
    r.clear()
    assert len(r) == 0
    assert r.get(0, "e1") == rec(2, 2, 5)


def test_capacity_must_be_at_least_one() -> None:
    """A Registrar of capacity below 1 is refused (DOCKET_CACHE_CAPACITY is at least 1)."""
    with pytest.raises(ValueError, match="at least 1"):
        Registrar(Ledger(MemoryStore()), 0)
    assert Registrar(Ledger(MemoryStore()), 3).capacity == 3


ops = st.lists(st.tuples(st.sampled_from(["get", "put", "ledger_put", "clear"]),
                         st.sampled_from(["k1", "k2", "k3", "k4", "k5"]),
                         st.integers(0, 100)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 4))
def test_cache_always_agrees_with_the_ledger(operations, capacity) -> None:
    """CacheAgreesWithLedger, RegistrarCacheBounded, OneEntityRecordPerKey: whatever the
    mix of reads, write-throughs, evictions and clears, every cached entry equals the
    Ledger's record for its key (or its absence), the cache holds at most capacity
    entries, and the Ledger holds one record per key (the last written). The only way
    to make them disagree is a write that bypasses the Registrar, which is why the
    cache is cleared on every assignment (a restore is such a write)."""
    store = MemoryStore()
    ledger = Ledger(store)
    r = Registrar(ledger, capacity)
    last: dict[str, EntityRecord] = {}
    for op, key, n in operations:
        if op == "get":
            r.get(0, key)
        elif op == "put":
            r.put(0, key, rec(n, n + 1, n))
            last[key] = rec(n, n + 1, n)
        elif op == "ledger_put":  # a restore underneath the cache, followed by the clear it requires
            ledger.put(0, key, rec(n, n + 1, n))
            last[key] = rec(n, n + 1, n)
            r.clear()
        else:
            r.clear()
        assert len(r) <= capacity
        for cached_key, cached in r._cache.items():  # the cache's contents are the subject
            assert cached == ledger.get(0, cached_key)
    assert dict(ledger.entities(0)) == last


def test_entity_record_round_trips_through_its_bytes() -> None:
    """LedgerWritesEntityRecord: a record {state, version, stamp} is stored under
    e\\0<key> in its partition's key space and read back unchanged; other partitions
    do not see it."""
    store = MemoryStore()
    ledger = Ledger(store)
    ledger.put(2, "stock:w1:s1", rec(9, 3, 17))
    assert store.data[(2, ENTITY_PREFIX + b"stock:w1:s1")]
    assert ledger.get(2, "stock:w1:s1") == rec(9, 3, 17)
    assert ledger.get(1, "stock:w1:s1") is None
    assert list(ledger.entities(2)) == [("stock:w1:s1", rec(9, 3, 17))]
