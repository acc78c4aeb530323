"""Ledger: durable entity state. Spec: specs/ledger.allium.

One changelog-backed RocksDB Faust table per instance holds two key spaces:
``e\\0<entity key>`` (entity records, here) and ``w\\0<idempotency key>`` (the
Warden's entries, tables/warden.py). Sharing one table means sharing one changelog
topic: a crash can cut that ordered log per partition, but can never keep one
table's writes while losing the other's (DESIGN.md's two-changelog trap).

Each entity record carries ``stamp``, the input offset of the last event that wrote
it; replay uses it to tell an event's already-applied effect from a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import orjson

from tables.store import Store

ENTITY_PREFIX = b"e\x00"

# The name of that Faust table; its changelog is <prefix>-<id>-ledger-changelog
# (app/topics.py changelog_spec, created before the worker starts:
# agents/instance.py create_changelog).
LEDGER_TABLE = "ledger"


@dataclass(slots=True)  # not frozen: a frozen init costs 3x (object.__setattr__ per field), per event
class EntityRecord:
    state: dict
    version: int
    stamp: int  # input offset of the last event that changed this entity

    def encode(self) -> bytes:
        return orjson.dumps({"s": self.state, "v": self.version, "o": self.stamp})

    @staticmethod
    def decode(raw: bytes) -> "EntityRecord":
        d = orjson.loads(raw)
        return EntityRecord(d["s"], d["v"], d["o"])


def entity_stamp(raw: bytes) -> int:
    """The ``stamp`` (input offset) of an encoded entity record."""
    return orjson.loads(raw)["o"]


def keeps_stored_entity(stored: bytes | None, incoming: bytes) -> bool:
    """Whether a restore (Faust's recovery or a standby applying the changelog) leaves
    the ``stored`` entity record in place of the ``incoming`` one from the changelog:
    when the stored one carries the higher stamp (specs/ledger.allium,
    RestoreKeepsNewestEntityRecord). Every run that writes an entity at stamp o writes
    the same value (the state after event o is a function of the input alone; only
    ``--inject-faults state`` breaks that, on purpose), so the higher stamp is the newer
    state, whichever order writers reached the changelog in: a worker presumed dead
    (frozen past its session timeout) can append its writes after its successor's.
    A record whose stamp cannot be read (not docket's encoding) is last write wins, as
    Faust's restore: raising here would stop the recovery for good."""
    if stored is None:
        return False
    try:
        return entity_stamp(stored) > entity_stamp(incoming)
    except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
        return False


def entity_key(key: str) -> bytes:
    return ENTITY_PREFIX + key.encode("utf-8")


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, partition: int, key: str) -> EntityRecord | None:
        raw = self.store.get(partition, entity_key(key))
        return None if raw is None else EntityRecord.decode(raw)

    def get_many(self, partition: int, keys: list[str]) -> list[EntityRecord | None]:
        raws = self.store.get_many(partition, [entity_key(k) for k in keys])
        return [None if raw is None else EntityRecord.decode(raw) for raw in raws]

    def put(self, partition: int, key: str, record: EntityRecord) -> None:
        self.store.put(partition, ENTITY_PREFIX + key.encode("utf-8"), record.encode())

    def entities(self, partition: int) -> Iterator[tuple[str, EntityRecord]]:
        """Every entity of a partition, in key order (for dumps and comparisons)."""
        for raw_key, raw in self.store.scan(partition, ENTITY_PREFIX):
            yield raw_key[len(ENTITY_PREFIX):].decode("utf-8"), EntityRecord.decode(raw)
