"""The Warden's memory at a rate and a TTL: does it stay bounded once the TTL has passed,
and where does it go (the collection queue, RocksDB's memtables and caches, the files)?

    python -m bench.warden_memory                          # 10,000 events/s, 5-minute TTL
    python -m bench.warden_memory --rate 10000 --ttl-s 30  # a tenth of it: well under a minute
    python -m bench.warden_memory --json out.json          # the figures as JSON too

At 10,000 events/s with a 5-minute TTL an instance holds about 3,000,000 live versions
(every event with a fresh idempotency key, the worst case). `make soak` runs this after
its stack run and puts the figures in the soak report.

The Warden runs as an instance runs it (agents/usher.py, Usher.process): per batch of
``--batch`` records over ``--partitions`` partitions, the stream time of every record,
a lookup of its key's versions, a new version recorded, then per partition the clock
checkpoint and the collection below the committed offset, ``settle()``, and the batch's
writes in one RocksDB write batch per partition through the instance's own store code
(tables/faust_store.py FaustStore, without the changelog) into RocksDB databases opened
with the options an instance's Ledger table gets (agents/instance.py
LEDGER_ROCKSDB_OPTIONS, through faust.stores.rocksdb.RocksDBOptions), its heap trimmed
every TRIM_INTERVAL_S of wall time as an instance's is (tables/allocator.py). Output
bodies are the size an inventory transfer produces.

Stream time, not wall time: record i carries broker timestamp ``i * 1000 / rate`` ms, so
``--ttls`` TTLs of stream time pass (default 2: the queue fills during the first TTL,
then collection keeps it level for another) as fast as this process can record (about
70,000 versions/s on the 2-core machine: 6,000,000 versions in a minute and a half).
The committed offset trails the newest record by ``--commit-lag-s`` of stream time (an
instance commits every 2.8 s, Faust's default, and reads its committed offsets back
every 2 s), so about ``rate * (ttl + lag)`` versions stay live.

Sampled every tenth of a TTL: live versions, the queue's bytes (sys.getsizeof of the
deques and their items), the process RSS (/proc/self/status), RocksDB's memtables,
block cache and table readers (its own properties, summed over partitions) and its
files. "Bounded": after the first TTL (plus the commit lag) the live versions stay
within 2% of ``rate * (ttl + lag)``, and neither the queue's bytes nor the RSS, fitted
with a least-squares line, projects a growth of more than 10% of its mean per TTL.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.common import linear_fit, proc_memory_kib
from tables.allocator import TRIM_INTERVAL_S, trim_heap
from tables.faust_store import FaustStore
from tables.rocks_memory import ROCKS_MEMORY, memory_bytes
from tables.warden import Warden, WardenEntry, key_prefix

MIB = 2**20
GROWTH_PER_TTL = 0.10  # at most this share of the mean, projected over one TTL
LIVE_TOLERANCE = 0.02  # live versions within this share of rate x (ttl + commit lag)
ROCKS_PROPERTIES = {
    **ROCKS_MEMORY,
    "table_readers": "rocksdb.estimate-table-readers-mem",
    "sst_files": "rocksdb.total-sst-files-size",
}


class _Data:
    """What FaustStore reads of a Faust table's data: one RocksDB per partition, opened
    as Faust's RocksDB store opens it."""

    def __init__(self, root: Path) -> None:
        from faust.stores.rocksdb import RocksDBOptions

        from agents.instance import LEDGER_ROCKSDB_OPTIONS

        self.root = root
        self.options = RocksDBOptions(**LEDGER_ROCKSDB_OPTIONS)
        self.dbs: dict[int, object] = {}

    def _db_for_partition(self, partition: int):
        db = self.dbs.get(partition)
        if db is None:
            db = self.dbs[partition] = self.options.open(self.root / f"warden-{partition}.db")
        return db


class LocalStore(FaustStore):
    """FaustStore (reads, writes held per batch, scans) whose flush writes RocksDB only:
    no changelog, no producer."""

    def __init__(self, root: Path) -> None:
        super().__init__(app=None, table=SimpleNamespace(data=_Data(root)))

    @property
    def dbs(self) -> dict:
        return self.table.data.dbs

    def write(self) -> None:
        """FaustStore.flush's RocksDB half: one write batch per partition."""
        self.write_local()

    def rocks(self) -> dict[str, int]:
        """RocksDB's own account, summed over the partitions' databases (bytes)."""
        return memory_bytes(self.dbs.values(), ROCKS_PROPERTIES)

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


def body(i: int) -> bytes:
    """An output body of an applied inventory transfer (about 420 bytes)."""
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


