"""How the Clerk publishes: one Kafka transaction per copy-batch item, with one
transactional producer per input partition the Clerk worker owns. Spec:
specs/clerk.allium (ClerkClaimsPartitionBeforeSeed, ClerkPublishesItemAtomically,
FencedClerkPublishesNothing).

Why transactions: partitions move between Clerk workers by rebalance, and a worker
that was paused past its session timeout (a GC pause, a frozen VM, SIGSTOP) wakes up
still believing it owns them. Without fencing it could publish a decision the new
owner, seeded from the records it could read, publishes too. The transactional id of
a partition is the same on every Clerk worker (``<app id>-p<partition>``), so the
new owner's producer start (InitProducerId) bumps its epoch: the broker aborts the old
owner's open transaction and refuses its later ones (ProducerFenced). The new owner
reads the results topic for its restart seed only after that, read_committed, so it
sees every decision the old owner committed and none it may still try to.

Readers of ``<prefix>.results``, ``.entities`` and ``.divergences`` must read with
isolation.level=read_committed (every docket reader does), or they may see a fenced
worker's aborted records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiokafka.producer.sender
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerClosed, ProducerFenced

from agents.clerk_core import Publish, entity_record
from app.batching import retrieved, send_batched
from app.kafka_config import client_kwargs
from app.settings import Settings

log = logging.getLogger("docket.clerk")

# A transaction begun right after the previous one committed is refused with
# CONCURRENT_TRANSACTIONS until the coordinator has written the previous one's commit
# markers (a few ms here), and aiokafka retries after a fixed 20 ms
# (aiokafka/producer/sender.py BACKOFF_OVERRIDE, as the Java client's
# AddPartitionsToTxn retry; KAFKA-5477): on a busy partition that wait was most of
# each transaction (back-to-back transactions: p50 24 ms, 2.1 ms with 2 ms; the probe
# in tests/unit/test_intake.py pins the name). Retrying every 2 ms costs a few more
# small requests to the coordinator.
CONCURRENT_TXN_RETRY_S = 0.002
aiokafka.producer.sender.BACKOFF_OVERRIDE = CONCURRENT_TXN_RETRY_S

# As Faust's producer for the instances' copies (agents/instance.py faust_settings):
# a batch of results for a busy partition is a few hundred KiB.
MAX_BATCH_BYTES = 512 * 1024


class PartitionLost(Exception):
    """This worker may publish nothing more for ``partition``: another Clerk worker
    claimed its transactional id (``fenced``) or the partition was revoked while the
    item was being published. Nothing of the item is visible to read_committed
    readers; the item's copies stay unacknowledged for the partition's owner."""

    def __init__(self, partition: int, fenced: bool) -> None:
        super().__init__(partition, fenced)
        self.partition = partition
        self.fenced = fenced


class PartitionProducers:
    """One transactional aiokafka producer per input partition this worker has claimed.

    :meth:`claim` must complete before the partition's restart seed is read; it takes
    one InitProducerId round trip (plus the abort of a previous owner's open
    transaction, if any). :meth:`release` stops the producers of revoked partitions.
    Raises KafkaError from :meth:`claim` when the broker refuses (for example a
    missing TransactionalId ACL on a secured cluster)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._releases = 0  # a claim that a revocation overtook must not count

    def transactional_id(self, partition: int) -> str:
        """The same on every Clerk worker of this stack: ``<app id>-p<partition>``."""
        return f"{self.settings.app_id('clerk')}-p{partition}"

    def owns(self, partition: int) -> bool:
        return partition in self._producers

    def get(self, partition: int) -> AIOKafkaProducer:
        return self._producers[partition]

    async def claim(self, partition: int) -> None:
        """Start ``partition``'s producer. Raises PartitionLost if the partition was
        revoked meanwhile."""
        if partition in self._producers:
            return
        releases = self._releases
        s = self.settings
        producer = AIOKafkaProducer(**client_kwargs(s, "clerk", "producer", bootstrap_servers=s.kafka_bootstrap,
                                                    transactional_id=self.transactional_id(partition),
                                                    enable_idempotence=True, acks="all",
                                                    max_batch_size=MAX_BATCH_BYTES))
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        if releases != self._releases:
            await _stop_quietly(producer)
            raise PartitionLost(partition, fenced=False)
        self._producers[partition] = producer

    async def release(self, partitions) -> None:
        self._releases += 1
        for p in sorted(partitions):
            producer = self._producers.pop(p, None)
            if producer is not None:
                await _stop_quietly(producer)

    async def close(self) -> None:
        await self.release(list(self._producers))


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    # a fenced producer's stop re-raises the fence from its sender task
    try:
        await producer.stop()
    except (KafkaError, ProducerFenced):
        pass


class _Lane:
    """What waits to be published for one input partition: results, divergence
    reports, and callbacks to run once everything queued before them has committed."""

    __slots__ = ("results", "divergences", "callbacks", "task")

    def __init__(self) -> None:
        self.results: list[Publish] = []
        self.divergences: list[bytes] = []
        self.callbacks: list[Callable[[], None]] = []
        self.task: asyncio.Task | None = None

    def empty(self) -> bool:
        return not (self.results or self.divergences or self.callbacks)


