"""Batch intake (agents/intake.py) on Faust's real consumer class, without a broker:
a fetch is fed to the consumer's drain loop in place of aiokafka's, and acknowledgements
go through Faust's own commit bookkeeping (specs/usher.allium, specs/integration.allium
FetchBatchIntake)."""

from __future__ import annotations

import asyncio
import time
import hashlib
import importlib
import inspect
import logging

import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport import consumer as faust_consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from agents import clerk as clerk_mod
from agents import instance as instance_mod
from agents.intake import FAUST_INTERNALS, BatchMessage, OrderedAcks, guard_delivery, members_of
from app.batching import AIOKAFKA_INTERNALS
from app.settings import SETTINGS, load

BATCH_SIZE = 4


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nobody listens: nothing may connect
    monkeypatch.setenv("DOCKET_BATCH_SIZE", str(BATCH_SIZE))
    return load()


@pytest.fixture
def app(settings, tmp_path):
    app = instance_mod.build(settings, "a", tmp_path / "a")
    # the input topic's acknowledgements count once the agent has subscribed to it
    app.topics.add(app.agents["usher"].channel)
    asyncio.run(app.topics._update_indices())
    return app


@pytest.fixture
def clerk_app(settings, tmp_path):
    """The Clerk's app: its consumer hands over one item per fetch across the output
    topics and their partitions (across_topics and across_partitions)."""
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    capp.topics.add(capp.agents["clerk"].channel)
    asyncio.run(capp.topics._update_indices())
    return capp


def record(tp: TP, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 1_000 + offset, 1, b"k", b"v", None, 1, 1, [])


async def drain(consumer, fetches: list[dict], on_item=None, active: set | None = None) -> list:
    """Feed ``fetches`` (each {tp: records}, as aiokafka's getmany returns them) to the
    consumer's drain loop; returns the stream items it handed on, in order.
    ``on_item(message)``: called as each item is handed over (e.g. a rebalance then);
    ``active``: the partitions Faust's fetch says are not paused (None: all)."""
    delivered = []

    async def callback(message) -> None:
        delivered.append(message)
        if on_item is not None:
            on_item(message)

    class Fetcher:
        _stopped = asyncio.Event()

    fetcher = Fetcher()
    pending = list(fetches)

    async def next_records(timeout: float):
        if not pending:
            fetcher._stopped.set()
            return None, None
        return pending.pop(0), active

    consumer.callback = callback
    consumer._wait_next_records = next_records
    consumer.highwater = lambda tp: 10_000
    await consumer._drain_messages(fetcher)
    return delivered


async def test_a_fetch_becomes_one_item_of_batches_of_one_partition_each(app, settings) -> None:
    """BatchWithinSize, BatchIsOnePartition, BatchKeepsPartitionOffsetOrder,
    OneItemPerPartitionFetch, UsherItemAcrossPartitions: what one fetch returned for
    the partitions of the input topic travels as ONE item, a batch per partition (the
    first a BatchMessage, the others its companions), each of at most DOCKET_BATCH_SIZE
    records of that partition in offset order, the i-th pieces together; a record
    already read is not handed on again; any other topic (a changelog, during recovery)
    is delivered record by record, as Faust does."""
    consumer = app.consumer
    assert consumer.across_partitions and not consumer.across_topics
    p1, p3 = TP(settings.input_topic, 1), TP(settings.input_topic, 3)
    changelog = TP(settings.app_id("a") + "-ledger-changelog", 1)
    fetches = [
        {p1: [record(p1, o) for o in range(0, 10)], p3: [record(p3, 7)], changelog: [record(changelog, 0)]},
        {p1: [record(p1, o) for o in (8, 9, 10, 12)]},  # 8 and 9 were read already; 11 holds no record
    ]
    items = await drain(consumer, fetches)
    assert [shape(m) for m in items if isinstance(m, BatchMessage)] == [
        [(p1, [0, 1, 2, 3], 0), (p3, [7], 7)], [(p1, [4, 5, 6, 7], 4)], [(p1, [8, 9], 8)],
        [(p1, [10, 12], 10)],
    ]
    assert [m.offset for m in items if isinstance(m, BatchMessage)] == [3, 7, 9, 12]
    plain = [m for m in items if not isinstance(m, BatchMessage)]
    assert [(type(m), m.tp, m.offset) for m in plain] == [(ConsumerMessage, changelog, 0)]
    assert all(len(m.records) <= BATCH_SIZE for item in items if isinstance(item, BatchMessage)
               for m in members_of(item))


def compiled_ack(consumer, message) -> None:
    """Acknowledge ``message`` as Faust's compiled stream iterator does
    (faust/_cython/streams.pyx, StreamIterator.after): it inlines Message.ack and
    Consumer.ack, marking the message's own offset and calling no Consumer method."""
    message.acked = True
    tp, offset = message.tp, message.offset
    committed = consumer._committed_offset[tp]
    if (committed is None or offset >= committed) and offset not in consumer._acked_index[tp]:
        consumer._acked_index[tp].add(offset)
        consumer._acked[tp].append(offset)


@pytest.mark.parametrize("acknowledge", [compiled_ack, lambda consumer, message: consumer.ack(message)],
                         ids=["compiled-stream-iterator", "consumer-ack"])
