"""The Clerk as a Faust app: reads every instance's output topic, publishes agreed
results and reports divergences. Decisions: agents/clerk_core.py. Publishing:
agents/clerk_publish.py. Spec: specs/clerk.allium.

Exactly one result per input event, across Clerk crashes and rebalances:
- a copy is acknowledged only once its position is final (decided or diverged) and
  the transaction that publishes its decisions has committed, so committed offsets
  never pass a copy the Clerk still needs;
- copies after the committed offsets are read again after a crash or a rebalance,
  and positions that were already decided are recognised from the ``clerk`` state
  embedded in the newest readable result and divergence records (read back when a
  partition is first seen; a record someone else wrote there is skipped with a
  warning, TailReader);
- before it reads that state, a worker claims the partition's transactional id,
  which fences the previous owner: a worker paused past its session timeout
  publishes nothing once it wakes (clerk_publish.py says how).
A rebalance waits for the item in progress but not for copies held until their
position is final (intake.BatchConsumer.wait_empty): the held copies stay
unacknowledged, and the next owner reads them again.
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
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agents.clerk_core import (
    TAIL_LOOKBACK_BYTES,
    TAIL_LOOKBACK_OFFSETS,
    ClerkCore,
    Publish,
    Report,
    TailScan,
    newest_state,
    read_diverged,
    scan_tail,
)
from agents.plumbing import (STAGE_BUCKETS, HistogramBatch, SideConsumer, check_topics, claim_data_dir, faust_settings,
                             run_worker, worker_settings)
from agents.worker import adopt_settings, new_app, serve_metrics
from agents.clerk_publish import PartitionLost, PartitionProducers, Publisher
from agents.intake import OrderedAcks, members_of, records_of, stop_committing
from agents.intake import install as install_batch_intake
from app.canonical import canonical_trusted, digest, shown_name
from app.cli_types import PORT, Seconds
from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.records import UnreadableRecord, json_object, unreadable_reason
from app.settings import Settings
from app.topics import topic_name_problem
from launcher.stack import wait_for_topics_cli

log = logging.getLogger("docket.clerk")


class LagLog:
    """What the Clerk logs of lagging instances (ClerkCore.lagging: (partition,
    instance) more than max_lag offsets behind the most advanced instance): one WARNING
    once an instance has lagged for ``grace_s`` (10 s) without a break, naming its
    partitions; one again every ``remind_s`` (60 s) while it still lags; one when it is
    back within max_lag on every partition. Lag shorter than the grace is not named: a
    restarted Clerk reads one instance's copy records before the other's, and an
    instance that has not advertised yet counts as 0, so it showed a lag of the whole
    topic for a moment, then "back" (a fresh-clone user check). Before LagLog, the Clerk
    logged one line per lagging partition every second: 8 lines a second with 8
    partitions for as long as one of three instances was down (1,749 lines in four
    minutes). Times are monotonic seconds."""

    def __init__(self, max_lag: int, remind_s: float = 60.0, grace_s: float = 10.0) -> None:
        self.max_lag = max_lag
        self.remind_s = remind_s
        self.grace_s = grace_s
        self._since: dict[str, float] = {}  # instance -> when its present lag began
        self._said: dict[str, float] = {}  # instance -> when (monotonic s) it was last named

    def lines(self, lagging: set[tuple[int, str]], now: float) -> list[str]:
        """The lines to log now, given the lagging (partition, instance) pairs."""
        partitions: dict[str, list[int]] = defaultdict(list)
        for p, inst in lagging:
            partitions[inst].append(p)
        out = []
        for inst in sorted(partitions):
            since = self._since.setdefault(inst, now)
            said = self._said.get(inst)
            if now - since < self.grace_s:
                continue
            if said is None or now - said >= self.remind_s:
                self._said[inst] = now
                out.append(f"instance {inst} is {'still ' if said is not None else ''}more than {self.max_lag:,} "
                           f"offsets behind the most advanced instance on partitions "
                           f"{sorted(partitions[inst])}: is it running? (said again every {self.remind_s:.0f} s "
                           "while it lags)")
        for inst in sorted(set(self._since) - set(partitions)):
            del self._since[inst]
            if self._said.pop(inst, None) is not None:
                out.append(f"instance {inst} is back within {self.max_lag:,} offsets on every partition")
        return out


class FreezeWatch:
    """Tells from a periodic timer's runs whether the worker did not run for longer
    than ``limit_s`` (its session timeout, seconds): specs/clerk.allium
    ClerkSaysWhenItWasFrozen. The first run has nothing to compare with: Faust starts an
    app's timers only once its first assignment's recovery has completed, so a gap
    measured from before that counted a slow first rebalance (a killed run's members
    held for a session timeout) as a freeze; a fresh-clone user check saw "did not run
    for 10.5 s" on such a start."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._last: float | None = None

    def tick(self, now: float) -> float | None:
        """Record a run at ``now`` (monotonic seconds); the seconds since the previous
        run when they exceed the limit, else None."""
        last, self._last = self._last, now
        if last is None or now - last <= self.limit_s:
            return None
        return now - last


