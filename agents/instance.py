"""One redundant instance: a Faust worker running the Usher and Arbiter over the
input topic, with the Ledger table (entities + Warden entries) in RocksDB.

``docket instance --id a`` runs a worker of app ``<prefix>-a`` (also its consumer
group), reading ``<prefix>.input`` and writing ``<prefix>.output.a``. More workers
of the same instance may run with other ``--data-dir`` values; Faust spreads the
partitions over them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

import click
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

import app.domains  # noqa: F401  registers the built-in domains
from agents.faults import FaultInjector, FaultSpec, LiveFaults
from agents.intake import check_delivery, guard_delivery
from agents.intake import install as install_batch_intake
from agents.intake import members_of, records_of
from agents.plumbing import (STAGE_BUCKETS, ConfirmedOffsets, SideConsumer, check_topics, claim_data_dir, claim_domain,
                             faust_settings, observe_many, run_worker, worker_settings)
from agents.usher import Usher
from app import logs
from app.cli_types import PORT, Seconds
from app.kafka_config import client_kwargs
from agents.worker import adopt_settings, new_app, serve_metrics
from app.records import LOG_APPEND_TIME, seal_batch
from app.registry import registry
from app.versions import Blocked, DomainVersions, status_record
from app.kafka_admin import ISOLATION_LEVEL
from app.settings import Settings, instance_id_problem
from launcher.stack import wait_for_topics_cli
from tables.allocator import TRIM_INTERVAL_S, trim_heap
from tables.faust_store import LEDGER_STORE_URL, FaustStore
from tables.ledger import LEDGER_TABLE, Ledger
from tables.rocks_memory import memory_bound_bytes, memory_bytes
from tables.registrar import Registrar
from tables.warden import Warden

log = logging.getLogger("docket.instance")

# How often an instance looks whether Faust's table recovery is complete, to say once
# that it is ready (seconds): the chaos suite and the tests wait for that line.
READY_CHECK_S = 0.2


class InstanceMetrics:
    """Server-side stage timings of one instance worker, served at ``/metrics`` on its
    web port. Observability only: wall-clock readings here never reach an output."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter("docket_instance_events", "input events processed", registry=r)
        self.batch = Histogram("docket_instance_batch_events", "events per batch the Usher takes", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
        self.intake = Histogram("docket_instance_intake_seconds",
                                "input record timestamp -> the Usher takes the batch it is in", registry=r,
                                buckets=STAGE_BUCKETS)
        self.evaluation = Histogram("docket_instance_evaluation_seconds",
                                    "the Usher's processing of the batch an event is in", registry=r,
                                    buckets=STAGE_BUCKETS)
        self.produce = Histogram("docket_instance_produce_seconds",
                                 "state flush + handing the batch's outputs to the producer", registry=r,
                                 buckets=STAGE_BUCKETS)
        self.ack = Histogram("docket_instance_output_ack_seconds",
                             "the batch's outputs handed to the producer -> Kafka acknowledged the last of them",
                             registry=r, buckets=STAGE_BUCKETS)
        self.ready = Gauge("docket_instance_ready",
                           "1 once this worker's first recovery is complete and it has logged its ready line "
                           "(InstanceBecomesReady): `docket stack run` says ready only after it", registry=r)
        self.blocked = Gauge("docket_instance_partition_blocked",
                             "1 while this worker holds the partition stopped at an activation of a domain "
                             "version it does not know (specs/versioning.allium)", ["partition"], registry=r)

    def watch_rocksdb(self, dbs, options: dict) -> None:
        """Serve the Ledger's RocksDB memory, read at each scrape:
        ``docket_instance_rocksdb_bytes{kind="memtables"|"block_cache"}`` summed over the
        databases ``dbs()`` returns (the partitions this worker has open), and
        ``docket_instance_rocksdb_bound_bytes``, the most those databases may hold
        under ``options`` (tables/rocks_memory.py). `make soak` reads both."""
        self.registry.register(_RocksMemory(dbs, options))


class _RocksMemory:
    """A Prometheus collector (prometheus_client's custom-collector protocol) of
    RocksDB's own memory account, read when /metrics is served, never on the event path."""

    def __init__(self, dbs, options: dict) -> None:
        self.dbs = dbs
        self.options = options

    def describe(self):
        # named without reading RocksDB: register() would otherwise collect at once
        yield GaugeMetricFamily("docket_instance_rocksdb_bytes", "", labels=["kind"])
        yield GaugeMetricFamily("docket_instance_rocksdb_bound_bytes", "")

    def collect(self):
        dbs = list(self.dbs())
        used = GaugeMetricFamily("docket_instance_rocksdb_bytes",
                                 "bytes the Ledger's RocksDB databases hold in memory, by RocksDB's account "
                                 "(memtables: rocksdb.cur-size-all-mem-tables; block_cache: "
                                 "rocksdb.block-cache-usage), summed over the partitions open here",
                                 labels=["kind"])
        for kind, n in sorted(memory_bytes(dbs).items()):
            used.add_metric([kind], n)
        yield used
        yield GaugeMetricFamily("docket_instance_rocksdb_bound_bytes",
                                "the most memtables and block cache those databases may hold under the "
                                "Ledger's RocksDB options (bytes)",
                                value=memory_bound_bytes(self.options, len(dbs)))


# RocksDB options of each ledger partition's database (faust.stores.rocksdb.RocksDBOptions).
# Faust's defaults are sized for a server with one big table: 64 MiB memtables, 3 of
# them, and a 2 GiB block cache, per database, and docket opens one database per
# partition per instance. The working set here is small (an entity's state and a
# Warden entry per live key). A worker's RSS grows until each partition's memtable is
# full and flushed once, so the memtable size sets how long memory keeps climbing: at
# `make soak`'s 150 events/s on 8 partitions (about 19 KB/s per partition), 16 MiB
# memtables grew each instance by 76-77% per 10 minutes for the whole soak
# (bench/results/soak-2026-12-02-0003), 4 MiB ones by 17% (-0017), 2 MiB ones still
# by 14-16% (-0255): what kept RSS rising was glibc keeping freed memtable blocks in
# its heap, which tables/allocator.py's trim_heap, run on a timer by build(), gives
# back. CPU per event did not move from 16 to 4 MiB (bench/drain.py --events 60000,
# alternating: instance a 44.0 and 43.2 us with 4 MiB, 46.0 and 38.7 with 16); with 2
# MiB instance a's CPU per Clerk CPU was 1.31 and 1.32 against 1.18 and 1.20 (two
# pairs), so 4 MiB stays. With 4 MiB memtables and only 2 of them the drain took
# longer (writes wait for a memtable flush), so there are 3.
LEDGER_ROCKSDB_OPTIONS = {
    "write_buffer_size": 4 * 1024 * 1024,  # bytes per memtable
    "max_write_buffer_number": 3,
    "block_cache_size": 32 * 1024 * 1024,  # bytes
    "target_file_size_base": 16 * 1024 * 1024,  # bytes
}


def build(settings: Settings, instance_id: str, data_dir: Path, web_port: int | None = None,
          faults: FaultSpec | None = None, faults_file: Path | None = None):
    """The Faust app of one instance, and the Usher it drives. ``faults``: inject these
    faults for the worker's life; ``faults_file``: the live switch (agents/faults.py
    LiveFaults), read before each batch."""
    versions = DomainVersions(registry.versions(settings.domain), settings.domain_version_limit or None)
    app = new_app(settings.app_id(instance_id),
                  **faust_settings(settings, data_dir, web_port, f"instance-{instance_id}"))
    adopt_settings(app, settings)
    # Raw bytes: FaustStore writes RocksDB and the changelog itself, and recovery
    # copies changelog bytes into RocksDB, keeping each entity's newest record
    # (tables/faust_store.py LedgerRocksStore).
    table = app.Table(LEDGER_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes,
                      options=dict(LEDGER_ROCKSDB_OPTIONS), store=LEDGER_STORE_URL)
    input_topic = app.topic(settings.input_topic, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw", internal=False)
    output_name = settings.output_topic(instance_id)

    store = FaustStore(app, table)
    registrar = Registrar(Ledger(store), settings.cache_capacity)
    warden = Warden(store, settings.idempotency_ttl_ms)
    usher = Usher(instance_id, versions, registrar, warden, settings.partitions)
    metrics = InstanceMetrics()
    metrics.watch_rocksdb(store.open_databases, LEDGER_ROCKSDB_OPTIONS)
    if faults is not None:
        usher.faults = FaultInjector(faults, instance_id)
    live = LiveFaults(faults_file, instance_id) if faults_file is not None else None
    rebuilt: set[int] = set()
    producer_clocked: set[int] = set()  # partitions whose CreateTime records were reported
    ready = asyncio.Event()
    processed: dict[int, int] = {}  # partition -> next offset, this run only

    changelog = table.changelog_topic.get_topic_name()

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **kwargs) -> None:
        tableless = partitions_without_table(assigned, settings.input_topic, changelog)
        if tableless:
            # judged on an empty Ledger they would diverge from the other instances
            # on every event: stop rather than judge them (create_changelog says how
            # this came about)
            problem = (f"this worker was assigned {settings.input_topic} partition(s) "
                       f"{', '.join(map(str, tableless))} without {changelog}'s, so it has no Ledger to restore "
                       f"for them; the group's leader does not see that topic (check it exists with "
                       f"`docket topics list`, then restart every worker of instance {instance_id})")
            log.error("%s", problem)
            await app.crash(RuntimeError(problem))
            return
        # Recovery may rewrite the table under the caches: start them afresh.
        registrar.clear()
        processed.clear()  # partitions may have moved: only what we process next counts
        for p in list(rebuilt):
            warden.forget(p)
        rebuilt.clear()
        # The held batches were fetched under the old assignment, and the drain has let
        # them go (BatchConsumer.wait_empty); a partition still blocked is fetched again
        # from its committed offset and its batches held anew. Kept, they would add one
        # fetch per rebalance for the process's life.
        # Another worker of this instance may have held one of these partitions
        # meanwhile and written its status ("judging" from newer code, "blocked" from
        # older code or a lower version limit): the first batch after this assignment
        # announces this worker's again, "blocked" when held, "judging" when processed.
        held.clear()
        usher.announced.clear()
        # Faust forgets the pause of a partition that was revoked meanwhile: a blocked
        # one stays blocked for this process's life (its code still lacks the version)
        again = [TP(settings.input_topic, p) for p in usher.blocked if TP(settings.input_topic, p) in assigned]
        if again:
            app.consumer.pause_partitions(again)

    def committed(partition: int) -> int:
        # Where a replay after a crash would start: the lower of what Faust believes
        # it committed and what Kafka confirms. Faust advances its own figure even
        # when a commit fails (during a rebalance), and the Warden must never collect
        # a version that a replay will still look for.
        believed = app.consumer._committed_offset.get(TP(settings.input_topic, partition))
        return min(believed or 0, confirmed.get(partition))

    # a group member in name only: it never joins, it only fetches offsets
    confirmed = ConfirmedOffsets(SideConsumer(app, **client_kwargs(settings, f"instance-{instance_id}", "consumer",
                                                                   bootstrap_servers=settings.kafka_bootstrap,
                                                                   group_id=settings.app_id(instance_id),
                                                                   enable_auto_commit=False,
                                                                   isolation_level=ISOLATION_LEVEL)),
                                 settings.input_topic)

    @app.timer(settings.commit_check_interval_ms / 1000)
    async def confirm_committed() -> None:
        if processed and not confirmed.side.closed:
            await confirmed.refresh(processed)

    # partition -> stream items of a partition blocked at an activation this worker
    # cannot follow (app/versions.py): never acknowledged, so nothing past the
    # activation is committed; a worker with newer code resumes from there
    held: dict[int, list] = {}
    install_batch_intake(app, [settings.input_topic], settings.batch_size,
                         held=lambda: [m for messages in held.values() for m in messages], across_partitions=True)

    judges_with = [d.version for d in versions.known.values()]

    async def announce_status(p: int, state: str, offset: int, version: str, remedy: str | None = None) -> None:
        # the API shows it (/readyz); a later record for the same key replaces it
        key, value = status_record(instance_id, p, state, offset, version, judges_with, remedy)
        sent = await app.producer.send(settings.status_topic, key, value, p, None, None)
        guard_delivery(app, sent, f"status of {instance_id} for partition {p}")

    async def hold(message, blocked: Blocked) -> None:
        p = message.partition
        if p not in held:
            held[p] = []
            await announce_status(p, "blocked", blocked.offset, blocked.version, versions.remedy(blocked.version))
            why = ("it activates" if blocked.cause == "activation"
                   else "this instance's Ledger says an earlier run with newer code or a higher version limit "
                        "activated")
            log.warning("instance %s: partition %d blocked at offset %d: %s %s, which this worker "
                        "does not know (it judges with %s). Nothing from offset %d on is judged here; %s: "
                        "it resumes from offset %d",
                        instance_id, p, blocked.offset, why, blocked.version,
                        ", ".join(judges_with), blocked.offset, versions.remedy(blocked.version),
                        blocked.offset)
            metrics.blocked.labels(partition=str(p)).set(1)
            app.consumer.pause_partitions([TP(settings.input_topic, p)])
        held[p].append(message)

    def acknowledge(event, message) -> None:
        # the item's own message through its event (Faust's stream counts it), a
        # companion through the consumer
        if message is event.message:
            event.ack()
        else:
            app.consumer.ack(message)

    @app.agent(input_topic, concurrency=1, name="usher")
    async def usher_agent(stream):
        # One stream item per fetch: a batch of each input partition it returned
        # (agents/intake.py, UsherItemAcrossPartitions), each batch acknowledged once,
        # at the end of this loop: after its changelog and copy record are queued;
        # never a batch of a blocked partition.
        producer = app.producer
        intake = metrics.intake
        async for event in stream.noack().events():
            # Batches of partitions blocked before this item are held once the rest
            # is done: until then the item's own message, even when it is one of
            # them, keeps a rebalance's drain waiting (BatchConsumer.wait_empty).
            members, parked = [], []
            for message in members_of(event.message):
                (members if message.partition not in usher.blocked else parked).append(message)
            if not members:
                for message in parked:
                    await hold(message, usher.blocked[message.partition])
                continue
            taken = time.time()  # metrics only
            batches = [records_of(message) for message in members]
            for message, batch in zip(members, batches):
                p = message.partition
                # Not an error by itself (transaction markers and aborted records hold
                # offsets; a seek back re-reads), but should a worker ever judge on a
                # state without some events, this line says where it jumped.
                expected = processed.get(p)
                if expected is None:  # the first batch since the assignment
                    expected = app.consumer._committed_offset.get(TP(settings.input_topic, p))
                if expected is not None and batch[0].offset != expected:
                    log.info("%s[%d]: this batch starts at offset %d where %d was next (%s)", settings.input_topic,
                             p, batch[0].offset, expected,
                             "the last batch processed" if p in processed else "the committed offset")
                if p not in rebuilt:
                    warden.rebuild(p)
                    rebuilt.add(p)
                if p not in producer_clocked:
                    clocked = next((r for r in batch if r.timestamp_type != LOG_APPEND_TIME), None)
                    if clocked is not None:
                        producer_clocked.add(p)
                        log.warning("%s[%d]@%d carries a producer's timestamp (CreateTime): it moves no stream "
                                    "time. Set message.timestamp.type=LogAppendTime on the topic again "
                                    "(kafka-configs.sh --alter ... --add-config message.timestamp.type=LogAppendTime)",
                                    settings.input_topic, p, clocked.offset)
            if not ready.is_set() and app.tables.recovery.completed.is_set():
                announce()  # before this run's first copy record, so the log tells the truth
            if live is not None:
                usher.faults = live.poll()  # on or off from this item on, without a restart
            began = time.perf_counter()
            outputs = usher.process(batches[0] if len(batches) == 1 else [r for b in batches for r in b], committed)
            evaluated = time.perf_counter()
            await store.flush()
            by_partition: dict[int, list] = {}
            for output in outputs:
                by_partition.setdefault(output.partition, []).append(output)
            sent = []
            watermarks = []
            n = sum(len(b) for b in batches)
            try:
                for message, batch in zip(members, batches):
                    p = message.partition
                    blocked = usher.blocked.get(p)
                    # a blocked batch claims only the offsets below the activation it stopped at
                    watermark = batch[-1].offset + 1 if blocked is None else blocked.offset
                    watermarks.append(watermark)
                    mine = by_partition.get(p)
                    if mine:
                        for value in seal_batch(instance_id, p, watermark, mine):
                            sent.append((await producer.send(output_name, None, value, p, None, None), p))
                    processed[p] = watermark
            finally:
                # also when a later send raised: the ones queued before it are watched
                handed = time.perf_counter()
                watch_copies(app, metrics.ack, sent, output_name, handed, n)
            metrics.events.inc(n)
            for batch in batches:
                metrics.batch.observe(len(batch))
                observe_many(intake, max(0.0, taken - batch[0].timestamp / 1000), len(batch))
            observe_many(metrics.evaluation, evaluated - began, n)
            observe_many(metrics.produce, handed - evaluated, n)
            # (processed may be cleared by an assignment while this awaits: the
            # watermarks are this item's own)
            for message, watermark in zip(members, watermarks):
                for q, offset, version in usher.statuses(message.partition, watermark):
                    await announce_status(q, "judging", offset, version)
            for message in members:
                if message.partition not in usher.blocked:
                    acknowledge(event, message)
            for message in (*members, *parked):
                blocked = usher.blocked.get(message.partition)
                if blocked is not None:
                    await hold(message, blocked)

    def announce() -> None:
        ready.set()
        log.log(logs.NOTICE, "instance %s ready: recovery complete, advertising watermarks", instance_id)
        metrics.ready.set(1)

    @app.timer(READY_CHECK_S)
    async def announce_ready() -> None:
        # instanceReady gate: watermarks ride in the copy records, which only batches
        # processed after table recovery produce (Faust hands the agent no record of a
        # partition before its recovery completes), and each names only offsets this run
        # has processed and whose copies are in it or before it on the same partition:
        # never the progress of a run before a crash. The ready line is logged here when
        # recovery completes with nothing to process, else by the agent before its first
        # batch's copy record.
        if ready.is_set() or not app.tables.recovery.completed.is_set():
            return
        announce()

    @app.timer(TRIM_INTERVAL_S)
    async def trim() -> None:
        # the pages of flushed memtables back to the OS (tables/allocator.py)
        trim_heap()

    serve_metrics(app, metrics.registry, settings.faust_metrics)

    app.docket = {"usher": usher, "store": store, "registrar": registrar, "warden": warden, "metrics": metrics,
                  "processed": processed, "held": held}
    return app


def partitions_without_table(assigned, input_topic: str, changelog_topic: str) -> list[int]:
    """The partitions of ``input_topic`` in ``assigned`` (TPs: a worker's whole
    assignment) whose ``changelog_topic`` partition is not in it, in order. Faust's
    assignor gives a worker the changelog partition of each input partition it owns
    (the two topics are copartitioned), which the worker restores the Ledger from;
    without it the worker would judge that partition's events on an empty Ledger
    (ChangelogBeforeWorker)."""
    tables = {tp.partition for tp in assigned if tp.topic == changelog_topic}
    return sorted(tp.partition for tp in assigned if tp.topic == input_topic and tp.partition not in tables)


def watch_copies(app, histogram: Histogram, sent: list[tuple[asyncio.Future, int]], topic: str,
                 handed: float, n: int) -> None:
    """Watch the copy records of one item, ``sent`` as (aiokafka send future, partition):
    one that is not delivered stops the worker's commits (agents/intake.py
    check_delivery, stop_committing); once all are, ``histogram`` observes ``handed`` ->
    then (s, perf_counter), ``n`` times. One callback per future (nothing waits on
    them), where a delivery check and an ack timer were two."""
    if not sent:
        return
    left = [len(sent)]

    def watcher(p: int) -> Callable[[asyncio.Future], None]:
        def done(future: asyncio.Future) -> None:
            if check_delivery(app, future, f"copies of {topic}[{p}]"):
                left[0] -= 1
                if left[0] == 0:
                    observe_many(histogram, max(0.0, time.perf_counter() - handed), n)
        return done

    for future, p in sent:
        future.add_done_callback(watcher(p))


def _check_id(ident: str) -> str:
    problem = instance_id_problem(ident)
    if problem:  # it names topics, consumer groups and data directories
        raise click.BadParameter(f"{ident!r}: {problem}")
    return ident


@click.command("instance")
@click.option("--id", "instance_id", required=True, callback=lambda _c, _p, v: _check_id(v),
              help="instance id, e.g. a (letters, digits, - and _)")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="RocksDB directory of this worker [default: $DOCKET_DATA_ROOT/<prefix>-<id>]")