async def test_one_acknowledgement_passes_every_offset_the_batch_covers(app, settings, acknowledge) -> None:
    """BatchAcknowledgedOnce, OneAcknowledgementPerItem, CommitOnlyAcknowledgedOffsets:
    acknowledging a batch's one message, by either of Faust's paths (its compiled
    stream iterator marks the offset itself; the pure-Python one calls Consumer.ack),
    lets Faust's commit (the contiguous acknowledged prefix, _new_offset) pass the whole
    batch, the offsets between ack_from and its records that hold none included; a
    batch not yet acknowledged is never passed, though it was delivered."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 2)
    consumer._committed_offset[tp] = 10
    [first, second] = await drain(consumer, [{tp: [record(tp, 11), record(tp, 13), record(tp, 14)]},
                                             {tp: [record(tp, 15), record(tp, 18)]}])
    assert (first.ack_from, first.offset, second.ack_from, second.offset) == (11, 14, 15, 18)
    assert consumer._new_offset(tp) is None  # delivered, nothing acknowledged
    acknowledge(consumer, first)
    assert consumer._new_offset(tp) == 15  # 11 .. 14: 12 holds no record for this consumer
    consumer._committed_offset[tp] = 15
    assert consumer._new_offset(tp) is None  # the second batch is not acknowledged yet
    acknowledge(consumer, second)
    assert consumer._new_offset(tp) == 19


async def test_a_batch_read_again_below_the_committed_offset_covers_only_what_is_above_it(app, settings) -> None:
    """ResumeAtCommittedOffset, CommitOnlyAcknowledgedOffsets: a batch whose ack_from
    lies below the committed offset (read again after a seek) covers from the committed
    offset on, and its acknowledgement passes it."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 1)
    consumer._committed_offset[tp] = 15
    consumer._read_offset[tp] = 12
    [again] = await drain(consumer, [{tp: [record(tp, 12), record(tp, 16), record(tp, 17)]}])
    assert (again.ack_from, again.offset) == (12, 17)
    compiled_ack(consumer, again)
    assert consumer._new_offset(tp) == 18


def test_items_finished_out_of_order_are_acknowledged_in_read_order(app, settings) -> None:
    """ClerkAcksOnlyFinalPositions, CommitOnlyAcknowledgedOffsets: an item finished
    before an earlier one of its partition waits for it, so Faust's commit (which
    checks only loosely that the acknowledged run starts at the committed offset)
    never passes the earlier one; items of other partitions do not wait."""
    consumer = app.consumer
    tp, other = TP(settings.input_topic, 0), TP(settings.input_topic, 1)
    consumer._committed_offset[tp] = 5

    class Item:  # what OrderedAcks takes: a Faust event's message and ack()
        def __init__(self, tp: TP, offsets: list[int], ack_from: int) -> None:
            self.message = BatchMessage(tp, [record(tp, o) for o in offsets], ack_from, None)
            consumer.cover(self.message)  # as the drain loop does on delivery

        def ack(self) -> None:
            consumer.ack(self.message)

    acks = OrderedAcks()
    held, later, elsewhere = Item(tp, [5], 5), Item(tp, [6, 7], 6), Item(other, [0], 0)
    for item in (held, later, elsewhere):
        acks.read(item)
    acks.finish(later)
    acks.finish(elsewhere)
    assert not later.message.acked and elsewhere.message.acked
    assert consumer._new_offset(tp) is None and consumer._new_offset(other) == 1
    assert acks.waiting() == 2
    acks.finish(held)
    assert held.message.acked and later.message.acked and acks.waiting() == 0
    assert consumer._new_offset(tp) == 8
    # a revoked partition's items are forgotten; finishing one later does nothing
    gone = Item(tp, [8], 8)
    acks.read(gone)
    acks.forget({tp})
    acks.finish(gone)
    assert not gone.message.acked and acks.waiting() == 0


async def test_an_undelivered_batch_stops_every_later_commit_and_crashes_the_worker(app, settings, caplog) -> None:
    """UndeliveredRecordStopsCommits, ProducerFlushAcknowledgesWrites: Faust's flush
    returns as well when a record batch failed; once the producer reports one it could
    not deliver, the consumer commits nothing more (a commit could pass records that are
    not in Kafka) and the worker crashes, to replay from its last commit when
    restarted."""
    from aiokafka.errors import KafkaTimeoutError

    consumer = app.consumer
    tp = TP(settings.input_topic, 0)
    consumer._committed_offset[tp] = 3
    delivered, failed = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
    guard_delivery(app, delivered, "copies of out[0]")
    guard_delivery(app, failed, "changelog records of ledger-changelog[0]")
    delivered.set_result(None)
    with caplog.at_level(logging.ERROR, logger="docket.intake"):
        failed.set_exception(KafkaTimeoutError())
        await asyncio.sleep(0)  # the done callbacks run on the next turn of the loop
    assert isinstance(consumer.undelivered, KafkaTimeoutError)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "docket.intake"]
    assert "changelog records of ledger-changelog[0]" in line and "commits nothing more" in line
    assert await consumer._commit_offsets({tp: 9}) is False
    assert consumer._committed_offset[tp] == 3
    await asyncio.sleep(0)
    assert app.crashed


async def test_a_batch_failing_during_the_commits_flush_stops_that_commit(app, settings, monkeypatch) -> None:
    """UndeliveredRecordStopsCommits, ProducerFlushAcknowledgesWrites: an item is
    acknowledged once its batches are queued, so a commit can begin while one is still
    in flight. Faust flushes the producer and then sends the commit; the flush returns
    as well when that batch FAILED. The commit request is not sent: the batch's
    callback has marked the consumer undelivered before the flush returns."""
    from aiokafka.errors import KafkaTimeoutError

    consumer = app.consumer
    tp = TP(settings.input_topic, 0)
    in_flight = asyncio.get_running_loop().create_future()
    guard_delivery(app, in_flight, "changelog records of ledger-changelog[0]")
    sent: list = []

    async def flush() -> None:  # aiokafka's flush: returns once every batch is done, failed or not
        in_flight.set_exception(KafkaTimeoutError())
        await asyncio.wait([in_flight])

    async def commit(offsets) -> bool:
        sent.append(offsets)
        return True

    monkeypatch.setattr(consumer, "assignment", lambda: {tp})
    monkeypatch.setattr(app.producer, "flush", flush)
    monkeypatch.setattr(consumer._thread, "commit", commit)
    assert consumer.undelivered is None
    assert await consumer._commit_offsets({tp: 9}) is False
    assert sent == [] and isinstance(consumer.undelivered, KafkaTimeoutError)
    await asyncio.sleep(0)


