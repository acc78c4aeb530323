"""Events per second of one docket instance (one worker process), end to end on Kafka:
input topic -> Usher/Arbiter with RocksDB -> output topic.

It starts its own broker on a free port (unless DOCKET_KAFKA_BOOTSTRAP is set),
pre-loads N inventory events, starts `docket instance --id a`, and times from the
instance's first output to its N-th. Prints progress and the figure; stops what it
started. Run: `.venv/bin/python bench/instance_throughput.py --events 50000`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.settings import load
from app.topics import create_topics
from chaos.workload import inventory, produce
from launcher import broker as launcher


async def count_outputs(bootstrap: str, topic: str, want: int, deadline_s: float) -> tuple[float, float]:
    """(time of first output, time of the want-th) by a consumer reading the output topic."""
    consumer = AIOKafkaConsumer(topic, **client_kwargs(None, "bench", "consumer", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, fetch_max_bytes=16 * 2**20,
                                isolation_level=ISOLATION_LEVEL))
    await consumer.start()
    seen, first, last_report = 0, None, 0
    deadline = time.monotonic() + deadline_s
    try:
        while seen < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen} of {want} outputs within {deadline_s} s")
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for records in batch.values():
                for r in records:
                    if b'"watermark"' not in r.value[:16]:
                        seen += 1
            if seen and first is None:
                first = time.monotonic()
            if seen - last_report >= want // 10:
                print(f"  {seen:>9,} / {want:,} outputs", file=sys.stderr, flush=True)
                last_report = seen
        return first, time.monotonic()
    finally:
        await consumer.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=None, help="DOCKET_BATCH_SIZE for the instance")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="docket-bench-"))
    os.environ.update(DOCKET_TOPIC_PREFIX=f"bench{int(time.time())}", DOCKET_PARTITIONS=str(args.partitions),
                      DOCKET_DATA_ROOT=str(work / "data"))
    if args.batch_size:
        os.environ["DOCKET_BATCH_SIZE"] = str(args.batch_size)
    own_broker = not os.environ.get("DOCKET_KAFKA_BOOTSTRAP")
    settings = load()
    if own_broker:
        settings = dataclasses.replace(settings, broker_dir=work / "broker", broker_port=launcher.free_port())
        print("starting a broker ...", file=sys.stderr, flush=True)
        handle = launcher.start_broker(settings, timeout=90)
        settings = dataclasses.replace(settings, kafka_bootstrap=handle.bootstrap)
        os.environ["DOCKET_KAFKA_BOOTSTRAP"] = handle.bootstrap
    proc = None
    try:
        await create_topics(settings)
        print(f"producing {args.events:,} events ...", file=sys.stderr, flush=True)
        await produce(settings.kafka_bootstrap, settings.input_topic, inventory(seed=1, events=args.events))
        log = open(work / "instance.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", "from app.cli import main; main()", "instance", "--id", "a"],
                                stdout=log, stderr=subprocess.STDOUT)
        first, last = await count_outputs(settings.kafka_bootstrap, settings.output_topic("a"), args.events,
                                          deadline_s=max(300, args.events / 100))
        rate = (args.events - 1) / (last - first) if last > first else float("nan")
        print(f"instance throughput: {rate:,.0f} events/s ({args.events:,} events, {last - first:.1f} s "
              f"from first to last output, {args.partitions} partitions, one worker)")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if own_broker:
            launcher.stop_broker(settings.broker_dir)


if __name__ == "__main__":
    asyncio.run(main())