# Unreadable records named one by one per look-back, at most; the rest in one line.
SKIPPED_LOGGED = 10
READ_DEADLINE_S = 30  # for the broker to hand over a range of the look-back


SEED_FETCH_WAIT_MS = 20  # the tail reader's fetch_max_wait_ms
# The tail reader's retry_backoff_ms (aiokafka's default: 100). Each seed assigns one
# partition, which narrows the consumer's metadata to that topic; the next offsets
# request of another topic then finds no leader, asks for metadata and sleeps this
# long before it retries: twice per partition, 200 ms of every seed at the default.
SEED_RETRY_BACKOFF_MS = 20
# How long one poll of the look-back waits for records (ms). The tail of a results
# partition is a transaction's commit marker, which a poll returns no record for: it
# ended only when this ran out, so at 500 ms every seed of a partition with history
# took at least that long, and a restarted Clerk's first decisions came 0.5-0.7 s per
# partition late (a fresh-clone user check saw requests answered 202 for 5 s after
# `docket is ready`).
SEED_POLL_MS = 50


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
        self.side = SideConsumer(app, **client_kwargs(settings, "clerk", "consumer",
                                                      bootstrap_servers=settings.kafka_bootstrap,
                                                      enable_auto_commit=False, isolation_level=ISOLATION_LEVEL,
                                                      fetch_max_wait_ms=SEED_FETCH_WAIT_MS,
                                                      retry_backoff_ms=SEED_RETRY_BACKOFF_MS))

    async def seed(self, core: ClerkCore, partition: int) -> None:
        """Seed ``partition`` in ``core``: the newest readable Clerk state of the two
        topics' ends, the positions readable results after it name (TailScan), and the
        positions the newest divergence reports say diverged (read_diverged)."""
        s = self.settings
        async with self.side.use() as c:
            input_end = await self._input_end(c, partition)
            scans = [await self._scan(c, TailScan(s.results_topic, partition, results=True), input_end),
                     await self._scan(c, TailScan(s.divergences_topic, partition, results=False), input_end)]
            tp = TopicPartition(s.divergences_topic, partition)
            begin, end = await self._bounds(c, tp)
            try:
                diverged = await read_diverged(begin, end, self._reader(c, tp), partition, s.idempotency_ttl_ms,
                                               input_end)
            finally:
                c.pause(tp)
        for scan in scans:
            report(scan)
        core.restore(partition, newest_state(scans), [o for scan in scans for o in scan.published], diverged)

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
        begin, end = await self._bounds(c, tp)
        try:
            return await scan_tail(scan, begin, end, self._reader(c, tp), input_end)
        finally:
            # no fetch left polling between seeds (unsubscribe would stop aiokafka's
            # fetch routine for good: it reads the subscription, then None)
            c.pause(tp)

    @staticmethod
    async def _bounds(c: AIOKafkaConsumer, tp: TopicPartition) -> tuple[int, int]:
        """``tp``'s first and end offsets, then ``tp`` assigned to ``c`` alone."""
        # the offsets first, while nothing is assigned (no fetch for them to wait behind)
        begin = (await c.beginning_offsets([tp]))[tp]
        end = (await c.end_offsets([tp]))[tp]
        c.assign([tp])
        return begin, end

    @staticmethod
    def _reader(c: AIOKafkaConsumer, tp: TopicPartition):
        """read(lo, hi) for scan_tail and read_diverged: the records of ``tp`` from lo
        to hi, in offset order, from the consumer ``c`` it is assigned to."""

        async def read(lo: int, hi: int):
            c.seek(tp, lo)
            deadline = time.monotonic() + READ_DEADLINE_S
            while await c.position(tp) < hi:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"could not read {tp.topic} partition {tp.partition} from offset {lo} to {hi} within "
                        f"{READ_DEADLINE_S} s to restore the Clerk's state; is the broker overloaded?")
                for rec in (await c.getmany(tp, timeout_ms=SEED_POLL_MS)).get(tp, []):
                    if rec.offset >= hi:
                        return
                    yield rec

        return read

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
        self.fenced = Counter("docket_clerk_fenced", "items not published because another Clerk worker had "
                              "claimed their partition", registry=r)
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