async def test_an_undelivered_copy_record_stops_commits_and_the_ack_time_waits_for_every_copy(app, settings,
                                                                                               caplog) -> None:
    """UndeliveredRecordStopsCommits for an instance's copy records, watched with one
    callback each (agents/instance.py watch_copies): a failed one stops the commits and
    names its topic and partition; the output-ack histogram observes the item's events
    once every copy record of it is delivered, not before."""
    from aiokafka.errors import KafkaTimeoutError
    from prometheus_client import CollectorRegistry, Histogram

    from agents.instance import watch_copies

    loop = asyncio.get_running_loop()
    histogram = Histogram("acks", "test", registry=CollectorRegistry())

    def observed() -> float:
        return next(x.value for x in histogram.collect()[0].samples if x.name.endswith("_count"))

    first, second = loop.create_future(), loop.create_future()
    watch_copies(app, histogram, [(first, 0), (second, 3)], "out", time.perf_counter(), 5)
    first.set_result(None)
    await asyncio.sleep(0)
    assert observed() == 0 and app.consumer.undelivered is None  # one still out
    second.set_result(None)
    await asyncio.sleep(0)
    assert observed() == 5

    failed = loop.create_future()
    watch_copies(app, histogram, [(failed, 2)], "out", time.perf_counter(), 1)
    with caplog.at_level(logging.ERROR, logger="docket.intake"):
        failed.set_exception(KafkaTimeoutError())
        await asyncio.sleep(0)
    assert isinstance(app.consumer.undelivered, KafkaTimeoutError)
    assert observed() == 5  # a failed item's time is not observed
    assert any("copies of out[2]" in r.getMessage() for r in caplog.records if r.name == "docket.intake")
    await asyncio.sleep(0)


# The source of Faust's drain loop that agents/intake.py BatchConsumer._drain_messages
# copies (faust-streaming 0.15.3). When Faust changes it, read the change, carry it
# into BatchConsumer._drain_messages, and put the new digest here.
FAUST_DRAIN_LOOP_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
# Faust's Consumer._new_offset: BatchConsumer.cover relies on how it takes a gap below
# the highest acknowledged offset as acknowledged
FAUST_NEW_OFFSET_SHA256 = "1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0"
# What BatchConsumer.queues_kept relies on (HandOverAfterTheResume): Faust's recovery
# resumes the app's flow right after the seek to the committed offsets (both paths:
# with tables, and without, as the Clerk), looking the resume up when it calls it, and
# mode's resume clears every stream queue
RESUME_AFTER_SEEK_SHA256 = {
    "Recovery.on_recovery_completed": "6ef567acf072e46da3fccbccc6d662371f634f622c3d510972d5df81f70ae3ac",
    "Recovery._resume_streams": "d986a6710c1aca98f08c4c723fb3eadc5bf24576ad4eb9da3dd3eecedda2f24e",
    "FlowControlEvent.resume": "4dcdc1253fd0dcb40de18a3702503c01d21e9da7e5e55b122fb92615f27648d9",
}


def revoke(consumer, tps) -> None:
    """What Faust's revocation does to the consumer's bookkeeping before anything else
    (faust/transport/consumer.py, Consumer.on_partitions_revoked, then
    App._on_partitions_revoked: consumer.stop_flow())."""
    for tp in tps:
        for book in (consumer._gap, consumer._acked, consumer._acked_index, consumer._read_offset,
                     consumer._committed_offset):
            book.pop(tp, None)
    consumer.stop_flow()


