"""What a table's RocksDB databases hold in memory, by RocksDB's own account, and the
most its options let them hold.

Each partition of a Faust RocksDB table is a database of its own with its own memtables
and its own block cache (faust.stores.rocksdb.RocksDBOptions.as_options makes a
``rocksdict.Cache`` per database), so a worker's RocksDB memory is the sum over the
partitions it holds, and each database's share is bounded by its options:
``write_buffer_size x max_write_buffer_number`` bytes of memtables (RocksDB stops
writes rather than grow past them) and ``block_cache_size`` bytes of cache. Both fill
at the pace of the writes and reads, and at a low rate the first fill takes minutes:
`make soak` reads these figures to tell that bounded fill from a leak (bench/soak.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# kind -> RocksDB property (rocksdb/include/rocksdb/db.h, DB::Properties): bytes
ROCKS_MEMORY = {
    "memtables": "rocksdb.cur-size-all-mem-tables",  # active and unflushed immutable memtables
    "block_cache": "rocksdb.block-cache-usage",  # bytes charged to the block cache
}


def memory_bytes(dbs: Iterable, properties: Mapping[str, str] = ROCKS_MEMORY) -> dict[str, int]:
    """{kind: bytes} of ``properties`` (kind -> RocksDB integer property) summed over
    ``dbs`` (rocksdict ``Rdict`` objects, open). A property a database does not report
    counts 0."""
    out = dict.fromkeys(properties, 0)
    for db in dbs:
        for kind, prop in properties.items():
            out[kind] += db.property_int_value(prop) or 0
    return out


def memory_bound_bytes(options: Mapping[str, int], databases: int) -> int:
    """The most ``databases`` databases opened with ``options`` (the keyword arguments of
    faust.stores.rocksdb.RocksDBOptions: ``write_buffer_size``,
    ``max_write_buffer_number``, ``block_cache_size``, all required here) may hold in
    memtables and block cache together (bytes). Raises KeyError for a missing option."""
    per_db = (options["write_buffer_size"] * options["max_write_buffer_number"]
              + options["block_cache_size"])
    return per_db * max(0, databases)
