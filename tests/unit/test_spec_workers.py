"""The Faust apps of an instance and of the Clerk, built for real (agents/instance.py,
agents/clerk.py) but driven without a broker: records go in through Faust's agent test
context, and whatever the app sends goes to a recording producer. What this pins down
is the wiring the integration tests only see from outside: batches, the order of
changelog records, outputs and watermarks on the wire, what an assignment or a
revocation clears, how the Clerk agent acknowledges, publishes and skips, how Faust's
assignor places the Clerk's partitions, docket's topic definitions and the start-up
checks (specs/usher.allium, specs/arbiter.allium, specs/recovery.allium,
specs/clerk.allium, specs/integration.allium, specs/ledger.allium)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import click
import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from faust.types.tuples import Message

from agents import clerk as clerk_mod
from agents import instance as instance_mod
from agents import plumbing
from agents.faults import FaultInjector, FaultSpec
from agents.intake import BatchMessage, OneRecord, members_of
from app import logs
from app.canonical import canonical, digest
from app.records import partition_for, seal
from app.versions import Blocked
from app.settings import SETTINGS, load
from app.topics import topic_specs
from tables.ledger import ENTITY_PREFIX
from tables.warden import WARDEN_PREFIX, clock_key

PARTITIONS = 4


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch):
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nobody listens: nothing may connect
    monkeypatch.setenv("DOCKET_TOPIC_PREFIX", "spec")
    monkeypatch.setenv("DOCKET_PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("DOCKET_BATCH_SIZE", "3")
    monkeypatch.setenv("DOCKET_CACHE_CAPACITY", "77")
    return load()


class _Sent:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.timestamp = 1_700_000_000_000 + offset


class RecordingBatch:
    """Stands in for an aiokafka batch builder: keeps what is appended (up to ``room``)."""

    def __init__(self, room: int) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []
        self.room = room

    def append(self, *, key, value, timestamp):
        if len(self.records) >= self.room:
            return None
        self.records.append((key, value))
        return object()


def claimed(capp, producer, *partitions: int):
    """Seed ``partitions`` in the Clerk app ``capp`` as if their last records had been
    read, and give each ``producer`` as its transactional producer, as if claimed (no
    Kafka here). Returns ``producer``."""
    for p in partitions:
        capp.docket["core"].seed(p, [])
        capp.docket["producers"]._producers[p] = producer
    return producer


def claimed_whole(capp, producer, *partitions: int):
    """As :func:`claimed`, for a worker whose assignment holds every partition: all of
    ``partitions`` publish on one lane, ``producer`` (clerk_publish.WHOLE)."""
    from agents.clerk_publish import WHOLE

    claimed(capp, producer, *partitions)
    for p in partitions:
        capp.docket["producers"]._lanes[p] = WHOLE
    return producer


def putter(capp, ctx, p: int, *, settle: bool = True):
    """``put(topic, value)`` for the Clerk agent's test context: the record arrives on
    ``topic``, partition ``p``; with ``settle``, returns once the transaction publishing
    what the item decided (if any) has committed."""
    async def put(topic: str, value: bytes):
        ctx._get_strtopic = lambda channel: topic  # the topic the record arrives on
        event = await ctx.put(value, partition=p)
        if settle:
            await capp.docket["publisher"].settle()
        return event
    return put


class RecordingProducer:
    """Stands in for app.producer: records every send, in order, and every flush. Its
    ``_producer`` (Faust's aiokafka producer) records the records of every batch sent,
    each as a send."""

    def __init__(self, batch_room: int = 1000) -> None:
        self.log: list[tuple] = []  # ("send", topic, key, value, partition) or ("flush",)
        self.batches = 0
        self.batch_room = batch_room
        self._producer = self  # as Faust's producer holds aiokafka's
        self._request_timeout_ms = 1000
        self._message_accumulator = self  # and aiokafka's producer its accumulator
        self._batches: dict = {}
        self._closed = False
        self.client = self

    async def _wait_on_metadata(self, topic: str) -> None:
        pass

    def create_batch(self) -> RecordingBatch:
        return RecordingBatch(self.batch_room)

    def _append_batch(self, batch: RecordingBatch, tp):
        self.batches += 1
        first = len(self.log)
        for key, value in batch.records:
            self.log.append(("send", tp.topic, key, value, tp.partition))

        class Queued:  # aiokafka's MessageBatch: its future, and the drain waiter send_batched retrieves
            future = asyncio.get_running_loop().create_future()
            _drain_waiter = asyncio.get_running_loop().create_future()

        Queued.future.set_result(_Sent(first))
        Queued._drain_waiter.set_result(None)
        return Queued

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.log.append(("send", topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(_Sent(len(self.log)))
        return fut

    async def flush(self) -> None:
        self.log.append(("flush",))

    # the Clerk's transactional producer per partition (agents/clerk_publish.py)
    async def begin_transaction(self) -> None:
        self.log.append(("begin",))

    async def commit_transaction(self) -> None:
        self.log.append(("commit",))

    @property
    def _txn_manager(self):  # aiokafka's TransactionManager, for its transaction waiter
        return self

    def wait_for_transaction_end(self) -> asyncio.Future:
        self.log.append(("transaction waiter",))
        return asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        self.log.append(("stop",))

    def sent(self, topic: str) -> list[tuple]:
        return [(i, e) for i, e in enumerate(self.log) if e[0] == "send" and e[1] == topic]


class GatedCommit(RecordingProducer):
    """A recording producer whose transactions commit only once ``gate`` is set."""

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self.gate = gate

    async def commit_transaction(self) -> None:
        await self.gate.wait()
        await super().commit_transaction()


async def until(condition, what: str, deadline_s: float = 20.0):
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)  # poll interval of the condition, not a synchronisation
    return value


def timer(app, name: str):
    """The function behind an @app.timer, to call once."""
    for task in app._app_tasks:  # Faust keeps its timers here
        fun = inspect.unwrap(task)
        if fun.__name__ == name:
            return fun
    raise LookupError(name)


def envelope(ikey: str, name: str, payload: dict) -> bytes:
    return orjson.dumps({"idempotency_key": ikey, "event_name": name, "payload": payload})


def adjust(ikey: str, sku: str, delta: int, warehouse: str = "w1") -> tuple[bytes, bytes]:
    return sku.encode(), envelope(ikey, "stock.adjust", {"warehouse": warehouse, "sku": sku, "delta": delta})


# --------------------------------------------------------------------------- the instance app


async def test_instance_app_is_one_group_with_one_ledger_table(settings, tmp_path) -> None:
    """AppIdIsPrefixed, OneLedgerTablePerInstance, LedgerCoPartitionedWithInput,
    RegistrarCapacityFromConfig, FaultInjectionOffByDefault: instance a is the Faust app
    (and consumer group) <prefix>-a with exactly one table, "ledger", of
    DOCKET_PARTITIONS partitions and changelog <prefix>-a-ledger-changelog; another
    instance has its own; the Registrar's capacity is DOCKET_CACHE_CAPACITY; the usher
    agent reads <prefix>.input at concurrency 1; faults only when asked for."""
    a = instance_mod.build(settings, "a", tmp_path / "a")
    b = instance_mod.build(settings, "b", tmp_path / "b", faults=FaultSpec("bitflip", 0.5))
    assert (a.conf.id, b.conf.id) == ("spec-a", "spec-b")
    assert list(a.tables) == ["ledger"] and list(b.tables) == ["ledger"]
    table = a.tables["ledger"]
    assert table.partitions == settings.partitions == PARTITIONS
    assert table.changelog_topic.get_topic_name() == "spec-a-ledger-changelog"
    assert b.tables["ledger"].changelog_topic.get_topic_name() == "spec-b-ledger-changelog"
    assert a.docket["registrar"].capacity == 77
    agent = a.agents["usher"]
    assert tuple(agent.get_topic_names()) == (settings.input_topic,) and agent.concurrency == 1
    assert a.docket["usher"].faults is None
    assert isinstance(b.docket["usher"].faults, FaultInjector)


class FakeBatch(Message):
    """A batch as agents/intake.py delivers one (``records``), acknowledged as a plain
    message is in Faust's agent test context (no consumer to report to)."""

    __slots__ = ("records",)


async def put_batch(ctx, topic: str, partition: int, items: list[tuple[bytes | None, bytes, int]],
                    first_offset: int):
    """One stream item carrying ``items`` (key, value, timestamp ms) at consecutive
    offsets from ``first_offset`` of ``topic``[``partition``], as the batch consumer
    hands them over; returns its event."""
    records = [OneRecord(partition, first_offset + i, ts, key, value, 1) for i, (key, value, ts) in enumerate(items)]
    last = records[-1]
    message = FakeBatch(topic, partition, last.offset, last.timestamp / 1000, 0, None, None, None, b"", 0, 0,
                        generation_id=ctx.app.consumer_generation_id)
    message.records = records
    channel = ctx.stream().channel
    event = await channel.decode(message)
    await channel.put(event)
    return event


def recorded_processing(app) -> list[list[tuple[int, int]]]:
    """Wrap the instance app's Usher.process: the list returned gets, per call, the
    (partition, offset) of every record it was given, in order."""
    usher = app.docket["usher"]
    calls: list[list[tuple[int, int]]] = []
    process = usher.process

    def recording(batch, committed):
        calls.append([(r.partition, r.offset) for r in batch])
        return process(batch, committed)

    usher.process = recording
    return calls


async def test_usher_agent_takes_batches_and_writes_changelog_then_one_copy_record(settings, tmp_path) -> None:
    """UsherTakesBatch, BatchKeepsPartitionOffsetOrder, BatchIsOnePartition: each stream
    item is one partition's records in offset order, and the Usher gets exactly them.
    CopyBatchRecord, ArbiterEmitsOneOutputPerRecord, OutputOnInstanceTopic,
    OutputOnInputPartition, CopiesShareTheInputPartition: one record per batch on
    <prefix>.output.a, on the input's partition, naming instance a, with one copy per
    input record in offset order (digest of its body) and the watermark after the
    batch.
    ChangelogOrderPerBatch, OutputFollowsItsEntityWrites, WardenRecordsVersion,
    ClockCheckpointAtBatchEnd: the batch's changelog records reach the producer before
    its copy record, as record batches, in recovery order: the Warden versions (input
    offset order), then each changed entity once (its last value in the batch, stamped
    with the last writer's offset), then the clock checkpoint.
    ArbiterEmitsEvaluatedOutput: the copies go out only after their writes.
    LedgerHoldsBatchWrites: a read in a batch sees the batch's earlier writes before
    the flush (k1 finds the quantity k0 left, 5 - 2 = 3, at version 2), and each key
    is written once per batch."""
    app = instance_mod.build(settings, "a", tmp_path / "a")
    app.producer = producer = RecordingProducer()
    batches = recorded_processing(app)
    p1, p4 = partition_for(b"s1", PARTITIONS), partition_for(b"s4", PARTITIONS)
    assert p1 != p4
    input_topic = settings.input_topic
    first = [(*adjust("k0", "s1", 5), 1_000), (*adjust("k1", "s1", -2), 1_001), (b"s1", b"not json", 1_002),
             (*adjust("k3", "s1", 4, "w2"), 1_003)]
    second = [(*adjust("k4", "s4", 1), 1_004)]
    third = [(*adjust("k5", "s1", 1), 1_005)]
    out_topic = settings.output_topic("a")
    async with app.agents["usher"].test_context() as ctx:
        await put_batch(ctx, input_topic, p1, first, 0)
        await put_batch(ctx, input_topic, p4, second, 0)
        await put_batch(ctx, input_topic, p1, third, 4)
        await until(lambda: len(producer.sent(out_topic)) == 3, "three copy records")
    assert batches == [[(p1, 0), (p1, 1), (p1, 2), (p1, 3)], [(p4, 0)], [(p1, 4)]]
    changelog = settings.app_id("a") + "-ledger-changelog"
    copies = producer.sent(out_topic)
    for (index, (_, _, key, value, partition)), batch in zip(copies, batches, strict=True):
        record = orjson.loads(value)
        assert key is None and partition == batch[0][0]
        assert (record["instance"], record["partition"], record["watermark"]) == ("a", partition, batch[-1][1] + 1)
        bodies = [c["body"].encode() for c in record["copies"]]  # each body's canonical bytes, as a string
        assert [(b["input"]["partition"], b["input"]["offset"]) for b in map(orjson.loads, bodies)] == batch
        for c, b in zip(record["copies"], bodies):
            assert c["digest"] == digest(b) and canonical(orjson.loads(b)) == b
    # the first batch's changelog, all before its copy record
    copy_at = copies[0][0]
    writes = [e for i, e in producer.sent(changelog) if e[4] == p1 and i < copy_at]
    kinds = [e[2][:1] for e in writes]
    assert kinds == [b"w", b"w", b"w", b"e", b"e", b"t"], kinds  # k0, k1, k3; w1:s1 once, w2:s1; checkpoint
    versions = [orjson.loads(e[3])["o"] for e in writes if e[2].startswith(WARDEN_PREFIX)]
    assert versions == [0, 1, 3]  # the malformed record writes none
    entities = {e[2]: orjson.loads(e[3]) for e in writes if e[2].startswith(ENTITY_PREFIX)}
    assert entities[ENTITY_PREFIX + b"stock:w1:s1"] == {"s": {"quantity": 3}, "v": 2, "o": 1}  # coalesced
    assert entities[ENTITY_PREFIX + b"stock:w2:s1"] == {"s": {"quantity": 4}, "v": 1, "o": 3}
    assert writes[-1][2] == clock_key(3)
    assert producer.batches < len(producer.sent(changelog))  # records went in batches


async def test_usher_agent_takes_one_item_of_several_partitions_batch_by_batch(settings, tmp_path) -> None:
    """UsherItemAcrossPartitions: an item that carries a batch of each of two input
    partitions (what an instance's consumer hands over when one fetch returned both)
    is judged in one Usher.process; each batch gets its own copy-batch record, on its
    own partition, with its own watermark; every changelog record of the item reaches
    the producer before the first copy record (ChangelogOrderPerBatch,
    OutputFollowsItsEntityWrites); both batches are acknowledged (BatchAcknowledgedOnce),
    the companion through the consumer. InstanceBlocksOnUnknownVersion: a batch of a
    blocked partition in a later item is held unacknowledged and judged not at all,
    while the item's other batch is judged and acknowledged; after a rebalance that
    leaves it here, the batch fetched again is held in place of the old one."""
    app = instance_mod.build(settings, "a", tmp_path / "a")
    app.producer = producer = RecordingProducer()
    app.consumer.pause_partitions = lambda tps: None  # no broker to pause a partition at
    usher = app.docket["usher"]
    calls = recorded_processing(app)
    p1, p4 = partition_for(b"s1", PARTITIONS), partition_for(b"s4", PARTITIONS)
    assert p1 != p4
    input_topic, out_topic = settings.input_topic, settings.output_topic("a")
    changelog = settings.app_id("a") + "-ledger-changelog"

    def batch(p: int, first: int, *records: tuple[bytes, bytes]) -> BatchMessage:
        return BatchMessage(TP(input_topic, p), [ConsumerRecord(input_topic, p, first + i, 1_000 + first + i, 1, key,
                                                                value, None, len(key), len(value), [])
                                                 for i, (key, value) in enumerate(records)],
                            first, app.consumer_generation_id)

    async with app.agents["usher"].test_context() as ctx:
        async def put(*messages: BatchMessage):
            messages[0].companions = tuple(messages[1:])
            ctx.to_message = lambda *args, **kwargs: messages[0]
            return await ctx.put(None, partition=messages[0].partition)

        first = await put(batch(p1, 0, adjust("k0", "s1", 5), adjust("k1", "s1", -2)),
                          batch(p4, 3, adjust("k2", "s4", 7)))
        await until(lambda: len(producer.sent(out_topic)) == 2, "a copy record per batch")
        assert calls == [[(p1, 0), (p1, 1), (p4, 3)]]
        copies = producer.sent(out_topic)
        shown = [(e[4], orjson.loads(e[3])["partition"], orjson.loads(e[3])["watermark"],
                  [orjson.loads(c["body"])["input"]["offset"] for c in orjson.loads(e[3])["copies"]])
                 for _, e in copies]
        assert shown == [(p1, p1, 2, [0, 1]), (p4, p4, 4, [3])]
        writes = producer.sent(changelog)
        assert {e[4] for _, e in writes} == {p1, p4}
        assert max(i for i, _ in writes) < min(i for i, _ in copies)
        assert all(m.acked for m in members_of(first.message))

        usher.blocked[p4] = Blocked(p4, 4, "v9")  # as an activation of a version this worker lacks leaves it
        second = await put(batch(p4, 4, adjust("k3", "s4", 1)), batch(p1, 2, adjust("k4", "s1", 1)))
        await until(lambda: len(producer.sent(out_topic)) == 3, "the unblocked batch's copy record")

        # A rebalance that leaves p4 here: its batch is fetched again from the committed
        # offset and held in place of the old one, not beside it (one more per rebalance)
        held = app.docket["held"]
        assert [m.offset for m in held[p4]] == [4]
        def blocked_statuses() -> list[int]:
            return [e[4] for _, e in producer.sent(settings.status_topic) if orjson.loads(e[3])["state"] == "blocked"]

        assert blocked_statuses() == [p4]
        await app.on_partitions_assigned.send(assigned={TP(input_topic, p4), TP(changelog, p4)})
        refetched = batch(p4, 4, adjust("k3", "s4", 1))
        await put(refetched)
        await until(lambda: refetched in held[p4], "the fetched-again batch to be held")
        assert held[p4] == [refetched] and calls[2:] == []
        # StatusAnnouncedAgainAfterAssignment: another worker of "a" may have announced
        # p4 judging meanwhile; its status says blocked again
        assert blocked_statuses() == [p4, p4]
    assert calls[1] == [(p1, 2)]
    assert orjson.loads(producer.sent(out_topic)[-1][1][3])["partition"] == p1
    held, companion = members_of(second.message)
    assert companion.acked and not held.acked


async def test_watermarks_ride_in_copy_records_and_readiness_waits_for_recovery(settings, tmp_path, caplog) -> None:
    """AdvertiseWatermarkOnlyWhenReady, NoWatermarkBeforeRestore, WatermarksCoverOnlyEmittedOutputs:
    InstanceBecomesReady: an instance's watermark is the copy record's: the next offset after its batch, in
    the record that carries the batch's copies, so it never names an offset whose copy
    is not already sent; nothing is sent on its own, and the instance says it is ready
    only once Faust's recovery is complete.
    InstanceAnnouncesJudging, StatusAnnouncedAgainAfterAssignment: "judging" once per
    partition per assignment.
    RecoveryStartsOnAssignment, RegistrarClearsOnRebalance, ResumedAtOrBeforeNext: an
    assignment empties the Registrar and forgets the Warden's collection state and
    what was processed (the run's cursor starts where it resumed and moves only with
    processed batches)."""
    app = instance_mod.build(settings, "a", tmp_path / "a")
    app.producer = producer = RecordingProducer()
    announce = timer(app, "announce_ready")
    out_topic = settings.output_topic("a")
    home = partition_for(b"s1", PARTITIONS)
    async with app.agents["usher"].test_context() as ctx:
        await put_batch(ctx, settings.input_topic, home, [(*adjust(f"k{i}", "s1", 1), 1_000 + i) for i in range(3)], 0)
        await until(lambda: len(producer.sent(out_topic)) == 1, "the copy record")
        gauge = app.docket["metrics"].registry.get_sample_value
        with caplog.at_level(logs.NOTICE, logger="docket.instance"):
            await announce()
            assert not any("ready" in m for m in caplog.messages)  # recovery is not complete
            assert gauge("docket_instance_ready") == 0  # StackReportsReady waits for it
            app.tables.recovery.completed.set()
            await announce()
            await announce()
        # InstanceBecomesReady: once, at NOTICE (shown at the default level, no WARNING)
        assert [r.levelname for r in caplog.records if "ready: recovery complete" in r.getMessage()] == ["NOTICE"]
        assert gauge("docket_instance_ready") == 1
        ((_, (_, _, _, value, partition)),) = producer.sent(out_topic)
        record = orjson.loads(value)
        assert partition == home and record["watermark"] == 3 == len(record["copies"])

        registrar, warden = app.docket["registrar"], app.docket["warden"]
        assert len(registrar) > 0 and warden.size(home) > 0

        def judging() -> list[int]:
            return [e[4] for _, e in producer.sent(settings.status_topic) if orjson.loads(e[3])["state"] == "judging"]

        await put_batch(ctx, settings.input_topic, home, [(*adjust("k8", "s1", 1), 1_005)], 3)
        await until(lambda: len(producer.sent(out_topic)) == 2, "the second copy record")
        assert judging() == [home]  # InstanceAnnouncesJudging: once, not per batch
        await app.on_partitions_assigned.send(assigned=set())
        assert len(registrar) == 0 and warden.size(home) == 0 and app.docket["processed"] == {}
        await put_batch(ctx, settings.input_topic, home, [(*adjust("k9", "s1", 1), 1_010)], 4)
        await until(lambda: len(producer.sent(out_topic)) == 3, "the third copy record")
        assert orjson.loads(producer.sent(out_topic)[-1][1][3])["watermark"] == 5
        assert app.docket["processed"] == {home: 5}
        # StatusAnnouncedAgainAfterAssignment: a "blocked" status another worker of the
        # instance wrote meanwhile is replaced (an eighth-trial /readyz kept it for good)
        assert judging() == [home, home]


# --------------------------------------------------------------------------- the Clerk app


def copy_entry(offset: int, partition: int, quantity: int = 5, ikey: str | None = None,
               entity: str = "stock:w1:s1") -> dict:
    """One copy of a copy-batch record: the body (an applied stock.adjust that set
    ``entity`` to ``quantity``) and its digest."""
    body = canonical({"input": {"partition": partition, "offset": offset}, "idempotency_key": ikey or f"k{offset}",
                      "client": None, "event_name": "stock.adjust", "domain_version": "inventory/1",
                      "duplicate_of": None, "stream_time": 1_000 + offset,
                      "outcome": {"status": "applied", "reason": None, "detail": "",
                                  "entities": [{"key": entity, "state": {"quantity": quantity}, "version": 1}]}})
    return {"digest": digest(body), "body": body.decode()}


def copy_value(instance: str, offset: int, partition: int, quantity: int = 5, ikey: str | None = None) -> bytes:
    """A copy-batch record of one copy, as instance ``instance`` writes it."""
    return orjson.dumps({"instance": instance, "partition": partition, "watermark": offset + 1,
                         "copies": [copy_entry(offset, partition, quantity, ikey)]})


async def test_clerk_agent_acknowledges_publishes_and_skips(settings, tmp_path, caplog) -> None:
    """ClerkIgnoresUnreadableRecord, UnreadableOutputRecordSkipped: records that are
    not JSON, or neither a watermark nor a copy, are logged, acknowledged and skipped;
    the agent goes on.
    ClerkRecordsWatermark: a watermark counts for the instance whose topic carried it,
    whatever it says, and is acknowledged at once.
    ClerkAcksOnlyFinalPositions, AcknowledgedCopiesAreFinal: a copy of a pending
    position stays unacknowledged; once the position is decided it and every copy held
    for it are acknowledged.
    ClerkPublishesResult, ResultOnInputPartition, ResultKeyedByIdempotencyKey,
    ClerkPublishesAgreedEntityStates, AgreedEntityOnInputPartition: the result goes to
    partition p of the results topic keyed by the idempotency key, then one record per
    changed entity to partition p of the entities topic, keyed by the entity key.
    ClerkPublishesDivergence, DivergenceOnInputPartition, CorruptedCopyNeverPublished:
    a copy altered after sealing is compared by its recomputed digest, counted as
    corrupt and reported.
    ClerkPublishesItemAtomically: each item's records go out in one transaction."""
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, metrics = capp.docket["core"], capp.docket["metrics"]
    p = 2
    producer = claimed(capp, RecordingProducer(), p)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, p)

        with caplog.at_level(logging.WARNING, logger="docket.clerk"):
            for garbage in (b"{nope", b"[1, 2]", b'{"x": 1}', b"null", b'{"instance": "a", "digest": "d"}'):
                ev = await put(out_a, garbage)
                assert ev.message.acked, garbage
        assert sum("ignoring an unreadable record" in m for m in caplog.messages) == 5
        # each line says what is wrong (the seventh fresh-user trial saw none)
        said = [m.split(": ", 1)[-1] for m in caplog.messages if "ignoring an unreadable record" in m]
        assert [w.split(" (")[0] for w in said] == ["not JSON", "not a JSON object but list",
                                                    "not a copy-batch record", "not a JSON object but NoneType",
                                                    "not a copy-batch record"], said
        assert core.pending(p) == 0 and producer.log == []

        with caplog.at_level(logging.WARNING, logger="docket.clerk"):
            caplog.clear()
            ev = await put(out_a, orjson.dumps({"watermark": 7, "instance": "zz", "partition": p}))
            # ClerkLogsMiscastRecord: what it says of itself is logged, not believed
            (said,) = [m for m in caplog.messages if "says" in m]
            assert said.startswith(f"a record on {out_a}[{p}]@") and f"says instance 'zz', partition {p}: read as " \
                f"instance a's copies of input partition {p}" in said and f"produces to {out_a}" in said, said
            caplog.clear()
            await put(out_a, orjson.dumps({"watermark": 8, "instance": "a", "partition": p + 1}))
            await put(out_a, orjson.dumps({"watermark": 9, "instance": "a", "partition": p}))
            await put(out_a, orjson.dumps({"watermark": 10}))
            assert [m.split(" says ")[1].split(":")[0] for m in caplog.messages] == [f"instance 'a', partition {p + 1}"]
        assert ev.message.acked and core.partitions[p].watermarks == {"a": 10}
        core.partitions[p].watermarks.clear()

        held = await put(out_a, copy_value("a", 0, p, ikey="order-1"))
        assert not held.message.acked and producer.log == []
        deciding = await put(out_b, copy_value("b", 0, p, ikey="order-1"))
        assert deciding.message.acked and held.message.acked
        (_, result), = producer.sent(settings.results_topic)
        assert result[4] == p and result[2] == b"order-1"
        assert orjson.loads(result[3])["input"] == {"partition": p, "offset": 0}
        (_, entity), = producer.sent(settings.entities_topic)
        assert entity[4] == p and entity[2] == b"stock:w1:s1"
        assert orjson.loads(entity[3]) == {"key": "stock:w1:s1", "state": {"quantity": 5}, "version": 1,
                                           "input": {"partition": p, "offset": 0}}
        assert producer.log.index(("send", *result[1:])) < producer.log.index(("send", *entity[1:]))

        await put(out_a, copy_value("a", 1, p))
        tampered = copy_value("b", 1, p).replace(b'\\"quantity\\":5', b'\\"quantity\\":4')  # after sealing
        assert tampered != copy_value("b", 1, p)
        ev = await put(out_b, tampered)
        assert ev.message.acked
        (index, report), = producer.sent(settings.divergences_topic)
        assert report[4] == p and orjson.loads(report[3])["input"] == {"partition": p, "offset": 1}
        assert producer.log[index - 1] == ("begin",) and producer.log[index + 1] == ("commit",)
        assert len(producer.sent(settings.results_topic)) == 1  # the position is never published
        assert metrics.corrupt.labels("b")._value.get() == 1


