"""docket end to end over Kafka, open model: input records are sent on a fixed arrival
schedule and every latency is measured from the record's *intended* send time to the
moment the Clerk published its result, so a stall of the generator or of the pipeline
is never hidden (no coordinated omission).

The generator remembers each input record's intended send time by the input position
the broker acknowledged (partition, offset); the results topic is LogAppendTime, so a
result record's timestamp is when the broker appended it. latency = result record
timestamp - intended send time of its input position, both wall-clock milliseconds of
this machine (the broker runs on it). The input record's own timestamp cannot carry the
intended time: the input topic is LogAppendTime too, so the broker replaces it.

The sweep runs rates in increasing order, each for ``duration_s``, then waits for the
pipeline to answer every record of that rate. A rate whose records are not all answered
within the drain deadline is past saturation; the sweep stops there (a higher rate
would only queue more).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaProducer

from app.batching import send_batched
from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.records import partition_for
from app.settings import Settings
from bench.common import percentiles, say
from bench.http_load import scrape_all, server_stages, stream_items_per_event
from bench.profile import cpu_delta, cpu_seconds
from bench.rdkafka import partition_count, rdkafka_config
from bench.stages import stages
from bench.stages import summary as stages_summary
from chaos.workload import inventory

TARGET_P99_MS = 100.0
# How long the stack idles before the rates, with CPU measured (seconds): the base each
# rate's CPU is taken above (marginal_cpu).
IDLE_S = 10.0
# The result reader's fetches wait for 1 MiB of results or this long (ms): a latency is
# read from the result's broker timestamp, so reading late costs nothing but the drain
# check's precision, and fewer fetches cost the broker less
RESULT_FETCH_WAIT_MS = 100
# The generator wakes at most this often and sends every record that is due: a client
# producer's linger, 5 ms as Kafka's own producer's default since 4.0 (KIP-1030) and
# librdkafka's (linger.ms). Its records' latencies still run from their intended send
# times, so the wait is charged to docket. 2 ms until 2026-12-06: at 1,500 events/s on
# 8 partitions, 5 ms took the generator's CPU from 0.24-0.26 cores to 0.16-0.18 and the
# broker's from 0.55-0.62 to 0.46-0.50 (fewer, larger produce requests), in three
# alternating pairs (docs/performance.md, "The load generator's linger").
TICK_S = 0.005


def result_reader_config(settings: Settings, group_id: str) -> dict:
    """The result reader's librdkafka configuration: committed results only, read as
    they come in batches of up to 1 MiB or RESULT_FETCH_WAIT_MS; ``group_id`` is
    librdkafka's requirement only (the reader is assigned its partitions and commits
    nothing)."""
    return rdkafka_config(settings, group_id=group_id, enable_auto_commit=False, isolation_level=ISOLATION_LEVEL,
                          fetch_wait_max_ms=RESULT_FETCH_WAIT_MS, fetch_min_bytes=1 << 20,
                          enable_partition_eof=False)


@dataclass
class ResultWatch:
    """Reads the results topic from the beginning (librdkafka, bench/rdkafka.py); one
    latency sample per result, from ``intended`` (input position -> intended send
    time, ms), which the generator fills."""

    settings: Settings
    intended: dict[tuple[int, int], float] = field(default_factory=dict)
    published_ms: list[int] = field(default_factory=list)
    positions: list[tuple[int, int]] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _consumer: object | None = None  # confluent_kafka.Consumer
    _stopping: bool = False

    async def start(self) -> ResultWatch:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        topic = self.settings.results_topic
        # assigned, not subscribed: no group join, nothing committed (the group id is
        # librdkafka's requirement only)
        self._consumer = Consumer(result_reader_config(self.settings, f"{self.settings.topic_prefix}-bench-watch"))
        partitions = await partition_count(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stopping:
            # in a thread: librdkafka waits up to 0.2 s for results without the GIL
            self._take(await asyncio.to_thread(self._consumer.consume, 20_000, 0.2))

    def _take(self, messages: list) -> None:
        """Record each result message (confluent_kafka.Message) read."""
        for m in messages:
            position, published = self._result(m)
            self.positions.append(position)
            self.published_ms.append(published)

    def _result(self, message) -> tuple[tuple[int, int], int]:
        """(input position, publication time in ms) of a result message. Raises
        RuntimeError for a message that carries a read error instead."""
        if message.error() is not None:
            raise RuntimeError(f"reading {self.settings.results_topic}: {message.error()}")
        at = orjson.loads(message.value())["input"]
        return (at["partition"], at["offset"]), message.timestamp()[1]

    @property
    def latencies(self) -> list[float]:
        """ms from intended send to publication, in the order results were read. Every
        send was acknowledged (its position known) before the count it is read for."""
        return [pub - self.intended[pos] for pos, pub in zip(self.positions, self.published_ms, strict=True)]

    @property
    def count(self) -> int:
        return len(self.positions)

    async def wait_for(self, want: int, deadline_s: float) -> bool:
        deadline = time.monotonic() + deadline_s
        while self.count < want:
            if self._task.done():
                self._task.result()  # re-raise what stopped the reader
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)  # poll interval of the count condition
        return True

    async def stop(self) -> None:
        # the reader's consume call ends within 0.2 s; the consumer is closed after it
        self._stopping = True
        if self._task is not None:
            await asyncio.wait([self._task])  # its error, if any, was raised by wait_for
        if self._consumer is not None:
            await asyncio.to_thread(self._consumer.close)


async def send_at_rate(producer: AIOKafkaProducer, topic: str, rate: float, duration_s: float,
                       seed: int, intended: dict[tuple[int, int], float],
                       on_start: Callable[[float], None] | None = None) -> dict:
    """Send ``rate * duration_s`` inventory events on a fixed schedule, and put each
    one's intended send time (ms) into ``intended`` by the input position the broker
    acknowledged. Returns what the generator itself managed. Once the records are made,
    ``on_start`` is called with the schedule's start (wall clock, ms): record i is due
    ``i * 1000 / rate`` ms after it.

    The records due at a tick (every :data:`TICK_S`, or when the next record is due if
    that is later) go out as one batch per partition (routed as Kafka's default
    partitioner routes them): the generator shares the 2 cores with what it measures,
    and aiokafka's per-record send() costs several times more CPU."""
    total = max(1, round(rate * duration_s))
    partitions = len(await producer.partitions_for(topic))
    records = [(partition_for(r.key, partitions), r.key, r.value) for r in inventory(seed=seed, events=total)]
    t0_ms = time.time() * 1000 + 50  # a moment to get going
    if on_start is not None:
        on_start(t0_ms)
    interval_ms = 1000 / rate
    # sends not acknowledged yet: a long run (bench/soak.py) must not keep every one
    pending: set[asyncio.Future] = set()
    failed: list[BaseException] = []

    def settled(f: asyncio.Future) -> None:
        pending.discard(f)
        if not f.cancelled() and f.exception() is not None:
            failed.append(f.exception())

    worst_lag_ms = 0.0
    i = 0

    async def send(partition: int, due: list[tuple[bytes, bytes]], times: list[float]) -> None:
        # queued behind the partition's earlier batches without waiting for them to leave
        # (AIOKafkaProducer.send_batch would wait: the generator must keep its schedule)
        start = 0
        for fut, n in await send_batched(producer, topic, partition, due):
            mine = times[start:start + n]
            start += n

            def acknowledged(f: asyncio.Future, mine=mine) -> None:
                if not f.cancelled() and f.exception() is None:
                    base = f.result().offset  # of the batch's first record; the rest follow
                    for j, t in enumerate(mine):
                        intended[(partition, base + j)] = t
            fut.add_done_callback(acknowledged)
            fut.add_done_callback(settled)
            pending.add(fut)

    while i < total:
        now_ms = time.time() * 1000
        batches: dict[int, tuple[list, list[float]]] = {}
        while i < total and t0_ms + i * interval_ms <= now_ms:
            partition, key, value = records[i]
            due = t0_ms + i * interval_ms
            worst_lag_ms = max(worst_lag_ms, now_ms - due)
            records_for, times = batches.setdefault(partition, ([], []))
            records_for.append((key, value))
            times.append(due)
            i += 1
        for partition, (due, times) in sorted(batches.items()):
            await send(partition, due, times)
        if i < total:
            # the next record's due time, not every tick: 50 wake-ups a second at 50/s
            await asyncio.sleep(max(TICK_S, (t0_ms + i * interval_ms - time.time() * 1000) / 1000))
    await asyncio.gather(*pending)
    if failed:
        raise failed[0]
    return {"sent": total, "generator_worst_lag_ms": round(worst_lag_ms, 1),
            "send_seconds": round(time.time() - t0_ms / 1000, 2)}


