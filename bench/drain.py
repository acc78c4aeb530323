"""How fast docket works off a backlog, and the CPU each process spends per event.

A closed-model throughput figure, `make bench`'s fifth measurement (bench/run.py
drain_backlog; the open-model latency sweep is bench/kafka_native.py) and a quick one
for the development loop: instances a and b and the Clerk start on a fresh
prefix (bench/stack.py), ``--events`` inventory events are produced as fast as the
producer can, and the run lasts until every event has its result. It prints results/s
between the first and the last result, and the CPU seconds every process used (the
kernel's account, /proc) divided by the events: microseconds of CPU per event.

    python -m bench.drain --events 50000 [--bootstrap 127.0.0.1:9092] [--profile]

With ``--profile``, py-spy records instance a and the Clerk while they work (collapsed
stacks in the work directory, the top frames printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.settings import Settings
from bench import profile
from bench.common import positive_int, say
from bench.stack import BenchStack
from chaos.workload import inventory, produce
from launcher.broker import running_pid


async def count_results(settings: Settings, want: int, deadline_s: float) -> tuple[float, float, int]:
    """(broker time of the first result, of the last, results read) in ms."""
    consumer = AIOKafkaConsumer(settings.results_topic, **client_kwargs(settings, "bench", "consumer", bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                                isolation_level=ISOLATION_LEVEL, fetch_max_bytes=32 * 2**20))
    await consumer.start()
    seen, first, last = 0, None, None
    deadline = time.monotonic() + deadline_s
    next_report = time.monotonic() + 5
    try:
        while seen < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                for r in records:
                    first = r.timestamp if first is None else min(first, r.timestamp)
                    last = r.timestamp if last is None else max(last, r.timestamp)
                seen += len(records)
            if time.monotonic() > next_report:
                say(f"drain: {seen:,} of {want:,} results")
                next_report += 5
    finally:
        await consumer.stop()
    return first or 0, last or 0, seen


def instance_batches(metrics_url: str) -> float | None:
    """Mean events per batch an instance took, from its /metrics."""
    import urllib.request

    try:
        text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    except OSError:
        return None
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("docket_instance_batch_events_")}
    count = values.get("docket_instance_batch_events_count")
    return round(values["docket_instance_batch_events_sum"] / count, 1) if count else None


async def measure(settings: Settings, work: Path, events: int, with_profile: bool = False,
                  deadline_s: float = 600.0) -> dict:
    records = list(inventory(seed=5, events=events))
    async with BenchStack(settings, work, name="drain", api=False) as stack:
        pids = dict(stack.pids)
        broker = running_pid(settings.broker_dir)
        if broker is not None:
            pids["broker"] = broker
        before = {role: profile.cpu_times(pid) for role, pid in pids.items()}
        began = time.monotonic()
        counter = asyncio.create_task(count_results(stack.settings, events, deadline_s))
        prof = None
        if with_profile:
            prof = asyncio.create_task(profile.record({"instance": stack.pids["a"], "clerk": stack.pids["clerk"]},
                                                      15.0, work / "profile"))
        await produce(stack.settings.kafka_bootstrap, stack.settings.input_topic, records, chunk=5000)
        produced = time.monotonic() - began
        say(f"drain: {events:,} events produced in {produced:.1f} s")
        first, last, seen = await counter
        after = {role: profile.cpu_times(pid) for role, pid in pids.items()}
        batches = instance_batches(stack.metrics_urls["a"])
        if prof is not None:
            files, _cpu = await prof
            for role, path in files.items():
                top = profile.top(path.read_text(), events, n=25)
                say(f"profile {role}: {path} (sampled a part of the run; us per event are of all events)")
                for kind in ("self", "total"):
                    print(f"  {role} by {kind}:")
                    for row in top[kind]:
                        print(f"    {row['share']:7.1%}  {row['function']}")
    cpu = {role: round(sum(after[role]) - sum(before[role]), 2) for role in pids}
    out = {"events": events, "instance_batch_mean": batches, **figures(seen, first, last, cpu)}
    rate = "no rate (the results' broker timestamps span no time)" if out["results_per_s"] is None \
        else f"{out['results_per_s']:,} results/s"
    say(f"drain: {seen:,} results in {out['seconds']} s = {rate}; CPU per event "
        + ", ".join(f"{r} {v} us" for r, v in out["cpu_us_per_event"].items())
        + f"; total {out['cpu_us_per_event_total']} us; instance a's batches {batches} events on average")
    return out


def figures(seen: int, first_ms: int, last_ms: int, cpu_s: dict[str, float]) -> dict:
    """The drain's figures from ``seen`` results whose broker timestamps run from
    ``first_ms`` to ``last_ms`` and each process's CPU seconds: ``results_per_s`` over
    that span (None when it is no span: no result, or all in one millisecond),
    ``seconds``, and µs of CPU per result, per process and in all."""
    span_s = (last_ms - first_ms) / 1000 if last_ms > first_ms else None
    return {"results": seen, "seconds": None if span_s is None else round(span_s, 3),
            "results_per_s": round(seen / span_s) if span_s else None,
            "cpu_s": cpu_s, "cpu_us_per_event": {r: round(c / max(seen, 1) * 1e6, 1) for r, c in cpu_s.items()},
            "cpu_us_per_event_total": round(sum(cpu_s.values()) / max(seen, 1) * 1e6, 1)}


def main() -> None:
    import dataclasses

    from app.settings import load
    from bench.common import own_broker

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=positive_int, default=50_000, help="events in the backlog [50,000]")
    ap.add_argument("--bootstrap", help="a running broker (default: start one)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="docket-drain-"))
    out = None
    try:
        if args.bootstrap:
            settings = dataclasses.replace(load(), kafka_bootstrap=args.bootstrap,
                                           broker_dir=Path(os.environ.get("DOCKET_BROKER_DIR", "var/broker")))
            out = asyncio.run(measure(settings, work, args.events, args.profile))
        else:
            with own_broker(work) as settings:
                out = asyncio.run(measure(settings, work, args.events, args.profile))
    finally:
        complete = out is not None and out["results"] == args.events
        if args.profile or not complete:  # what went wrong is in the stack's logs
            print(f"profiles and logs kept in {work}")
        else:  # the stack's RocksDB directories and logs: about 20 MB a run
            shutil.rmtree(work, ignore_errors=True)
    if not complete:
        sys.exit(f"drain: only {out['results']:,} of {args.events:,} events got their result within the deadline, "
                 f"so the figures above are not docket's rate: see the workers' logs in {work}")


if __name__ == "__main__":
    main()
