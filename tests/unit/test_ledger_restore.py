"""Restores of the Ledger with a writer presumed dead in the changelog
(specs/recovery.allium point 6; specs/ledger.allium RestoreKeepsNewestEntityRecord,
PersistedOffsetOverContiguousWrites): tables/faust_store.py's LedgerRocksStore and
persist_own_write, on real RocksDB (rocksdict), no broker."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from tables import faust_store
from tables.faust_store import LedgerRocksStore, persist_own_write
from tables.ledger import EntityRecord, entity_key, keeps_stored_entity

CHANGELOG = "t-a-ledger-changelog"


def entity(stamp: int, name: str = "sku") -> bytes:
    """The record a run writes for entity ``name`` after event ``stamp``: a function of
    the stamp alone, as determinism makes it."""
    return EntityRecord({"name": name, "quantity": stamp * 7 % 101}, stamp // 3 + 1, stamp).encode()


class Restoring:
    """A LedgerRocksStore over one real RocksDB database for every partition, without
    Faust's app and table around it: what apply_changelog_batch uses of them."""

    def __init__(self, path) -> None:
        self.db = Rdict(str(path), options=Options(raw_mode=True))
        self.persisted: dict[TP, int] = {}
        self.store = LedgerRocksStore.__new__(LedgerRocksStore)
        self.store._db_for_partition = lambda partition: self.db
        self.store.set_persisted_offset = self.persisted.__setitem__

    def apply(self, records: list[tuple[bytes, bytes | None]], first_offset: int = 0, partition: int = 0) -> None:
        events = [SimpleNamespace(message=SimpleNamespace(tp=TP(CHANGELOG, partition), partition=partition,
                                                          offset=first_offset + i, key=key, value=value))
                  for i, (key, value) in enumerate(records)]
        self.store.apply_changelog_batch(events, to_key=lambda k: k, to_value=lambda v: v)

    def close(self) -> None:
        self.db.close()


@pytest.fixture
def restoring(tmp_path):
    r = Restoring(tmp_path / "ledger-0")
    yield r
    r.close()


def test_keeps_stored_entity_only_over_a_lower_stamp() -> None:
    """RestoreKeepsNewestEntityRecord: the stored record stays only when its stamp is
    higher; an equal stamp (the same event's record, written again by a replay) or
    nothing stored lets the incoming one in."""
    assert keeps_stored_entity(entity(9), entity(4))
    assert not keeps_stored_entity(entity(4), entity(9))
    assert not keeps_stored_entity(entity(9), entity(9))
    assert not keeps_stored_entity(None, entity(4))


def test_an_entity_record_without_a_readable_stamp_is_last_write_wins() -> None:
    """RestoreKeepsNewestEntityRecord never stops a recovery: a stored or incoming value
    that is not docket's entity encoding is compared as Faust would, last write wins,
    instead of raising inside Faust's recovery loop (which would retry it for good)."""
    assert not keeps_stored_entity(b"not json", entity(4))
    assert not keeps_stored_entity(entity(9), b'{"s":{}}')
    assert not keeps_stored_entity(entity(9), b"[1, 2]")


def test_restore_keeps_newest_entity_record_within_and_across_batches(restoring) -> None:
    """RestoreKeepsNewestEntityRecord: an older entity record after a newer one, in the
    same applied batch or a later one, leaves the newer; Warden versions and clock
    checkpoints stay last write wins, and a tombstone deletes; the persisted offset is
    the highest offset applied, as Faust's."""
    e, w = entity_key("sku"), b"w\x00\x00\x01k" + (5).to_bytes(8, "big")
    restoring.apply([(e, entity(30)), (w, b"v1"), (e, entity(12))])
    assert restoring.db[e] == entity(30)
    restoring.apply([(e, entity(20)), (w, b"v2")], first_offset=3)
    assert restoring.db[e] == entity(30)
    assert restoring.db[w] == b"v2"
    restoring.apply([(e, entity(31)), (w, None)], first_offset=5)
    assert restoring.db[e] == entity(31)
    assert restoring.db.get(w) is None
    assert restoring.persisted == {TP(CHANGELOG, 0): 6}


def test_an_entity_deleted_in_a_batch_takes_the_next_record_of_that_batch(restoring) -> None:
    """RestoreKeepsNewestEntityRecord compares with what the batch has applied so far,
    not with RocksDB alone (the batch is written at its end): after a tombstone the key
    holds nothing, so any record is put."""
    e = entity_key("sku")
    restoring.apply([(e, entity(30))])
    restoring.apply([(e, None), (e, entity(3))], first_offset=1)
    assert restoring.db[e] == entity(3)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), stamps=st.lists(st.integers(0, 400), min_size=1, max_size=40, unique=True),
       names=st.lists(st.sampled_from(["w1/sku-a", "w2/sku-a", "w1/sku-b"]), min_size=40, max_size=40))
