"""One redundant instance: a Faust worker running the Usher and Arbiter over the
input topic, with the Ledger table (entities + Warden entries) in RocksDB.

``docket instance --id a`` runs a worker of app ``<prefix>-a`` (also its consumer
group), reading ``<prefix>.input`` and writing ``<prefix>.output.a``. More workers
of the same instance may run with other ``--data-dir`` values; Faust spreads the
partitions over them.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import sys
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import click
import faust
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import app.domains  # noqa: F401  registers the built-in domains
from agents.faults import FaultInjector, FaultSpec
from agents.intake import guard_delivery
from agents.intake import install as install_batch_intake
from agents.intake import records_of
from agents.usher import Usher
from app.records import LOG_APPEND_TIME, seal_batch
from app.registry import registry
from app.faust_tuning import tune_worker_consumer
from app.kafka_admin import ISOLATION_LEVEL
from app.settings import Settings, load
from app.stack import wait_for_topics_cli
from tables.faust_store import FaustStore
from tables.ledger import Ledger
from tables.registrar import Registrar
from tables.warden import Warden

log = logging.getLogger("docket.instance")

# Allocations between two generation-0 passes of the garbage collector (Python's
# default: 700); see run_worker.
GC_THRESHOLD = 50_000
# How often an instance looks whether Faust's table recovery is complete, to say once
# that it is ready (seconds): the chaos suite and the tests wait for that line.
READY_CHECK_S = 0.2
# Faust runs its Kafka consumer in a thread of its own (with its own event loop); while
# the agent's thread holds the GIL evaluating a batch, that thread waits up to the
# interpreter's switch interval (5 ms by default) at each of its many hand-offs, and a
# fetch is delayed by tens of milliseconds. A shorter interval lets it in sooner.
SWITCH_INTERVAL_S = 0.0005

# Seconds. Steps of 1.5x to 2x, so a quantile interpolated inside a bucket is off by
# well under a bucket's width (a 1-2-5 series puts p99 = 2.4 s anywhere in 2..5 s).
STAGE_BUCKETS = (.0005, .001, .0015, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .15, .2, .3,
                 .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60)


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


def observe_many(histogram: Histogram, value: float, n: int) -> None:
    """``n`` observations of one value (every event of a batch waits as long as its
    batch), in O(1) when prometheus_client's internals are as expected."""
    if n <= 0:
        return
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:
        for _ in range(n):
            histogram.observe(value)
        return
    total.inc(value * n)
    for i, bound in enumerate(bounds):
        if value <= bound:
            buckets[i].inc(n)
            break


class SideConsumer:
    """A Kafka consumer a worker keeps beside Faust's own (the Clerk's reader of the last
    result, an instance's reader of its committed offsets): started on first use and
    stopped when the Faust app shuts down (``on_before_shutdown``), so a clean stop
    leaves no ``Unclosed AIOKafkaConsumer`` behind.

    ``async with side.use() as consumer:`` lends it; uses never overlap (a lock), and the
    shutdown waits for the use in progress. A use after the shutdown (an agent still
    draining its last events) gets a consumer of its own, stopped when the use ends. A
    consumer that fails to start is stopped at once, never left half open."""

    def __init__(self, app: faust.App, **config) -> None:
        self._config = config
        self._consumer = None
        self._lock = asyncio.Lock()
        self.closed = False
        app.on_before_shutdown.connect(self._on_shutdown)

    async def _start(self):
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(**self._config)
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator:
        async with self._lock:
            if self.closed:
                consumer = await self._start()
                try:
                    yield consumer
                finally:
                    await consumer.stop()
                return
            if self._consumer is None:
                self._consumer = await self._start()
            yield self._consumer

    async def close(self) -> None:
        """Stop the consumer (after the use in progress); idempotent."""
        async with self._lock:
            self.closed = True
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                await consumer.stop()

    async def _on_shutdown(self, _app, **_kwargs) -> None:
        await self.close()