def queue_bytes(warden: Warden) -> int:
    """Bytes of the collection queues: the deques (their blocks included) and the
    packed versions they hold."""
    return sum(sys.getsizeof(q) + sum(map(sys.getsizeof, q)) for q in warden._queues.values())


def bounded(samples: list[dict], *, rate: float, ttl_s: float, commit_lag_s: float) -> dict:
    """The verdict over the samples taken once a TTL (plus the commit lag) of stream
    time had passed: live versions level at rate x (ttl + lag), queue bytes and RSS not
    growing by more than GROWTH_PER_TTL of their mean per TTL (least-squares slope)."""
    expected = rate * (ttl_s + commit_lag_s)
    steady = [s for s in samples if s["stream_s"] >= ttl_s + commit_lag_s + 1]
    out: dict = {"expected_live_versions": round(expected), "steady_samples": len(steady),
                 "rule": f"after the first TTL: live versions within {LIVE_TOLERANCE:.0%} of rate x (ttl + commit lag); "
                         f"queue bytes and RSS projected to grow < {GROWTH_PER_TTL:.0%} of their mean per TTL"}
    if len(steady) < 3:
        out.update(bounded=None, why="fewer than 3 samples after the first TTL: run longer (--ttls)")
        return out
    live_ok = all(abs(s["live_versions"] - expected) <= LIVE_TOLERANCE * expected for s in steady)
    out["live_versions_level"] = live_ok
    ok = live_ok
    for key in ("queue_bytes", "rss_bytes"):
        fit = linear_fit([s["stream_s"] for s in steady], [s[key] for s in steady])
        mean = sum(s[key] for s in steady) / len(steady)
        growth = (fit[0] * ttl_s / mean) if fit and mean else 0.0
        out[f"{key}_growth_per_ttl"] = round(growth, 4)
        ok = ok and growth < GROWTH_PER_TTL
    out["bounded"] = ok
    return out