async def test_a_revocation_while_an_item_is_handed_over_leaves_no_read_offset_behind(app, settings) -> None:
    """NoReadOffsetAcrossARebalance: a rebalance that revokes the partition while a
    piece of its fetch is being handed over (the agent's queue full, the producer
    busy) stops the hand-over, and the read offset Faust's revocation forgot is not set
    again by the piece: it would outlive the rebalance (the generation changes only at
    the assignment) and cut the next generation's fetch from the committed offset."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 3)
    consumer._read_offset[tp] = 895
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(895, 923)]}],
                        on_item=lambda message: revoke(consumer, [tp]))
    assert [(m.records[0].offset, m.offset) for m in items] == [(895, 898)]  # no piece after the revocation
    assert consumer._read_offset.get(tp) is None


def shape(item) -> list:
    """An item as [(topic-partition, record offsets, ack_from)] per message it carries."""
    return [(m.tp, [r.offset for r in m.records], m.ack_from) for m in members_of(item)]


async def test_the_clerks_item_carries_every_output_partition_of_a_fetch(clerk_app, settings) -> None:
    """ClerkItemAcrossOutputTopics, ClerkItemAcrossPartitions, BatchWithinSize,
    BatchKeepsPartitionOffsetOrder: the Clerk's consumer hands over what one fetch
    returned for every partition of every output topic as ONE item: a batch per
    topic-partition (the first a BatchMessage, the others its companions), each cut to
    DOCKET_BATCH_SIZE records, the i-th pieces together; each partition's read offset
    moves past its own piece, so what was read is not handed over again."""
    consumer = clerk_app.consumer
    assert consumer.across_topics and consumer.across_partitions
    a1, b1 = TP(settings.output_topic("a"), 1), TP(settings.output_topic("b"), 1)
    a3, b2 = TP(settings.output_topic("a"), 3), TP(settings.output_topic("b"), 2)
    fetches = [
        {a1: [record(a1, o) for o in range(6)], b1: [record(b1, o) for o in range(3)], a3: [record(a3, 7)],
         b2: [record(b2, 4)]},
        {b1: [record(b1, o) for o in (2, 3, 5)], a1: [record(a1, 6)]},  # b1's 2 was read already
    ]
    items = await drain(consumer, fetches)
    assert [shape(item) for item in items] == [
        [(a1, [0, 1, 2, 3], 0), (b1, [0, 1, 2], 0), (a3, [7], 7), (b2, [4], 4)],
        [(a1, [4, 5], 4)],
        [(b1, [3, 5], 3), (a1, [6], 6)],
    ]
    assert {tp: consumer._read_offset[tp] for tp in (a1, b1, a3, b2)} == {a1: 7, b1: 6, a3: 8, b2: 5}
    assert all(m.offset == m.records[-1].offset for item in items for m in members_of(item))


async def test_a_revocation_while_the_clerks_item_is_handed_over_moves_no_read_offset(clerk_app, settings) -> None:
    """NoReadOffsetAcrossARebalance, ClerkItemAcrossOutputTopics: a rebalance that begins
    while an item of several output topics is handed over stops the hand-over, and the
    read offset of none of its partitions is set again."""
    consumer = clerk_app.consumer
    a1, b1 = TP(settings.output_topic("a"), 1), TP(settings.output_topic("b"), 1)
    consumer._read_offset[a1], consumer._read_offset[b1] = 10, 20
    items = await drain(consumer, [{a1: [record(a1, o) for o in range(10, 20)],
                                    b1: [record(b1, o) for o in range(20, 22)]}],
                        on_item=lambda message: revoke(consumer, [a1, b1]))
    assert [shape(item) for item in items] == [[(a1, [10, 11, 12, 13], 10), (b1, [20, 21], 20)]]
    assert consumer._read_offset.get(a1) is None and consumer._read_offset.get(b1) is None


def test_an_item_of_several_partitions_is_acknowledged_in_each_partitions_read_order(clerk_app, settings) -> None:
    """ClerkItemAcrossOutputTopics, ClerkAcksOnlyFinalPositions, CommitOnlyAcknowledgedOffsets:
    an item carrying batches of two output partitions takes its place in both
    partitions' read order; each of its messages is acknowledged once it and every
    earlier item of that partition are finished, so a later item of either partition
    finished first waits for it; a revocation forgets every item touching the revoked
    partitions."""
    consumer = clerk_app.consumer
    a, b = TP(settings.output_topic("a"), 0), TP(settings.output_topic("b"), 0)

    class Item:  # a Faust event's message (with companions) and ack()
        def __init__(self, *parts: tuple) -> None:
            messages = [BatchMessage(tp, [record(tp, o) for o in offsets], offsets[0], None) for tp, offsets in parts]
            for m in messages:
                consumer.cover(m)
            self.message = messages[0]
            self.message.companions = tuple(messages[1:])

        def ack(self) -> None:
            consumer.ack(self.message)

    acks = OrderedAcks(ack_companion=consumer.ack)
    both, later_a, later_b = Item((a, [0]), (b, [0, 1])), Item((a, [1, 2])), Item((b, [2]))
    for item in (both, later_a, later_b):
        acks.read(item)
    acks.finish(later_b)
    acks.finish(later_a)
    assert not any(m.acked for item in (both, later_a, later_b) for m in members_of(item.message))
    assert consumer._new_offset(a) is None and consumer._new_offset(b) is None
    acks.finish(both)
    assert all(m.acked for item in (both, later_a, later_b) for m in members_of(item.message))
    assert (consumer._new_offset(a), consumer._new_offset(b)) == (3, 3)
    assert acks.waiting() == 0
    # one partition's item finished, the other's earlier one not: only the first moves
    early_b, pair = Item((b, [3])), Item((a, [3]), (b, [4]))
    acks.read(early_b)
    acks.read(pair)
    acks.finish(pair)
    assert pair.message.acked and not pair.message.companions[0].acked and acks.waiting() == 2
    acks.finish(early_b)
    assert pair.message.companions[0].acked and acks.waiting() == 0
    # revoked: every item touching the partitions is forgotten, finishing it later does nothing
    gone = Item((a, [4]), (b, [5]))
    acks.read(gone)
    acks.forget({a, b})
    acks.finish(gone)
    assert not any(m.acked for m in members_of(gone.message)) and acks.waiting() == 0


def seeks(consumer, monkeypatch) -> list:
    """Record the consumer's seeks (partition, offset) and do what Faust's seek does to
    its bookkeeping (the read offset), without a broker."""
    done = []

    async def seek(tp, offset) -> None:
        done.append((tp, offset))
        consumer._read_offset[tp] = offset if offset else None

    monkeypatch.setattr(consumer, "seek", seek)
    return done


async def assign(consumer, monkeypatch, tps, generation: int) -> None:
    """The consumer's part of an assignment (the app's part: tables, recovery, left out)."""
    async def app_assigned(assigned, generation_id) -> None:
        return None

    monkeypatch.setattr(consumer, "_on_partitions_assigned", app_assigned)
    await consumer.on_partitions_assigned(set(tps), generation)


async def test_after_an_assignment_a_batch_topic_is_read_from_where_its_seek_put_it(
        app, settings, monkeypatch) -> None:
    """NoReadOffsetAcrossARebalance, StartWhereSought, ResumeAtCommittedOffset: at an
    assignment the batch topics' read offsets are forgotten (a changelog's is Faust's,
    kept) and nothing of them is handed over until the seek to the committed offsets; the
    first fetch after the seek is handed over only if it starts where the seek put the
    partition, else the partition is sought back there and the fetch dropped. With a
    stale read offset (923) or a fetch from another position (1069), offsets 887..922
    would have been acknowledged unread."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 3)
    changelog = TP(settings.app_id("a") + "-ledger-changelog", 3)
    consumer._read_offset[tp] = 923  # set by an item of the previous generation
    consumer._read_offset[changelog] = 40
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp, changelog}, 2)
    assert consumer._read_offset.get(tp) is None and consumer._read_offset[changelog] == 40
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(887, 924)]}]) == []  # before the seek

    committed_offsets(consumer, monkeypatch, {tp: 887, changelog: 40})
    await recovery_seek(consumer)
    assert done == [(tp, 887)]  # sought again: a fetch was dropped before the seek
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(923, 930)]}]) == []
    assert done == [(tp, 887), (tp, 887)]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(887, 924)]},
                                   {tp: [record(tp, o) for o in range(924, 926)]}])
    assert [r.offset for m in items for r in m.records] == list(range(887, 926))
    for m in items:
        compiled_ack(consumer, m)
    assert consumer._new_offset(tp) == 926
    assert len(done) == 2  # once a hand-over started there, fetches are not checked