def timeline(published_ms: list[int], latencies: list[float], origin_ms: float) -> list[dict]:
    """Per second of publication: results published and their p99 latency."""
    buckets: dict[int, list[float]] = defaultdict(list)
    for t, lat in zip(published_ms, latencies, strict=True):
        buckets[int((t - origin_ms) // 1000)].append(lat)
    return [{"t": s, "results_per_s": len(v), "p99_ms": percentiles(v)["p99"]} for s, v in sorted(buckets.items())]


async def sweep(settings: Settings, rates: list[int], duration_s: float, *, seed: int = 11,
                drain_s: float | None = None, warmup_s: float = 0.0, warmup_rate: int | None = None,
                metrics_urls: dict[str, str] | None = None, pids: dict[str, int] | None = None,
                idle_s: float = IDLE_S) -> dict:
    """The open-model sweep against a running stack of ``settings``' prefix. With
    ``warmup_s``, ``warmup_rate`` (default: the lowest rate) runs that long first and
    its figures are reported apart (``warmup``): the first tens of seconds of a fresh
    stack are not the steady state the rates are about. The broker's JIT compiler alone
    takes about half a core for the first ~30 s of docket's request mix (measured per
    broker thread on this machine), and the workers fill their caches.

    With ``pids``, the stack then idles for ``idle_s`` seconds (nothing sent) and the
    CPU every process uses meanwhile is reported (``idle``): what each rate costs above
    it is :func:`marginal_cpu`'s."""
    idle = None
    producer = AIOKafkaProducer(**client_kwargs(settings, "bench", "producer", bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=1,
                                max_batch_size=256 * 1024))
    await producer.start()
    watch = await ResultWatch(settings).start()
    steps: list[dict] = []
    origin_ms = time.time() * 1000
    warmup = None
    try:
        if warmup_s:
            rate = warmup_rate or rates[0]
            say(f"kafka-native: warming up at {rate:,} events/s for {warmup_s:.0f} s ...")
            sent = await send_at_rate(producer, settings.input_topic, rate, warmup_s, seed - 1, watch.intended)
            drained = await watch.wait_for(sent["sent"], max(30.0, warmup_s))
            warmup = {"rate": rate, **sent, "drained": drained, "latency_ms": percentiles(watch.latencies)}
            if not drained:
                raise RuntimeError(f"the warm-up at {rate}/s was not answered within {max(30.0, warmup_s):.0f} s")
        if pids and idle_s > 0:
            say(f"kafka-native: idle for {idle_s:.0f} s (nothing sent) ...")
            cpu_before, began = cpu_seconds(pids), time.monotonic()
            await asyncio.sleep(idle_s)  # the measurement itself: CPU while nothing is sent
            idle = {"seconds": idle_s, "cpu": cpu_delta(cpu_before, cpu_seconds(pids), time.monotonic() - began)}
            say("kafka-native: idle cores " + ", ".join(f"{r} {c['cores']:.3f}" for r, c in idle["cpu"].items()))
        for n, rate in enumerate(rates):
            before = watch.count
            say(f"kafka-native: {rate:,} events/s for {duration_s:.0f} s ...")
            step_ms = int(time.time() * 1000)
            scraped = await _scrape(metrics_urls)
            cpu_before = cpu_seconds(pids)
            step_began = time.monotonic()
            sent = await send_at_rate(producer, settings.input_topic, rate, duration_s, seed + n, watch.intended)
            began = time.monotonic()
            deadline = drain_s if drain_s is not None else max(15.0, duration_s)
            drained = await watch.wait_for(before + sent["sent"], deadline)
            cpu_used = cpu_delta(cpu_before, cpu_seconds(pids), time.monotonic() - step_began)
            got = watch.latencies[before:]
            published = watch.published_ms[before:]
            span_s = (max(published) - min(published)) / 1000 if len(published) > 1 else 0.0
            step = {
                "rate": rate, "duration_s": duration_s, **sent, "results": len(got),
                "missing": sent["sent"] - len(got), "drained": drained,
                "drain_s": round(time.monotonic() - began, 2),
                "throughput_per_s": round(len(got) / span_s, 1) if span_s else None,
                "latency_ms": percentiles(got) if drained else {**percentiles(got), "p99": None, "p999": None},
            }
            if cpu_used:
                step["cpu"] = cpu_used
                step["cpu_us_per_event"] = round(sum(c["seconds"] for c in cpu_used.values()) / sent["sent"] * 1e6, 1)
            steps.append(step)
            lat = step["latency_ms"]
            say(f"kafka-native: {rate:,}/s -> {len(got):,}/{sent['sent']:,} results, "
                f"p50 {lat['p50']} ms, p99 {lat['p99']} ms, p99.9 {lat['p999']} ms"
                + ("" if drained else f" (not all answered within {deadline:.0f} s: saturated)")
                + (f", {step['cpu_us_per_event']:,.0f} µs of CPU per event over every process" if cpu_used else ""))
            if drained:
                # where the latency went, from the broker's timestamps (bench/stages.py)
                try:
                    step["stages_ms"] = await stages(settings, step_ms, watch.intended)
                    say(f"kafka-native: {rate:,}/s stages p50/p99 ms: {stages_summary(step['stages_ms'])}")
                except Exception as exc:  # noqa: BLE001  a diagnostic: the rate's own figures stand
                    step["stages_error"] = f"{type(exc).__name__}: {exc}"
                    say(f"kafka-native: {rate:,}/s stages not read: {step['stages_error']}")
                if scraped is not None:
                    after = await _scrape(metrics_urls)
                    step["server_ms"] = server_stages(scraped, after)
                    say(f"kafka-native: {rate:,}/s server stages p50/p99 ms: {stages_summary(step['server_ms'])}")
                    step["stream_items_per_event"] = stream_items_per_event(scraped, after, sent["sent"])
                    say(f"kafka-native: {rate:,}/s stream items per event: "
                        + ", ".join(f"{role} {n:.2f}" for role, n in step["stream_items_per_event"].items()))
            if not drained:
                break
    finally:
        await watch.stop()
        await producer.stop()
    ok = [s for s in steps if s["drained"] and s["latency_ms"]["p99"] is not None]
    under = [s["rate"] for s in ok if s["latency_ms"]["p99"] < TARGET_P99_MS]
    sustained = [s["rate"] for s in ok if s["throughput_per_s"] and s["throughput_per_s"] >= 0.9 * s["rate"]]
    return {
        "max_rate_p99_under_100ms": max(under, default=None),
        "max_sustained_rate": max(sustained, default=None),
        "warmup": warmup,
        "idle": idle,
        "rates": steps,
        "not_run": [r for r in rates if r not in {s["rate"] for s in steps}],
        "timeline": timeline(watch.published_ms, watch.latencies, origin_ms),
    }


def marginal_cpu(sweep: dict, cores: int | None = None) -> list[dict]:
    """What each rate of ``sweep`` cost above the idle stack, per event: for each rate
    with CPU figures, ``{"rate", "us_per_event": {role: µs}, "total_us", "bound_per_s"}``
    where a role's µs = (its cores at the rate - its cores idle) / rate x 10^6, and
    ``bound_per_s`` = ``cores`` (default: this machine's) / the total: the rate at which
    events costing that much each would take every core of the box. At low rates each
    event travels alone (a fetch, a batch, a copy record, a transaction of its own), so
    there the figure is the cost of one isolated event, and the bound is where the box
    saturates unless events start sharing those (bench/results/bench-2026-12-02-0842.md:
    14.6 ms per isolated event over every process at 50/s, every core at 137/s on 8
    partitions). Above that the box is full and the bound only restates the rate.
    [] without an idle measurement."""
    idle = (sweep.get("idle") or {}).get("cpu") or {}
    if not idle:
        return []
    cores = cores or os.cpu_count() or 1
    out = []
    for step in sweep.get("rates") or []:
        cpu = step.get("cpu") or {}
        roles = [r for r in cpu if r in idle and cpu[r].get("cores") is not None and idle[r].get("cores") is not None]
        if not roles or not step.get("rate"):
            continue
        per = {r: round((cpu[r]["cores"] - idle[r]["cores"]) / step["rate"] * 1e6, 1) for r in roles}
        total = round(sum(per.values()), 1)
        out.append({"rate": step["rate"], "us_per_event": per, "total_us": total,
                    "bound_per_s": round(cores / total * 1e6) if total > 0 else None})
    return out


async def _scrape(metrics_urls: dict[str, str] | None) -> dict | None:
    if not metrics_urls:
        return None
    import aiohttp

    problems: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        got = await scrape_all(session, metrics_urls, problems)
    for problem in problems:
        say(f"kafka-native: {problem}")
    return got


async def hold_rate(settings: Settings, rate: int, duration_s: float, *, seed: int = 99,
                    warmup_s: float = 0.0) -> dict:
    """Send at ``rate`` for ``duration_s`` (for a profile taken meanwhile); no sweep."""
    result = await sweep(settings, [rate], duration_s, seed=seed, warmup_s=warmup_s)
    return result["rates"][0]
