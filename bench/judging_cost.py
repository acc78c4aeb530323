"""docket's own CPU per event, without Kafka, Faust or RocksDB: what the instance's
Usher and Arbiter and the Clerk's decision cost when nothing else runs. Run:
``.venv/bin/python -m bench.judging_cost`` (about 10 s; prints its figures).

The events are the benchmarks' inventory workload (chaos.workload.inventory, the
records `make bench` sends), routed to ``--partitions`` partitions by murmur2 and cut
into per-partition batches of ``--batch`` records (20: what an instance's batch holds
at about 10,000 events/s on 8 partitions). Three steps, each timed alone with the
process's CPU clock (``time.process_time``), the best of ``--repeat`` runs:

1. **instance**: ``Usher.process`` of every batch (admission, the Warden, the domain's
   evaluation, the table writes), on chaos/replay.py's ``IndexedMemoryStore`` (a dict
   with an ordered key index per partition, the replay's stand-in for RocksDB, whose
   reads and writes it leaves out), then ``records.seal_batch``: the copy records.
2. **Clerk**: what agents/clerk.py's agent does with the copy records of instances a and
   b (parse each, ``copy_body``, the digest check) and ``ClerkCore.on_copies`` /
   ``on_watermark``: the decisions, the result bodies.

In a worker the same work runs among Faust's, mode's and aiokafka's: compare these
figures with the per-process CPU per event of `make bench` at its highest rate (the
README, Performance) to see docket's own share of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

import app.domains  # noqa: E402,F401  registers the built-in domains
from agents.clerk import copy_body  # noqa: E402
from agents.clerk_core import ClerkCore  # noqa: E402
from agents.usher import Usher  # noqa: E402
from app.canonical import digest  # noqa: E402
from app.records import InputRecord, partition_for, seal_batch  # noqa: E402
from app.registry import registry  # noqa: E402
from chaos.replay import IndexedMemoryStore  # noqa: E402
from chaos.workload import inventory  # noqa: E402
from tables.ledger import Ledger  # noqa: E402
from tables.registrar import Registrar  # noqa: E402
from tables.warden import Warden  # noqa: E402

TTL_MS = 300_000  # DOCKET_IDEMPOTENCY_TTL_MS's default


def batches(events: int, partitions: int, batch: int) -> list[list[InputRecord]]:
    """The workload as per-partition batches, in the order an instance would take them
    (round robin over the partitions), broker timestamps 1 ms apart."""
    by_partition: dict[int, list[InputRecord]] = {}
    for i, rec in enumerate(inventory(7, events)):
        p = partition_for(rec.key, partitions)
        rs = by_partition.setdefault(p, [])
        rs.append(InputRecord(p, len(rs), 1_000_000 + i, rec.key, rec.value))
    cut = {p: [rs[i:i + batch] for i in range(0, len(rs), batch)] for p, rs in by_partition.items()}
    out = []
    for n in range(max(len(c) for c in cut.values())):
        out.extend(c[n] for p, c in sorted(cut.items()) if n < len(c))
    return out


def judge(work: list[list[InputRecord]], partitions: int, instance: str) -> tuple[float, list[tuple[int, bytes]]]:
    """(CPU seconds, the copy records as (partition, value)) of one instance."""
    store = IndexedMemoryStore()
    usher = Usher(instance, registry.get("inventory"), Registrar(Ledger(store), 1000), Warden(store, TTL_MS),
                  partitions)
    sealed = []
    began = time.process_time()
    for records in work:
        outputs = usher.process(records, lambda p: 0)
        p = records[0].partition
        sealed.extend((p, value) for value in seal_batch(instance, p, records[-1].offset + 1, outputs))
    return time.process_time() - began, sealed


def decide(copies: list[tuple[str, int, bytes]]) -> tuple[float, int]:
    """(CPU seconds, results published) of the Clerk over (instance, partition, copy
    record) in the order it reads them."""
    core = ClerkCore(("a", "b"), 2)
    published = 0
    began = time.process_time()
    for instance, p, value in copies:
        data = orjson.loads(value)
        parsed = []
        for copy in data["copies"]:
            body, offset = copy_body(copy)
            parsed.append((offset, digest(body), body, None))
        published += sum(1 for a in core.on_copies(p, instance, parsed) if hasattr(a, "entities"))
        published += sum(1 for a in core.on_watermark(p, instance, data["watermark"]) if hasattr(a, "entities"))
    return time.process_time() - began, published


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=20, help="records per batch [20]")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; the best counts [3]")
    args = parser.parse_args(argv)
    if args.events < 1 or args.partitions < 1 or args.batch < 1 or args.repeat < 1:
        parser.error("--events, --partitions, --batch and --repeat must be at least 1")
    work = batches(args.events, args.partitions, args.batch)
    print(f"{args.events:,} inventory events, {args.partitions} partitions, batches of {args.batch} "
          f"({len(work):,} batches)", flush=True)
    best_judge, best_decide = float("inf"), float("inf")
    for run in range(1, args.repeat + 1):
        spent_a, sealed_a = judge(work, args.partitions, "a")
        _spent_b, sealed_b = judge(work, args.partitions, "b")
        # the Clerk reads a's copy record of a batch, then b's
        copies = [c for pair in zip(sealed_a, sealed_b) for c in (("a", *pair[0]), ("b", *pair[1]))]
        spent_c, published = decide(copies)
        if published != args.events:
            raise SystemExit(f"the Clerk published {published:,} results of {args.events:,} events: "
                             "the two instances' copies should agree on every one")
        best_judge, best_decide = min(best_judge, spent_a), min(best_decide, spent_c)
        print(f"  run {run}: instance {spent_a / args.events * 1e6:.1f} µs/event, Clerk "
              f"{spent_c / args.events * 1e6:.1f} µs/event", flush=True)
    print(f"docket's own CPU per event (best of {args.repeat}): instance {best_judge / args.events * 1e6:.1f} µs "
          f"(Usher, Arbiter, copy records; no RocksDB), Clerk {best_decide / args.events * 1e6:.1f} µs "
          "(copy records read, digests checked, decided)")


if __name__ == "__main__":
    main()