class HistogramBatch:
    """Observations for ``histogram`` gathered in plain Python and handed over at once
    (:meth:`flush`): a prometheus_client observe costs about 1.5 us under its lock, a
    bisect and an increment here a fraction of that, per event. Negative values count
    as 0. Falls back to observe() where prometheus_client's internals differ."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds = list(getattr(histogram, "_upper_bounds", ()))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.values: list[float] = []

    def add(self, value: float) -> None:
        value = value if value > 0.0 else 0.0
        if not self.bounds:
            self.values.append(value)
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        h = self.histogram
        if self.values:
            for v in self.values:
                h.observe(v)
            self.values.clear()
        if self.total or any(self.counts):
            for i, n in enumerate(self.counts):
                if n:
                    h._buckets[i].inc(n)
                    self.counts[i] = 0
            h._sum.inc(self.total)
            self.total = 0.0


def faust_settings(settings: Settings, data_dir: Path, web_port: int | None) -> dict:
    """Faust configuration shared by every docket app (instances and the Clerk)."""
    tune_worker_consumer(settings.fetch_max_wait_ms)
    return dict(
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="rocksdb://",
        datadir=str(data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # A batch of input becomes a few hundred KiB of changelog, copies and results
        # per partition; aiokafka sends one record batch per partition per request, so
        # with its 16 KiB default each batch would take a dozen round trips in a row.
        # 512 KiB stays below the broker's largest batch (message.max.bytes, 1 MiB).
        producer_max_batch_size=512 * 1024,
        # Faust's 60 s default means a SIGKILLed worker's partitions wait a minute
        # before its restart (or another worker) may take them over.
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 1000 / 5),
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        # Faust's own debug banners and tables are noise in a long-running service.
        loghandlers=[],
    )


def run_worker(app: faust.App, settings: Settings) -> None:
    """Run a Faust worker of ``app`` in the foreground, as every docket process does."""
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's progress spinner sets the ROOT logger to DEBUG to catch every line, so
    # every logger.debug() in Faust and aiokafka builds a LogRecord: about 8% of a
    # worker's time, for a spinner nobody sees in a service.
    worker.spinner = None
    # The cyclic garbage collector runs a generation-0 pass every 700 allocations, and
    # a batch allocates hundreds of objects per event (parsed JSON, records), nearly all
    # freed by reference counting; its passes, and the full ones they cascade into over
    # everything a worker keeps (Faust, aiokafka, the caches), cost a good share of a
    # worker's time. Objects that live from start-up on are moved out of its sight
    # (freeze), and passes are made rarer; cycles are still collected.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    worker.execute_from_commandline()


# RocksDB options of each ledger partition's database (faust.stores.rocksdb.RocksDBOptions).
# Faust's defaults are sized for a server with one big table: 64 MiB memtables, 3 of
# them, and a 2 GiB block cache, per database, and docket opens one database per
# partition per instance. The working set here is small (an entity's state and a
# Warden entry per live key), so with those defaults a worker's RSS kept growing for
# the whole of a 10-minute soak (memtables fill to 64 MiB before a flush). CPU per
# event did not move (bench/drain.py --events 60000, three alternating runs each:
# 177-213 us with these, 163-215 us with Faust's); with 4 MiB memtables, 2 of them,
# the drain took longer (writes wait for a memtable flush).
LEDGER_ROCKSDB_OPTIONS = {
    "write_buffer_size": 16 * 1024 * 1024,  # bytes per memtable
    "max_write_buffer_number": 3,
    "block_cache_size": 32 * 1024 * 1024,  # bytes
    "target_file_size_base": 16 * 1024 * 1024,  # bytes
}


def build(settings: Settings, instance_id: str, data_dir: Path, web_port: int | None = None,
          faults: FaultSpec | None = None):
    """The Faust app of one instance, and the Usher it drives."""
    domain = registry.get(settings.domain)
    app = faust.App(settings.app_id(instance_id), **faust_settings(settings, data_dir, web_port))
    # Raw bytes: FaustStore writes RocksDB and the changelog itself, and recovery
    # copies changelog bytes straight into RocksDB.
    table = app.Table("ledger", partitions=settings.partitions, key_type=bytes, value_type=bytes,
                      options=dict(LEDGER_ROCKSDB_OPTIONS))
    input_topic = app.topic(settings.input_topic, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw", internal=False)
    output_name = settings.output_topic(instance_id)

    store = FaustStore(app, table)
    registrar = Registrar(Ledger(store), settings.cache_capacity)
    warden = Warden(store, settings.idempotency_ttl_ms)
    usher = Usher(instance_id, domain, registrar, warden, settings.partitions)
    metrics = InstanceMetrics()
    if faults is not None:
        usher.faults = FaultInjector(faults, instance_id)
    rebuilt: set[int] = set()
    producer_clocked: set[int] = set()  # partitions whose CreateTime records were reported
    ready = asyncio.Event()
    processed: dict[int, int] = {}  # partition -> next offset, this run only

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **kwargs) -> None:
        # Recovery may rewrite the table under the caches: start them afresh.
        registrar.clear()
        processed.clear()  # partitions may have moved: only what we process next counts
        for p in list(rebuilt):
            warden.forget(p)
        rebuilt.clear()

    confirmed: dict[int, int] = {}  # partition -> committed offset as Kafka reports it

    def committed(partition: int) -> int:
        # Where a replay after a crash would start: the lower of what Faust believes
        # it committed and what Kafka confirms. Faust advances its own figure even
        # when a commit fails (during a rebalance), and the Warden must never collect
        # a version that a replay will still look for.
        believed = app.consumer._committed_offset.get(TP(settings.input_topic, partition))
        return min(believed or 0, confirmed.get(partition, 0))

    # a group member in name only: it never joins, it only fetches offsets
    offsets_reader = SideConsumer(app, bootstrap_servers=settings.kafka_bootstrap,
                                  group_id=settings.app_id(instance_id), enable_auto_commit=False,
                                  isolation_level=ISOLATION_LEVEL)

    @app.timer(settings.commit_check_interval_ms / 1000)
    async def confirm_committed() -> None:
        if not processed or offsets_reader.closed:
            return
        from aiokafka import TopicPartition

        async with offsets_reader.use() as reader:
            for partition in sorted(processed):
                offset = await reader.committed(TopicPartition(settings.input_topic, partition))
                confirmed[partition] = offset or 0

    install_batch_intake(app, [settings.input_topic], settings.batch_size)

    @app.agent(input_topic, concurrency=1, name="usher")
    async def usher_agent(stream):
        # One stream item per batch of one input partition (agents/intake.py), one
        # acknowledgement per batch: Faust commits past it only once this loop has
        # moved on, after the batch's changelog and copy record are queued.
        producer = app.producer
        intake = metrics.intake
        async for event in stream.events():
            msg = event.message
            p = msg.partition
            taken = time.time()  # metrics only
            if p not in rebuilt:
                warden.rebuild(p)
                rebuilt.add(p)
            if not ready.is_set() and app.tables.recovery.completed.is_set():
                announce()  # before this run's first copy record, so the log tells the truth
            batch = records_of(msg)  # aiokafka's ConsumerRecords: what an InputRecord has
            if p not in producer_clocked:
                clocked = next((r for r in batch if r.timestamp_type != LOG_APPEND_TIME), None)
                if clocked is not None:
                    producer_clocked.add(p)
                    log.warning("%s[%d]@%d carries a producer's timestamp (CreateTime): it moves no stream "
                                "time. Set message.timestamp.type=LogAppendTime on the topic again "
                                "(kafka-configs.sh --alter ... --add-config message.timestamp.type=LogAppendTime)",
                                settings.input_topic, p, clocked.offset)
            began = time.perf_counter()
            outputs = usher.process(batch, committed)
            evaluated = time.perf_counter()
            await store.flush()
            watermark = batch[-1].offset + 1
            for value in seal_batch(instance_id, p, watermark, outputs):
                sent = await producer.send(output_name, None, value, p, None, None)
                guard_delivery(app, sent, f"copies of {output_name}[{p}]")
            handed = time.perf_counter()
            processed[p] = watermark
            n = len(batch)
            metrics.events.inc(n)
            metrics.batch.observe(n)
            observe_many(intake, max(0.0, taken - batch[0].timestamp / 1000), n)
            observe_many(metrics.evaluation, evaluated - began, n)
            observe_many(metrics.produce, handed - evaluated, n)
            _time_acks(metrics.ack, [sent], handed, n)

    def announce() -> None:
        ready.set()
        log.warning("instance %s ready: recovery complete, advertising watermarks", instance_id)

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

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    app.docket = {"usher": usher, "store": store, "registrar": registrar, "warden": warden, "metrics": metrics,
                  "processed": processed}
    return app


def _time_acks(histogram: Histogram, futures: list, handed: float, n: int) -> None:
    """Observe, ``n`` times, ``handed`` -> the last of ``futures`` done (one clock
    reading per batch; nothing waits on it)."""
    futures = [f for f in futures if hasattr(f, "add_done_callback")]
    if not futures:
        return
    left = [len(futures)]

    def done(_future) -> None:
        left[0] -= 1
        if left[0] == 0:
            observe_many(histogram, max(0.0, time.perf_counter() - handed), n)

    for f in futures:
        f.add_done_callback(done)


async def check_topics(settings: Settings, topics: list[str]) -> None:
    """Raise ClickException unless Kafka answers, every one of ``topics`` exists and, if
    the input topic is among them, it has broker timestamps (LogAppendTime)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from app.topics import TopicError, check_broker_time

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    try:
        try:
            await admin.start()
            existing = set(await admin.list_topics())
        except Exception as exc:  # noqa: BLE001  any connection failure gets the same advice
            raise click.ClickException(
                f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); start it with `docket broker start`"
            ) from None
        missing = [t for t in topics if t not in existing]
        if missing:
            # Faust would silently consume nothing from a missing source topic.
            raise click.ClickException(f"topic(s) {', '.join(missing)} do not exist; run `docket topics create`")
        if settings.input_topic in topics:
            try:
                await check_broker_time(admin, settings.input_topic)
            except TopicError as exc:
                raise click.ClickException(exc.message) from None
    finally:
        await admin.close()


