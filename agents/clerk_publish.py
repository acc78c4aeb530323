"""How the Clerk publishes: in Kafka transactions, each carrying one or more
copy-batch items, on one transactional producer per lane: all the partitions of a
worker that holds every partition, or one input partition of a worker that holds
some. Spec: specs/clerk.allium (ClerkClaimsPartitionBeforeSeed,
ClerkPublishesOneTransactionPerCycle, ClerkPublishesItemAtomically,
FencedClerkPublishesNothing, ClerkRenewsProducerOnRefusedBatch).

Why transactions: partitions move between Clerk workers by rebalance, and a worker
that was paused past its session timeout (a GC pause, a frozen VM, SIGSTOP) wakes up
still believing it owns them. Without fencing it could publish a decision the new
owner, seeded from the records it could read, publishes too. The transactional ids
are the same on every Clerk worker (``<app id>-whole``, ``<app id>-p<partition>``),
and the new owner's claim starts a producer (InitProducerId) of every id the old
owner may have published the partition on, which bumps its epoch: the broker aborts
the old owner's open transaction and refuses its later ones (ProducerFenced). The
new owner reads the results topic for its restart seed only after that,
read_committed, so it sees every decision the old owner committed and none it may
still try to.

Readers of ``<prefix>.results``, ``.entities`` and ``.divergences`` must read with
isolation.level=read_committed (every docket reader does), or they may see a fenced
worker's aborted records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

import aiokafka.producer.sender
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerClosed, ProducerFenced

from agents.clerk_core import Publish, entity_record
from app.batching import Deliveries, retrieved, send_batched
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

# How many transactions in a row one lane may have refused (a record batch the broker
# would not take) before the worker gives up on it and stops (stop_committing); each
# refusal renews the lane's producer first (ClerkRenewsProducerOnRefusedBatch).
REFUSALS_BEFORE_STOP = 3

# As Faust's producer for the instances' copies (agents/instance.py faust_settings):
# a batch of results for a busy partition is a few hundred KiB.
MAX_BATCH_BYTES = 512 * 1024


class BatchRefused(Exception):
    """The broker refused a record batch of the transaction in flight (``cause``: for
    example OutOfOrderSequenceNumber, after a broker restart lost track of one of the
    producer's batches). The transaction was not committed, and the producer can
    commit nothing sound any more (its sequence numbers are past the broker's)."""

    def __init__(self, transactional_id: str, cause: BaseException) -> None:
        super().__init__(f"a record batch of a transaction on {transactional_id} was refused: {cause!r}")
        self.cause = cause


class PartitionLost(Exception):
    """This worker may publish nothing more for ``partitions``: another Clerk worker
    claimed their transactional id (``fenced``) or they were revoked while the item
    was being published. Nothing of the item is visible to read_committed readers;
    the item's copies stay unacknowledged for the partitions' owner."""

    def __init__(self, partitions, fenced: bool) -> None:
        partitions = sorted(partitions)
        super().__init__(partitions, fenced)
        self.partitions = partitions
        self.fenced = fenced


# The lane of a worker that holds every partition: one transactional id for all of them.
WHOLE = "whole"


class PartitionProducers:
    """The transactional aiokafka producers of the input partitions this worker has
    claimed, and the lane (transactional id) each partition publishes on.

    A worker whose assignment holds every partition of the Clerk's topics (``whole``:
    one Clerk worker, the usual case) publishes all of them on ONE producer,
    transactional id ``<app id>-whole``, so one transaction carries the decisions of
    every partition (one AddPartitionsToTxn and one EndTxn per cycle instead of one
    per partition: ClerkPublishesOneTransactionPerCycle). A worker that holds some of
    them has one producer per partition, ``<app id>-p<partition>``. Either way a claim
    fences every id the partition's previous owner may have published on: a whole
    claim starts the whole producer and fences each per-partition id, a partial claim
    starts the partition's producer and fences the whole id (once per assignment).

    :meth:`claim` must complete before the partition's restart seed is read; it takes
    one InitProducerId round trip per id started or fenced (side by side), plus the
    abort of a previous owner's open transaction, if any. :meth:`release` stops the
    producers of revoked partitions. Raises KafkaError from :meth:`claim` when the
    broker refuses (for example a missing TransactionalId ACL on a secured
    cluster)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producers: dict[int, AIOKafkaProducer] = {}  # partition -> its lane's producer
        self._lanes: dict[int, int | str] = {}  # partition -> its lane: itself, or WHOLE
        self._fenced_whole = False  # this assignment's partial claims fenced the whole id
        self._releases = 0  # a claim that a revocation overtook must not count

    def transactional_id(self, lane: int | str) -> str:
        """The same on every Clerk worker of this stack: ``<app id>-p<partition>`` for
        one partition's lane, ``<app id>-whole`` for the lane of every partition."""
        app_id = self.settings.app_id("clerk")
        return f"{app_id}-{lane}" if lane == WHOLE else f"{app_id}-p{lane}"

    def owns(self, partition: int) -> bool:
        return partition in self._producers

    def get(self, partition: int) -> AIOKafkaProducer:
        return self._producers[partition]

    def lane(self, partition: int) -> int | str:
        """The lane ``partition`` publishes on: WHOLE, or the partition itself (also
        for a partition not claimed)."""
        return self._lanes.get(partition, partition)

    def partitions_of(self, lane: int | str) -> list[int]:
        """The claimed partitions that publish on ``lane``, in order."""
        return sorted(p for p, claimed in self._lanes.items() if claimed == lane)

    async def claim(self, partition: int, every: Collection[int] = ()) -> None:
        """Claim ``partition``. ``every``: all partitions of the Clerk's topics when
        this worker's assignment holds each of them (then the claim is whole), else
        empty. Raises PartitionLost if the partition was revoked meanwhile."""
        if partition in self._producers:
            return
        releases = self._releases
        lane: int | str = WHOLE if partition in every else partition
        if lane == WHOLE:
            shared = next((self._producers[p] for p, claimed in self._lanes.items() if claimed == WHOLE), None)
            if shared is not None:
                self._producers[partition], self._lanes[partition] = shared, WHOLE
                return
            fence = [self.transactional_id(p) for p in sorted(every)]
        else:
            fence = [] if self._fenced_whole else [self.transactional_id(WHOLE)]
        producer = self._producer(self.transactional_id(lane))
        try:
            await asyncio.gather(producer.start(), *(self._fence(tid) for tid in fence))
        except BaseException:
            await _stop_quietly(producer)
            raise
        if releases != self._releases:
            await _stop_quietly(producer)
            raise PartitionLost([partition], fenced=False)
        if lane != WHOLE:
            self._fenced_whole = True
        self._producers[partition], self._lanes[partition] = producer, lane

    def _producer(self, transactional_id: str) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(**client_kwargs(s, "clerk", "producer", bootstrap_servers=s.kafka_bootstrap,
                                                transactional_id=transactional_id, enable_idempotence=True,
                                                acks="all", max_batch_size=MAX_BATCH_BYTES))

    async def _fence(self, transactional_id: str) -> None:
        """Bump ``transactional_id``'s producer epoch (InitProducerId, which aborts its
        open transaction) and stop: whoever published on it is fenced."""
        producer = self._producer(transactional_id)
        try:
            await producer.start()
        finally:
            await _stop_quietly(producer)

    async def renew(self, lane: int | str) -> None:
        """Replace ``lane``'s producer with a new one on the same transactional id, for
        the partitions claimed on it: the old one is stopped, and the new one's
        InitProducerId bumps the id's epoch, which aborts the old one's open
        transaction (never committed) and starts its sequence numbers afresh. Takes
        one InitProducerId round trip. Raises PartitionLost when the lane's partitions
        were released before or during the renewal, KafkaError when the broker
        refuses (ClerkRenewsProducerOnRefusedBatch)."""
        partitions = sorted(p for p in self._producers if self.lane(p) == lane)
        if not partitions:
            raise PartitionLost([], fenced=False)
        old, releases = self._producers[partitions[0]], self._releases
        await _stop_quietly(old)
        producer = self._producer(self.transactional_id(lane))
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        if releases != self._releases or any(self._producers.get(p) is not old for p in partitions):
            await _stop_quietly(producer)
            raise PartitionLost(partitions, fenced=False)
        for p in partitions:
            self._producers[p] = producer

    async def release(self, partitions) -> None:
        """Forget ``partitions``; stop each producer no claimed partition uses any more."""
        self._releases += 1
        stopping = []
        for p in sorted(partitions):
            producer = self._producers.pop(p, None)
            self._lanes.pop(p, None)
            if producer is not None and producer not in stopping and producer not in self._producers.values():
                stopping.append(producer)
        if not self._producers:
            self._fenced_whole = False  # the next assignment's claims fence it again
        for producer in stopping:
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
    """What waits to be published on one lane (a transactional producer: one input
    partition's, or every partition's): per partition, results, divergence reports, and
    callbacks to run once everything queued before them has committed."""

    __slots__ = ("callbacks", "divergences", "in_flight", "results", "task")

    def __init__(self) -> None:
        self.results: dict[int, list[Publish]] = {}
        self.divergences: dict[int, list[bytes]] = {}
        self.callbacks: dict[int, list[Callable[[], None]]] = {}
        self.task: asyncio.Task | None = None
        self.in_flight: list[int] = []  # the partitions of the transaction in flight

    def partitions(self) -> set[int]:
        """The partitions with something queued or in flight."""
        return {*self.results, *self.divergences, *self.callbacks, *self.in_flight}

    def empty(self) -> bool:
        return not (self.results or self.divergences or self.callbacks)

    def take(self) -> tuple[dict, dict, dict]:
        taken = self.results, self.divergences, self.callbacks
        self.results, self.divergences, self.callbacks = {}, {}, {}
        return taken

    def drop(self, partition: int) -> None:
        for queued in (self.results, self.divergences, self.callbacks):
            queued.pop(partition, None)


class Publisher:
    """Publishes the Clerk's decisions per lane, in transactions, without making the
    agent wait for them.

    The agent queues an item's decisions (:meth:`result`, :meth:`divergence`) and then
    what must wait for them (:meth:`then`: acknowledging copies). Per lane (a
    partition, or every partition of a worker that holds them all:
    PartitionProducers) one transaction is in flight at a time; what the agent queues
    meanwhile goes out in the next one, so a transaction carries one or more
    consecutive items of each of its partitions, all or none of them visible
    (ClerkPublishesItemAtomically), and the lanes' transactions run side by side. Why:
    one awaited transaction per item (one AddPartitionsToTxn and one EndTxn round trip,
    about 5 ms on the 2-core box) made the agent spend nearly all its time waiting, and
    decisions 3-6 s late at any rate (`python -m bench.run --only kafka_native`,
    2026-12-01).

    Results go to ``<prefix>.results`` (one record per decided position, in decision
    order: the clients' contract), the agreed entity states to ``<prefix>.entities``
    (of several versions of one entity only the newest), divergence reports to
    ``<prefix>.divergences``, each to the partition of the input partition they
    decide.

    ``term()`` names the worker's hold on its partitions: the consumer group's
    generation, None while the group rebalances. A lane's producer is renewed only while
    it names the same hold as when the transaction began (ClerkRenewsProducerOnRefusedBatch).

    ``on_published(partition, results)`` runs after each committed transaction, per
    partition it carried results of; ``on_lost(partition, fenced)`` for each partition
    of a lane that is lost (PartitionLost: nothing of the failed transaction is visible
    and its callbacks never run); ``on_error(partition, exc)`` for any other failure
    (the broker unreachable past the producer's timeouts), after which :attr:`failure`
    is set and nothing more is published."""

    def __init__(self, settings: Settings, producers: PartitionProducers, *,
                 on_published: Callable[[int, list[Publish]], None],
                 on_lost: Callable[[int, bool], None],
                 on_error: Callable[[int, BaseException], None],
                 term: Callable[[], object] = lambda: 0) -> None:
        self.settings = settings
        self.producers = producers
        self.term = term
        self.on_published = on_published
        self.on_lost = on_lost
        self.on_error = on_error
        self.failure: BaseException | None = None
        self._lanes: dict[int | str, _Lane] = {}
        self._drops: dict[int, int] = {}  # partition -> how often it was dropped

    def _lane(self, partition: int) -> _Lane:
        key = self.producers.lane(partition)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        return lane

    def result(self, partition: int, action: Publish) -> None:
        self._lane(partition).results.setdefault(partition, []).append(action)

    def divergence(self, partition: int, value: bytes) -> None:
        self._lane(partition).divergences.setdefault(partition, []).append(value)

    def then(self, partition: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued so far for ``partition``'s lane is
        committed: at once when nothing is queued or in flight. Never runs if the
        partition is lost or dropped first."""
        key = self.producers.lane(partition)
        lane = self._lane(partition)
        if lane.task is None and lane.empty():
            callback()
            return
        lane.callbacks.setdefault(partition, []).append(callback)
        if lane.task is None:
            lane.task = asyncio.ensure_future(self._run(key, lane))

    def drop(self, partition: int) -> None:
        """Forget what is queued for ``partition`` (revoked or lost). A transaction in
        flight still completes, but its callbacks for ``partition`` do not run."""
        self._drops[partition] = self._drops.get(partition, 0) + 1
        for key, lane in list(self._lanes.items()):
            lane.drop(partition)
            if lane.empty() and lane.task is None:
                del self._lanes[key]

    async def settle(self, partitions=None) -> None:
        """Wait until what is queued for ``partitions`` (default: all) is published
        or has failed."""
        wanted = None if partitions is None else set(partitions)
        while True:
            tasks = [lane.task for lane in list(self._lanes.values())
                     if lane.task is not None and (wanted is None or not wanted.isdisjoint(lane.partitions()))]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _run(self, key: int | str, lane: _Lane) -> None:
        try:
            while not lane.empty() and self._lanes.get(key) is lane and self.failure is None:
                results, divergences, callbacks = lane.take()
                partitions = lane.in_flight = sorted({*results, *divergences, *callbacks})
                drops = {p: self._drops.get(p, 0) for p in partitions}
                try:
                    await self._publish_renewing(key, results, divergences)
                except PartitionLost as lost:
                    # (a partition dropped meanwhile was forgotten already, and may be
                    # claimed again since)
                    for p in lost.partitions:
                        if self._drops.get(p, 0) == drops.get(p, self._drops.get(p, 0)):
                            self.drop(p)
                            self.on_lost(p, lost.fenced)
                    return
                except Exception as exc:  # noqa: BLE001 - any other failure stops the worker
                    self.failure = exc
                    self.on_error(partitions[0], exc)
                    return
                # a partition dropped meanwhile is acknowledged by whoever owns it now
                alive = [p for p in partitions if self._drops.get(p, 0) == drops[p]]
                try:
                    for p in alive:
                        if p in results:
                            self.on_published(p, results[p])
                        for callback in callbacks.get(p, ()):
                            callback()
                except Exception as exc:  # noqa: BLE001 - a bug in the Clerk: stop rather than guess
                    self.failure = exc
                    self.on_error(partitions[0], exc)
                    return
        finally:
            lane.task, lane.in_flight = None, []
            if lane.empty() and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _publish_renewing(self, key: int | str, results: dict[int, list[Publish]],
                                divergences: dict[int, list[bytes]]) -> None:
        """:meth:`_publish`, again on a renewed producer each time the broker refuses a
        batch of it, up to REFUSALS_BEFORE_STOP times; then BatchRefused propagates
        (the worker stops). The same records go out each time: nothing of a refused
        transaction is visible (ClerkRenewsProducerOnRefusedBatch)."""
        term = self.term()
        for attempt in range(1, REFUSALS_BEFORE_STOP + 1):
            try:
                await self._publish(key, results, divergences)
                return
            except BatchRefused as refused:
                if attempt == REFUSALS_BEFORE_STOP:
                    raise
                if term is None or self.term() != term:
                    # the partitions may be another worker's by now: a new epoch on
                    # the id would fence it. Nothing of the transaction is visible;
                    # whoever owns them reads their copies again (this worker claims
                    # them afresh if they are still its own).
                    lost = self.producers.partitions_of(key) or sorted({*results, *divergences})
                    await self.producers.release(lost)
                    raise PartitionLost(lost, fenced=False) from refused
                log.warning("%s; renewing the producer, which aborts that transaction, and publishing the same "
                            "decisions again (refusal %d of at most %d before this worker stops)", refused,
                            attempt, REFUSALS_BEFORE_STOP)
                await self.producers.renew(key)

    async def _publish(self, key: int | str, results: dict[int, list[Publish]],
                       divergences: dict[int, list[bytes]]) -> None:
        """One transaction on lane ``key``'s producer. Raises PartitionLost (nothing
        published) when this worker no longer owns the lane's partitions, BatchRefused
        (nothing published, the transaction left open) when the broker refused a
        record batch of it; other KafkaErrors propagate."""
        partitions = sorted({*results, *divergences})
        if not partitions:
            return
        owned = [p for p in partitions if self.producers.owns(p) and self.producers.lane(p) == key]
        if len(owned) < len(partitions):
            raise PartitionLost(partitions, fenced=False)
        producer = self.producers.get(partitions[0])
        s = self.settings
        deliveries = Deliveries()
        try:
            await producer.begin_transaction()
            for p in partitions:
                decided = results.get(p, [])
                latest = {e[0]: e for r in decided for e in r.entities}
                for topic, records in ((s.results_topic, [(r.key, r.value) for r in decided]),
                                       (s.entities_topic, [entity_record(*e) for e in latest.values()]),
                                       (s.divergences_topic, [(None, v) for v in divergences.get(p, [])])):
                    deliveries.queued(await send_batched(producer, topic, p, records, on_done=deliveries.done))
            # Every batch delivered before the commit: aiokafka 0.14 commits a
            # transaction one of whose batches the broker refused (it only fails that
            # batch's future), and then the item would count as published with records
            # missing. Seen after a broker restart in tests/integration/test_chaos.py:
            # OutOfOrderSequence on results[0..2] for every later transaction, each
            # committed with only its markers, 467 results lost.
            failed = await deliveries.wait()
            if failed:
                # a failed sender fails aiokafka's transaction waiter too, which only
                # commit_transaction reads: retrieve it, or asyncio logs "Future exception
                # was never retrieved" once the producer is collected
                producer._txn_manager.wait_for_transaction_end().add_done_callback(retrieved)
            # a fence anywhere in it wins: renewing then would fence the new owner
            fence = next((o for o in failed if isinstance(o, ProducerFenced)), None)
            if fence is not None:
                raise fence
            if failed:
                raise BatchRefused(self.producers.transactional_id(key), failed[0])
            await producer.commit_transaction()
        except ProducerFenced:
            lost = self.producers.partitions_of(key) or partitions
            await self.producers.release(lost)
            raise PartitionLost(lost, fenced=True) from None
        except ProducerClosed:
            raise PartitionLost(partitions, fenced=False) from None
