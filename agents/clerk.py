"""The Clerk as a Faust app: reads every instance's output topic, publishes agreed
results and reports divergences. Decisions: agents/clerk_core.py. Spec:
specs/clerk.allium.

Exactly one result per input event, across Clerk crashes, without transactions:
- a copy is acknowledged only once its position is final (decided or diverged), so
  committed offsets never pass a copy the Clerk still needs;
- Faust flushes the producer before it commits offsets, so every decision whose
  copies are committed is already on the results topic;
- copies after the committed offsets are read again after a crash, and positions
  that were already decided are recognised from the ``clerk`` state embedded in the
  newest readable result and divergence records (read back when a partition is first
  seen; a record someone else wrote there is skipped with a warning, TailReader).
Results are produced by one producer per Clerk worker (aiokafka keeps one request
in flight per partition, so records land in order), and partitions move between
Clerk workers only through a rebalance, which drains the old owner first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from pathlib import Path

import click
import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agents.clerk_core import (
    TAIL_LOOKBACK_BYTES,
    TAIL_LOOKBACK_OFFSETS,
    ClerkCore,
    Publish,
    TailScan,
    entity_record,
    newest_state,
    scan_tail,
)
from agents.instance import STAGE_BUCKETS, HistogramBatch, SideConsumer, check_topics, faust_settings, run_worker
from agents.intake import OrderedAcks, guard_delivery, records_of
from agents.intake import install as install_batch_intake
from app.batching import send_batched
from app.canonical import canonical_trusted, digest
from app.kafka_admin import ISOLATION_LEVEL
from app.records import UnreadableRecord, unreadable_reason
from app.settings import Settings, load
from app.stack import wait_for_topics_cli

log = logging.getLogger("docket.clerk")


# Unreadable records named one by one per look-back, at most; the rest in one line.
SKIPPED_LOGGED = 10
READ_DEADLINE_S = 30  # for the broker to hand over a range of the look-back


SEED_FETCH_WAIT_MS = 20  # the tail reader's fetch_max_wait_ms


class TailReader:
    """Reads back the end of a partition of the results and divergences topics for the
    restart seed (specs/clerk.allium, ClerkSeedsFromNewestReadableRecords), with one
    consumer of its own that the app's shutdown stops (:class:`SideConsumer`)."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        self.settings = settings
        # A fetch of an assigned partition holds the connection for fetch_max_wait_ms
        # (aiokafka: 500) when there is nothing new, and an offsets request queues
        # behind it: with the default, seeding took about 2 s per partition, one
        # partition after another, after every Clerk start.
        self.side = SideConsumer(app, bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                 isolation_level=ISOLATION_LEVEL, fetch_max_wait_ms=SEED_FETCH_WAIT_MS)

    async def seed(self, core: ClerkCore, partition: int) -> None:
        """Seed ``partition`` in ``core``: the newest readable Clerk state of the two
        topics' ends, and the positions readable results after it name (TailScan)."""
        s = self.settings
        async with self.side.use() as c:
            input_end = await self._input_end(c, partition)
            scans = [await self._scan(c, TailScan(s.results_topic, partition, results=True), input_end),
                     await self._scan(c, TailScan(s.divergences_topic, partition, results=False), input_end)]
        for scan in scans:
            report(scan)
        core.restore(partition, newest_state(scans), [o for scan in scans for o in scan.published])

    async def _input_end(self, c: AIOKafkaConsumer, partition: int) -> int | None:
        """The input partition's end offset (its last stable offset, read_committed): no
        position at or beyond it can be final, so no state may claim one. None when the
        input topic is missing (the Clerk needs only the output topics to run)."""
        if self.settings.input_topic not in await c.topics():
            log.warning("topic %s does not exist: the Clerk's restored state of partition %d is not checked against "
                        "the input's end; run `docket topics create`", self.settings.input_topic, partition)
            return None
        source = TopicPartition(self.settings.input_topic, partition)
        return (await c.end_offsets([source]))[source]

    async def _scan(self, c: AIOKafkaConsumer, scan: TailScan, input_end: int | None) -> TailScan:
        tp = TopicPartition(scan.topic, scan.partition)
        # the offsets first, while nothing is assigned (no fetch for them to wait behind)
        begin = (await c.beginning_offsets([tp]))[tp]
        end = (await c.end_offsets([tp]))[tp]
        c.assign([tp])

        async def read(lo: int, hi: int):
            c.seek(tp, lo)
            deadline = time.monotonic() + READ_DEADLINE_S
            while await c.position(tp) < hi:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"could not read {tp.topic} partition {tp.partition} from offset {lo} to {hi} within "
                        f"{READ_DEADLINE_S} s to restore the Clerk's state; is the broker overloaded?")
                for rec in (await c.getmany(tp, timeout_ms=500)).get(tp, []):
                    if rec.offset >= hi:
                        return
                    yield rec

        try:
            return await scan_tail(scan, begin, end, read, input_end)
        finally:
            # no fetch left polling between seeds (unsubscribe would stop aiokafka's
            # fetch routine for good: it reads the subscription, then None)
            c.pause(tp)

    async def close(self) -> None:
        await self.side.close()