def test_any_interleaving_of_a_run_and_a_woken_worker_restores_the_newest_state(tmp_path_factory, data, stamps,
                                                                                 names) -> None:
    """RestoreKeepsNewestEntityRecord, the recovery argument's point 6: one run's entity
    writes in stamp order (the successor's), and a stretch of the same writes (the
    batches a frozen worker still held, the same values by determinism) appended
    anywhere among them, in any applied batching: the restored entities are the last
    value of each in the run, whatever the interleaving."""
    stamps.sort()
    writes = [(entity_key(names[i]), entity(stamp, names[i])) for i, stamp in enumerate(stamps)]
    lo = data.draw(st.integers(0, len(writes) - 1), label="zombie from")
    hi = data.draw(st.integers(lo + 1, len(writes)), label="zombie to")
    zombie = writes[lo:hi]
    # merge the two sequences, each in its own order, at drawn points
    log, i, j = [], 0, 0
    while i < len(writes) or j < len(zombie):
        take_zombie = j < len(zombie) and (i == len(writes) or data.draw(st.booleans(), label="zombie next"))
        if take_zombie:
            log.append(zombie[j])
            j += 1
        else:
            log.append(writes[i])
            i += 1
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(log)), max_size=5), label="batch ends")) | {len(log)})
    r = Restoring(tmp_path_factory.mktemp("ledger"))
    try:
        start = 0
        for end in cuts:
            r.apply(log[start:end], first_offset=start)
            start = end
        want = {key: value for key, value in writes}  # the run's last value of each entity
        assert {key: r.db[key] for key in want} == want
    finally:
        r.close()


class Persisted:
    """Faust's persisted offset of one store, in memory: what persist_own_write uses."""

    def __init__(self, held: int | None) -> None:
        self.held = held

    def persisted_offset(self, tp: TP) -> int | None:
        return self.held

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.held = offset


@pytest.mark.parametrize("held, first, last, moved", [
    (None, 0, 4, True),  # nothing recorded: a fresh partition
    (9, 10, 14, True),  # right after what RocksDB holds
    (9, 15, 19, False),  # 10..14 are another writer's: RocksDB does not hold them
    (20, 10, 14, False),  # a standby applied past it meanwhile: never backwards
])
def test_persisted_offset_moves_only_over_contiguous_own_writes(held, first, last, moved) -> None:
    """PersistedOffsetOverContiguousWrites: an acknowledged own record batch
    ``first``..``last`` moves the persisted offset to ``last`` only when it begins
    right after the one recorded (or none is)."""
    data = Persisted(held)
    assert persist_own_write(data, TP(CHANGELOG, 0), first, last) is moved
    assert data.held == (last if moved else held)


def test_a_gap_in_the_changelog_is_reported_once_per_partition(caplog, monkeypatch) -> None:
    """PersistedOffsetOverContiguousWrites: the first gap on a partition is logged
    (a WARNING naming the offsets another writer wrote, and where the next restore
    reads from); later ones on the same partition are not, another partition's is."""
    monkeypatch.setattr(faust_store, "_warned", set())
    data = Persisted(9)
    with caplog.at_level(logging.WARNING, logger="docket.ledger"):
        persist_own_write(data, TP(CHANGELOG, 0), 15, 19)
        persist_own_write(data, TP(CHANGELOG, 0), 25, 29)
        persist_own_write(data, TP(CHANGELOG, 1), 15, 19)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "offsets 10..14 were written by another worker" in lines[0]
    assert "re-reads the changelog from offset 10" in lines[0]
    assert lines[1].startswith(f"{CHANGELOG}[1]")


def test_faust_still_restores_the_ledger_through_the_store_it_overrides() -> None:
    """The Faust internals RestoreKeepsNewestEntityRecord rests on keep their shape (a
    faust-streaming upgrade that changes them must fail here, not restore silently
    with last write wins): the Ledger's store URL resolves to LedgerRocksStore; a
    table hands changelog batches to its store's apply_changelog_batch(batch, to_key,
    to_value), which Faust's RocksDB store defines with those parameters, writing the
    raw message key and value and the persisted offset per changelog partition."""
    import inspect

    from faust import stores
    from faust.stores import rocksdb
    from faust.tables import base

    assert stores.by_url(faust_store.LEDGER_STORE_URL) is LedgerRocksStore
    assert issubclass(LedgerRocksStore, rocksdb.Store)
    assert list(inspect.signature(rocksdb.Store.apply_changelog_batch).parameters) == [
        "self", "batch", "to_key", "to_value"]
    assert "self.data.apply_changelog_batch(" in inspect.getsource(base.Collection.apply_changelog_batch)
    source = inspect.getsource(rocksdb.Store.apply_changelog_batch)
    for piece in ("msg.key", "msg.value", "self.set_persisted_offset(tp, offset)"):
        assert piece in source, piece


def test_an_instances_ledger_table_restores_through_ledger_rocks_store(offline_settings, tmp_path) -> None:
    """RestoreKeepsNewestEntityRecord in the worker as built (agents/instance.py build):
    the Ledger table's store is a LedgerRocksStore, with its RocksDB files where Faust's
    rocksdb:// store keeps them (<data dir>/v1/tables/ledger-<p>.db), so an existing
    data directory is read as before. (A store URL without a path is falsy, and Faust
    silently used the app's plain RocksDB store instead: the first version of this fix
    did, and the frozen-worker test still diverged.)"""
    import asyncio

    from agents.instance import build

    asyncio.set_event_loop(asyncio.new_event_loop())
    app = build(offline_settings, "a", tmp_path / "a")
    data = app.tables["ledger"].data
    assert type(data) is LedgerRocksStore
    assert data.partition_path(0) == tmp_path / "a" / "v1" / "tables" / "ledger-0.db"
