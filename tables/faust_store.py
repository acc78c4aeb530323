"""The Ledger's table inside a Faust worker, seen through the Store seam, written per
batch.

Why not ``table[key] = value``: Faust picks the RocksDB database and changelog
partition of a table write from the *current event*, writes RocksDB one key at a time
and sends one changelog record per write (each awaited, each followed by a
persisted-offset write). Here every operation names its partition, and a batch's
writes are held in memory (reads see them) until :meth:`FaustStore.flush`, which

1. writes them to the partition's RocksDB in ONE write batch, and
2. sends the partition's changelog records as ONE aiokafka record batch, coalesced per
   key (the last write of a key in the batch wins) and ordered for recovery: Warden
   versions (``w\\0`` puts, in the order written: input offset order), then entity
   records (``e\\0``), then the clock checkpoint (``t\\0``), then deletions (the
   tombstones of collected versions and checkpoints). specs/recovery.allium,
   ChangelogOrderPerBatch, says why any prefix of that order restores to a state a
   replay finishes correctly;
3. records the changelog offset the partition's RocksDB holds up to (Faust's persisted
   offset), once the batch is acknowledged, if the batch directly follows what that
   RocksDB holds (PersistedOffsetOverContiguousWrites).

The Ledger's RocksDB store is :class:`LedgerRocksStore`: Faust's, except that applying
the changelog (recovery, standbys) never puts an entity record over one with a higher
stamp (RestoreKeepsNewestEntityRecord). Both are for a writer presumed dead: a worker
frozen past its session timeout (a long GC or VM pause, a starved process) wakes up
still holding the batches it had taken and writes their changelog records after its
successor has restored the partition and written newer ones; nothing on the broker
fences a plain producer. Seen in tests/integration/test_scale_out.py on a slow CI
machine, and made to happen by freezing a worker (SIGSTOP) there.

Offsets are committed only after the producer has flushed the changelog batches
(faust Consumer._commit_offsets flushes the producer first), which is the recovery
argument's premise. Recovery stays Faust's: changelog topic, persisted offsets,
restore on assignment.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable, Iterator

from faust.stores import STORES
from faust.stores.rocksdb import Store as RocksStore
from faust.types import TP
from rocksdict import WriteBatch

from agents.intake import check_delivery
from app.batching import send_batched
from tables.ledger import ENTITY_PREFIX, keeps_stored_entity

log = logging.getLogger("docket.ledger")

# The Faust store URL of the Ledger table (agents/instance.py): Faust's RocksDB store
# with the restore rule below. The path is the table's name, where rocksdb:// puts its
# files; without one the URL is falsy (yarl) and Faust's Collection._new_store takes
# the app's store instead.
LEDGER_STORE_URL = "docket-ledger:ledger"

# changelog emission order of a batch's writes, by key space (tables/ledger.py,
# tables/warden.py); deletions of any key space go last
_ORDER = {b"w": 0, b"e": 1, b"t": 2}


def changelog_order(writes: dict[bytes, bytes | None]) -> list[tuple[bytes, bytes | None]]:
    """One batch's writes of one partition (key -> value, None for a deletion, in the
    order first written) as the changelog records to send, in recovery order."""
    puts: list[list[tuple[bytes, bytes]]] = [[], [], [], []]
    deletes: list[tuple[bytes, None]] = []
    for key, value in writes.items():
        if value is None:
            deletes.append((key, None))
        else:
            puts[_ORDER.get(key[:1], 3)].append((key, value))
    return [*puts[0], *puts[1], *puts[2], *puts[3], *deletes]


class FaustStore:
    """A Store (tables/store.py) over the Faust table ``table`` of ``app``."""

    def __init__(self, app, table) -> None:
        self.app = app
        self.table = table
        self._writes: dict[int, dict[bytes, bytes | None]] = {}  # this batch: partition -> key -> value
        self._iters: dict = {}  # partition -> a RocksDB iterator of the batch (a snapshot of the table)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def open_databases(self) -> list:
        """The RocksDB databases (rocksdict ``Rdict``) of the partitions this worker has
        open now, actives and standbys: what its memory account sums over."""
        return list(self.table.data._dbs.values())

    def get(self, partition: int, key: bytes) -> bytes | None:
        writes = self._writes.get(partition)
        if writes is not None and key in writes:
            return writes[key]
        return self._db(partition).get(key)

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        found = self._db(partition).get(keys)
        writes = self._writes.get(partition)
        if writes:
            found = [writes[k] if k in writes else v for k, v in zip(keys, found)]
        return found

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self._writes.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: bytes) -> None:
        self._writes.setdefault(partition, {})[key] = None

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys with ``prefix`` in key order, this batch's writes included."""
        pending = sorted((k, v) for k, v in self._writes.get(partition, {}).items() if k.startswith(prefix))
        stored = self._db(partition).items(from_key=prefix)
        i = 0
        for key, value in stored:
            if not key.startswith(prefix):
                break
            while i < len(pending) and pending[i][0] < key:
                if pending[i][1] is not None:
                    yield pending[i]
                i += 1
            if i < len(pending) and pending[i][0] == key:
                if pending[i][1] is not None:
                    yield pending[i]
                i += 1
                continue
            yield key, value
        for key, value in pending[i:]:
            if value is not None:
                yield key, value

    def scan_stored(self, partition: int, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Keys with ``prefix`` in key order, as RocksDB holds them: without this batch's
        writes (the caller knows them: the Warden's versions of the batch). A list: it is
        usually empty (a new idempotency key), and one seek of an iterator kept for the
        batch costs less than a generator."""
        it = self._iters.get(partition)
        if it is None:
            it = self._iters[partition] = self._db(partition).iter()
        it.seek(prefix)
        found = []
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            found.append((key, it.value()))
            it.next()
        return found

    def write_local(self) -> dict[int, dict[bytes, bytes | None]]:
        """The RocksDB half of :meth:`flush`: the writes of this batch, one RocksDB write
        batch per partition; returns them (partition -> key -> value, None for a
        deletion) for the changelog."""
        batches, self._writes = self._writes, {}
        self._iters.clear()
        for partition, writes in batches.items():
            wb = WriteBatch(raw_mode=True)
            for key, value in writes.items():
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)
            self._db(partition).write(wb)
        return batches

    async def flush(self) -> None:
        """Write this batch to RocksDB and hand its changelog records to the producer
        (module docstring). Returns once they are queued, not sent."""
        batches = self.write_local()
        if not batches:
            return
        producer = self.app.producer._producer  # the aiokafka producer under Faust's
        topic = self.changelog_topic
        data = self.table.data
        for partition, writes in batches.items():
            await send_batched(producer, topic, partition, changelog_order(writes),
                               on_done=_persist(self.app, data, TP(topic, partition)))


def _persist(app, data, tp: TP) -> Callable[[asyncio.Future, int], None]:
    # At-least-once Faust records, per changelog partition, the offset up to which the
    # local RocksDB already holds the changelog, so a restart on the same data
    # directory only re-reads the tail. A batch's metadata is its first record's offset.
    # A batch not delivered stops the worker's commits (agents/intake.py guard_delivery).
    def done(fut: asyncio.Future, n: int) -> None:
        if check_delivery(app, fut, f"changelog records of {tp.topic}[{tp.partition}]"):
            first = fut.result().offset
            persist_own_write(data, tp, first, first + n - 1)
    return done


# changelog partitions this process has warned about (one line each, not one per batch)
_warned: set[TP] = set()


def persist_own_write(data, tp: TP, first: int, last: int) -> bool:
    """This worker's changelog records ``first``..``last`` (offsets) of ``tp`` are
    acknowledged: record ``last`` as the offset ``data`` (a Faust store) holds the
    changelog up to, if ``first`` directly follows the one recorded (or none is).
    Otherwise another worker's records lie between, which this RocksDB does not hold:
    two workers of this instance wrote the partition's changelog at once, one of them
    presumed dead (frozen past its session timeout), this one or the other. Keep the
    older offset, so that the next restore on this data directory reads them too, and
    say so once per partition for the life of the process. Returns whether the offset
    moved (specs/ledger.allium, PersistedOffsetOverContiguousWrites)."""
    held = data.persisted_offset(tp)
    if held is None or first == held + 1:
        data.set_persisted_offset(tp, last)
        return True
    if first > held + 1 and tp not in _warned:
        _warned.add(tp)
        log.warning("%s[%d]: offsets %d..%d were written by another worker of this instance while this one "
                    "wrote the partition too: one of the two was presumed dead (paused longer than "
                    "DOCKET_SESSION_TIMEOUT_MS, e.g. a long GC or VM pause or a starved process) and wrote "
                    "after the other took the partition over. Nothing is lost: this worker's next restore of "
                    "the partition re-reads the changelog from offset %d, keeping each entity's newest record",
                    tp.topic, tp.partition, held + 1, first - 1, held + 1)
    return False


class LedgerRocksStore(RocksStore):
    """Faust's RocksDB store (faust.stores.rocksdb.Store, rocksdict driver) for the
    Ledger table: applying changelog records (Faust's recovery of an active partition,
    a standby following the changelog) writes each entity record ("e\\0" keys) only
    over one with a stamp at or below its own, so the restored entity is the newest
    any writer wrote, whatever order writers appended in
    (RestoreKeepsNewestEntityRecord). Every other key is Faust's last write wins, a
    tombstone deleting. Registered as :data:`LEDGER_STORE_URL`."""

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        """Write a batch of changelog events (faust Events; their messages' raw key and
        value) to the partitions' RocksDB, one write batch per partition, then each
        changelog partition's highest offset as persisted, as Faust does."""
        batches: dict[int, WriteBatch] = {}
        # partition -> entity key -> what this batch leaves it at so far (None: deleted);
        # the write batch is not readable before it is written
        entities: dict[int, dict[bytes, bytes | None]] = {}
        offsets: dict[TP, int] = {}
        for event in batch:
            msg = event.message
            tp, offset = msg.tp, msg.offset
            offsets[tp] = offset if tp not in offsets else max(offset, offsets[tp])
            wb = batches.get(msg.partition)
            if wb is None:
                wb = batches[msg.partition] = WriteBatch(raw_mode=True)
            key, value = msg.key, msg.value
            if value is None:
                wb.delete(key)
                if key[:2] == ENTITY_PREFIX:
                    entities.setdefault(msg.partition, {})[key] = None
                continue
            if key[:2] == ENTITY_PREFIX:
                mine = entities.setdefault(msg.partition, {})
                stored = mine[key] if key in mine else self._db_for_partition(msg.partition).get(key)
                if keeps_stored_entity(stored, value):
                    continue
                mine[key] = value
            wb.put(key, value)
        for partition, wb in batches.items():
            self._db_for_partition(partition).write(wb)
        for tp, offset in offsets.items():
            self.set_persisted_offset(tp, offset)


STORES.aliases["docket-ledger"] = f"{__name__}:LedgerRocksStore"
