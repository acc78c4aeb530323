"""Warden: idempotency keys within a TTL of stream time. Spec: specs/warden.allium.

An entry remembers, for an idempotency key, the position of the event that
used it, the stream time it was recorded at, a fingerprint of the request, and the
complete output body that event produced (the materialised response). Entries live
in the Ledger's table (key space ``w\\0``), so they share its changelog.

The entry doubles as the replay journal: it is written *before* the event's entity
writes, so whenever an entity carries an event's stamp, that event's output can be
re-emitted byte for byte without evaluating it again.

Stream time is the Warden's too. The stream time of the record at (partition,
offset) is the greatest broker timestamp (LogAppendTime) among the partition's
records at or below that offset: a function of the input stream alone, which never
goes back, so a record whose timestamp is out of order can neither expire nor revive
a key. To compute it on a replay that starts at the committed offset, the Warden
writes a *clock checkpoint* (key space ``t\\0``) at the end of each batch's records
of a partition: offset -> stream time there. Any checkpoint is correct whenever it
was written (it is a function of the stream), so a replay resumes from the newest
one below its first record.

Expiry is a pure function of the looking-up event's stream time. Physical removal
(:meth:`Warden.collect`) deletes versions below the committed input offset that are
expired at the stream time of the committed offset: every event a replay can still
judge has a stream time at least that, so removal never changes a verdict.
"""

from __future__ import annotations

import bisect
import collections
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import orjson

from app.records import LOG_APPEND_TIME
from tables.store import Store

WARDEN_PREFIX = b"w\x00"
CLOCK_PREFIX = b"t\x00"


@dataclass(slots=True)  # not frozen: a frozen init costs 3x (object.__setattr__ per field), per event
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


_SCOPED = b"\xff"  # no unscoped key starts so: their 2-byte length is at most 512


def key_prefix(idempotency_key: str, client: str | None = None) -> bytes:
    """Table key prefix of a key's versions. Keys are scoped by client (the API
    client's name, or none for Kafka-native producers): the same key of two clients is
    two keys. Length-prefixed, so no key's prefix is another key's prefix:
    ``w\\0`` + len(key) (2 bytes) + key for no client, ``w\\0`` + 0xff + len(client)
    (1 byte) + client + len(key) (2 bytes) + key for one."""
    raw = idempotency_key.encode("utf-8")
    scoped = len(raw).to_bytes(2, "big") + raw
    if client is None:
        return WARDEN_PREFIX + scoped
    name = client.encode("ascii")
    return WARDEN_PREFIX + _SCOPED + len(name).to_bytes(1, "big") + name + scoped


def version_key(idempotency_key: str, offset: int, client: str | None = None) -> bytes:
    return key_prefix(idempotency_key, client) + offset.to_bytes(8, "big")


def clock_key(offset: int) -> bytes:
    """Table key of the clock checkpoint at input ``offset`` (big-endian: key order is
    offset order)."""
    return CLOCK_PREFIX + offset.to_bytes(8, "big")