@click.option("--web-port", type=PORT, default=None, help="serve Faust's web endpoints on this port")
@click.option("--inject-faults", "faults", default=None, metavar="KIND:RATE",
              help="FOR TESTS AND DEMOS: corrupt outputs (bitflip) or state (state) at this rate")
@click.option("--faults-file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
              help="FOR TESTS AND DEMOS: the live fault switch; before each batch, KIND:RATE in PATH turns "
                   "faults on, an empty file or off turns them off (the fault console uses it)")
@click.option("--wait", "wait_s", type=Seconds(zero_ok=True), default=0.0, metavar="SECONDS",
              help="wait up to SECONDS for Kafka and the topics instead of failing at once [default: 0]")
def instance(instance_id: str, data_dir: Path | None, web_port: int | None, faults: str | None,
             faults_file: Path | None, wait_s: float) -> None:
    """Run a worker of one redundant instance."""
    settings = worker_settings()
    if faults and faults_file is not None:
        raise click.BadParameter("give --inject-faults (faults for the worker's life) or --faults-file "
                                 "(switched live), not both", param_hint="--faults-file")
    try:
        fault_spec = FaultSpec.parse(faults) if faults else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--inject-faults") from None
    data_dir = data_dir or default_data_dir(settings, instance_id)
    preflight(settings, instance_id, data_dir, wait_s)
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust wants one
    app = build(settings, instance_id, data_dir, web_port, fault_spec, faults_file)
    run_worker(app, settings)