async def test_clerk_handles_a_copy_batch_and_publishes_its_decisions_in_batches(settings, tmp_path, caplog) -> None:
    """ClerkHandlesCopyBatch: every readable copy of a copy-batch record is handled in
    the record's order; a copy without a digest is skipped and logged, the others are
    not; a "copies" that is not a list, or a negative watermark, makes the record
    unreadable, never a stopped agent.
    ResultsProducedInBatches: the decisions one item brought go out as one record
    batch, one result per decided position, in decision order.
    EntityRecordsCoalescedPerBatch: then one entity record per changed entity, its
    last change, in the order the entities were first changed.
    ClerkAcksOnlyFinalPositions: an item is acknowledged once every position it carries
    is final and every item read before it on its partition is acknowledged."""
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core = capp.docket["core"]
    p = 1
    producer = claimed(capp, RecordingProducer(), p)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")

    def batch(instance: str, copies: list, watermark: int) -> bytes:
        return orjson.dumps({"instance": instance, "partition": p, "watermark": watermark, "copies": copies})

    copies = [copy_entry(0, p, 5), copy_entry(1, p, 6), copy_entry(2, p, 7, entity="stock:w2:s1"), copy_entry(3, p, 8)]
    no_digest = {"body": copies[3]["body"]}
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, p)

        with caplog.at_level(logging.WARNING, logger="docket.clerk"):
            from_a = await put(out_a, batch("a", [*copies[:3], no_digest], 4))
            assert sum("ignoring an unreadable copy" in m for m in caplog.messages) == 1
            assert not from_a.message.acked and core.pending(p) == 3 and producer.log == []
            batches_before = producer.batches
            from_b = await put(out_b, batch("b", copies, 4))
        results = producer.sent(settings.results_topic)
        assert [orjson.loads(e[3])["input"]["offset"] for _, e in results] == [0, 1, 2]
        entities = [(e[2], orjson.loads(e[3])) for _, e in producer.sent(settings.entities_topic)]
        assert [(k, v["state"], v["input"]["offset"]) for k, v in entities] == [
            (b"stock:w1:s1", {"quantity": 6}, 1), (b"stock:w2:s1", {"quantity": 7}, 2)]
        assert producer.batches - batches_before == 2  # the results, then the entity records
        assert results[-1][0] < producer.sent(settings.entities_topic)[0][0]
        assert from_a.message.acked and not from_b.message.acked  # offset 3 lacks a's copy

        with caplog.at_level(logging.WARNING, logger="docket.clerk"):
            bad = [await put(out_b, orjson.dumps({"copies": 5, "watermark": 4})),
                   await put(out_b, orjson.dumps({"copies": [], "watermark": -1}))]
            elsewhere = await put(out_a, orjson.dumps({"copies": {}, "watermark": 4}))
        assert sum("ignoring an unreadable record" in m for m in caplog.messages) == 3
        # finished, but read after from_b on the same partition of the same topic
        assert not any(ev.message.acked for ev in bad) and elsewhere.message.acked
        last = await put(out_a, batch("a", [copies[3]], 5))
        assert len(producer.sent(settings.results_topic)) == 4
        assert all(ev.message.acked for ev in (from_b, *bad, last))
        assert capp.docket["acks"].waiting() == 0