@click.command("instance")
@click.option("--id", "instance_id", required=True, help="instance id, e.g. a")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="RocksDB directory of this worker [default: $DOCKET_DATA_ROOT/<prefix>-<id>]")
@click.option("--web-port", type=int, default=None, help="serve Faust's web endpoints on this port")
@click.option("--inject-faults", "faults", default=None, metavar="KIND:RATE",
              help="FOR TESTS AND DEMOS: corrupt outputs (bitflip) or state (state) at this rate")
@click.option("--wait", "wait_s", type=float, default=0.0, metavar="SECONDS",
              help="wait up to SECONDS for Kafka and the topics instead of failing at once [default: 0]")
def instance(instance_id: str, data_dir: Path | None, web_port: int | None, faults: str | None,
             wait_s: float) -> None:
    """Run a worker of one redundant instance."""
    settings = load()
    try:
        fault_spec = FaultSpec.parse(faults) if faults else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--inject-faults") from None
    if instance_id not in settings.instances:
        click.echo(f"warning: instance {instance_id!r} is not in DOCKET_INSTANCES "
                   f"({','.join(settings.instances)}); the Clerk will not read its outputs", err=True)
    topics = [settings.input_topic, settings.output_topic(instance_id)]
    wait_for_topics_cli(settings, topics, wait_s)
    asyncio.run(check_topics(settings, topics))
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop; Faust wants one
    data_dir = data_dir or settings.data_root / settings.app_id(instance_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    app = build(settings, instance_id, data_dir, web_port, fault_spec)
    run_worker(app, settings)