async def test_a_gap_read_from_the_sought_start_holds_no_record_and_is_acknowledged(
        app, settings, monkeypatch) -> None:
    """StartWhereSought, OneAcknowledgementPerItem: when the fetch read from the start
    the partition was sought back to begins later (the offsets between hold transaction
    markers or aborted records), it is handed over and its acknowledgement passes the
    gap; after a seek that found no committed offset, the first fetch is taken as it
    is."""
    consumer = app.consumer
    tp, fresh = TP(settings.input_topic, 1), TP(settings.input_topic, 2)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp, fresh}, 5)
    committed_offsets(consumer, monkeypatch, {tp: 10, fresh: None})  # fresh: no committed offset
    await recovery_seek(consumer)
    assert await drain(consumer, [{tp: [record(tp, 12), record(tp, 13)]}]) == []
    assert done == [(tp, 10)]
    [item] = await drain(consumer, [{tp: [record(tp, 12), record(tp, 13)]}])  # read from 10: 10, 11 hold none
    assert (item.ack_from, item.offset) == (10, 13)
    compiled_ack(consumer, item)
    assert consumer._new_offset(tp) == 14
    [first] = await drain(consumer, [{fresh: [record(fresh, 5)]}])
    assert first.records[0].offset == 5 and done == [(tp, 10)]


async def test_without_a_committed_offset_what_was_dropped_before_the_seek_is_read_again(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: a partition whose group has no committed offset yet (a worker
    killed before its first commit) is not moved by the seek to the committed offsets,
    so the records fetched and dropped before that seek are read again: the partition is
    sought back to the first of them. Taking the next fetch as it came skipped 545..1226
    of a restarted instance on a real broker (fresh-clone CI of 1a98312)."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 0)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 3)
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(0, 4)]}]) == []  # before the seek
    committed_offsets(consumer, monkeypatch, {tp: None})  # the seek finds no committed offset
    await recovery_seek(consumer)
    assert done == [(tp, 0)]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(0, 6)]}])
    assert [r.offset for m in items for r in m.records] == list(range(0, 6))


async def recovery_seek(consumer) -> None:
    """What Faust's recovery does at the end of an assignment's recovery: the seek to
    the committed offsets, then the app's flow resumed, which clears every stream
    queue (faust/tables/recovery.py on_recovery_completed; HandOverAfterTheResume)."""
    await consumer.perform_seek()
    consumer.app.flow_control.resume()


def committed_offsets(consumer, monkeypatch, offsets: dict) -> None:
    """Faust's perform_seek asks aiokafka to seek to the committed offsets and gets
    them back (None: none committed); here without a broker."""
    async def seek_to_committed():
        return dict(offsets)

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)