def miscast(topic: str, partition: int, offset: int, instance: str, data: dict) -> None:
    """Log a copy-batch record that names another instance or input partition than
    the topic and partition it came on. The Clerk reads it as what its topic and
    partition say (a copy counts for the instance whose topic carried it), so nothing
    else changes; but an instance writes only its own topic, each batch to its input
    partition's number, so such a record means another producer writes there (a
    misconfigured instance id, a tool, a forgery). The values shown are cut at 64
    characters (canonical.shown_name)."""
    said = ", ".join(f"{name} {shown_name(repr(data[name]))}" for name in ("instance", "partition")
                     if name in data)
    log.warning("a record on %s[%d]@%d says %s: read as instance %s's copies of input partition %d, as its topic and "
                "partition say. Instance %s writes only its own topic, each batch to its input partition's number: "
                "find what else produces to %s", topic, partition, offset, said, instance, partition, instance, topic)


def stale(msg, generation: int) -> bool:
    """True for an item fetched before the latest rebalance (``msg.generation_id``, when
    it has one, is not the consumer group's current ``generation``): the partition was
    read again from the committed offsets since, and acknowledging the item could let
    a commit pass copies held for positions that are not final (Faust commits an
    acknowledged offset one past the committed one without a gap check).
    specs/clerk.allium ClerkDropsItemsOfOlderGeneration."""
    item_generation = getattr(msg, "generation_id", None)
    return item_generation is not None and item_generation != generation


class Share:
    """What one Clerk stream item carries of one partition number: a batch per output
    topic that the item's fetch returned records of that partition for
    (``messages``, in the item's order). The Clerk judges, holds and acknowledges an
    item share by share (specs/clerk.allium ClerkItemAcrossPartitions), so a
    partition revoked, fenced or claimed meanwhile concerns only its own share: the
    other partitions' batches are still acknowledged, and their commits go on.
    ``message`` and ``ack()`` are the item's event's (agents/intake.py OrderedAcks
    acknowledges the event's own message through the event, the others as
    companions)."""

    __slots__ = ("event", "partition", "messages")

    def __init__(self, event, partition: int, messages: tuple) -> None:
        self.event = event
        self.partition = partition
        self.messages = messages

    @property
    def message(self):
        return self.event.message

    def ack(self) -> bool:
        return self.event.ack()