async def test_clerk_handles_one_item_carrying_every_output_topics_batch_of_a_partition(settings, tmp_path) -> None:
    """ClerkItemAcrossOutputTopics: an item that carries a's and b's copy-batch records
    of partition p (what the Clerk's consumer hands over when one fetch returned both)
    decides in that item every position both copied; each copy counts for the instance
    whose topic carried it. ClerkAcksOnlyFinalPositions: every message of the item is
    acknowledged once its positions are final; an item whose positions lack a copy is
    held, all of it, until a later item finishes them."""
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, metrics = capp.docket["core"], capp.docket["metrics"]
    p = 1
    producer = claimed(capp, RecordingProducer(), p)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        async def put(*parts: tuple[str, int, bytes]):
            """One item: a BatchMessage of the first (topic, offset, value), the others its companions."""
            messages = [BatchMessage(TP(topic, p), [ConsumerRecord(topic, p, offset, int(time.time() * 1000), 1, None,
                                                                   value, None, 0, len(value), [])], offset,
                                     capp.consumer_generation_id)
                        for topic, offset, value in parts]
            messages[0].companions = tuple(messages[1:])
            ctx.to_message = lambda *args, **kwargs: messages[0]
            event = await ctx.put(None, partition=p)
            await capp.docket["publisher"].settle()
            return event

        both = await put((out_a, 0, copy_value("a", 0, p)), (out_b, 0, copy_value("b", 0, p)))
        assert [orjson.loads(e[3])["input"]["offset"] for _, e in producer.sent(settings.results_topic)] == [0]
        assert all(m.acked for m in members_of(both.message))
        assert metrics.copies.labels("a")._value.get() == 1 == metrics.copies.labels("b")._value.get()

        crossed = await put((out_a, 1, copy_value("a", 1, p)), (out_b, 1, copy_value("b", 2, p)))
        assert core.pending(p) == 2 and not any(m.acked for m in members_of(crossed.message))
        closing = await put((out_b, 2, copy_value("b", 1, p)), (out_a, 2, copy_value("a", 2, p)))
        assert [orjson.loads(e[3])["input"]["offset"] for _, e in producer.sent(settings.results_topic)] == [0, 1, 2]
        assert all(m.acked for item in (crossed, closing) for m in members_of(item.message))
        assert capp.docket["acks"].waiting() == 0