def report(scan: TailScan) -> None:
    """One WARNING per record the look-back skipped (the first SKIPPED_LOGGED, then one
    line for the rest), naming topic, partition, offset and why, and what the seed is
    now; an ERROR when the bound left the Clerk's newest state possibly unread."""
    topic, p = scan.topic, scan.partition
    if scan.state is not None:
        seed = f"the newest readable record there is at offset {scan.state_offset}"
    else:
        seed = "no older record there is readable"
    advice = f"only the Clerk may write to {topic}: find and stop whatever else does"
    for offset, why in scan.skipped[:SKIPPED_LOGGED]:
        log.warning("skipped an unreadable record of %s partition %d at offset %d while restoring the Clerk's state "
                    "(%s); %s. %s", topic, p, offset, unreadable_reason(UnreadableRecord(why)), seed, advice)
    rest = scan.skipped[SKIPPED_LOGGED:]
    if rest:
        log.warning("skipped %d more unreadable records of %s partition %d at offsets %d to %d while restoring the "
                    "Clerk's state; %s. %s", len(rest), topic, p, rest[-1][0], rest[0][0], seed, advice)
    if scan.published:
        log.warning("%d record(s) of %s partition %d newer than its newest readable Clerk state are readable results "
                    "of input offsets %s: those positions count as published and are not published again",
                    len(scan.published), topic, p, ", ".join(map(str, sorted(scan.published)[:20])))
    if scan.exhausted:
        log.error("looked back as far as the Clerk does (%d offsets, %d MiB) at the end of %s partition %d and %s; "
                  "the Clerk's newest state may be in a record it did not read, so results decided since its last "
                  "committed offsets may be published a second time. %s", TAIL_LOOKBACK_OFFSETS,
                  TAIL_LOOKBACK_BYTES >> 20, topic, p,
                  "found no readable Clerk state" if scan.state is None else
                  f"read only part of what follows the readable record at offset {scan.state_offset}", advice)


class ClerkMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.copies = Counter("docket_clerk_copies", "copies received", ["instance"], registry=r)
        self.decisions = Counter("docket_clerk_decisions", "results published", registry=r)
        self.divergences = Counter("docket_clerk_divergences", "divergence reports published", registry=r)
        self.corrupt = Counter("docket_clerk_corrupt_copies", "copies whose digest does not match their body",
                               ["instance"], registry=r)
        self.lag = Gauge("docket_clerk_instance_lag", "offsets an instance is behind the most advanced one",
                         ["instance"], registry=r)
        self.pending = Gauge("docket_clerk_pending_positions", "positions held in memory", registry=r)
        self.latency = Histogram("docket_clerk_decision_latency_seconds",
                                 "input record timestamp -> result published", registry=r,
                                 buckets=STAGE_BUCKETS)
        self.transit = Histogram("docket_clerk_copy_transit_seconds",
                                 "copy record timestamp (the instance produced it) -> the Clerk reads it",
                                 registry=r, buckets=STAGE_BUCKETS)
        self.agreement = Histogram("docket_clerk_agreement_wait_seconds",
                                   "first copy of a position read -> its result published", registry=r,
                                   buckets=STAGE_BUCKETS)


def copy_body(copy: dict) -> tuple[bytes, int]:
    """(body bytes, input offset) of one copy of a copy-batch record: the body as the
    instance sent it (a JSON string of its canonical bytes, app/records.py seal_batch;
    a JSON object from an older instance is made canonical first). The offset is read
    from the body. Raises KeyError, TypeError, AttributeError or ValueError for a copy
    that is not one."""
    body = copy["body"]
    if not isinstance(body, str):
        return canonical_trusted(body), body["input"]["offset"]
    raw = body.encode("utf-8")
    # canonical JSON sorts keys: the position reads {"offset":N,"partition":P}
    at = raw.find(b'"input":{"offset":')
    if at < 0:
        return raw, orjson.loads(raw)["input"]["offset"]
    start = at + 18
    end = raw.index(b",", start)
    return raw, int(raw[start:end])