def shares_of(event) -> list[Share]:
    """The shares of a Clerk stream item (``event``, whose message carries batches of
    one or more output partitions: agents/intake.py members_of), by partition number
    ascending."""
    by_partition: dict[int, list] = {}
    for member in members_of(event.message):
        by_partition.setdefault(member.partition, []).append(member)
    return [Share(event, p, tuple(by_partition[p])) for p in sorted(by_partition)]


def single_copy_warning(settings: Settings) -> str | None:
    """The warning a Clerk logs at start when DOCKET_REQUIRED_COPIES is 1: each copy is
    published alone, so nothing is compared (ClerkWarnsOfSingleCopyDecisions); None
    otherwise. The twelfth fresh-user trial ran 1 with a bit-flipping instance, and its
    corrupted quantities were published without a word."""
    if settings.required_copies != 1:
        return None
    return (f"DOCKET_REQUIRED_COPIES=1: the first copy of each event, from any of {', '.join(settings.instances)}, "
            "is published without another to agree with it, so an instance's silent corruption or "
            "non-determinism reaches clients; set it to 2 or more for redundant evaluation")


def build(settings: Settings, data_dir: Path, web_port: int | None):
    warning = single_copy_warning(settings)
    if warning is not None:
        log.warning(warning)
    app = new_app(settings.app_id("clerk"), **{**faust_settings(settings, data_dir, web_port, "clerk"),
                                               "store": "memory://"})
    adopt_settings(app, settings)
    sources = app.topic(*[settings.output_topic(i) for i in settings.instances],
                        key_type=bytes, value_type=bytes, internal=False)
    core = ClerkCore(settings.instances, settings.required_copies, settings.max_lag, settings.idempotency_ttl_ms)
    metrics = ClerkMetrics()
    tail = TailReader(settings, app)
    producers = PartitionProducers(settings)
    # partitions another worker fenced this one out of, until they are revoked: their
    # copies are skipped (their owner reads them), and never claimed back, which would
    # fence the owner in turn
    fenced: set[int] = set()
    # a share of an item (Share) is acknowledged once every position its copies carry
    # is final: position -> the shares waiting on it, share -> how many it waits on
    held: dict[tuple[int, int], list] = defaultdict(list)
    waits: dict[object, int] = {}
    # and acknowledged in the order read (OrderedAcks says why)
    acks = OrderedAcks(ack_companion=lambda message: app.consumer.ack(message))
    # metrics only: (partition, offset) -> when its first copy was read, until it is final
    first_read: dict[tuple[int, int], float] = {}
    instance_of = {settings.output_topic(i): i for i in settings.instances}
    in_progress: list = [None]  # the item the agent is working on
    # a rebalance waits for the item in progress, not for the copies held (module doc)
    install_batch_intake(app, instance_of, settings.batch_size, across_topics=True, across_partitions=True,
                         in_progress=lambda: None if in_progress[0] is None else in_progress[0].message)

    def forget(partition: int) -> None:
        """Drop everything held for ``partition`` (revoked, or lost to another worker)."""
        publisher.drop(partition)
        core.partitions.pop(partition, None)
        core.lagging = {(q, inst) for q, inst in core.lagging if q != partition}
        for key in [k for k in held if k[0] == partition]:
            for waiting in held.pop(key):
                waits.pop(waiting, None)
        for key in [k for k in first_read if k[0] == partition]:
            del first_read[key]
        acks.forget([TopicPartition(topic, partition) for topic in instance_of])

    def release(p: int, offset: int) -> None:
        first_read.pop((p, offset), None)
        for waiting in held.pop((p, offset), ()):
            waits[waiting] -= 1
            if waits[waiting] == 0:
                del waits[waiting]
                acks.finish(waiting)

    latency = HistogramBatch(metrics.latency)

    def published(p: int, results: list[Publish]) -> None:
        metrics.decisions.inc(len(results))
        now = time.time()  # metrics only
        for action in results:
            latency.add(now - action.stream_time / 1000)
        latency.flush()

    def lost(p: int, was_fenced: bool) -> None:
        # nothing of the failed transaction is visible: whoever owns p now reads its copies
        forget(p)
        if was_fenced:
            fenced.add(p)
            metrics.fenced.inc()
            log.warning("fenced on partition %d: another Clerk worker claimed it (this one was paused or cut off "
                        "past its session timeout); publishing nothing more for it until the group rebalances", p)

    def failed(p: int, exc: BaseException) -> None:
        stop_committing(app, exc, f"results of {settings.results_topic}[{p}]")

    publisher = Publisher(settings, producers, on_published=published, on_lost=lost, on_error=failed,
                          term=lambda: None if app.rebalancing else app.consumer_generation_id)

    def emit(p: int, actions: list[Publish | Report], agreement: HistogramBatch, reported: set[int],
             now: float) -> None:
        """Queue what the core decided for partition ``p``, in order; the offsets of
        its divergence reports, and of its results, go into ``reported`` (a held
        duplicate is published with its original, by an item that carries no copy of
        it: ClerkHoldsDuplicateOfUndecidedOriginal)."""
        for action in actions:
            if isinstance(action, Publish):
                publisher.result(p, action)
                reported.add(action.offset)
                agreement.add(now - first_read.get((p, action.offset), now))
            else:
                publisher.divergence(p, action.value)
                metrics.divergences.inc()
                if action.offset is not None:
                    reported.add(action.offset)
                log.warning("divergence at %s[%d]: %s", settings.input_topic, p, action.value[:300])

    @app.agent(sources, concurrency=1, name="clerk")
    async def clerk_agent(stream):
        agreement = HistogramBatch(metrics.agreement)
        async for event in stream.noack().events():
            if publisher.failure is not None:
                raise publisher.failure
            in_progress[0] = event
            try:
                for share in shares_of(event):  # a share per partition number (ClerkItemAcrossPartitions)
                    # (during a rebalance the item is read again after it, from the committed
                    # offsets; a claim now could fence the partition's next owner)
                    if share.partition in fenced or stale(event.message, app.consumer_generation_id) \
                            or app.rebalancing:
                        continue
                    await judge(share, agreement)
                agreement.flush()
            finally:
                in_progress[0] = None  # finished, held or skipped

    async def judge(share: Share, agreement: HistogramBatch) -> None:
        """Judge the copy-batch records of one share of an item: the batches of one
        partition number (a batch per output topic), held and acknowledged together;
        ``agreement`` collects the agreement waits, flushed once per item."""
        p = share.partition
        acks.read(share, share.messages)
        if not core.known(p):
            try:
                began = time.monotonic()
                # fences the previous owner: before the seed
                await producers.claim(p, lane_plan())
                claimed_s = time.monotonic() - began
                await tail.seed(core, p)
                first = share.messages[0]
                log.info("claimed partition %d (transactional id %s) at %s[%d]@%d in %.0f ms (seed read in %.0f ms)",
                         p, producers.transactional_id(producers.lane(p)), first.topic, p, first.offset,
                         claimed_s * 1000, (time.monotonic() - began - claimed_s) * 1000)
            except PartitionLost:
                pass
            if not producers.owns(p):  # revoked meanwhile
                forget(p)
                return
        now = time.time()  # metrics only
        seen: list[int] = []  # input offsets this share carried copies of
        reported: set[int] = set()  # input offsets of the divergences it led to
        for member in share.messages:  # a batch per output topic (ClerkItemAcrossOutputTopics)
            # Who sent it is the topic it came on, not what it says about itself.
            instance = instance_of[member.topic]
            copies = len(seen)
            for rec in records_of(member):
                metrics.transit.observe(max(0.0, now - rec.timestamp / 1000))
                try:
                    data = json_object(rec.value)
                    batch = data.get("copies", [])  # an older instance's watermark record has none
                    watermark = data.get("watermark")
                    if (not isinstance(batch, list) or (not batch and watermark is None)
                            or not (watermark is None or (type(watermark) is int and watermark >= 0))):
                        raise UnreadableRecord("not a copy-batch record (a list of copies, a watermark)")
                except UnreadableRecord as exc:
                    log.warning("ignoring an unreadable record on %s[%d]@%d: %s", member.topic, p, rec.offset,
                                unreadable_reason(exc))
                    continue
                if data.get("instance", instance) != instance or data.get("partition", p) != p:
                    miscast(member.topic, p, rec.offset, instance, data)
                parsed = []
                for copy in batch:
                    try:
                        body, offset = copy_body(copy)
                        claimed = copy["digest"]
                    except (KeyError, TypeError, AttributeError, ValueError) as exc:
                        log.warning("ignoring an unreadable copy on %s[%d]@%d: %s", member.topic, p, rec.offset,
                                    unreadable_reason(exc))
                        continue
                    actual = digest(body)
                    if actual != claimed:
                        metrics.corrupt.labels(instance).inc()  # the digest no longer covers the body
                    parsed.append((offset, actual, body, None))
                    if (p, offset) not in first_read:
                        first_read[(p, offset)] = now
                seen.extend(o for o, _, _, _ in parsed)
                emit(p, core.on_copies(p, instance, parsed), agreement, reported, now)
                if watermark is not None:
                    emit(p, core.on_watermark(p, instance, watermark), agreement, reported, now)
            metrics.copies.labels(instance).inc(len(seen) - copies)
        # This share's copies, and the ones held for the same positions, may be
        # acknowledged only once the transaction publishing the decisions that
        # finished them has committed (Publisher.then); copies of positions not
        # final yet are held until a later item finishes them, or until a
        # watermark gives them up (ClerkGivesUpUndecidedPosition).
        finals = [offset for offset in seen if core.is_final(p, offset)]
        finals += [offset for offset in reported.difference(seen) if core.is_final(p, offset)]
        unfinished = set(seen).difference(finals)
        if unfinished:
            waits[share] = len(unfinished)
            for offset in unfinished:
                held[(p, offset)].append(share)
        publisher.then(p, _finisher(p, finals, None if unfinished else share))

    plan: list[frozenset[int] | None] = [None]  # lane_plan() of the current assignment

    def lane_plan() -> frozenset[int]:
        """whole_assignment() as it was at the assignment's first claim: every claim of
        one assignment takes the same kind of lane, or a whole claim would fence a
        partition's own lane claimed before it."""
        if plan[0] is None:
            plan[0] = whole_assignment()
        return plan[0]

    def whole_assignment() -> frozenset[int]:
        """Every partition of the Clerk's topics when this worker's assignment holds all
        of them (its claims then publish on one lane: PartitionProducers), else empty.
        The partition counts are those the group's assignment was made from."""
        assigned = app.consumer.assignment()
        every: set[int] = set()
        for topic in instance_of:
            count = app.consumer.topic_partitions(topic)
            if not count or {tp.partition for tp in assigned if tp.topic == topic} != set(range(count)):
                return frozenset()
            every.update(range(count))
        return frozenset(every)

    def _finisher(p: int, finals: list[int], share: Share | None):
        def finish() -> None:
            for offset in finals:
                release(p, offset)
            if share is not None:
                acks.finish(share)
        return finish

    freeze = FreezeWatch(settings.session_timeout_ms / 1000)
    lag_log = LagLog(core.max_lag)

    @app.timer(1.0)
    async def refresh_gauges() -> None:
        # A worker frozen past its session timeout (SIGSTOP, a GC pause, a stalled VM)
        # has lost its partitions without being told yet: say so, once it runs again.
        tick = time.monotonic()
        gap = freeze.tick(tick)
        if gap is not None:
            log.warning("this Clerk worker did not run for %.1f s, longer than its session timeout (%d ms): its "
                        "partitions may have moved to another Clerk worker, which fenced it; it publishes nothing "
                        "for them and rejoins the group", gap, settings.session_timeout_ms)
        metrics.pending.set(sum(core.pending(p) for p in list(core.partitions)))
        for inst in settings.instances:
            behind = [max(st.watermarks.values()) - st.watermarks.get(inst, 0)
                      for st in core.partitions.values() if st.watermarks]
            metrics.lag.labels(inst).set(max(behind, default=0))
        for line in lag_log.lines(core.lagging, tick):
            log.warning("%s", line)

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs) -> None:
        # A partition may come back after another worker has published for it:
        # forget it, so it is claimed and seeded from the results topic again.
        partitions = {tp.partition for tp in revoked}
        plan[0] = None  # the next assignment's first claim plans its lanes
        # what is queued for them is published first (the agent takes no item while the
        # group rebalances), so their copies need not be read again by the next owner
        await publisher.settle(partitions)
        log.info("partitions %s revoked: %d items unacknowledged", sorted(partitions), acks.waiting())
        for p in partitions:
            forget(p)
        fenced.difference_update(partitions)
        await producers.release(partitions)
        acks.forget(revoked)

    @app.on_before_shutdown.connect
    async def _stop_producers(sender, **kwargs) -> None:
        await publisher.settle()
        await producers.close()

    serve_metrics(app, metrics.registry, settings.faust_metrics)

    app.docket = {"core": core, "metrics": metrics, "first_read": first_read, "acks": acks, "producers": producers,
                  "publisher": publisher,
                  "fenced": fenced, "revoked": _revoked, "lane_plan": lane_plan}
    return app