async def test_clerk_judges_an_item_of_several_partitions_share_by_share(settings, tmp_path) -> None:
    """ClerkItemAcrossPartitions: one item carries batches of two partitions; each
    partition's share is judged, held and acknowledged on its own: partition 2's
    decided positions are acknowledged while partition 1's held copy is not, and
    revoking partition 1 forgets its share only (ClerkForgetsRevokedPartition), so
    partition 2's later items are still acknowledged and its commits go on. A share
    of a partition this worker was fenced out of is skipped, the rest of the item
    judged (FencedClerkPublishesNothing)."""
    from faust.types import TP

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, fenced = capp.docket["core"], capp.docket["fenced"]
    claimed(capp, RecordingProducer(), 1)
    claimed(capp, RecordingProducer(), 3)
    producer = claimed(capp, RecordingProducer(), 2)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        async def put(*parts: tuple[str, int, int, bytes]):
            """One item of (topic, partition, offset, value) batches: the first a BatchMessage, the rest companions."""
            messages = [BatchMessage(TP(topic, p), [ConsumerRecord(topic, p, offset, int(time.time() * 1000), 1, None,
                                                                   value, None, 0, len(value), [])], offset,
                                     capp.consumer_generation_id)
                        for topic, p, offset, value in parts]
            messages[0].companions = tuple(messages[1:])
            ctx.to_message = lambda *args, **kwargs: messages[0]
            await ctx.put(None, partition=parts[0][1])
            await capp.docket["publisher"].settle()
            return messages

        held_1, a_2, b_2 = await put((out_a, 1, 0, copy_value("a", 0, 1)), (out_a, 2, 0, copy_value("a", 0, 2)),
                                     (out_b, 2, 0, copy_value("b", 0, 2)))
        assert [orjson.loads(e[3])["input"] for _, e in producer.sent(settings.results_topic)] == [
            {"partition": 2, "offset": 0}]
        assert a_2.acked and b_2.acked and not held_1.acked and core.pending(1) == 1

        await capp.on_partitions_revoked.send(revoked={TP(out_a, 1), TP(out_b, 1)})
        assert not core.known(1) and core.known(2)
        fenced.add(3)
        later = await put((out_a, 2, 1, copy_value("a", 1, 2)), (out_a, 3, 0, copy_value("a", 0, 3)),
                          (out_b, 2, 1, copy_value("b", 1, 2)))
        assert [orjson.loads(e[3])["input"]["offset"] for _, e in producer.sent(settings.results_topic)] == [0, 1]
        assert later[0].acked and later[2].acked and not later[1].acked and core.pending(3) == 0
        assert not held_1.acked and capp.docket["acks"].waiting() == 0


