"""Clerk memory over a long run: is it bounded by the events in flight, or does it
grow with history? Run: ``python bench/clerk_memory.py`` (prints its figures).

Feeds ``--events`` synthetic positions (default 1,000,000) through
agents.clerk_core.ClerkCore, round robin over ``--partitions``: each position gets
two matching copies (instance a, then instance b ``--lag`` positions behind it), with
an output body of the size the inventory domain produces for a transfer, and each
instance advertises its watermark every ``--watermark-every`` positions of a
partition (an instance advertises every 200 ms; at 1,000 events/s per partition that
is every 200). Every 100,000 positions it prints the process RSS, tracemalloc's
current and peak bytes, the positions held by the core and the rate.

``--no-watermarks`` is the control: nothing is ever collected, so memory grows with
every decided position (run it with fewer events: without watermarks each decision
also costs time proportional to the positions held).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.clerk_core import ClerkCore


def body(partition: int, offset: int) -> bytes:
    """A canonical output body of an applied transfer (about 420 bytes)."""
    return (
        b'{"domain_version":"inventory/1","duplicate_of":null,"event_name":"stock.transfer",'
        b'"idempotency_key":"order-%d-%08d","input":{"offset":%d,"partition":%d},"outcome":{"detail":"",'
        b'"entities":[{"key":"stock:wh-01:sku-%04d","state":{"quantity":%d},"version":%d},'
        b'{"key":"stock:wh-02:sku-%04d","state":{"quantity":%d},"version":%d}],"reason":null,'
        b'"status":"applied"},"stream_time":%d}' % (
            partition, offset, offset, partition, offset % 1000, offset % 977, offset // 7,
            offset % 1000, offset % 991, offset // 7, 1_700_000_000_000 + offset)
    )


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="positions to decide")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--lag", type=int, default=100, help="positions instance b is behind a, per partition")
    ap.add_argument("--watermark-every", type=int, default=200, help="positions per partition between watermarks")
    ap.add_argument("--no-watermarks", action="store_true", help="control run: never advertise a watermark")
    ap.add_argument("--report-every", type=int, default=100_000)
    ap.add_argument("--no-tracemalloc", action="store_true", help="RSS only (tracemalloc slows the run ~2x)")
    args = ap.parse_args()

    if not args.no_tracemalloc:
        tracemalloc.start()
    core = ClerkCore(("a", "b"), required=2)
    parts = args.partitions
    next_a = [0] * parts  # next offset instance a emits, per partition
    next_b = [0] * parts
    digests: dict[tuple[int, int], str] = {}  # copies of a waiting for b's (the bench's own state)
    bodies: dict[tuple[int, int], bytes] = {}
    decided = published = 0
    gc.collect()
    base_rss = rss_bytes()
    base_traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    print(f"ClerkCore: {args.events:,} positions, {parts} partitions, b {args.lag} behind a, "
          f"{'no watermarks' if args.no_watermarks else f'watermarks every {args.watermark_every}'}; "
          f"RSS at start {mib(base_rss)}")
    print(f"{'decided':>10} {'RSS':>12} {'traced now':>12} {'traced peak':>12} {'held positions':>15} {'rate':>12}")
    per_partition = [args.events // parts + (1 if q < args.events % parts else 0) for q in range(parts)]
    began = last = time.perf_counter()
    emitted = 0
    while decided < args.events:
        p = emitted % parts
        emitted += 1
        if next_a[p] < per_partition[p]:  # instance a emits its next copy
            o = next_a[p]
            b_ = body(p, o)
            d = hashlib.sha256(b_).hexdigest()
            digests[(p, o)], bodies[(p, o)] = d, b_
            published += len(core.on_copy(p, o, "a", d, b_, None))
            next_a[p] += 1
            if not args.no_watermarks and next_a[p] % args.watermark_every == 0:
                core.on_watermark(p, "a", next_a[p])
        # instance b follows, args.lag positions behind (and catches up at the end)
        if next_b[p] < next_a[p] and (next_a[p] - next_b[p] > args.lag or next_a[p] == per_partition[p]):
            o = next_b[p]
            d, b_ = digests.pop((p, o)), bodies.pop((p, o))
            published += len(core.on_copy(p, o, "b", d, b_, None))
            next_b[p] += 1
            decided += 1
            if not args.no_watermarks and next_b[p] % args.watermark_every == 0:
                core.on_watermark(p, "b", next_b[p])
            if decided % args.report_every == 0:
                gc.collect()
                now = time.perf_counter()
                cur, peak = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, 0)
                held = sum(core.pending(q) for q in range(parts))
                print(f"{decided:>10,} {mib(rss_bytes()):>12} {mib(cur - base_traced):>12} "
                      f"{mib(peak - base_traced):>12} {held:>15,} {args.report_every / (now - last):>9,.0f}/s",
                      flush=True)
                last = now
    if not args.no_watermarks:  # both instances advertise the end
        for q in range(parts):
            core.on_watermark(q, "a", next_a[q])
            core.on_watermark(q, "b", next_b[q])
    elapsed = time.perf_counter() - began
    assert published == decided == core.counts["decisions"], (published, decided, core.counts)
    print(f"done: {decided:,} decided in {elapsed:.1f} s ({decided / elapsed:,.0f}/s); "
          f"positions still held {sum(core.pending(q) for q in range(parts)):,}; counts {dict(core.counts)}")


if __name__ == "__main__":
    main()