@click.command("clerk")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Faust's directory for this worker [default: $DOCKET_DATA_ROOT/<prefix>-clerk]")
@click.option("--web-port", type=PORT, default=None, help="serve /metrics on this port [default: none]")
@click.option("--wait", "wait_s", type=Seconds(zero_ok=True), default=0.0, metavar="SECONDS",
              help="wait up to SECONDS for Kafka and the topics instead of failing at once [default: 0]")
def clerk(data_dir: Path | None, web_port: int | None, wait_s: float) -> None:
    """Run a Clerk worker: publish results the instances agree on."""
    settings = worker_settings()
    data_dir = data_dir or default_data_dir(settings)
    preflight(settings, data_dir, wait_s)
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust wants one
    app = build(settings, data_dir, web_port)
    run_worker(app, settings)


def default_data_dir(settings: Settings) -> Path:
    """Faust's directory of a Clerk worker unless told: ``$DOCKET_DATA_ROOT/<prefix>-clerk``."""
    return settings.data_root / settings.app_id("clerk")


def preflight(settings: Settings, data_dir: Path, wait_s: float = 0.0) -> None:
    """What a Clerk worker checks and prepares before it starts, however it is started
    (``docket clerk``, or ``faust -A docket_apps.clerk worker`` through
    :class:`agents.worker.DocketWorker`): Kafka answers and every configured output
    topic, the results, divergences and entities topics exist (waiting up to
    ``wait_s`` seconds for them first), else click.ClickException saying what to do;
    ``data_dir`` exists."""
    topics = ([settings.output_topic(i) for i in settings.instances]
              + [settings.results_topic, settings.divergences_topic, settings.entities_topic])
    # a name Kafka cannot hold: no wait ends it, and `docket topics create` refuses it too
    # (the Clerk said to run that command: the sixteenth fresh-user trial)
    too_long = topic_name_problem(topics)
    if too_long:
        raise click.ClickException(too_long)
    wait_for_topics_cli(settings, topics, wait_s)
    asyncio.run(check_topics(settings, topics))
    claim_data_dir(data_dir)