async def test_a_fetch_dropped_while_the_seek_runs_is_read_again_from_the_committed_offset(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: Faust's seek to the committed offsets goes partition by
    partition while the fetch loop runs on, so a fetch from the position it has just
    set (175..459, the partition's end) can arrive before the seek is over, and is
    dropped as unsought; aiokafka's position is then past it. The partition is sought
    to its committed offset once more and handed over nothing until then; without that
    nothing more was fetched from it (a restarted instance in the chaos suite, 250
    events unanswered). A partition with nothing dropped is not sought again."""
    consumer = app.consumer
    tp, quiet = TP(settings.input_topic, 2), TP(settings.input_topic, 1)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp, quiet}, 4)
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(175, 460)]}]) == []
    committed_offsets(consumer, monkeypatch, {tp: 175, quiet: 125})
    still_unsought = []
    real_seek = consumer.seek

    async def seek(tp_, offset) -> None:  # what a fetch during this seek would meet
        still_unsought.append(await drain(consumer, [{tp: [record(tp, o) for o in range(175, 180)]}]))
        await real_seek(tp_, offset)

    monkeypatch.setattr(consumer, "seek", seek)
    await recovery_seek(consumer)
    assert done == [(tp, 175)] and still_unsought == [[]]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(175, 460)], quiet: [record(quiet, 125)]}])
    batches = [m for item in items for m in members_of(item)]
    assert [r.offset for m in batches if m.partition == 2 for r in m.records] == list(range(175, 460))
    assert [r.offset for m in batches if m.partition == 1 for r in m.records] == [125]


async def test_nothing_is_handed_over_before_the_flow_resumes_after_the_seek(app, settings, monkeypatch) -> None:
    """HandOverAfterTheResume: a partition sought again early in the seek to the
    committed offsets is fetched while the seek of another goes on, but nothing of it
    is handed over until Faust's recovery has resumed the flow after the seek, since
    that resume clears every stream queue. Handed over before it, a piece still in the
    queue was lost with the read offset past it (chaos suite: a restarted instance b
    skipped 16574..16829 of input partition 1, and all its later copies diverged)."""
    consumer = app.consumer
    early, late = TP(settings.input_topic, 1), TP(settings.input_topic, 2)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {early, late}, 6)
    consumer.app.flow_control.resume()  # the recovery's before the seek ("Resuming flow...")
    # a fetch of each dropped while unsought: both are sought again, one after the other
    assert await drain(consumer, [{early: [record(early, o) for o in range(100, 108)],
                                   late: [record(late, o) for o in range(200, 204)]}]) == []
    committed_offsets(consumer, monkeypatch, {early: 100, late: 200})
    fetch_loop = []
    real_seek = consumer.seek

    async def seek(tp_, offset) -> None:
        await real_seek(tp_, offset)
        if tp_ == late:  # the fetch loop meanwhile reads `early`, sought again already
            fetch_loop.append(asyncio.ensure_future(
                drain(consumer, [{early: [record(early, o) for o in range(100, 108)]}])))
            for _ in range(50):  # loop turns enough for a hand-over to reach the queue
                await asyncio.sleep(0)

    real_sought = consumer.sought

    def sought(tps) -> dict:  # `early` first, so that it is sought again before `late`
        again = real_sought(tps)
        return {tp: again[tp] for tp in sorted(again, key=lambda tp: tp != early)}

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "sought", sought)
    await consumer.perform_seek()
    assert done == [(early, 100), (late, 200)]
    assert not fetch_loop[0].done()  # holding the fetch, nothing handed over
    consumer.app.flow_control.resume()  # the recovery's, after the seek: clears the queues
    items = await asyncio.wait_for(fetch_loop[0], 5)
    assert [r.offset for m in items for r in m.records] == list(range(100, 108))


@pytest.mark.parametrize("rebalance", ["revocation", "new generation"])
async def test_a_rebalance_while_waiting_for_the_resume_hands_nothing_over(
        app, settings, monkeypatch, rebalance) -> None:
    """HandOverAfterTheResume, NoReadOffsetAcrossARebalance: a fetch held until the
    flow resumes after the seek is dropped if a rebalance begins first, whether the
    revocation stops the flow or the group's generation moves on (the next
    assignment's seek reads it again)."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 3)
    seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 7)
    committed_offsets(consumer, monkeypatch, {tp: 50})
    await consumer.perform_seek()  # no resume after it yet
    waiting = asyncio.Event()
    real_queues_kept = consumer.queues_kept

    async def queues_kept(generation: int) -> bool:
        waiting.set()
        return await real_queues_kept(generation)

    monkeypatch.setattr(consumer, "queues_kept", queues_kept)
    fetch_loop = asyncio.ensure_future(drain(consumer, [{tp: [record(tp, 50)]}]))
    await asyncio.wait_for(waiting.wait(), 5)
    assert not fetch_loop.done()
    if rebalance == "revocation":
        async def app_revoked(revoked) -> None:  # the app's part: Faust stops the flow
            consumer.stop_flow()

        monkeypatch.setattr(consumer, "_on_partitions_revoked", app_revoked)
        await consumer.on_partitions_revoked({tp})
    else:
        app.consumer_generation_id = 8
    assert await asyncio.wait_for(fetch_loop, 5) == []


async def drop_while_stopped(consumer, fetched: dict) -> None:
    """Feed one fetch (``fetched``, {tp: records}) to the consumer's drain loop while
    the flow is off (the caller stops it): the loop drops it and makes Faust's seek to
    the committed offsets; fails if anything is handed over."""
    assert not consumer.flow_active

    class Fetcher:
        _stopped = asyncio.Event()

    fetcher = Fetcher()
    pending = [fetched]

    async def next_records(timeout: float):
        if pending:
            return pending.pop(), None
        fetcher._stopped.set()  # and the loop ends
        return None, None

    async def callback(message) -> None:
        raise AssertionError("handed over while the flow is off")

    consumer.callback = callback
    consumer._wait_next_records = next_records
    consumer.highwater = lambda tp_: 10_000
    await asyncio.wait_for(consumer._drain_messages(fetcher), 5)


async def test_the_drain_loops_own_seek_leaves_the_partitions_unsought(app, settings, monkeypatch) -> None:
    """StartWhereSought, NoReadOffsetAcrossARebalance: the seek Faust's drain loop makes
    when it finds the flow off (here after a rebalance that ended within its fetch
    wait) does not count as the assignment's seek: nothing is handed over until the
    recovery's seek, which would put the read offset back to the committed offset under
    a fetch already handed over, and so hand it over twice."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 0)
    seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 2)
    committed_offsets(consumer, monkeypatch, {tp: 40})
    consumer.stop_flow()
    await drop_while_stopped(consumer, {tp: [record(tp, 40)]})
    consumer.resume_flow()  # the rebalance ended within the fetch wait
    assert consumer._read_offset[tp] == 40  # Faust's seek ran
    assert await drain(consumer, [{tp: [record(tp, 40)]}]) == []  # still unsought
    await recovery_seek(consumer)  # the recovery's
    assert [m.offset for m in await drain(consumer, [{tp: [record(tp, 40)]}])] == [40]


async def test_a_seek_is_made_in_the_consumers_thread(app, settings, monkeypatch) -> None:
    """StartWhereSought: the batch consumer's seeks (seek_again, seeking back) go to
    aiokafka through the consumer's thread, as its fetches do, not from the worker's
    event loop (Faust's own seek), where one deleted a partition's buffered records
    while the thread iterated them and crashed the Fetcher; the read offset is set as
    Faust's seek sets it."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 1)
    calls = []

    class Aiokafka:
        def seek(self, partition, offset) -> None:
            calls.append(("seek", partition, offset))

    class Thread:
        def _ensure_consumer(self):
            return Aiokafka()

        async def call_thread(self, fun, *args):
            calls.append("in the thread")
            return fun(*args)

    monkeypatch.setattr(consumer, "_thread", Thread())
    await consumer.seek(tp, 175)
    assert calls == ["in the thread", ("seek", tp, 175)] and consumer._read_offset[tp] == 175
    await consumer.seek(tp, 0)
    assert consumer._read_offset[tp] is None


async def test_a_revocation_stops_hand_overs_until_the_next_seek(app, settings, monkeypatch) -> None:
    """NoReadOffsetAcrossARebalance, StartWhereSought: from a revocation on, nothing of
    a revoked batch-topic partition is handed over, even with the flow on (Faust's
    recovery of an earlier assignment may resume it), until the seek that follows the
    next assignment."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 0)
    seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 1)
    committed_offsets(consumer, monkeypatch, {tp: 100})
    await recovery_seek(consumer)
    assert len(await drain(consumer, [{tp: [record(tp, 100)]}])) == 1

    async def app_revoked(revoked) -> None:
        return None

    monkeypatch.setattr(consumer, "_on_partitions_revoked", app_revoked)
    await consumer.on_partitions_revoked({tp})
    assert consumer.flow_active  # nothing stopped the flow here
    assert await drain(consumer, [{tp: [record(tp, 101)]}]) == []

    async def seek_to_committed():  # Faust's perform_seek asks aiokafka for this
        return {tp: 101}

    monkeypatch.setattr(consumer, "seek_to_committed", seek_to_committed)
    await consumer.perform_seek()  # Faust's drain loop seeks whatever is assigned while the flow is off
    assert await drain(consumer, [{tp: [record(tp, 101)]}]) == []  # a seek of the revoked assignment
    await assign(consumer, monkeypatch, {tp}, 2)
    await recovery_seek(consumer)
    assert [m.offset for m in await drain(consumer, [{tp: [record(tp, 101)]}])] == [101]


def test_the_faust_and_aiokafka_internals_batch_intake_uses_keep_their_shape(app) -> None:
    """FetchBatchIntake: every Faust and aiokafka attribute agents/intake.py and
    app/batching.py read, call or override exists, and Faust's drain loop, of which
    BatchConsumer keeps a copy, is the one that copy was made from."""
    consumer = app.consumer  # some are set on the instance (callback)
    for owner, name in FAUST_INTERNALS:
        assert hasattr(consumer if isinstance(consumer, owner) else owner, name), (owner, name)
    for module, cls, name in AIOKAFKA_INTERNALS:
        owner = getattr(importlib.import_module(module), cls)
        assert hasattr(owner, name) or name in inspect.getsource(owner.__init__), (module, cls, name)
    source = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_DRAIN_LOOP_SHA256, (
        "Faust's Consumer._drain_messages changed: port the change to agents/intake.py")
    source = inspect.getsource(faust_consumer.Consumer._new_offset)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_NEW_OFFSET_SHA256, (
        "Faust's Consumer._new_offset changed: check that BatchConsumer.cover's gaps still count as acknowledged")
    from faust.tables.recovery import Recovery
    from mode.utils.queues import FlowControlEvent

    for function in (Recovery.on_recovery_completed, Recovery._resume_streams, FlowControlEvent.resume):
        digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
        assert digest == RESUME_AFTER_SEEK_SHA256[function.__qualname__], (
            f"{function.__qualname__} changed: check that the flow still resumes (clearing the stream queues) "
            "right after the seek to the committed offsets, as BatchConsumer.queues_kept expects")


def test_the_clerk_shortens_aiokafkas_concurrent_transactions_retry() -> None:
    """ClerkPublishesWithoutWaiting: agents/clerk_publish.py sets aiokafka's retry
    delay for an AddPartitionsToTxn refused with CONCURRENT_TRANSACTIONS; the module
    global it sets is still the one aiokafka's sender returns for that error."""
    import aiokafka.producer.sender as sender

    from agents import clerk_publish

    assert sender.BACKOFF_OVERRIDE == clerk_publish.CONCURRENT_TXN_RETRY_S == 0.002
    source = inspect.getsource(sender.AddPartitionsToTxnHandler.handle_response)
    assert "error_type is ConcurrentTransactions" in source and "return BACKOFF_OVERRIDE" in source, (
        "aiokafka's AddPartitionsToTxn retry changed: check agents/clerk_publish.py CONCURRENT_TXN_RETRY_S")


async def test_an_item_across_topics_only_or_partitions_only_keeps_the_other_apart(clerk_app, settings) -> None:
    """OneItemPerPartitionFetch: a consumer across topics only puts the batches of one
    partition number in an item, one across partitions only those of one topic; with
    both (the Clerk, ClerkItemAcrossPartitions) one fetch is one item."""
    consumer = clerk_app.consumer
    a1, b1 = TP(settings.output_topic("a"), 1), TP(settings.output_topic("b"), 1)
    a3, b3 = TP(settings.output_topic("a"), 3), TP(settings.output_topic("b"), 3)
    fetch = {a1: [record(a1, 0)], b1: [record(b1, 0)], a3: [record(a3, 0)], b3: [record(b3, 0)]}
    expected = {(True, False): [[a1, b1], [a3, b3]], (False, True): [[a1, a3], [b1, b3]],
                (True, True): [[a1, b1, a3, b3]], (False, False): [[a1], [b1], [a3], [b3]]}
    for (topics, partitions), grouping in expected.items():
        consumer.across_topics, consumer.across_partitions = topics, partitions
        for tp in fetch:
            consumer._read_offset[tp] = None
        items = await drain(consumer, [dict(fetch)])
        assert [[m.tp for m in members_of(item)] for item in items] == grouping, (topics, partitions)


async def test_a_fetch_dropped_with_the_flow_off_is_read_again_without_a_committed_offset(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: a fetch that a worker's wait began before a rebalance can end
    after the new assignment's partitions are resumed but before the flow is (aiokafka's
    fetched_records waits out the reassignment); the drain loop drops it, and Faust's
    seek then moves only partitions with a committed offset. A partition with none is
    sought back to the first dropped record by the recovery's seek. Taken as the next
    fetch came, offset 0 of input partition 3 was never answered by instance a and the
    later copies of the entities it touched diverged (fresh-clone CI of 7b6c885)."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 3)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 2)
    committed_offsets(consumer, monkeypatch, {tp: None})
    consumer.stop_flow()
    await drop_while_stopped(consumer, {tp: [record(tp, 0)]})
    assert done == []  # Faust's seek found nothing to seek to
    await recovery_seek(consumer)
    consumer.resume_flow()
    assert done == [(tp, 0)]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(0, 3)]}])
    assert [r.offset for m in items for r in m.records] == [0, 1, 2]


