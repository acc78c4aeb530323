"""The worker plumbing the instance (agents/instance.py) and the Clerk (agents/clerk.py)
share: the Faust configuration of every docket app (:func:`faust_settings`), running its
worker (:func:`run_worker`), the start-up check of Kafka and the topics
(:func:`check_topics`), the Kafka consumer a worker keeps beside Faust's
(:class:`SideConsumer`) and an instance's reading of its committed offsets with it
(:class:`ConfirmedOffsets`), and the stage histograms' buckets and batched observations
(:data:`STAGE_BUCKETS`, :func:`observe_many`, :class:`HistogramBatch`). The Faust app and
worker classes themselves are agents/worker.py.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import click
import faust
from prometheus_client import Histogram

from agents.worker import DocketWorker, web_host
from app import metadata_backoff
from app.faust_tuning import tune_worker_consumer
from app.event_loop import install as install_event_loop
from app.settings import Settings, load

# Seconds. Steps of 1.5x to 2x, so a quantile interpolated inside a bucket is off by
# well under a bucket's width (a 1-2-5 series puts p99 = 2.4 s anywhere in 2..5 s).
STAGE_BUCKETS = (.0005, .001, .0015, .002, .003, .005, .0075, .01, .015, .02, .03, .05, .075, .1, .15, .2, .3,
                 .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60)


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


log = logging.getLogger("docket.plumbing")


class ConfirmedOffsets:
    """The offsets of ``topic``'s partitions that Kafka confirms as committed for the
    side consumer's group, read with ``side`` (a :class:`SideConsumer`): the bound of the
    Warden's collection (specs/failure-modes.allium CommitFailedDuringRebalance).

    Kafka out of reach (specs/failure-modes.allium CommittedOffsetsUnreadable): a
    :meth:`refresh` that cannot read them, because the consumer cannot connect or
    because the read has not finished within ``timeout_ms`` (aiokafka waits for a lost
    group coordinator for as long as it is away), leaves every figure as it was (never
    higher than what Kafka last confirmed, so the Warden keeps what a replay may need),
    logs one WARNING per outage and one when they are read again, and is not tried again
    for ``retry_ms`` (ms) of the monotonic clock: it never raises, so the worker's timer
    never crashes it (until 2026-12-04 it did: the side consumer's first start, in
    aiokafka's bootstrap, raised KafkaConnectionError out of the timer, and Faust crashed
    the whole worker on it). ``timeout_ms`` is generous (10 s): a read normally takes a
    few ms, and reads that time out on a merely busy worker would stop the Warden
    collecting."""

    def __init__(self, side: SideConsumer, topic: str, retry_ms: int = 1000, timeout_ms: int = 10_000) -> None:
        self.side = side
        self.topic = topic
        self.retry_ms = retry_ms
        self.timeout_ms = timeout_ms
        self.offsets: dict[int, int] = {}  # partition -> offset Kafka confirms committed
        self.unreachable: BaseException | None = None  # the first error of the outage in progress
        self._next_try = 0.0  # time.monotonic() s

    def get(self, partition: int) -> int:
        """The confirmed committed offset of ``partition``; 0 when none was read yet."""
        return self.offsets.get(partition, 0)

    async def refresh(self, partitions) -> bool:
        """Read the committed offsets of ``partitions`` (ints) from Kafka; True when every
        one was read, False when Kafka could not be reached (or this is within
        ``retry_ms`` of such a failure)."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        if self.unreachable is not None and time.monotonic() < self._next_try:
            return False

        async def read() -> None:
            async with self.side.use() as reader:
                for partition in sorted(partitions):
                    offset = await reader.committed(TopicPartition(self.topic, partition))
                    self.offsets[partition] = offset or 0

        try:
            await asyncio.wait_for(read(), self.timeout_ms / 1000)
        except (KafkaError, asyncio.TimeoutError) as exc:
            if isinstance(exc, asyncio.TimeoutError):
                exc = asyncio.TimeoutError(f"no answer within {self.timeout_ms:,} ms")
            if self.unreachable is None:
                log.warning("could not read the committed offsets of %s from Kafka (%r): the Warden keeps every "
                            "version above the offsets last confirmed, and this worker tries again at its next "
                            "check; check that Kafka is reachable", self.topic, exc)
                self.unreachable = exc
            self._next_try = time.monotonic() + self.retry_ms / 1000
            return False
        if self.unreachable is not None:
            log.warning("the committed offsets of %s are read from Kafka again", self.topic)
            self.unreachable = None
        return True


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


