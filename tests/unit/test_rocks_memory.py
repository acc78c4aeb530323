"""RocksDB's own memory account of the Ledger's databases (tables/rocks_memory.py) and
the instance's /metrics gauges of it (agents/instance.py InstanceMetrics.watch_rocksdb),
on real RocksDB databases opened as Faust opens the Ledger's: specs/integration.allium
LedgerMemoryOnMetricsPage. Observability only: nothing here reaches an output; `make
soak` reads the gauges to tell RocksDB's bounded fill from a leak (bench/soak.py
judge_rss)."""

from __future__ import annotations

import pytest
from faust.stores.rocksdb import RocksDBOptions
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.instance import LEDGER_ROCKSDB_OPTIONS, InstanceMetrics
from tables.rocks_memory import ROCKS_MEMORY, memory_bound_bytes, memory_bytes

MIB = 2**20


@pytest.fixture
def dbs(tmp_path):
    opened = [RocksDBOptions(**LEDGER_ROCKSDB_OPTIONS).open(tmp_path / f"ledger-{p}.db") for p in range(2)]
    yield opened
    for db in opened:
        db.close()


def fill(db, n: int) -> None:
    for i in range(n):
        db[b"e\x00k%06d" % i] = b"x" * 100


def test_memtables_grow_with_writes_and_empty_at_a_flush(dbs) -> None:
    empty = memory_bytes(dbs[:1])["memtables"]
    fill(dbs[0], 3000)
    written = memory_bytes(dbs[:1])["memtables"]
    assert written >= empty + 3000 * 100  # at least the bytes written
    dbs[0].flush()
    assert memory_bytes(dbs[:1])["memtables"] < written


def test_block_cache_fills_on_reads_of_flushed_data_within_its_capacity(dbs) -> None:
    fill(dbs[0], 3000)
    dbs[0].flush()
    before = memory_bytes(dbs[:1])["block_cache"]
    for i in range(3000):
        assert dbs[0][b"e\x00k%06d" % i] == b"x" * 100
    after = memory_bytes(dbs[:1])["block_cache"]
    assert before < after <= LEDGER_ROCKSDB_OPTIONS["block_cache_size"]


def test_memory_is_summed_over_every_database(dbs) -> None:
    fill(dbs[0], 1000)
    fill(dbs[1], 2000)
    each = [memory_bytes([db]) for db in dbs]
    both = memory_bytes(dbs)
    assert set(both) == set(ROCKS_MEMORY)
    assert both == {k: each[0][k] + each[1][k] for k in ROCKS_MEMORY}


def test_bound_is_memtables_and_cache_per_database() -> None:
    per_db = 4 * MIB * 3 + 32 * MIB  # LEDGER_ROCKSDB_OPTIONS, written out
    assert memory_bound_bytes(LEDGER_ROCKSDB_OPTIONS, 8) == 8 * per_db
    assert memory_bound_bytes(LEDGER_ROCKSDB_OPTIONS, 0) == 0
    with pytest.raises(KeyError):
        memory_bound_bytes({"write_buffer_size": 1, "max_write_buffer_number": 2}, 1)


def _gauges(metrics: InstanceMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {s.name + "".join(f"{{{k}={v}}}" for k, v in s.labels.items()): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name.startswith("docket_instance_rocksdb")}


def test_instance_metrics_serve_rocksdb_memory_read_at_each_scrape(dbs) -> None:
    """LedgerMemoryOnMetricsPage: the gauges are read from RocksDB at each scrape, not
    when registered, and equal the sum over the open databases; the bound is theirs."""
    reads = []

    def open_dbs():
        reads.append(1)
        return dbs

    metrics = InstanceMetrics()
    metrics.watch_rocksdb(open_dbs, LEDGER_ROCKSDB_OPTIONS)
    assert reads == []  # registering reads nothing (describe), scraping does
    first = _gauges(metrics)
    fill(dbs[1], 3000)
    second = _gauges(metrics)
    assert len(reads) == 2
    assert second["docket_instance_rocksdb_bytes{kind=memtables}"] > first["docket_instance_rocksdb_bytes{kind=memtables}"]
    assert second["docket_instance_rocksdb_bytes{kind=memtables}"] == memory_bytes(dbs)["memtables"]
    assert "docket_instance_rocksdb_bytes{kind=block_cache}" in second
    assert second["docket_instance_rocksdb_bound_bytes"] == memory_bound_bytes(LEDGER_ROCKSDB_OPTIONS, 2)