async def test_a_fetch_dropped_with_the_flow_off_during_the_seek_sets_where_to_start(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: a partition the seek to the committed offsets found no committed
    offset for takes its first fetch as it comes, unless a fetch of it was dropped with
    the flow off after that (while the seek went on with another partition): then its
    next hand-over must start at the first dropped record, and a fetch from further on
    is dropped and the partition sought back there."""
    consumer = app.consumer
    fresh, other = TP(settings.input_topic, 3), TP(settings.input_topic, 1)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {fresh, other}, 4)
    assert await drain(consumer, [{other: [record(other, o) for o in range(10, 14)]}]) == []  # unsought
    committed_offsets(consumer, monkeypatch, {fresh: None, other: 10})
    consumer.stop_flow()
    real_seek = consumer.seek

    async def seek(tp_, offset) -> None:  # `other` sought again; meanwhile `fresh` is fetched and dropped
        await real_seek(tp_, offset)
        await drop_while_stopped(consumer, {fresh: [record(fresh, 0), record(fresh, 1)]})

    monkeypatch.setattr(consumer, "seek", seek)
    await consumer.perform_seek()
    monkeypatch.setattr(consumer, "seek", real_seek)
    consumer.resume_flow()
    consumer.app.flow_control.resume()
    assert done == [(other, 10)]
    assert await drain(consumer, [{fresh: [record(fresh, 2)]}]) == []
    assert done == [(other, 10), (fresh, 0)]
    items = await drain(consumer, [{fresh: [record(fresh, o) for o in range(0, 3)]}])
    assert [r.offset for m in items for r in m.records] == [0, 1, 2]


async def test_a_fetch_of_a_paused_partition_is_read_again_from_its_first_record(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: a fetch can come back with records of a partition Faust has
    paused since it was sent (an assignment pauses the partitions for the recovery; an
    idle fetch waits up to DOCKET_FETCH_IDLE_WAIT_MS); the drain loop drops them, and
    aiokafka's position is past them. A partition with no committed offset is sought
    back to the first of them by the recovery's seek. Taken as the next fetch came, a
    worker of instance a handed over input partition 3 from offset 4: offset 0 was never
    answered and 115 later copies diverged (fresh-clone CI of 7b6c885)."""
    consumer = app.consumer
    tp, other = TP(settings.input_topic, 3), TP(settings.input_topic, 2)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp, other}, 2)
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(0, 4)]}], active={other}) == []
    committed_offsets(consumer, monkeypatch, {tp: None, other: None})
    await recovery_seek(consumer)
    assert done == [(tp, 0)]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(0, 6)]}])
    assert [r.offset for m in items for r in m.records] == list(range(0, 6))