def measure(rate: float, ttl_s: float, *, ttls: float = 2.0, partitions: int = 8, batch: int = 256,
            commit_lag_s: float = 4.0, root: Path | None = None, progress=None) -> dict:
    """Record ``rate * ttl_s * ttls`` versions through the Warden; the figures (module
    docstring)."""
    total = round(rate * ttl_s * ttls)
    step_ms = 1000.0 / rate
    lag_records = round(commit_lag_s * rate)
    sample_every = max(batch, round(rate * ttl_s / 10) // batch * batch)
    own = root is None
    root = root or Path(tempfile.mkdtemp(prefix="warden-mem-"))
    store = LocalStore(root)
    warden = Warden(store, ttl_ms=round(ttl_s * 1000))
    t_base = 1_700_000_000_000
    next_offset = [0] * partitions
    samples: list[dict] = []
    gc.collect()
    start_mem = proc_memory_kib() or {}
    began = trimmed = time.perf_counter()

    def sample(i: int) -> None:
        mem = proc_memory_kib() or {}
        s = {"records": i, "stream_s": round(i * step_ms / 1000, 2), "wall_s": round(time.perf_counter() - began, 1),
             "live_versions": sum(warden.size(p) for p in range(partitions)), "queue_bytes": queue_bytes(warden),
             "rss_bytes": mem.get("VmRSS", 0) * 1024, "rss_anon_bytes": mem.get("RssAnon", 0) * 1024,
             **{f"rocks_{k}_bytes": v for k, v in store.rocks().items()}}
        samples.append(s)
        if progress:
            progress(f"warden: {i:>10,} versions recorded ({s['stream_s']:,.0f} s of stream time), "
                     f"{s['live_versions']:,} live, queue {s['queue_bytes'] / MIB:,.1f} MiB, "
                     f"memtables {s['rocks_memtables_bytes'] / MIB:,.1f} MiB, RSS {s['rss_bytes'] / MIB:,.1f} MiB")

    try:
        sample(0)
        i = 0
        while i < total:
            end = min(total, i + batch)
            # where a replay would start: commit_lag_s of stream time behind this batch
            committed_upto = max(0, i - lag_records)
            last: dict[int, int] = {}
            for j in range(i, end):
                p = j % partitions
                offset = next_offset[p]
                next_offset[p] += 1
                ts = t_base + int(j * step_ms)
                now = warden.stream_time(p, offset, ts)
                prefix = key_prefix(f"order-{j:010d}")
                warden.lookup_prefix(p, prefix, offset)
                warden.record("", WardenEntry(p, offset, now, "f" * 64, body(j)), prefix=prefix)
                last[p] = j
            for p in sorted(last, key=last.get):
                warden.checkpoint(p)
                # partition p's offsets below the global index committed_upto
                warden.collect(p, lambda q: committed_upto // partitions + (1 if q < committed_upto % partitions else 0))
            warden.settle()
            store.write()
            i = end
            if time.perf_counter() - trimmed >= TRIM_INTERVAL_S:
                trim_heap()  # as an instance's timer does
                trimmed = time.perf_counter()
            if i % sample_every == 0 or i == total:
                sample(i)
        wall = time.perf_counter() - began
        disk = du(root)
    finally:
        store.close()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    steady = samples[-1]
    live = steady["live_versions"] or 1
    verdict = bounded(samples, rate=rate, ttl_s=ttl_s, commit_lag_s=commit_lag_s)
    return {
        "rate": rate, "ttl_s": ttl_s, "ttls": ttls, "partitions": partitions, "batch": batch,
        "commit_lag_s": commit_lag_s, "records": total, "wall_s": round(wall, 1),
        "versions_per_s": round(total / wall), "entry_bytes": len(WardenEntry(0, 1, 2, "f" * 64, body(1)).encode()),
        "rocksdb_options": {"write_buffer_size": store.table.data.options.write_buffer_size,
                            "max_write_buffer_number": store.table.data.options.max_write_buffer_number,
                            "block_cache_size": store.table.data.options.block_cache_size},
        "start_rss_bytes": start_mem.get("VmRSS", 0) * 1024,
        "end": {**steady, "disk_bytes": disk,
                "queue_bytes_per_version": round(steady["queue_bytes"] / live, 1),
                "rss_growth_bytes": steady["rss_bytes"] - start_mem.get("VmRSS", 0) * 1024},
        "peak_rss_bytes": max(s["rss_bytes"] for s in samples),
        "verdict": verdict,
        "samples": samples,
    }


def summary(r: dict) -> list[str]:
    e, v = r["end"], r["verdict"]
    m = lambda n: f"{n / MIB:,.1f} MiB"  # noqa: E731
    verdict = {True: "bounded", False: "NOT bounded", None: "not judged"}[v.get("bounded")]
    return [
        f"Warden at {r['rate']:,.0f} events/s, TTL {r['ttl_s']:,.0f} s, {r['partitions']} partitions: "
        f"{r['records']:,} versions recorded ({r['ttls']} TTLs of stream time) in {r['wall_s']:,.0f} s "
        f"({r['versions_per_s']:,}/s)",
        f"live versions at the end:        {e['live_versions']:,} (expected {v['expected_live_versions']:,})",
        f"collection queue (Python heap):  {m(e['queue_bytes'])} ({e['queue_bytes_per_version']:.0f} bytes per version)",
        f"RocksDB memtables:               {m(e['rocks_memtables_bytes'])} "
        f"(the Ledger's options: {r['rocksdb_options']['write_buffer_size'] // MIB} MiB write buffer x "
        f"{r['rocksdb_options']['max_write_buffer_number']} per partition)",
        f"RocksDB block cache / readers:   {m(e['rocks_block_cache_bytes'])} / {m(e['rocks_table_readers_bytes'])}",
        f"RocksDB files:                   {m(e['disk_bytes'])} on disk ({m(e['rocks_sst_files_bytes'])} SST)",
        f"process RSS:                     {m(e['rss_bytes'])} at the end, {m(r['peak_rss_bytes'])} at most, "
        f"{m(r['start_rss_bytes'])} at the start",
        f"verdict: {verdict} ({v['rule']}; queue growth {v.get('queue_bytes_growth_per_ttl', 'n/a')}, "
        f"RSS growth {v.get('rss_bytes_growth_per_ttl', 'n/a')} per TTL)",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.warden_memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=10_000, help="events/s of stream time [10000]")
    ap.add_argument("--ttl-s", type=float, default=300, help="the Warden's TTL, seconds [300]")
    ap.add_argument("--ttls", type=float, default=2.0, help="TTLs of stream time to record [2]")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256, help="records per batch (DOCKET_BATCH_SIZE) [256]")
    ap.add_argument("--commit-lag-s", type=float, default=4.0,
                    help="stream time the committed offset trails the newest record [4]")
    ap.add_argument("--json", help="write the figures (and every sample) to this file")
    args = ap.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = measure(args.rate, args.ttl_s, ttls=args.ttls, partitions=args.partitions, batch=args.batch,
                     commit_lag_s=args.commit_lag_s, progress=progress)
    print("\n".join(summary(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["verdict"].get("bounded") else 1


if __name__ == "__main__":
    sys.exit(main())