async def test_clerk_goes_on_while_a_transaction_commits_and_acknowledges_after_it(settings, tmp_path) -> None:
    """ClerkPublishesWithoutWaiting: while an item's transaction commits, the agent goes
    on with the next items; their decisions wait for the next transaction of the
    partition, which carries all of them (one transaction per partition in flight).
    ClerkAcksOnlyFinalPositions: no copy is acknowledged before the transaction that
    publishes the decision finishing it has committed."""
    gate = asyncio.Event()
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, publisher = capp.docket["core"], capp.docket["publisher"]
    p = 4
    producer = claimed(capp, GatedCommit(gate), p)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, p, settle=False)

        events = [await put(out_a, copy_value("a", 0, p)), await put(out_b, copy_value("b", 0, p))]
        await until(lambda: producer.log.count(("begin",)) == 1, "the first transaction to begin")
        events += [await put(out_a, copy_value("a", o, p)) for o in (1, 2)]
        events += [await put(out_b, copy_value("b", o, p)) for o in (1, 2)]
        assert core.is_final(p, 1) and core.is_final(p, 2)  # decided while the first commits
        assert producer.log.count(("begin",)) == 1 and ("commit",) not in producer.log
        assert not any(ev.message.acked for ev in events)
        gate.set()
        await publisher.settle()
    assert all(ev.message.acked for ev in events)
    begins = [i for i, e in enumerate(producer.log) if e == ("begin",)]
    assert len(begins) == 2  # offset 0 alone, then 1 and 2 together
    second = [orjson.loads(e[3])["input"]["offset"] for i, e in producer.sent(settings.results_topic) if i > begins[1]]
    assert second == [1, 2]


async def test_revoked_partition_is_forgotten_with_its_held_copies(settings, tmp_path) -> None:
    """ClerkForgetsRevokedPartition: on revocation the partition's state goes, held
    copies included (they stay unacknowledged, so the next owner reads them again);
    other partitions are kept. The partition is seeded again if it comes back."""
    from faust.types import TP

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core = capp.docket["core"]
    claimed(capp, RecordingProducer(), 1, 2)
    core.lagging = {(1, "b"), (2, "b")}
    async with capp.agents["clerk"].test_context() as ctx:
        ctx._get_strtopic = lambda channel: settings.output_topic("a")  # records arrive on output.a
        held = await ctx.put(copy_value("a", 0, 2), partition=2)
        assert not held.message.acked and core.pending(2) == 1
        await capp.on_partitions_revoked.send(revoked={TP(settings.output_topic("a"), 2),
                                                       TP(settings.output_topic("b"), 2)})
    assert not core.known(2) and core.known(1)
    assert not held.message.acked
    assert core.lagging == {(1, "b")}  # a partition owned elsewhere is not ours to report


async def test_fenced_clerk_publishes_nothing_and_leaves_the_partition(settings, tmp_path, caplog) -> None:
    """FencedClerkPublishesNothing: when another Clerk worker has claimed the
    partition's transactional id, the item's transaction fails (ProducerFenced):
    nothing of it is acknowledged, the partition's state goes, the worker says so once
    and skips the partition's later copies without claiming it back (which would fence
    the owner in turn) until it is revoked; then it may claim it again."""
    from aiokafka.errors import ProducerFenced
    from faust.types import TP

    class Fenced(RecordingProducer):
        async def commit_transaction(self) -> None:
            raise ProducerFenced()

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, metrics, fenced = capp.docket["core"], capp.docket["metrics"], capp.docket["fenced"]
    p = 3
    producer = claimed(capp, Fenced(), p)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, p)

        with caplog.at_level(logging.WARNING, logger="docket.clerk"):
            held = await put(out_a, copy_value("a", 0, p))
            deciding = await put(out_b, copy_value("b", 0, p))
            assert not held.message.acked and not deciding.message.acked
            assert fenced == {p} and not core.known(p) and metrics.fenced._value.get() == 1
            assert not capp.docket["producers"].owns(p)
            assert ("stop",) in producer.log  # the fenced producer is closed
            later = await put(out_a, copy_value("a", 1, p))
            assert not later.message.acked and not core.known(p)  # skipped, not claimed again
        assert sum(f"fenced on partition {p}" in m for m in caplog.messages) == 1
        await capp.on_partitions_revoked.send(revoked={TP(out_a, p), TP(out_b, p)})
        assert fenced == set()


def test_clerk_drops_items_of_an_older_generation() -> None:
    """ClerkDropsItemsOfOlderGeneration: an item fetched in an older consumer-group
    generation than the current one is stale (the agent skips it without reading or
    acknowledging it); one of the current generation, or a message that carries none
    (Faust's per-record path in tests), is not."""
    from types import SimpleNamespace

    assert clerk_mod.stale(SimpleNamespace(generation_id=6), 7)
    assert not clerk_mod.stale(SimpleNamespace(generation_id=7), 7)
    assert not clerk_mod.stale(SimpleNamespace(generation_id=None), 7)
    assert not clerk_mod.stale(SimpleNamespace(), 7)


async def test_clerk_takes_no_item_while_its_group_rebalances(settings, tmp_path) -> None:
    """ClerkDropsItemsOfOlderGeneration: while the group rebalances, an item is neither
    processed nor acknowledged (nor may it claim a partition, which could fence the
    partition's next owner); the next owner reads it again from the committed offsets."""
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core = capp.docket["core"]
    p = 1
    producer = claimed(capp, RecordingProducer(), p)
    async with capp.agents["clerk"].test_context() as ctx:
        ctx._get_strtopic = lambda channel: settings.output_topic("a")
        capp.rebalancing = True
        skipped = await ctx.put(copy_value("a", 0, p), partition=p)
        assert not skipped.message.acked and core.pending(p) == 0 and producer.log == []
        capp.rebalancing = False
        await ctx.put(copy_value("a", 0, p), partition=p)
        assert core.pending(p) == 1


async def test_clerk_rebalance_does_not_wait_for_held_copies(settings, tmp_path) -> None:
    """ClerkRebalanceDoesNotWaitForHeldCopies: Faust's rebalance drain (wait_empty)
    would wait until every copy the Clerk holds is acknowledged, which happens only once
    positions become final, which needs the rebalance to finish. The Clerk's consumer
    waits only for the item in progress; held ones stay unacknowledged."""
    from types import SimpleNamespace

    from agents.intake import BatchConsumer

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    consumer_class = capp.transport.Consumer
    assert issubclass(consumer_class, BatchConsumer) and consumer_class.in_progress is not None

    class Msg(SimpleNamespace):
        __hash__ = object.__hash__

    held, current = Msg(acked=False), Msg(acked=False)
    state = {"current": current}
    commits = []

    class Drain:
        should_stop = False
        in_progress = staticmethod(lambda: state["current"])
        _unacked_messages = {held, current}

        def _clean_unacked_messages(self):
            self._unacked_messages -= {m for m in self._unacked_messages if m.acked}

        async def _wait_for_ack(self, timeout):
            current.acked = True  # the agent finishes the item in progress
            state["current"] = None

        async def commit_and_end_transactions(self):
            commits.append(set(self._unacked_messages))

    drain = Drain()
    await BatchConsumer.wait_empty(drain)
    assert commits == [set()] and not held.acked  # done without the held copy, still unacknowledged


