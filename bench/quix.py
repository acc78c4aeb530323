"""Quix Streams: events per second of a plain Quix Streams stateful app (librdkafka,
through confluent-kafka) doing docket's inventory work per event - read the stock it
touches from Quix's RocksDB state, decide with the inventory domain, write the stock
back (RocksDB and its changelog topic, at Quix's checkpoints), emit one result record -
on docket's input and docket's broker. A second floor beside Faust's: another Python
stream processor, on another Kafka client, doing the same arithmetic per event.

N inventory events (:func:`chaos.workload.inventory`, seed 1) are pre-loaded into a
fresh topic of DOCKET_PARTITIONS partitions, then one app of :mod:`bench.quix_app`
starts (its RocksDB under ``work``). A consumer counts the app's output records; the
rate is N over the span of their timestamps (the output topic is LogAppendTime: the
broker stamps each record as it appends it), so the app's start-up and the counter's
polling are outside the clock. ``observed_seconds`` is the counter's own view, first
to N-th record seen.

The CPU the app used per event is the kernel's account (/proc/<pid>/stat) from the
last look before its first output record was seen to the look that saw the N-th:
its start-up (imports, topic set-up, group join, state recovery) is left out, and
``cpu_total_s`` is everything it used up to then, start-up included.

Run alone: ``.venv/bin/python -m bench.quix [--smoke]``.
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
from bench.kafka_ceiling import (BenchError, create_topic, delete_topics, standalone, stop_process, tail,
                                 topic_name, wait_for_topic)
from bench.profile import cpu_times
from bench.quix_app import changelog_topic
from chaos.workload import inventory, produce
from launcher import broker as launcher

FULL_EVENTS = 100_000
SMOKE_EVENTS = 1_000
STARTUP_S = 120.0  # app boot, topic set-up and group join, on a loaded machine
ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(times: tuple[float, float]) -> float:
    """user + system seconds of a :func:`bench.profile.cpu_times` pair."""
    return times[0] + times[1]


def figures(events: int, first_ts: int | None, last_ts: int | None,
            cpu_before: tuple[float, float] | None, cpu_after: tuple[float, float] | None) -> dict:
    """events/s over the span of the output records' timestamps (ms), and the CPU
    (user, system seconds before and after the events) per event. None where the
    span or the CPU is unknown or empty."""
    seconds = (last_ts - first_ts) / 1000 if first_ts is not None and last_ts is not None else None
    out = {"events": events,
           "events_per_s": round(events / seconds, 1) if seconds and seconds > 0 else None,
           "seconds": round(seconds, 3) if seconds is not None else None,
           "cpu_user_s": None, "cpu_system_s": None, "cpu_us_per_event": None}
    if cpu_before is not None and cpu_after is not None and events > 0:
        user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
        out.update(cpu_user_s=round(user, 3), cpu_system_s=round(system, 3),
                   cpu_us_per_event=round((user + system) / events * 1e6, 1))
    return out


async def count_output(bootstrap: str, topic: str, want: int, deadline_s: float,
                       app: asyncio.subprocess.Process, log: Path) -> dict:
    """Read ``topic`` from the start until ``want`` records: their count, timestamp span,
    the counter's observed span, and the app's CPU times at the last look before the
    first record and at the look that saw the ``want``-th. BenchError if the app exits
    or time runs out."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, **client_kwargs(None, "bench", "consumer", bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=50))
    await asyncio.wait_for(consumer.start(), 30)
    seen, first_ts, last_ts, first_seen, reported = 0, None, None, None, 0
    cpu_before = cpu_after = None
    deadline = time.monotonic() + deadline_s
    try:
        while seen < want:
            if app.returncode is not None:
                raise BenchError(f"the Quix app exited (code {app.returncode}) after {seen:,} of "
                                 f"{want:,} output records; its log ends with:\n{tail(log.read_text(errors='replace'))}")
            if time.monotonic() > deadline:
                raise BenchError(f"only {seen:,} of {want:,} output records within {deadline_s:.0f} s; "
                                 f"the app's log ends with:\n{tail(log.read_text(errors='replace'))}")
            if not seen:
                cpu_before = cpu_times(app.pid)
            batch = await consumer.getmany(timeout_ms=50 if not seen else 200, max_records=20_000)
            for records in batch.values():
                for record in records:
                    first_ts = record.timestamp if first_ts is None else min(first_ts, record.timestamp)
                    last_ts = record.timestamp if last_ts is None else max(last_ts, record.timestamp)
                seen += len(records)
            if seen >= want:
                cpu_after = cpu_times(app.pid)
            if seen and first_seen is None:
                first_seen = time.monotonic()
            if seen - reported >= max(1, want // 5):
                say(f"quix: {seen:,} / {want:,} output records")
                reported = seen
        return {"records": seen, "first_ts": first_ts, "last_ts": last_ts,
                "observed_seconds": time.monotonic() - first_seen,
                "cpu_before": cpu_before, "cpu_after": cpu_after}
    finally:
        await consumer.stop()


async def topic_records(bootstrap: str, topic: str) -> int | None:
    """Records in ``topic`` (the sum of its partitions' end offsets), None if unknown."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from app.kafka_admin import connect_admin

    try:
        admin = await connect_admin(bootstrap, 30)
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        tps = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        if described["error_code"] != 0 or not tps:
            return None
        consumer = AIOKafkaConsumer(**client_kwargs(None, "bench", "consumer", bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False))
        await asyncio.wait_for(consumer.start(), 30)
        try:
            return sum((await asyncio.wait_for(consumer.end_offsets(tps), 30)).values())
        finally:
            await consumer.stop()
    except Exception:  # noqa: BLE001  an extra figure: its absence fails nothing
        return None


async def started(app: asyncio.subprocess.Process, ready, log: Path) -> None:
    """Await ``ready`` (the app's output topic appearing); BenchError with the app's log
    if it fails, or as soon as the app exits first."""
    waiting = asyncio.ensure_future(ready)
    exited = asyncio.ensure_future(app.wait())
    try:
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            raise BenchError(f"the Quix app exited (code {app.returncode}) before it created its output topic; "
                             f"its log ends with:\n{tail(log.read_text(errors='replace'))}")
        try:
            waiting.result()
        except BenchError as exc:
            raise BenchError(f"{exc}; the app's log ends with:\n{tail(log.read_text(errors='replace'))}") from None
    finally:
        for task in (waiting, exited):
            task.cancel()
        await asyncio.gather(waiting, exited, return_exceptions=True)


async def measure(settings: Settings, work: Path, *, smoke: bool = False, events: int | None = None) -> dict:
    """Events/s and CPU per event of a plain Quix Streams stateful app, N pre-loaded events."""
    work.mkdir(parents=True, exist_ok=True)
    n = events or (SMOKE_EVENTS if smoke else FULL_EVENTS)
    bootstrap = settings.kafka_bootstrap
    source = topic_name("qx")
    output = f"{source}-out"
    group = f"{source}-app"
    changelog = changelog_topic(group, source)
    state_dir = work / f"quix-state-{group}"
    app = None
    try:
        await create_topic(bootstrap, source, settings.partitions)
        say(f"quix: pre-loading {n:,} inventory events into {source} ...")
        with quiet("aiokafka.producer.sender"):  # "NotLeaderForPartition, retrying" on a new topic
            await produce(bootstrap, source, inventory(seed=1, events=n))
        log = work / "quix-app.log"
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "DOCKET_KAFKA_BOOTSTRAP": bootstrap,
               "DOCKET_PARTITIONS": str(settings.partitions),
               "DOCKET_LOG_LEVEL": settings.log_level,
               "BENCH_QUIX_GROUP": group,
               "BENCH_QUIX_INPUT": source,
               "BENCH_QUIX_OUTPUT": output,
               "BENCH_QUIX_STATE_DIR": str(state_dir)}
        say(f"quix: starting a Quix Streams app (group {group}) ...")
        began = time.monotonic()
        with log.open("wb") as out:
            app = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.quix_app", cwd=ROOT, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=launcher.set_parent_death_signal)
        await started(app, wait_for_topic(bootstrap, output, settings.partitions, STARTUP_S), log)
        counted = await count_output(bootstrap, output, n, STARTUP_S + 60 + n / 300, app, log)
        total_s = time.monotonic() - began
        cpu_total_s = cpu_seconds(counted["cpu_after"])
    finally:
        if app is not None:
            await stop_process(app)  # SIGTERM: Quix commits its last checkpoint
        changelog_records = await topic_records(bootstrap, changelog)
        await delete_topics(bootstrap, [source, output, changelog])
        shutil.rmtree(state_dir, ignore_errors=True)
    result = {
        **figures(n, counted["first_ts"], counted["last_ts"], counted["cpu_before"], counted["cpu_after"]),
        "observed_seconds": round(counted["observed_seconds"], 3),
        "app_seconds": round(total_s, 3),
        "cpu_total_s": round(cpu_total_s, 3),
        "partitions": settings.partitions,
        "apps": 1,
        "output_records": counted["records"],
        # Quix writes the state at its checkpoints, the latest value of each key once
        "changelog_records": changelog_records,
        "quixstreams": quix_version(),
    }
    say(f"quix: {_fmt(result['events_per_s'])} events/s over {result['seconds']} s, "
        f"{_fmt(result['cpu_us_per_event'])} µs of CPU per event")
    return result


def quix_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("quixstreams")
    except PackageNotFoundError:
        return None


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,}"


if __name__ == "__main__":
    standalone("quix", measure)
