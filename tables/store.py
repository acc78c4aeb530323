"""The storage seam. The Ledger and the Warden are written against this small
interface; in a worker it is the Faust table (``FaustStore`` in tables/ledger.py),
in unit tests a dict. Keys and values are bytes; every call names the partition,
because each partition is its own RocksDB database and changelog partition."""

from __future__ import annotations

from typing import Iterable, Iterator, Protocol


class Store(Protocol):
    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]: ...

    def put(self, partition: int, key: bytes, value: bytes) -> None: ...

    def delete(self, partition: int, key: bytes) -> None: ...

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def scan_stored(self, partition: int, prefix: bytes) -> Iterable[tuple[bytes, bytes]]:
        """:meth:`scan` without the writes of the batch in progress, in a store that holds
        them apart until it flushes (the same as scan in one that does not)."""
        ...


class MemoryStore:
    """A Store in a dict, for unit tests and pure replays. ``writes`` is the ordered
    log of every put/delete, which crash simulations cut to a prefix."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, bytes], bytes] = {}
        self.writes: list[tuple[int, bytes, bytes | None]] = []

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get((partition, key))

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.data.get((partition, key)) for key in keys]

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[(partition, key)] = value
        self.writes.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        self.data.pop((partition, key), None)
        self.writes.append((partition, key, None))

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for (p, k), v in sorted(self.data.items()):
            if p == partition and k.startswith(prefix):
                yield k, v

    def scan_stored(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.scan(partition, prefix)  # writes land at once: nothing is held apart

    @classmethod
    def replayed(cls, writes: list[tuple[int, bytes, bytes | None]]) -> "MemoryStore":
        """The store a changelog holding exactly these writes restores to, as a worker
        restores it (tables/faust_store.py LedgerRocksStore): in order, a tombstone
        deleting, an entity record put only over one with a stamp at or below its own
        (specs/ledger.allium, RestoreKeepsNewestEntityRecord), any other record put."""
        from tables.ledger import ENTITY_PREFIX, keeps_stored_entity  # tables.ledger imports this module

        store = cls()
        for partition, key, value in writes:
            if value is None:
                store.delete(partition, key)
            elif not (key[:2] == ENTITY_PREFIX and keeps_stored_entity(store.get(partition, key), value)):
                store.put(partition, key, value)
        return store