async def test_a_paused_partitions_fetch_dropped_after_hand_overs_sets_where_to_start(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: once hand-overs follow one another, a fetch dropped because its
    partition is paused makes its first record the start the next hand-over is checked
    against: a fetch from further on is dropped and the partition sought back there."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 1)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 3)
    committed_offsets(consumer, monkeypatch, {tp: 10})
    await recovery_seek(consumer)
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(10, 14)]}])
    assert [r.offset for m in items for r in m.records] == list(range(10, 14))
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(14, 18)]}], active=set()) == []
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(18, 20)]}]) == []
    assert done == [(tp, 14)]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(14, 20)]}])
    assert [r.offset for m in items for r in m.records] == list(range(14, 20))


async def test_a_dropped_fetch_from_the_start_sought_back_to_leaves_the_next_one_checked(
        app, settings, monkeypatch) -> None:
    """StartWhereSought: what is read from the start a partition was sought back to is
    taken as it is (a later first record is a gap holding no record); if that fetch is
    dropped (here: its partition paused), the next one comes from past it and is checked
    against the start again, not taken as the read from there, whose offsets would then
    be acknowledged as a gap unread."""
    consumer = app.consumer
    tp = TP(settings.input_topic, 2)
    done = seeks(consumer, monkeypatch)
    await assign(consumer, monkeypatch, {tp}, 6)
    committed_offsets(consumer, monkeypatch, {tp: 10})
    await recovery_seek(consumer)
    assert await drain(consumer, [{tp: [record(tp, 12), record(tp, 13)]}]) == []  # not from 10: sought back
    assert done == [(tp, 10)]
    assert await drain(consumer, [{tp: [record(tp, o) for o in range(10, 14)]}], active=set()) == []
    assert await drain(consumer, [{tp: [record(tp, 14), record(tp, 15)]}]) == []
    assert done == [(tp, 10), (tp, 10)]
    items = await drain(consumer, [{tp: [record(tp, o) for o in range(10, 16)]}])
    assert [r.offset for m in items for r in m.records] == list(range(10, 16))


def test_the_installed_consumer_logs_under_docket_s_module() -> None:
    """The consumer class install() makes logs through mode's logger named after its
    module: agents.intake, not "abc" (ABCMeta's module, which type() gave it; a
    fresh-user trial read "abc: [^--DocketBatchConsumer]: Consumer shutting down")."""
    from types import SimpleNamespace

    from agents.intake import install

    app = SimpleNamespace(transport=SimpleNamespace(Consumer=None))
    install(app, ["t"], 100)
    assert app.transport.Consumer.__module__ == "agents.intake"
    assert app.transport.Consumer.logger.name == "agents.intake"


def test_the_batch_consumers_thread_closes_its_consumer_within_a_bound(app) -> None:
    """WorkerStopsDuringGroupJoin: the consumer thread of docket's batch consumer is
    DocketConsumerThread, whose stop closes the aiokafka consumer with close_consumer."""
    from agents.consumer_close import DocketConsumerThread

    assert isinstance(app.consumer._thread, DocketConsumerThread)