class Publisher:
    """Produces the Clerk's decisions for one copy-batch event, in batches.

    Results go to ``<prefix>.results`` and the agreed entity states to
    ``<prefix>.entities``, both on the input's partition, each as one aiokafka record
    batch per event (:meth:`send`): one result record per decided position (the
    clients' contract), in decision order. A divergence report first sends what is
    queued and waits for it (the restart seed takes the newer of the last result and
    the last divergence, so a divergence must not land before a result queued ahead of
    it; divergences are rare)."""

    def __init__(self, app, settings: Settings) -> None:
        self.app = app
        self.producer = app.producer  # Faust's; its aiokafka producer does the sending
        self.settings = settings
        self._results: list[Publish] = []

    def result(self, action: Publish) -> None:
        self._results.append(action)

    async def divergence(self, action) -> None:
        await self.send(action.partition)
        await self.producer.flush()
        sent = await self.producer.send(self.settings.divergences_topic, None, action.value, action.partition,
                                        None, None)
        guard_delivery(self.app, sent, f"a divergence record of {self.settings.divergences_topic}")

    async def send(self, partition: int) -> list[int]:
        """Queue the results collected so far (and their entity records); returns the
        stream time of each."""
        results, self._results = self._results, []
        if not results:
            return []
        aio = self.producer._producer
        topic = self.settings.results_topic
        for fut, _ in await send_batched(aio, topic, partition, [(r.key, r.value) for r in results]):
            guard_delivery(self.app, fut, f"results of {topic}[{partition}]")
        # the compacted topic keeps one record per entity: of several in one batch only
        # the last (newest version) is sent
        latest = {e[0]: e for r in results for e in r.entities}
        if latest:
            topic = self.settings.entities_topic
            for fut, _ in await send_batched(aio, topic, partition, [entity_record(*e) for e in latest.values()]):
                guard_delivery(self.app, fut, f"agreed entity records of {topic}[{partition}]")
        return [r.stream_time for r in results]