async def test_a_claim_overtaken_by_a_revocation_is_given_up(settings, monkeypatch) -> None:
    """ClerkClaimsPartitionBeforeSeed: a partition revoked while its producer starts is
    not claimed (its producer is stopped again), so the worker neither seeds nor
    publishes for a partition it no longer owns."""
    from agents import clerk_publish

    started = asyncio.Event()
    proceed = asyncio.Event()
    stopped = []

    class SlowProducer:
        def __init__(self, **config) -> None:
            self.config = config

        async def start(self) -> None:
            started.set()
            await proceed.wait()

        async def stop(self) -> None:
            stopped.append(self)

    monkeypatch.setattr(clerk_publish, "AIOKafkaProducer", SlowProducer)
    producers = clerk_publish.PartitionProducers(settings)
    claim = asyncio.ensure_future(producers.claim(5))
    await started.wait()
    await producers.release({5})
    proceed.set()
    with pytest.raises(clerk_publish.PartitionLost):
        await claim
    app_id = settings.app_id("clerk")
    # the partition's producer, and the one that fenced the whole lane's id (stopped anyway)
    assert not producers.owns(5)
    assert sorted(p.config["transactional_id"] for p in stopped) == [f"{app_id}-p5", f"{app_id}-whole"]
    await producers.claim(5)  # claimed afresh once assigned again
    assert producers.owns(5) and producers.get(5).config["transactional_id"] == f"{app_id}-p5"


class StartedProducer:
    """Stands in for aiokafka's producer in PartitionProducers: records each start and
    stop by transactional id in ``log``."""

    log: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, **config) -> None:
        self.config = config

    async def start(self) -> None:
        self.log.append(("start", self.config["transactional_id"]))

    async def stop(self) -> None:
        self.log.append(("stop", self.config["transactional_id"]))


async def test_a_whole_claim_publishes_every_partition_on_one_id_and_fences_each_partitions_id(
        settings, monkeypatch) -> None:
    """ClerkPublishesOneTransactionPerCycle, ClerkClaimsPartitionBeforeSeed: a worker
    whose assignment holds every partition claims them on one transactional id,
    <app id>-whole; its first claim starts that producer and fences (starts and stops)
    the id of every partition, which a previous owner of any of them may have
    published on; later claims of the assignment share the producer and start nothing.
    It is stopped once, when the last of its partitions is released."""
    from agents import clerk_publish

    monkeypatch.setattr(StartedProducer, "log", [])
    monkeypatch.setattr(clerk_publish, "AIOKafkaProducer", StartedProducer)
    producers = clerk_publish.PartitionProducers(settings)
    app_id = settings.app_id("clerk")
    every = frozenset(range(3))
    await producers.claim(1, every)
    assert sorted(StartedProducer.log) == sorted(
        [("start", f"{app_id}-whole")] + [(e, f"{app_id}-p{p}") for p in range(3) for e in ("start", "stop")])
    StartedProducer.log.clear()
    await producers.claim(0, every)
    await producers.claim(2, every)
    assert StartedProducer.log == []
    assert producers.get(0) is producers.get(1) is producers.get(2)
    assert {producers.lane(p) for p in range(3)} == {clerk_publish.WHOLE}
    assert producers.partitions_of(clerk_publish.WHOLE) == [0, 1, 2]
    await producers.release({0, 1})
    assert StartedProducer.log == [] and producers.owns(2)
    await producers.release({2})
    assert StartedProducer.log == [("stop", f"{app_id}-whole")]


async def test_a_partial_claim_publishes_on_the_partitions_id_and_fences_the_whole_id_once(
        settings, monkeypatch) -> None:
    """ClerkClaimsPartitionBeforeSeed: a worker that holds some of the partitions
    claims each on its own id, <app id>-p<partition>; the first claim of an assignment
    also fences the whole id, which a previous owner of every partition may have
    published on, and the next assignment's first claim fences it again."""
    from agents import clerk_publish

    monkeypatch.setattr(StartedProducer, "log", [])
    monkeypatch.setattr(clerk_publish, "AIOKafkaProducer", StartedProducer)
    producers = clerk_publish.PartitionProducers(settings)
    app_id = settings.app_id("clerk")
    await producers.claim(1)
    await producers.claim(2)
    assert StartedProducer.log == [("start", f"{app_id}-p1"), ("start", f"{app_id}-whole"),
                                   ("stop", f"{app_id}-whole"), ("start", f"{app_id}-p2")]
    assert producers.get(1) is not producers.get(2) and producers.lane(2) == 2
    await producers.release({1, 2})
    StartedProducer.log.clear()
    await producers.claim(1)
    assert ("start", f"{app_id}-whole") in StartedProducer.log


async def test_the_lanes_are_planned_once_per_assignment_from_its_partitions(settings, tmp_path, monkeypatch) -> None:
    """ClerkClaimsPartitionBeforeSeed: a worker takes the whole lane when its assignment
    holds every partition of every output topic (by the partition counts the
    assignment was made from), else a lane per partition; the plan made at an
    assignment's first claim holds for every claim of it (a whole claim after a
    partition's own would fence that partition's producer), and is made afresh after
    a revocation."""
    from faust.types import TP

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    plan = capp.docket["lane_plan"]
    outputs = [settings.output_topic(i) for i in settings.instances]
    assigned = {TP(t, p) for t in outputs for p in range(PARTITIONS)}
    counts = {t: PARTITIONS for t in outputs}
    monkeypatch.setattr(type(capp.consumer), "assignment", lambda self: set(assigned))
    monkeypatch.setattr(type(capp.consumer), "topic_partitions", lambda self, topic: counts.get(topic))
    assert plan() == frozenset(range(PARTITIONS))
    assigned.discard(TP(outputs[1], 2))
    assert plan() == frozenset(range(PARTITIONS))  # the assignment's plan holds
    await capp.on_partitions_revoked.send(revoked=set())
    assert plan() == frozenset()  # partition 2 of one output topic is elsewhere
    await capp.on_partitions_revoked.send(revoked=set())
    assigned.add(TP(outputs[1], 2))
    counts[outputs[0]] = None  # its partition count not known: no whole lane
    assert plan() == frozenset()


async def test_a_whole_lane_publishes_its_partitions_in_one_transaction(settings, tmp_path) -> None:
    """ClerkPublishesOneTransactionPerCycle, ClerkPublishesItemAtomically: on a worker
    holding every partition, the decisions of several partitions queued while a
    transaction commits go out in ONE next transaction, each partition's results to
    its own partition of the results topic, and each partition's copies are
    acknowledged once it has committed."""
    gate = asyncio.Event()
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    publisher = capp.docket["publisher"]
    producer = claimed_whole(capp, GatedCommit(gate), 1, 2)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        events = []
        for p, offsets in ((1, [0]), (1, [1]), (2, [0])):
            for o in offsets:
                events += [await putter(capp, ctx, p, settle=False)(out_a, copy_value("a", o, p)),
                           await putter(capp, ctx, p, settle=False)(out_b, copy_value("b", o, p))]
        await until(lambda: producer.log.count(("begin",)) == 1, "the first transaction to begin")
        assert not any(ev.message.acked for ev in events)
        gate.set()
        await publisher.settle()
    assert all(ev.message.acked for ev in events)
    begins = [i for i, e in enumerate(producer.log) if e == ("begin",)]
    assert len(begins) == 2 and producer.log.count(("commit",)) == 2
    second = [(e[4], orjson.loads(e[3])["input"]["offset"])
              for i, e in producer.sent(settings.results_topic) if i > begins[1]]
    assert second == [(1, 1), (2, 0)]  # both partitions in one transaction, each to its own


async def test_a_fenced_whole_lane_loses_every_partition_it_held(settings, tmp_path, caplog) -> None:
    """FencedClerkPublishesNothing: when the whole lane's id is claimed by another
    worker, every partition claimed on it is lost, also one with nothing in the failed
    transaction: none is claimed back (which would fence the new owner) until revoked."""
    from aiokafka.errors import ProducerFenced

    class Fenced(RecordingProducer):
        async def commit_transaction(self) -> None:
            raise ProducerFenced()

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    core, fenced = capp.docket["core"], capp.docket["fenced"]
    claimed_whole(capp, Fenced(), 1, 2)
    out_a, out_b = settings.output_topic("a"), settings.output_topic("b")
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, 1)
        with caplog.at_level(logging.WARNING, logger="docket.clerk"):
            first = await put(out_a, copy_value("a", 0, 1))
            second = await put(out_b, copy_value("b", 0, 1))
        assert not first.message.acked and not second.message.acked
        assert fenced == {1, 2} and not core.known(1) and not core.known(2)
        assert not capp.docket["producers"].owns(2)
        assert sum("fenced on partition" in m for m in caplog.messages) == 2