class Warden:
    """Idempotency and stream time of the partitions one worker processes.

    Per partition, in offset order: :meth:`stream_time` for every record, then
    :meth:`lookup` / :meth:`judge` / :meth:`record` for admitted events, and at the
    end of each batch's records :meth:`checkpoint` and :meth:`collect`. After a
    partition is (re)assigned, :meth:`forget` it: its clock resumes from the table.
    """

    def __init__(self, store: Store, ttl_ms: int) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        # per partition, in recording order, for collection: one bytes object per
        # version, recorded_at and offset (8 bytes each) then its table key. Packed
        # because the queue holds rate x ttl versions: a tuple of two ints and a key
        # costs over twice as much heap.
        self._queues: dict[int, collections.deque[bytes]] = {}
        # per partition: [offset, stream time] of the last record seen (offset -1 and
        # time None before the first)
        self._clock: dict[int, list] = {}
        # per partition: (offset, stream time) of the clock checkpoints in the table,
        # ascending, and the offset of the newest one written
        self._checkpoints: dict[int, collections.deque[tuple[int, int]]] = {}
        self._written: dict[int, int] = {}  # partition -> offset of the last checkpoint this run wrote
        # (partition, key prefix) -> the newest version recorded in the current batch
        self._recorded: dict[tuple[int, bytes], WardenEntry] = {}

    # ---------------------------------------------------------------- stream time

    def stream_time(self, partition: int, offset: int, timestamp: int,
                    timestamp_type: int = LOG_APPEND_TIME) -> int:
        """Advance the partition's clock past the record at ``offset`` with broker
        timestamp ``timestamp`` (ms) and return its stream time (ms): the greatest broker
        timestamp at or below ``offset``. A record whose ``timestamp_type`` is not
        LogAppendTime carries a producer's clock (the input topic was switched to
        CreateTime while running, or the record predates its switch to LogAppendTime):
        it moves nothing, and gets the stream time so far (0 before any broker
        timestamp). Records must come in offset order; an offset at or below the last
        one seen (a rewind) resumes the clock from the table."""
        clock = self._clock.get(partition)
        if clock is None or offset <= clock[0]:
            clock = self._resume(partition, offset)
        if timestamp_type == LOG_APPEND_TIME:
            if clock[1] is None or timestamp > clock[1]:
                clock[1] = timestamp
        elif clock[1] is None:
            clock[1] = 0
        clock[0] = offset
        return clock[1]

    def _resume(self, partition: int, offset: int) -> list:
        # Every checkpoint holds the stream time at its offset whichever run wrote it,
        # so the newest one below the first record is where the clock stands.
        found = collections.deque()
        for key, raw in self.store.scan(partition, CLOCK_PREFIX):
            at = int.from_bytes(key[len(CLOCK_PREFIX):], "big")
            found.append((at, int(raw)))
            if at >= offset:
                # Written by a run that crashed before committing past it: its changelog
                # record may be lost while the local files keep it, and this run's
                # batches may end elsewhere and never write it again. Written again
                # (the same bytes), so the changelog holds whatever the table holds.
                self.store.put(partition, key, raw)
        self._checkpoints[partition] = found
        below = [cp for cp in found if cp[0] < offset]
        clock = [below[-1][0], below[-1][1]] if below else [-1, None]
        self._clock[partition] = clock
        return clock

    def checkpoint(self, partition: int) -> None:
        """Write the clock checkpoint at the last record seen of ``partition`` (after
        the batch's other writes of that partition). Written at every batch end, even
        where the table already holds one (a replay writes the same bytes again): a
        checkpoint that only the local files kept is lost when the partition is next
        restored from the changelog, and the commit at this batch's end relies on it."""
        clock = self._clock.get(partition)
        if clock is None or clock[1] is None or clock[0] == self._written.get(partition):
            return
        self.store.put(partition, clock_key(clock[0]), str(clock[1]).encode("ascii"))
        self._written[partition] = clock[0]
        cps = self._checkpoints.setdefault(partition, collections.deque())
        if not cps or cps[-1][0] < clock[0]:
            cps.append((clock[0], clock[1]))
        elif all(offset != clock[0] for offset, _ in cps):
            # below checkpoints a crashed run left ahead of this one: keep the order
            cps.insert(bisect.bisect(list(cps), (clock[0], clock[1])), (clock[0], clock[1]))

    # ---------------------------------------------------------------- versions

    def lookup(self, partition: int, idempotency_key: str, offset: int,
               client: str | None = None) -> WardenEntry | None:
        """The version of the key's entry that was current when the event at ``offset``
        was first processed: the newest one recorded at or before it."""
        return self.lookup_prefix(partition, key_prefix(idempotency_key, client), offset)

    def lookup_prefix(self, partition: int, prefix: bytes, offset: int) -> WardenEntry | None:
        """:meth:`lookup` by the key's table prefix (:func:`key_prefix`)."""
        recent = self._recorded.get((partition, prefix))
        if recent is not None:
            return recent  # recorded earlier in this batch, so newer than any in the table
        found = None
        for _, raw in self.store.scan_stored(partition, prefix):
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

    def record(self, idempotency_key: str, entry: WardenEntry, client: str | None = None,
               prefix: bytes | None = None) -> None:
        """Write a new version (``prefix``: the key's table prefix, when known)."""
        if prefix is None:
            prefix = key_prefix(idempotency_key, client)
        key = prefix + entry.offset.to_bytes(8, "big")
        self.store.put(entry.partition, key, entry.encode())
        self._recorded[(entry.partition, prefix)] = entry
        self._queues.setdefault(entry.partition, collections.deque()).append(_pack(entry, key))

    def restate(self, idempotency_key: str, entry: WardenEntry, client: str | None = None) -> None:
        """Write a version again, unchanged (same key, same bytes), so that its changelog
        record exists even if the crash lost the first one. Not queued again: it is
        already in the collection queue."""
        self.store.put(entry.partition, version_key(idempotency_key, entry.offset, client), entry.encode())

    def collect(self, partition: int, committed: Callable[[int], int]) -> int:
        """Delete versions below the committed offset that are expired at the stream
        time of the committed offset (the newest clock checkpoint below it), and the
        checkpoints older than that one. Returns how many versions were removed.
        Amortised O(1) per version: the queue is in recording order, which is offset
        order and, stream time being monotonic, recorded_at order."""
        limit = committed(partition)
        cps = self._checkpoints.get(partition)
        if not cps or cps[0][0] >= limit:
            return 0  # no stream time known below the committed offset
        while len(cps) > 1 and cps[1][0] < limit:
            self.store.delete(partition, clock_key(cps.popleft()[0]))
        queue = self._queues.get(partition)
        if not queue:
            return 0
        horizon = cps[0][1] - self.ttl_ms
        removed = 0
        while queue:
            recorded_at, offset = _QUEUED.unpack_from(queue[0])
            if offset >= limit or recorded_at > horizon:
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

    def settle(self) -> None:
        """End of a batch: versions recorded in it are read from the store from now on
        (a store may hold a batch's writes apart until it flushes them, unseen by
        scans: tables/faust_store.py)."""
        self._recorded.clear()

    def forget(self, partition: int) -> None:
        """Drop what is kept in memory of ``partition`` (queue, clock): after a
        reassignment the table may have been restored under it."""
        self._queues.pop(partition, None)
        self._clock.pop(partition, None)
        self._checkpoints.pop(partition, None)
        self._written.pop(partition, None)

    def size(self, partition: int) -> int:
        queue = self._queues.get(partition)
        return 0 if queue is None else len(queue)