def default_data_dir(settings: Settings, instance_id: str) -> Path:
    """Where a worker of instance ``instance_id`` keeps its RocksDB data unless told:
    ``$DOCKET_DATA_ROOT/<prefix>-<id>``."""
    return settings.data_root / settings.app_id(instance_id)


def preflight(settings: Settings, instance_id: str, data_dir: Path, wait_s: float = 0.0) -> None:
    """What an instance worker checks and prepares before it starts, however it is
    started (``docket instance``, or ``faust -A docket_apps.instance worker`` through
    :class:`agents.worker.DocketWorker`): a warning when ``instance_id`` is not in
    DOCKET_INSTANCES; Kafka answers, the input topic, the instance's output topic and
    the status topic exist (waiting up to ``wait_s`` seconds for them first) and the input topic has
    broker timestamps, else click.ClickException saying what to do; the Ledger's
    changelog topic exists (:func:`create_changelog` creates it); ``data_dir``
    exists, is this worker's alone and holds no other domain's state, and the topics
    serve DOCKET_DOMAIN. Runs its checks in event loops of its own (asyncio.run)."""
    if instance_id not in settings.instances:
        click.echo(f"warning: instance {instance_id!r} is not in DOCKET_INSTANCES "
                   f"({','.join(settings.instances)}); the Clerk will not read its outputs", err=True)
    topics = [settings.input_topic, settings.output_topic(instance_id), settings.status_topic]
    from app.topics import changelog_spec, topic_name_problem

    # a name Kafka cannot hold: no wait ends it, and `docket topics create` refuses it too
    # (a 226-character --id said "run `docket topics create`": the fourteenth trial)
    # the id is --id's, not one of DOCKET_INSTANCES' (the fifteenth trial)
    too_long = topic_name_problem([*topics, changelog_spec(settings, instance_id).name], "the instance's --id")
    if too_long:
        raise click.ClickException(too_long)
    wait_for_topics_cli(settings, topics, wait_s)
    asyncio.run(check_topics(settings, topics))
    create_changelog(settings, instance_id)
    claim_data_dir(data_dir)
    # the topics first: a worker refused for them must not have marked the directory
    check_topics_domain(settings)
    claim_domain(data_dir, settings.domain)