class RefusingResults(RecordingProducer):
    """A recording producer whose record batches for the results topic the broker
    refuses (OutOfOrderSequenceNumber, as after a broker restart); every other batch
    is delivered. ``renewed``: the producers PartitionProducers started since, each a
    RefusingResults while ``refuse_renewed`` (class attributes, reset per test)."""

    results_topic = ""
    renewed: ClassVar[list] = []
    refuse_renewed = False

    def __init__(self, **config) -> None:
        super().__init__()
        self.config = config
        self.refuses = True

    async def start(self) -> None:
        self.log.append(("start",))

    def _append_batch(self, batch, tp):
        from aiokafka.errors import OutOfOrderSequenceNumber

        queued = super()._append_batch(batch, tp)
        if self.refuses and tp.topic == self.results_topic:
            queued.future = asyncio.get_running_loop().create_future()
            queued.future.set_exception(OutOfOrderSequenceNumber())
        return queued

    @classmethod
    def renew(cls, **config):
        producer = cls(**config)
        producer.refuses = cls.refuse_renewed
        cls.renewed.append(producer)
        return producer


async def both_copies(capp, settings):
    """Instance a's and then b's copy of position (1, 0) reach the Clerk app ``capp``;
    returns their two stream events once what they decided has been published (or has
    failed)."""
    async with capp.agents["clerk"].test_context() as ctx:
        put = putter(capp, ctx, 1)
        return (await put(settings.output_topic("a"), copy_value("a", 0, 1)),
                await put(settings.output_topic("b"), copy_value("b", 0, 1)))


def refusing(settings, monkeypatch, *, refuse_renewed: bool) -> None:
    """Producers the Clerk starts from now on are RefusingResults (refusing while
    ``refuse_renewed``), recorded in RefusingResults.renewed."""
    from agents import clerk_publish

    monkeypatch.setattr(RefusingResults, "results_topic", settings.results_topic)
    monkeypatch.setattr(RefusingResults, "renewed", [])
    monkeypatch.setattr(RefusingResults, "refuse_renewed", refuse_renewed)
    monkeypatch.setattr(clerk_publish, "AIOKafkaProducer", RefusingResults.renew)


async def test_a_refused_batch_is_never_committed_and_goes_out_again_on_a_renewed_producer(
        settings, tmp_path, monkeypatch, caplog) -> None:
    """ClerkRenewsProducerOnRefusedBatch, ClerkPublishesItemAtomically: when the broker
    refuses a record batch of the transaction (aiokafka would still commit it, with the
    batch's results missing), the transaction is not committed; the lane's producer is
    stopped and a new one started on the same transactional id (which aborts the open
    transaction), and the same decisions go out once, in a transaction on it, before
    any copy is acknowledged. One WARNING says so."""
    refusing(settings, monkeypatch, refuse_renewed=False)
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    old = claimed_whole(capp, RefusingResults(), 1, 2)
    with caplog.at_level(logging.WARNING, logger="docket.clerk"):
        first, deciding = await both_copies(capp, settings)
    assert first.message.acked and deciding.message.acked
    assert ("commit",) not in old.log and ("stop",) in old.log
    assert ("transaction waiter",) in old.log  # its failure retrieved
    assert old.sent(settings.results_topic)  # the refused one
    [new] = RefusingResults.renewed
    assert new.config["transactional_id"] == f"{settings.app_id('clerk')}-whole"
    assert capp.docket["producers"].get(1) is new and capp.docket["producers"].get(2) is new
    sent = new.sent(settings.results_topic)
    assert [orjson.loads(e[3])["input"]["offset"] for _, e in sent] == [0]
    assert new.log.index(("start",)) < sent[0][0] < new.log.index(("commit",))
    assert capp.docket["publisher"].failure is None
    assert sum("was refused" in m for m in caplog.messages) == 1


async def test_a_lane_refused_again_and_again_stops_the_worker(settings, tmp_path, monkeypatch) -> None:
    """ClerkRenewsProducerOnRefusedBatch, UndeliveredRecordStopsCommits: a lane whose
    transactions the broker refuses REFUSALS_BEFORE_STOP times in a row, renewed after
    each but the last, commits nothing and acknowledges nothing: the worker stops
    committing (stop_committing) and the agent raises the refusal at its next item."""
    from agents import clerk_publish

    refusing(settings, monkeypatch, refuse_renewed=True)
    stopped: list = []
    monkeypatch.setattr(clerk_mod, "stop_committing", lambda app, exc, what: stopped.append((exc, what)))
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    old = claimed_whole(capp, RefusingResults(), 1)
    first, deciding = await both_copies(capp, settings)
    assert not first.message.acked and not deciding.message.acked
    producers = [old, *RefusingResults.renewed]
    assert len(producers) == clerk_publish.REFUSALS_BEFORE_STOP
    assert all(("commit",) not in p.log for p in producers)
    [(exc, what)] = stopped
    assert isinstance(exc, clerk_publish.BatchRefused) and capp.docket["publisher"].failure is exc
    assert what == f"results of {settings.results_topic}[1]"


async def test_a_refusal_while_the_group_rebalances_gives_the_partitions_up_without_renewing(
        settings, tmp_path, monkeypatch) -> None:
    """RefusedTransactionGivenUpAcrossARebalance, ClerkRenewsProducerOnRefusedBatch: a transaction
    refused after a rebalance began (or in another consumer-group generation than it
    began in) is not retried on a renewed producer, which would bump the id's epoch and
    fence a worker that owns the partitions by now: nothing is committed or
    acknowledged, the producer is stopped and the partitions forgotten, to be claimed
    afresh if they are still this worker's."""
    refusing(settings, monkeypatch, refuse_renewed=False)
    capp = clerk_mod.build(settings, tmp_path / "clerk", None)

    class RebalancingMeanwhile(RefusingResults):
        def _append_batch(self, batch, tp):
            capp.rebalancing = True
            return super()._append_batch(batch, tp)

    old = claimed_whole(capp, RebalancingMeanwhile(), 1, 2)
    first, deciding = await both_copies(capp, settings)
    assert not first.message.acked and not deciding.message.acked
    assert RefusingResults.renewed == [] and ("commit",) not in old.log and ("stop",) in old.log
    producers, core = capp.docket["producers"], capp.docket["core"]
    assert not producers.owns(1) and not producers.owns(2) and not core.known(1)
    assert capp.docket["publisher"].failure is None and capp.docket["fenced"] == set()


async def test_a_fence_among_refused_batches_is_a_fence(settings, tmp_path, monkeypatch) -> None:
    """FencedClerkPublishesNothing, ClerkRenewsProducerOnRefusedBatch: when one batch of
    the transaction was refused (OutOfOrderSequenceNumber) and a later one fenced
    (another worker claimed the id meanwhile), the worker is fenced: it does not renew
    the producer, which would fence the new owner in turn."""
    from aiokafka.errors import ProducerFenced

    refusing(settings, monkeypatch, refuse_renewed=False)

    class FencedLater(RefusingResults):
        def _append_batch(self, batch, tp):
            queued = super()._append_batch(batch, tp)
            if tp.topic == settings.entities_topic:
                queued.future = asyncio.get_running_loop().create_future()
                queued.future.set_exception(ProducerFenced())
            return queued

    capp = clerk_mod.build(settings, tmp_path / "clerk", None)
    old = claimed(capp, FencedLater(), 1)
    first, deciding = await both_copies(capp, settings)
    assert not first.message.acked and not deciding.message.acked
    assert RefusingResults.renewed == [] and ("commit",) not in old.log
    assert capp.docket["fenced"] == {1}


def test_clerk_partitions_are_assigned_co_partitioned(settings, tmp_path, monkeypatch) -> None:
    """ClerkAssignedCoPartitioned, OneClerkWorkerPerPartition: with three Clerk workers
    in the group, Faust's assignor gives partition p of every output topic to one
    worker, so all copies of (p, o) meet in one process."""
    monkeypatch.setenv("DOCKET_INSTANCES", "a,b,c")
    s = load()

    class Cluster:
        def __init__(self, topics, n):
            self.partitions = {t: set(range(n)) for t in topics}

        def partitions_for_topic(self, topic):
            return self.partitions.get(topic)

    async def assign():
        capp = clerk_mod.build(s, tmp_path / "clerk", None)
        topics = set(capp.agents["clerk"].get_topic_names())
        assert topics == {s.output_topic(i) for i in s.instances}
        members = {f"clerk-{i}": capp.assignor.metadata(topics) for i in range(3)}
        return capp.assignor.assign(Cluster(topics, s.partitions), members)

    assignment = asyncio.run(assign())
    owner: dict[int, str] = {}
    for member, a in assignment.items():
        by_topic = dict(a.assignment)
        assert set(by_topic) == {s.output_topic(i) for i in s.instances}
        partitions = {frozenset(ps) for ps in by_topic.values()}
        assert len(partitions) == 1, (member, by_topic)  # the same partitions of every output topic
        for p in next(iter(partitions)):
            assert p not in owner, f"partition {p} on {owner.get(p)} and {member}"
            owner[p] = member
    assert sorted(owner) == list(range(s.partitions))
    assert len(set(owner.values())) == 3


