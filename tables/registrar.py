"""Registrar: a bounded in-memory cache of entity records in front of the Ledger.
Spec: specs/registrar.allium.

Read-through on a miss, write-through on a change, least-recently-used eviction.
It is never a source of truth: the worker clears it whenever partitions are
reassigned, because recovery may have rewritten the Ledger underneath it.
Entity keys are unique across partitions (the affinity key picks the partition),
so the cache is keyed by entity key alone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

from tables.ledger import EntityRecord, Ledger


class Registrar:
    def __init__(self, ledger: Ledger, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("Registrar capacity must be at least 1")
        self.ledger = ledger
        self.capacity = capacity
        self._cache: OrderedDict[str, EntityRecord | None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, partition: int, key: str) -> EntityRecord | None:
        cache = self._cache
        if key in cache:
            self.hits += 1
            cache.move_to_end(key)
            return cache[key]
        self.misses += 1
        record = self.ledger.get(partition, key)
        self._remember(key, record)
        return record

    def prewarm(self, partition: int, keys: Iterable[str]) -> None:
        """Load a batch's entities before evaluation starts: the ones not cached, with
        one multi-get from the Ledger."""
        cache = self._cache
        missing = sorted({key for key in keys if key not in cache})
        if not missing:
            return
        self.misses += len(missing)
        for key, record in zip(missing, self.ledger.get_many(partition, missing)):
            self._remember(key, record)

    def put(self, partition: int, key: str, record: EntityRecord) -> None:
        self.ledger.put(partition, key, record)
        self._remember(key, record)

    def clear(self) -> None:
        self._cache.clear()

    def _remember(self, key: str, record: EntityRecord | None) -> None:
        cache = self._cache
        cache[key] = record
        cache.move_to_end(key)
        while len(cache) > self.capacity:
            cache.popitem(last=False)
