"""Warden: idempotency keys within a TTL of stream time. Spec: specs/warden.allium.

An entry remembers, for an idempotency key, the position of the event that
used it, the stream time it was recorded at, a fingerprint of the request, and the
complete output body that event produced (the materialised response). Entries live
in the Ledger's table (key space ``w\\0``), so they share its changelog.

The entry doubles as the replay journal: it is written *before* the event's entity
writes, so whenever an entity carries an event's stamp, that event's output can be
re-emitted byte for byte without evaluating it again.

Expiry is a pure function of the looking-up event's stream time. Physical removal
(:meth:`Warden.collect`) only deletes entries no output can depend on any more:
below the committed input offset, and older than ttl + grace of stream time. (An
event whose timestamp lags its partition's newest by more than the grace could be
judged differently by instances that collected at different moments; the Clerk
reports that as a divergence. specs/warden.allium, RESOLVED: grace.)
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import orjson

from tables.store import Store

WARDEN_PREFIX = b"w\x00"


@dataclass(frozen=True, slots=True)
class WardenEntry:
    """One version of a key's entry. Each version is its own table key, written once
    and deleted once: a key written twice inside the uncommitted window could, after
    a crash, come back holding the older write while the entities already carry the
    newer event's stamp (specs/recovery.allium, WardenVersionsAreWriteOnce)."""

    partition: int
    offset: int
    recorded_at: int  # stream time (ms) of the recording event
    fingerprint: str
    body: bytes  # canonical output body of the recording event

    def encode(self) -> bytes:
        return orjson.dumps({"p": self.partition, "o": self.offset, "t": self.recorded_at,
                             "f": self.fingerprint, "b": self.body.decode("utf-8")})

    @staticmethod
    def decode(raw: bytes) -> "WardenEntry":
        d = orjson.loads(raw)
        return WardenEntry(d["p"], d["o"], d["t"], d["f"], d["b"].encode("utf-8"))


class Verdict(Enum):
    FRESH = "fresh"  # no live entry: evaluate
    REPLAY = "replay"  # the entry is this very event's: re-emit its output
    DUPLICATE = "duplicate"  # same request within the TTL: answer with the original outcome
    REUSED = "reused"  # same key, different request, within the TTL: reject


_QUEUED = struct.Struct(">qq")  # recorded_at, offset


def _pack(entry: WardenEntry, key: bytes) -> bytes:
    return _QUEUED.pack(entry.recorded_at, entry.offset) + key


def key_prefix(idempotency_key: str) -> bytes:
    raw = idempotency_key.encode("utf-8")
    # length-prefixed, so no key's prefix is another key's prefix
    return WARDEN_PREFIX + len(raw).to_bytes(2, "big") + raw


def version_key(idempotency_key: str, offset: int) -> bytes:
    return key_prefix(idempotency_key) + offset.to_bytes(8, "big")


class Warden:
    def __init__(self, store: Store, ttl_ms: int, grace_ms: int | None = None) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        self.grace_ms = ttl_ms if grace_ms is None else grace_ms
        # per partition, in recording order, for collection: one bytes object per
        # version, recorded_at and offset (8 bytes each) then its table key. Packed
        # because the queue holds rate x (ttl + grace) versions: a tuple of two ints
        # and a key costs over twice as much heap.
        self._queues: dict[int, collections.deque[bytes]] = {}
        # per partition: (offset, stream time) of processed events whose stream time is
        # lower than every later one's: the front is the oldest stream time a replay
        # from any committed offset could judge with (sliding-window minimum)
        self._oldest: dict[int, collections.deque[tuple[int, int]]] = {}
        self._newest: dict[int, int] = {}

    def lookup(self, partition: int, idempotency_key: str, offset: int) -> WardenEntry | None:
        """The version of the key's entry that was current when the event at ``offset``
        was first processed: the newest one recorded at or before it."""
        found = None
        for _, raw in self.store.scan(partition, key_prefix(idempotency_key)):
            entry = WardenEntry.decode(raw)
            if entry.offset > offset:
                break  # versions are in offset order
            found = entry
        return found

    def judge(self, version: WardenEntry | None, offset: int, stream_time: int,
              fingerprint: str) -> Verdict:
        """Classify an event against its key's current version. Pure: the same arguments
        give the same verdict on every instance and on every replay."""
        if version is None:
            return Verdict.FRESH
        if version.offset == offset:
            return Verdict.REPLAY
        if stream_time - version.recorded_at >= self.ttl_ms:
            return Verdict.FRESH
        if version.fingerprint == fingerprint:
            return Verdict.DUPLICATE
        return Verdict.REUSED

    def record(self, idempotency_key: str, entry: WardenEntry) -> None:
        key = version_key(idempotency_key, entry.offset)
        self.store.put(entry.partition, key, entry.encode())
        self._queues.setdefault(entry.partition, collections.deque()).append(_pack(entry, key))

    def restate(self, idempotency_key: str, entry: WardenEntry) -> None:
        """Write a version again, unchanged (same key, same bytes), so that its changelog
        record exists even if the crash lost the first one. Not queued again: it is
        already in the collection queue."""
        self.store.put(entry.partition, version_key(idempotency_key, entry.offset), entry.encode())

    def observe(self, partition: int, offset: int, stream_time: int) -> None:
        window = self._oldest.setdefault(partition, collections.deque())
        while window and window[-1][1] >= stream_time:
            window.pop()  # never the minimum again while this event is in the window
        window.append((offset, stream_time))
        if stream_time > self._newest.get(partition, stream_time - 1):
            self._newest[partition] = stream_time

    def collect(self, partition: int, committed: Callable[[int], int]) -> int:
        """Delete versions that lie below the committed offset and are expired by ttl +
        grace for the oldest stream time any replayed event has. Returns how many were
        removed. Amortised O(1) per version: the queue is in recording order, which is
        offset order."""
        queue = self._queues.get(partition)
        if not queue or partition not in self._newest:
            return 0
        limit = committed(partition)
        window = self._oldest[partition]
        while window and window[0][0] < limit:
            window.popleft()  # committed: no replay will judge with its stream time
        # with nothing uncommitted, only new events remain, and they get the grace
        oldest = window[0][1] if window else self._newest[partition]
        horizon = oldest - self.ttl_ms - self.grace_ms
        removed = 0
        while queue:
            recorded_at, offset = _QUEUED.unpack_from(queue[0])
            if offset >= limit or recorded_at > horizon:
                # Stops at the first young version even if later ones are old: the queue
                # is in offset order, and out-of-order timestamps only delay collection.
                break
            self.store.delete(partition, queue.popleft()[_QUEUED.size:])
            removed += 1
        return removed

    def rebuild(self, partition: int) -> None:
        """Rebuild a partition's collection queue from the table after it is
        (re)assigned, in offset order as at recording."""
        found = [(WardenEntry.decode(raw), raw_key) for raw_key, raw in self.store.scan(partition, WARDEN_PREFIX)]
        found.sort(key=lambda item: item[0].offset)
        self._queues[partition] = collections.deque(_pack(entry, key) for entry, key in found)

    def forget(self, partition: int) -> None:
        self._queues.pop(partition, None)
        self._oldest.pop(partition, None)
        self._newest.pop(partition, None)

    def size(self, partition: int) -> int:
        queue = self._queues.get(partition)
        return 0 if queue is None else len(queue)
