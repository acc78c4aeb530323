"""Faust's floor: events per second of a plain Faust worker doing the least a stateful
stream processor does per event - read it, read and write a RocksDB-backed table
(which sends one changelog record) - on docket's input and docket's Faust settings.
Whatever docket adds (envelope checks, the Warden, the evaluator, output copies) costs
on top of this.

N inventory events (:func:`chaos.workload.inventory`, seed 1) are pre-loaded into a
fresh topic of DOCKET_PARTITIONS partitions, then one worker of
:mod:`bench.faust_floor_app` starts (its RocksDB under ``work``). A consumer counts
the table's changelog records; the rate is N over the span of their timestamps
(stamped by the worker's producer when it sends each update), so the worker's
start-up and the counter's polling are outside the clock. ``observed_seconds`` is
the counter's own view, first to N-th record seen.

Run alone: ``.venv/bin/python -m bench.faust_floor [--smoke]``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

from app.kafka_config import client_kwargs
from app.kafka_admin import quiet
from app.settings import Settings
from bench.common import say
from bench.faust_floor_app import KEEP_SPINNER, changelog_topic
from bench.kafka_ceiling import (BenchError, tail, create_topic, delete_topics, standalone, stop_process,
                                 topic_name, wait_for_topic)
from chaos.workload import inventory, produce
from launcher import broker as launcher

FULL_EVENTS = 50_000
SMOKE_EVENTS = 2_000
STARTUP_S = 120.0  # worker boot, group join and changelog creation, on a loaded machine
ROOT = Path(__file__).resolve().parent.parent


async def count_changelog(bootstrap: str, topic: str, want: int, deadline_s: float,
                          worker: asyncio.subprocess.Process, log: Path) -> dict:
    """Read ``topic`` from the start until ``want`` records: their count, timestamp
    span and the counter's observed span. BenchError if the worker exits or time runs out."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, **client_kwargs(None, "bench", "consumer", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=50))
    await asyncio.wait_for(consumer.start(), 30)
    seen, first_ts, last_ts, first_seen, reported = 0, None, None, None, 0
    deadline = time.monotonic() + deadline_s
    try:
        while seen < want:
            if worker.returncode is not None:
                raise BenchError(f"the Faust worker exited (code {worker.returncode}) after {seen:,} of "
                                 f"{want:,} table updates; its log ends with:\n{tail(log.read_text(errors='replace'))}")
            if time.monotonic() > deadline:
                raise BenchError(f"only {seen:,} of {want:,} table updates within {deadline_s:.0f} s; "
                                 f"the worker's log ends with:\n{tail(log.read_text(errors='replace'))}")
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for records in batch.values():
                for record in records:
                    first_ts = record.timestamp if first_ts is None else min(first_ts, record.timestamp)
                    last_ts = record.timestamp if last_ts is None else max(last_ts, record.timestamp)
                seen += len(records)
            if seen and first_seen is None:
                first_seen = time.monotonic()
            if seen - reported >= max(1, want // 5):
                say(f"faust_floor: {seen:,} / {want:,} table updates")
                reported = seen
        return {"records": seen, "first_ts": first_ts, "last_ts": last_ts,
                "observed_seconds": time.monotonic() - first_seen}
    finally:
        await consumer.stop()


async def measure(settings: Settings, work: Path, *, smoke: bool = False) -> dict:
    """Events/s of a plain one-agent Faust worker with a RocksDB table, N pre-loaded events."""
    work.mkdir(parents=True, exist_ok=True)
    n = SMOKE_EVENTS if smoke else FULL_EVENTS
    bootstrap = settings.kafka_bootstrap
    topic = topic_name("ff")
    app_id = f"{topic}-app"
    changelog = changelog_topic(app_id)
    # Faust names its RocksDB files by table, not app: one directory per call, removed after
    data_dir = work / f"faust-data-{app_id}"
    worker = None
    try:
        await create_topic(bootstrap, topic, settings.partitions)
        say(f"faust_floor: pre-loading {n:,} inventory events into {topic} ...")
        with quiet("aiokafka.producer.sender"):  # "NotLeaderForPartition, retrying" on a new topic
            await produce(bootstrap, topic, inventory(seed=1, events=n))
        log = work / "faust-worker.log"
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "DOCKET_KAFKA_BOOTSTRAP": bootstrap,
               "DOCKET_PARTITIONS": str(settings.partitions),
               "DOCKET_FETCH_MAX_WAIT_MS": str(settings.fetch_max_wait_ms),
               "DOCKET_FETCH_MIN_BYTES": str(settings.fetch_min_bytes),
               "DOCKET_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
               "DOCKET_LOG_LEVEL": settings.log_level,
               "BENCH_FAUST_APP_ID": app_id,
               "BENCH_FAUST_TOPIC": topic,
               "BENCH_FAUST_DATA_DIR": str(data_dir)}
        say(f"faust_floor: starting a Faust worker (app {app_id}) ...")
        began = time.monotonic()
        with log.open("wb") as out:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.faust_floor_app", cwd=ROOT, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=launcher.set_parent_death_signal)
        try:
            await wait_for_topic(bootstrap, changelog, settings.partitions, STARTUP_S)
        except BenchError as exc:
            raise BenchError(f"{exc}; the worker's log ends with:\n{tail(log.read_text(errors='replace'))}") from None
        counted = await count_changelog(bootstrap, changelog, n, STARTUP_S + 60 + n / 300, worker, log)
        total_s = time.monotonic() - began
    finally:
        if worker is not None:
            await stop_process(worker)
        await delete_topics(bootstrap, [topic, changelog])  # no leader topic: topic_disable_leader
        shutil.rmtree(data_dir, ignore_errors=True)
    seconds = (counted["last_ts"] - counted["first_ts"]) / 1000
    result = {
        "events": n,
        "events_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 3),
        "observed_seconds": round(counted["observed_seconds"], 3),
        "worker_seconds": round(total_s, 3),
        "partitions": settings.partitions,
        "workers": 1,
        "faust_spinner": KEEP_SPINNER,  # see bench.faust_floor_app.KEEP_SPINNER
        "table_updates": counted["records"],
    }
    say(f"faust_floor: {result['events_per_s']:,} events/s over {result['seconds']} s")
    return result


if __name__ == "__main__":
    standalone("faust_floor", measure)