def create_changelog(settings: Settings, instance_id: str) -> None:
    """Create the instance's Ledger changelog topic (app/topics.py changelog_spec) if
    it does not exist, before the worker's consumer starts; raise click.ClickException
    if it exists with another partition count or the broker refuses it.

    Why not leave it to Faust, which declares it at start-up: its consumer may fetch
    the topic metadata first, and aiokafka does not look for a topic it found missing
    again until its metadata expires (metadata.max.age.ms, 5 min). A worker that leads
    the group meanwhile assigns every rebalance without the changelog partitions
    (Faust's assignor: "Ignoring missing topic"), so a worker that joins takes input
    partitions with no table to restore and judges them on an empty Ledger: in
    tests/integration/test_scale_out.py every copy of instance a after the first
    join diverged (ChangelogBeforeWorker)."""
    from app.topics import TopicError, changelog_spec, create_topics

    try:
        asyncio.run(create_topics(settings, specs=[changelog_spec(settings, instance_id)]))
    except TopicError as exc:
        raise click.ClickException(exc.message) from None


def check_topics_domain(settings: Settings) -> None:
    """Refuse (click.ClickException) when the instances' status records say the topics
    under this prefix serve another domain than DOCKET_DOMAIN (TopicsServeOneDomain): a
    fresh data directory restores another domain's tables from the changelogs, and a
    worker of another domain joining a group diverges on every event. A status topic
    that cannot be read is reported and the check skipped: the start is not held up."""
    from aiokafka.errors import KafkaError

    from app.status import domain_conflict, read_statuses

    try:  # (check_topics has checked the input topic's partition count)
        statuses = asyncio.run(read_statuses(settings, 15.0))
    except (TimeoutError, KafkaError, OSError) as exc:
        click.echo(f"warning: could not read {settings.status_topic} to check which domain its topics serve "
                   f"({exc or type(exc).__name__}); starting without that check", err=True)
        return
    conflict = domain_conflict(settings, statuses)
    if conflict is not None:
        raise click.ClickException(conflict)