class Publisher:
    """Publishes the Clerk's decisions per input partition, in transactions, without
    making the agent wait for them.

    The agent queues an item's decisions (:meth:`result`, :meth:`divergence`) and then
    what must wait for them (:meth:`then`: acknowledging copies). Per partition one
    transaction is in flight at a time; what the agent queues meanwhile goes out in
    the next one, so a transaction carries one or more consecutive items of its
    partition, all or none of them visible (ClerkPublishesItemAtomically), and the
    partitions' transactions run side by side. Why: one awaited transaction per item
    (one AddPartitionsToTxn and one EndTxn round trip, about 5 ms on the 2-core box)
    made the agent spend nearly all its time waiting, and decisions 3-6 s late at any
    rate (`python -m bench.run --only kafka_native`, 2026-12-01).

    Results go to ``<prefix>.results`` (one record per decided position, in decision
    order: the clients' contract), the agreed entity states to ``<prefix>.entities``
    (of several versions of one entity only the newest), divergence reports to
    ``<prefix>.divergences``.

    ``on_published(partition, results)`` runs after each committed transaction;
    ``on_lost(partition, fenced)`` when the partition is lost (PartitionLost: nothing
    of the failed transaction is visible and its callbacks never run);
    ``on_error(partition, exc)`` for any other failure (the broker unreachable past the
    producer's timeouts), after which :attr:`failure` is set and nothing more is
    published."""

    def __init__(self, settings: Settings, producers: PartitionProducers, *,
                 on_published: Callable[[int, list[Publish]], None],
                 on_lost: Callable[[int, bool], None],
                 on_error: Callable[[int, BaseException], None]) -> None:
        self.settings = settings
        self.producers = producers
        self.on_published = on_published
        self.on_lost = on_lost
        self.on_error = on_error
        self.failure: BaseException | None = None
        self._lanes: dict[int, _Lane] = {}

    def _lane(self, partition: int) -> _Lane:
        lane = self._lanes.get(partition)
        if lane is None:
            lane = self._lanes[partition] = _Lane()
        return lane

    def result(self, partition: int, action: Publish) -> None:
        self._lane(partition).results.append(action)

    def divergence(self, partition: int, value: bytes) -> None:
        self._lane(partition).divergences.append(value)

    def then(self, partition: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued so far for ``partition`` is
        committed: at once when nothing is queued or in flight. Never runs if the
        partition is lost or dropped first."""
        lane = self._lane(partition)
        if lane.task is None and lane.empty():
            callback()
            return
        lane.callbacks.append(callback)
        if lane.task is None:
            lane.task = asyncio.ensure_future(self._run(partition, lane))

    def drop(self, partition: int) -> None:
        """Forget what is queued for ``partition`` (revoked or lost). A transaction in
        flight still completes, but its callbacks do not run."""
        self._lanes.pop(partition, None)

    async def settle(self, partitions=None) -> None:
        """Wait until what is queued for ``partitions`` (default: all) is published
        or has failed."""
        while True:
            tasks = [lane.task for p, lane in list(self._lanes.items())
                     if lane.task is not None and (partitions is None or p in partitions)]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _run(self, partition: int, lane: _Lane) -> None:
        try:
            while not lane.empty() and self._lanes.get(partition) is lane and self.failure is None:
                results, lane.results = lane.results, []
                divergences, lane.divergences = lane.divergences, []
                callbacks, lane.callbacks = lane.callbacks, []
                try:
                    await self._publish(partition, results, divergences)
                except PartitionLost as lost:
                    if self._lanes.get(partition) is lane:
                        self.drop(partition)
                        self.on_lost(partition, lost.fenced)
                    return
                except Exception as exc:  # noqa: BLE001 - any other failure stops the worker
                    self.failure = exc
                    self.on_error(partition, exc)
                    return
                if self._lanes.get(partition) is not lane:
                    return  # dropped meanwhile: whoever owns it now acknowledges
                try:
                    if results:
                        self.on_published(partition, results)
                    for callback in callbacks:
                        callback()
                except Exception as exc:  # noqa: BLE001 - a bug in the Clerk: stop rather than guess
                    self.failure = exc
                    self.on_error(partition, exc)
                    return
        finally:
            lane.task = None

    async def _publish(self, partition: int, results: list[Publish], divergences: list[bytes]) -> None:
        """One transaction on ``partition``'s producer. Raises PartitionLost (nothing
        published) when this worker no longer owns ``partition``; other KafkaErrors
        propagate."""
        if not results and not divergences:
            return
        if not self.producers.owns(partition):
            raise PartitionLost(partition, fenced=False)
        producer = self.producers.get(partition)
        s = self.settings
        latest = {e[0]: e for r in results for e in r.entities}
        try:
            await producer.begin_transaction()
            for topic, records in ((s.results_topic, [(r.key, r.value) for r in results]),
                                   (s.entities_topic, [entity_record(*e) for e in latest.values()]),
                                   (s.divergences_topic, [(None, v) for v in divergences])):
                for fut, _ in await send_batched(producer, topic, partition, records):
                    # the transaction's outcome is what counts: a fenced or stopped
                    # producer fails its batches too, which is no news
                    fut.add_done_callback(retrieved)
            await producer.commit_transaction()
        except ProducerFenced:
            await self.producers.release([partition])
            raise PartitionLost(partition, fenced=True) from None
        except ProducerClosed:
            raise PartitionLost(partition, fenced=False) from None