async def test_an_instance_assigned_input_without_its_ledger_changelog_stops(settings, tmp_path, monkeypatch,
                                                                             caplog) -> None:
    """AssignmentWithoutLedgerStopsWorker, ChangelogBeforeWorker: Faust's assignor gives
    an instance worker the Ledger changelog partition of every input partition it owns
    (copartitioned), and then the worker goes on; when the group's leader does not see
    the changelog topic (it fetched metadata before the topic existed), it assigns the
    input partitions alone, and the worker stops with an ERROR naming them and what to
    do instead of judging them on an empty Ledger."""
    from faust.types import TP

    class Cluster:
        def __init__(self, topics):
            self.partitions = {t: set(range(settings.partitions)) for t in topics}

        def partitions_for_topic(self, topic):
            return self.partitions.get(topic)

    app = instance_mod.build(settings, "a", tmp_path / "a")
    changelog = app.tables["ledger"].changelog_topic.get_topic_name()
    topics = {settings.input_topic, changelog}
    members = {f"a-{i}": app.assignor.metadata(topics) for i in range(2)}

    def worker_assignment(cluster) -> set:
        assignment = app.assignor.assign(cluster, members)
        return {TP(t, p) for t, ps in assignment["a-1"].assignment for p in ps}

    whole = worker_assignment(Cluster(topics))
    owned = sorted(tp.partition for tp in whole if tp.topic == settings.input_topic)
    assert owned and instance_mod.partitions_without_table(whole, settings.input_topic, changelog) == []
    blind = worker_assignment(Cluster({settings.input_topic}))  # the leader's metadata lacks the changelog
    assert instance_mod.partitions_without_table(blind, settings.input_topic, changelog) == owned

    crashed = []

    async def crash(exc) -> None:
        crashed.append(exc)

    monkeypatch.setattr(app, "crash", crash)
    await app.on_partitions_assigned.send(assigned=whole)
    assert crashed == []
    with caplog.at_level(logging.ERROR, logger="docket.instance"):
        await app.on_partitions_assigned.send(assigned=blind)
    assert len(crashed) == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"partition(s) {', '.join(map(str, owned))} without {changelog}'s" in line
    assert "restart every worker of instance a" in line


# --------------------------------------------------------------------------- topics and start-up


def test_topic_definitions(settings) -> None:
    """TopicsCreatedExplicitly, PerEventTopicsHavePPartitions, TopicNamesUnique,
    TopicsUseBrokerTime, EntitiesTopicIsCompacted, StatusTopicIsCompacted: `docket
    topics create` defines input, output.<id> per configured instance, results,
    divergences, entities and status, each with DOCKET_PARTITIONS partitions and a
    distinct name; every one has the broker stamp its records (LogAppendTime);
    entities and status are compacted."""
    specs = {t.name: t for t in topic_specs(settings)}
    assert list(specs) == settings.all_topics()
    assert len(specs) == len(topic_specs(settings)) == 1 + len(settings.instances) + 4
    assert {t.partitions for t in specs.values()} == {PARTITIONS}
    for name in settings.all_topics():
        assert specs[name].configs["message.timestamp.type"] == "LogAppendTime"
    assert specs[settings.entities_topic].configs["cleanup.policy"] == "compact"
    assert specs[settings.status_topic].configs["cleanup.policy"] == "compact"
    for name in (settings.results_topic, settings.divergences_topic):
        assert "cleanup.policy" not in specs[name].configs


def test_entities_partitions_roll_apart(settings) -> None:
    """EntitiesPartitionsRollApart: the entities topic rolls a segment every minute,
    less a random jitter that is more than nothing and less than the minute (Kafka's
    segment.ms and segment.jitter.ms), so its partitions are not cleaned all at once;
    no other topic sets either."""
    specs = {t.name: t for t in topic_specs(settings)}
    entities = specs[settings.entities_topic].configs
    assert int(entities["segment.ms"]) == 60_000
    assert 0 < int(entities["segment.jitter.ms"]) < int(entities["segment.ms"])
    for name in settings.all_topics():
        if name != settings.entities_topic:
            assert not {"segment.ms", "segment.jitter.ms"} & set(specs[name].configs), name


def test_the_changelog_an_instance_creates_is_the_one_its_table_writes(settings, tmp_path) -> None:
    """ChangelogBeforeWorker: the topic an instance worker creates before it starts
    (app/topics.py changelog_spec) is its Ledger table's changelog as Faust names it,
    with the table's partition count, compacted like the changelog Faust declares."""
    from app.topics import changelog_spec

    for instance in ("a", "b"):
        table = instance_mod.build(settings, instance, tmp_path / instance).tables["ledger"]
        spec = changelog_spec(settings, instance)
        assert spec.name == table.changelog_topic.get_topic_name() == f"spec-{instance}-ledger-changelog"
        assert spec.partitions == table.partitions == PARTITIONS
        assert table.changelog_topic.compacting and spec.configs == {"cleanup.policy": "compact"}


class FakeAdmin:
    topics: ClassVar[set[str]] = set()
    fail: ClassVar[bool] = False
    partitions: ClassVar[int] = 8

    def __init__(self, **kwargs) -> None:
        pass

    async def start(self) -> None:
        if FakeAdmin.fail:
            raise ConnectionError("no broker")

    async def list_topics(self):
        return sorted(FakeAdmin.topics)

    async def describe_topics(self, names):
        # the shape of aiokafka's describe_topics: each existing topic with its partitions
        return [{"topic": n, "error_code": 0, "partitions": [{"partition": p} for p in range(FakeAdmin.partitions)]}
                if n in FakeAdmin.topics else {"topic": n, "error_code": 3, "partitions": []} for n in names]

    async def describe_configs(self, resources):
        # the shape of aiokafka's DescribeConfigsResponse: resources of (error code,
        # message, type, name, [(config name, value, ...)])
        found = [(0, None, 2, r.name, [("message.timestamp.type", "LogAppendTime", False, 5, False)])
                 for r in resources]

        class Response:
            pass

        response = Response()
        response.resources = found
        return [response]

    async def close(self) -> None:
        pass


def test_workers_start_only_when_their_topics_exist(settings, monkeypatch) -> None:
    """WorkerStartsWhenTopicsExist, WorkerRefusesToStartWithoutTopics: the start-up check
    passes when the broker answers and every needed topic exists; otherwise the worker
    stops with a message naming the missing topics and `docket topics create` (for an
    instance outside DOCKET_INSTANCES, adding it there first), or the unreachable broker
    and `docket broker start`."""
    import aiokafka.admin

    from app import kafka_config

    async def check_connection(*_args, **_kwargs) -> bool:  # the fake broker answers unless it fails
        return not FakeAdmin.fail

    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(kafka_config, "check_connection", check_connection)
    needed = [settings.input_topic, settings.output_topic("a")]
    FakeAdmin.topics, FakeAdmin.fail, FakeAdmin.partitions = set(needed) | {"other"}, False, settings.partitions
    asyncio.run(plumbing.check_topics(settings, needed))
    FakeAdmin.topics = {settings.input_topic}
    with pytest.raises(click.ClickException, match=r"topic\(s\) spec.output.a do not exist; run `docket topics create`"):
        asyncio.run(plumbing.check_topics(settings, needed))
    FakeAdmin.topics = {settings.input_topic, settings.output_topic("a")}
    with pytest.raises(click.ClickException, match=r"topic\(s\) spec.output.z do not exist; add the instance to "
                                                   r"DOCKET_INSTANCES .* now a,b\), then run `docket topics create`"):
        asyncio.run(plumbing.check_topics(settings, [settings.input_topic, settings.output_topic("z")]))
    FakeAdmin.fail = True
    with pytest.raises(click.ClickException, match="cannot reach Kafka at 127.0.0.1:1 .*`docket broker start`"):
        asyncio.run(plumbing.check_topics(settings, needed))


def test_unconfigured_instance_is_warned_and_unreachable_kafka_stops_it() -> None:
    """UnconfiguredInstanceWarned, WorkerRefusesToStartWithoutTopics: `docket instance
    --id x` with x outside DOCKET_INSTANCES warns that the Clerk will not read it and
    goes on to its start-up checks, which stop it when Kafka does not answer (exit 1,
    no traceback)."""
    docket = Path(sys.executable).with_name("docket")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")},
           "DOCKET_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    proc = subprocess.run([str(docket), "instance", "--id", "zz"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert "warning: instance 'zz' is not in DOCKET_INSTANCES (a,b); the Clerk will not read its outputs" in proc.stderr
    assert "cannot reach Kafka at 127.0.0.1:1" in proc.stderr and "Traceback" not in proc.stderr
    configured = subprocess.run([str(docket), "instance", "--id", "a"], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
    assert configured.returncode == 1 and "warning" not in configured.stderr
