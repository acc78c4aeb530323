"""Warden: idempotency keys within a TTL of stream time. Spec: specs/warden.allium.

An entry remembers, for an idempotency key, the position of the event that first
used it, the stream time it was recorded at, a fingerprint of the request, and the
complete output body that event produced (the materialised response). Entries live
in the Ledger's table (key space ``w\\0``), so they share its changelog.

The entry doubles as the replay journal: it is written *before* the event's entity
writes, so whenever an entity carries an event's stamp, that event's output can be
re-emitted byte for byte without evaluating it again.

Expiry is a pure function of the looking-up event's stream time. Physical removal
(:meth:`Warden.collect`) only deletes entries no output can depend on any more:
below the committed input offset, and older than ttl + grace of stream time.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable

import orjson

from tables.store import Store

WARDEN_PREFIX = b"w\x00"


@dataclass(frozen=True, slots=True)
class WardenEntry:
    partition: int
    offset: int
    recorded_at: int  # stream time (ms) of the recording event
    fingerprint: str
    body: bytes  # canonical output body of the recording event
    previous: "WardenEntry | None" = None

    def to_dict(self) -> dict:
        return {
            "p": self.partition, "o": self.offset, "t": self.recorded_at, "f": self.fingerprint,
            "b": self.body.decode("utf-8"),
            "prev": None if self.previous is None else self.previous.to_dict(),
        }

    @staticmethod
    def from_dict(d: dict) -> "WardenEntry":
        prev = d["prev"]
        return WardenEntry(d["p"], d["o"], d["t"], d["f"], d["b"].encode("utf-8"),
                           None if prev is None else WardenEntry.from_dict(prev))

    def version_at(self, offset: int) -> "WardenEntry | None":
        """The version of this key's entry that was current when the event at
        ``offset`` was first processed: the newest one recorded at or before it."""
        version: WardenEntry | None = self
        while version is not None and version.offset > offset:
            version = version.previous
        return version

    def pruned(self, committed: int) -> "WardenEntry":
        """Drop versions no replay can reach: replays start at ``committed``, so only
        versions at or above it, plus the newest one below it, can still be current
        for a replayed event."""
        if self.offset < committed or self.previous is None:
            return replace(self, previous=None)
        return replace(self, previous=self.previous.pruned(committed))


class Verdict(Enum):
    FRESH = "fresh"  # no live entry: evaluate
    REPLAY = "replay"  # the entry is this very event's: re-emit its output
    DUPLICATE = "duplicate"  # same request within the TTL: answer with the original outcome
    REUSED = "reused"  # same key, different request, within the TTL: reject


def warden_key(idempotency_key: str) -> bytes:
    return WARDEN_PREFIX + idempotency_key.encode("utf-8")


class Warden:
    def __init__(self, store: Store, ttl_ms: int, grace_ms: int | None = None) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        self.grace_ms = ttl_ms if grace_ms is None else grace_ms
        # per partition: (recorded_at, offset, key) in recording order, for collection
        self._queues: dict[int, collections.deque[tuple[int, int, str]]] = {}
        self._newest: dict[int, int] = {}  # per partition: newest stream time seen

    def lookup(self, partition: int, idempotency_key: str) -> WardenEntry | None:
        raw = self.store.get(partition, warden_key(idempotency_key))
        return None if raw is None else WardenEntry.from_dict(orjson.loads(raw))

    def judge(
        self, entry: WardenEntry | None, offset: int, stream_time: int, fingerprint: str
    ) -> tuple[Verdict, WardenEntry | None]:
        """Classify an event against its key's entry. Pure: the same arguments give
        the same verdict on every instance and on every replay."""
        version = None if entry is None else entry.version_at(offset)
        if version is None:
            return Verdict.FRESH, None
        if version.offset == offset:
            return Verdict.REPLAY, version
        if stream_time - version.recorded_at >= self.ttl_ms:
            return Verdict.FRESH, None
        if version.fingerprint == fingerprint:
            return Verdict.DUPLICATE, version
        return Verdict.REUSED, version

    def record(
        self, idempotency_key: str, entry: WardenEntry, superseded: WardenEntry | None, committed: int
    ) -> None:
        if superseded is not None:
            entry = replace(entry, previous=superseded.pruned(committed))
        self.store.put(entry.partition, warden_key(idempotency_key), orjson.dumps(entry.to_dict()))
        self._queues.setdefault(entry.partition, collections.deque()).append(
            (entry.recorded_at, entry.offset, idempotency_key))

    def observe(self, partition: int, stream_time: int) -> None:
        if stream_time > self._newest.get(partition, stream_time - 1):
            self._newest[partition] = stream_time

    def collect(self, partition: int, committed: Callable[[int], int]) -> int:
        """Delete entries that are expired by ttl + grace of stream time and lie below
        the committed offset. Returns how many were removed. Amortised O(1) per entry:
        the queue is in recording order, and recording order is offset order."""
        queue = self._queues.get(partition)
        newest = self._newest.get(partition)
        if not queue or newest is None:
            return 0
        horizon = newest - self.ttl_ms - self.grace_ms
        limit = committed(partition)
        removed = 0
        while queue and queue[0][1] < limit:
            recorded_at, offset, key = queue[0]
            if recorded_at > horizon:
                break  # queue is in offset order, not time order: stop at the first young entry
            queue.popleft()
            current = self.lookup(partition, key)
            # Delete only if the key still holds this version: a newer use keeps it alive.
            if current is not None and current.offset == offset:
                self.store.delete(partition, warden_key(key))
                removed += 1
        return removed

    def rebuild(self, partition: int) -> None:
        """Rebuild a partition's collection queue from the table after it is
        (re)assigned: its order is offset order, as at recording."""
        found = []
        for raw_key, raw in self.store.scan(partition, WARDEN_PREFIX):
            d = orjson.loads(raw)
            found.append((d["t"], d["o"], raw_key[len(WARDEN_PREFIX):].decode("utf-8")))
        found.sort(key=lambda item: item[1])
        self._queues[partition] = collections.deque(found)

    def forget(self, partition: int) -> None:
        self._queues.pop(partition, None)
        self._newest.pop(partition, None)

    def size(self, partition: int) -> int:
        queue = self._queues.get(partition)
        return 0 if queue is None else len(queue)
