"""Warden memory per million keys: the RocksDB bytes of the entries and the Python
bytes of the collection queue. `make bench-warden` runs it; it prints its figures.

Entries are recorded through the real Warden into a real RocksDB (rocksdict), with
output bodies of the size the inventory domain produces for a transfer."""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from rocksdict import Options, Rdict

from tables.warden import Warden, WardenEntry


class RocksStore:
    """A Store over one rocksdict database per partition (what Faust's store does)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, Rdict] = {}

    def db(self, partition: int) -> Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = Rdict(str(self.root / f"p{partition}"), options=Options(raw_mode=True))
        return self.dbs[partition]

    def get(self, partition, key):
        return self.db(partition).get(key)

    def put(self, partition, key, value):
        self.db(partition).put(key, value)

    def delete(self, partition, key):
        self.db(partition).delete(key)

    def scan(self, partition, prefix):
        for k, v in self.db(partition).items(from_key=prefix):
            if not k.startswith(prefix):
                break
            yield k, v

    def close(self) -> None:
        for db in self.dbs.values():
            db.flush()
            db.compact_range(None, None)
            db.close()


def body(i: int) -> bytes:
    return (
        b'{"domain_version":"inventory/1","duplicate_of":null,"event_name":"stock.transfer",'
        b'"idempotency_key":"order-%08d","input":{"offset":%d,"partition":3},"outcome":{"detail":"",'
        b'"entities":[{"key":"stock:wh-01:sku-%05d","state":{"quantity":%d},"version":%d},'
        b'{"key":"stock:wh-02:sku-%05d","state":{"quantity":%d},"version":%d}],"reason":null,'
        b'"status":"applied"},"stream_time":%d}' % (i, i, i % 50000, i % 977, i // 7, i % 50000, i % 991, i // 7,
                                                    1_700_000_000_000 + i)
    )


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="warden-mem-"))
    try:
        store = RocksStore(root)
        warden = Warden(store, ttl_ms=300_000)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        for i in range(args.keys):
            p = i % args.partitions
            warden.record(f"order-{i:08d}", WardenEntry(p, i, 1_700_000_000_000 + i, "f" * 64, body(i)))
            if i % 100_000 == 0 and i:
                print(f"  {i:>9,} keys recorded", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0
        gc.collect()
        queue_bytes = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        store.close()
        disk = du(root)
        per_million = 1_000_000 / args.keys
        print(f"keys recorded:                  {args.keys:,} in {elapsed:.1f} s ({args.keys / elapsed:,.0f}/s)")
        print(f"RocksDB bytes per million keys: {disk * per_million / 2**20:,.1f} MiB (on disk, compacted)")
        print(f"queue bytes per million keys:   {queue_bytes * per_million / 2**20:,.1f} MiB (Python heap)")
        print(f"entry size (encoded):           {len(WardenEntry(0, 1, 2, 'f' * 64, body(1)).encode())} bytes")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