def build(settings: Settings, data_dir: Path, web_port: int | None):
    app = faust.App(settings.app_id("clerk"), **{**faust_settings(settings, data_dir, web_port),
                                                 "store": "memory://"})
    sources = app.topic(*[settings.output_topic(i) for i in settings.instances],
                        key_type=bytes, value_type=bytes, internal=False)
    core = ClerkCore(settings.instances, settings.required_copies, settings.max_lag)
    metrics = ClerkMetrics()
    tail = TailReader(settings, app)
    # a copy-batch record's event is acknowledged once every position it carries is
    # final: position -> the events waiting on it, event -> how many it waits on
    held: dict[tuple[int, int], list] = defaultdict(list)
    waits: dict[object, int] = {}
    acks = OrderedAcks()  # and acknowledged in the order read (OrderedAcks says why)
    # metrics only: (partition, offset) -> when its first copy was read, until it is final
    first_read: dict[tuple[int, int], float] = {}
    instance_of = {settings.output_topic(i): i for i in settings.instances}
    install_batch_intake(app, instance_of, settings.batch_size)

    def release(p: int, offset: int) -> None:
        first_read.pop((p, offset), None)
        for waiting in held.pop((p, offset), ()):
            waits[waiting] -= 1
            if waits[waiting] == 0:
                del waits[waiting]
                acks.finish(waiting)

    @app.agent(sources, concurrency=1, name="clerk")
    async def clerk_agent(stream):
        publisher = Publisher(app, settings)
        agreement, latency = HistogramBatch(metrics.agreement), HistogramBatch(metrics.latency)
        async for event in stream.noack().events():
            msg = event.message
            p = msg.partition
            acks.read(event)
            if not core.known(p):
                await tail.seed(core, p)
            # Who sent it is the topic it came on, not what it says about itself.
            instance = instance_of[msg.topic]
            now = time.time()  # metrics only
            seen: list[int] = []  # input offsets this event carried copies of
            for rec in records_of(msg):
                metrics.transit.observe(max(0.0, now - rec.timestamp / 1000))
                try:
                    data = orjson.loads(rec.value)
                    batch = data.get("copies", [])  # an older instance's watermark record has none
                    watermark = data.get("watermark")
                    if (not isinstance(batch, list) or (not batch and watermark is None)
                            or not (watermark is None or (type(watermark) is int and watermark >= 0))):
                        raise TypeError("not a copy-batch record")
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    log.warning("ignoring an unreadable record on %s[%d]@%d", msg.topic, p, rec.offset)
                    continue
                parsed = []
                for copy in batch:
                    try:
                        body, offset = copy_body(copy)
                        claimed = copy["digest"]
                    except (KeyError, TypeError, AttributeError, ValueError):
                        log.warning("ignoring an unreadable copy on %s[%d]@%d", msg.topic, p, rec.offset)
                        continue
                    actual = digest(body)
                    if actual != claimed:
                        metrics.corrupt.labels(instance).inc()  # the digest no longer covers the body
                    parsed.append((offset, actual, body, None))
                    if (p, offset) not in first_read:
                        first_read[(p, offset)] = now
                seen.extend(o for o, _, _, _ in parsed)
                for action in core.on_copies(p, instance, parsed):
                    if isinstance(action, Publish):
                        publisher.result(action)
                        agreement.add(now - first_read.get((p, action.offset), now))
                    else:
                        await publisher.divergence(action)
                        metrics.divergences.inc()
                        log.warning("divergence at %s[%d]: %s", settings.input_topic, p, action.value[:300])
                if watermark is not None:
                    core.on_watermark(p, instance, watermark)
            decided = await publisher.send(p)
            if decided:
                metrics.decisions.inc(len(decided))
                published = time.time()
                for stream_time in decided:
                    latency.add(published - stream_time / 1000)
            agreement.flush()
            latency.flush()
            metrics.copies.labels(instance).inc(len(seen))
            # Only now that the decisions are queued in the producer (which Faust flushes
            # before it commits) may the copies they finish be acknowledged: this event's
            # and the ones held for the same positions.
            unfinished = set()
            for offset in seen:
                if core.is_final(p, offset):
                    release(p, offset)
                else:
                    unfinished.add(offset)
            if unfinished:
                waits[event] = len(unfinished)
                for offset in unfinished:
                    held[(p, offset)].append(event)
            else:
                acks.finish(event)

    @app.timer(1.0)
    async def refresh_gauges() -> None:
        metrics.pending.set(sum(core.pending(p) for p in list(core.partitions)))
        for inst in settings.instances:
            behind = [max(st.watermarks.values()) - st.watermarks.get(inst, 0)
                      for st in core.partitions.values() if st.watermarks]
            metrics.lag.labels(inst).set(max(behind, default=0))
        for p, inst in sorted(core.lagging):
            log.warning("instance %s is more than %d offsets behind on partition %d", inst, core.max_lag, p)

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs) -> None:
        # A partition may come back after another worker has published for it:
        # forget it, so it is seeded from the results topic again.
        for tp in revoked:
            core.partitions.pop(tp.partition, None)
            core.lagging = {(p, inst) for p, inst in core.lagging if p != tp.partition}
            for key in [k for k in held if k[0] == tp.partition]:
                for waiting in held.pop(key):
                    waits.pop(waiting, None)
            for key in [k for k in first_read if k[0] == tp.partition]:
                del first_read[key]
        acks.forget(revoked)

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    app.docket = {"core": core, "metrics": metrics, "first_read": first_read, "acks": acks}
    return app


@click.command("clerk")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Faust's directory for this worker [default: $DOCKET_DATA_ROOT/<prefix>-clerk]")
@click.option("--web-port", type=int, default=None, help="serve /metrics on this port [default: none]")
@click.option("--wait", "wait_s", type=float, default=0.0, metavar="SECONDS",
              help="wait up to SECONDS for Kafka and the topics instead of failing at once [default: 0]")
def clerk(data_dir: Path | None, web_port: int | None, wait_s: float) -> None:
    """Run a Clerk worker: publish results the instances agree on."""
    settings = load()
    topics = ([settings.output_topic(i) for i in settings.instances]
              + [settings.results_topic, settings.divergences_topic, settings.entities_topic])
    wait_for_topics_cli(settings, topics, wait_s)
    asyncio.run(check_topics(settings, topics))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust wants one
    data_dir = data_dir or settings.data_root / settings.app_id("clerk")
    data_dir.mkdir(parents=True, exist_ok=True)
    app = build(settings, data_dir, web_port)
    run_worker(app, settings)