def faust_settings(settings: Settings, data_dir: Path, web_port: int | None, component: str = "worker") -> dict:
    """Faust configuration shared by every docket app (instances and the Clerk).
    ``component`` names the app's Kafka clients (client.id ``<prefix>-<component>``);
    the DOCKET_KAFKA_* security settings become Faust's ``broker_credentials``, and the
    internal topics Faust creates (table changelogs) get DOCKET_KAFKA_REPLICATION_FACTOR."""
    from app.kafka_config import _connection, faust_kwargs

    tune_worker_consumer(settings.fetch_max_wait_ms, settings.fetch_min_bytes, settings.fetch_idle_wait_ms)
    metadata_backoff.install()
    return dict(
        **faust_kwargs(settings, component),
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="rocksdb://",
        datadir=str(data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=_connection(settings).replication_factor,
        # No timer or task of docket's runs on the group's leader only (Faust's leader flag), so
        # Faust's leader-election topic, <app id>-__assignor-__leader, serves nothing:
        # without it the worker has one topic less to create at start (its consumer's
        # first metadata request could miss it, and aiokafka logged an ERROR "Topic
        # ... not found in cluster metadata" under `make run`) and to fetch from.
        topic_disable_leader=True,
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
        # DOCKET_METRICS_HOST: where /metrics listens (127.0.0.1 unless told)
        web_bind=settings.metrics_host,
        web_host=web_host(settings.metrics_host),
        # Faust's own debug banners and tables are noise in a long-running service.
        loghandlers=[],
    )


def worker_settings() -> Settings:
    """The DOCKET_* settings of an instance or Clerk worker, with DOCKET_EVENT_LOOP's loop
    installed (app/event_loop.py) before anything creates one. Raises ConfigError."""
    settings = load()
    install_event_loop()
    return settings


def run_worker(app: faust.App, settings: Settings) -> None:
    """Run a Faust worker of ``app`` in the foreground, as every docket process does:
    a :class:`agents.worker.DocketWorker` (no spinner, the process tuned, the app's
    start-up checks first), whatever worker class ``app`` names (the bench's plain
    Faust app is launched the same way)."""
    DocketWorker(app, loglevel=settings.log_level.upper(), quiet=True).execute_from_commandline()


_HELD_DATA_DIRS: dict[Path, int] = {}  # data dir -> its open lock file, held for the life of the process

DATA_DIR_LOCK = ".docket-worker.lock"


def claim_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` and hold an exclusive lock on it (flock on
    ``<data_dir>/.docket-worker.lock``, released when the process exits, however it
    exits). Raises click.ClickException naming the holder's pid when another worker
    holds it: two workers sharing one data directory otherwise fail only when the
    second is given a partition the first holds, with a RocksDB LOCK error (a user
    check of the README's scale-out found it 33 s after start). Raises
    click.ClickException too when the directory cannot be made (a file in its place,
    a read-only or pseudo file system: a traceback before, the twelfth trial)."""
    path = data_dir / DATA_DIR_LOCK
    try:
        if not data_dir.is_dir():
            data_dir.mkdir(parents=True)
        if data_dir.resolve() in _HELD_DATA_DIRS:  # this process holds it already
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        # the lock file too: /proc/self exists, and nothing can be created in it (the
        # thirteenth fresh-user trial); /dev/null exists and is no directory ("File exists")
        reason = "not a directory" if data_dir.exists() and not data_dir.is_dir() else exc.strerror or str(exc)
        raise click.ClickException(
            f"cannot use {data_dir} as this worker's data directory ({reason}): give --data-dir "
            "(or DOCKET_DATA_ROOT) a directory it can create and write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise click.ClickException(
            f"data directory {data_dir} is in use by another worker (pid {holder}): give each worker its own "
            "--data-dir (under `faust ... worker`, which has no such option: a DOCKET_DATA_ROOT of its own; "
            "README, 'Scale-out')") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_DATA_DIRS[data_dir.resolve()] = fd


DOMAIN_MARK = "docket-domain"


def claim_domain(data_dir: Path, domain: str) -> None:
    """Mark ``data_dir`` (already created) as holding the state of ``domain``
    (DOCKET_DOMAIN), in ``<data_dir>/docket-domain``, or raise click.ClickException
    when an earlier run marked it for another domain: an instance of one domain on
    another's tables and topics misreads them (for example, inventory's activation
    history read as accounts versions, which blocks every partition)."""
    path = data_dir / DOMAIN_MARK
    try:
        held = path.read_text().strip()
    except FileNotFoundError:
        path.write_text(domain + "\n")
        return
    if held != domain:
        raise click.ClickException(
            f"data directory {data_dir} holds the state of domain {held!r}, not {domain!r} (DOCKET_DOMAIN); "
            f"its topics (DOCKET_TOPIC_PREFIX) hold the events of {held} too. One topic prefix and data root serve "
            f"one domain: run `make clean` (it deletes var/: the local broker's topics and every worker's "
            f"state) to start afresh with {domain}, or give {domain} its own DOCKET_TOPIC_PREFIX and "
            f"DOCKET_DATA_ROOT; or set DOCKET_DOMAIN={held} again")


async def check_topics(settings: Settings, topics: list[str]) -> None:
    """Raise ClickException unless Kafka answers, every one of ``topics`` exists with
    DOCKET_PARTITIONS partitions and, if the input topic is among them, it has broker
    timestamps (LogAppendTime)."""
    from app.kafka_admin import KafkaUnreachable, connect_admin
    from app.topics import TopicError, check_broker_time, partition_counts

    try:
        admin = await connect_admin(settings.kafka_bootstrap, 10.0, settings)
    except KafkaUnreachable as exc:
        raise click.ClickException(f"{exc} (nothing answered there); start it with `docket broker start`, or set DOCKET_KAFKA_BOOTSTRAP "
                                   "(and the DOCKET_KAFKA_* security settings) for your own Kafka") from None
    try:
        try:
            existing = set(await admin.list_topics())
        except Exception as exc:  # noqa: BLE001  any connection failure gets the same advice
            raise click.ClickException(
                f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); start it with `docket broker start`"
            ) from None
        missing = [t for t in topics if t not in existing]
        if missing:
            # Faust would silently consume nothing from a missing source topic.
            unlisted = [t for t in missing if t.startswith(f"{settings.topic_prefix}.output.")
                        and t not in {settings.output_topic(i) for i in settings.instances}]
            how = ("add the instance to DOCKET_INSTANCES (of every component, `docket topics create` included: it "
                   f"makes output topics for those alone, now {','.join(settings.instances)}), then run "
                   "`docket topics create`" if unlisted else "run `docket topics create`")
            raise click.ClickException(f"topic(s) {', '.join(missing)} do not exist; {how}")
        counts = await partition_counts(admin, topics)
        wrong = sorted((name, n) for name, n in counts.items() if n != settings.partitions)
        if wrong:
            # a Clerk of another count joined the group and claimed partitions of its own
            # count's transactional ids (a fresh-clone user check)
            raise click.ClickException(
                f"existing topics disagree with DOCKET_PARTITIONS={settings.partitions}: "
                + "; ".join(f"{name} has {n} partitions" for name, n in wrong)
                + f". Every component of one stack needs the same DOCKET_PARTITIONS: set it to {wrong[0][1]}, "
                "or use another DOCKET_TOPIC_PREFIX")
        if settings.input_topic in topics:
            try:
                await check_broker_time(admin, settings.input_topic)
            except TopicError as exc:
                raise click.ClickException(exc.message) from None
    finally:
        await admin.close()
