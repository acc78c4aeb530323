"""Batch intake: a Faust consumer that hands a stream batches of one partition each, one
item per fetch.

Faust delivers a topic record by record: for each one it builds a Message, awaits a
race between the stream's queue and the flow-control event, builds an Event, and the
stream acknowledges it on its own. On this machine that costs about 30 us per record
before docket sees it. For the topics named in ``batch_topics`` this consumer does
that once per batch instead: the records aiokafka fetched for one partition, in
offset order, cut into pieces of at most ``batch_size``, travel as ONE
:class:`BatchMessage` whose ``offset`` is the last record's; acknowledging it marks
every offset it covers (the records, and the offsets between them and the previous
batch that hold no record for this consumer: transaction markers, aborted records)
as acknowledged, so Faust's commit machinery works unchanged: offsets are committed
only up to a batch whose processing has finished. An instance's consumer hands the
batches of every input partition one fetch returned over as ONE item
(``across_partitions``), the Clerk's those of every partition of every output topic
(``across_topics`` and ``across_partitions``); each batch in it keeps its own
acknowledgement.

Every other topic (the tables' changelogs, during recovery and for standbys) is
delivered record by record exactly as Faust does.

The Faust internals this relies on are listed in :data:`FAUST_INTERNALS`; a test
(tests/unit/test_intake.py) fails loudly if any of them changes shape. They are those
of faust-streaming 0.15 and aiokafka 0.14, pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as _driver
from faust.types.tuples import ConsumerMessage
from mode.utils.queues import FlowControlEvent

from agents.consumer_close import DocketConsumerThread

log = logging.getLogger("docket.intake")

# (object, attribute) pairs of Faust the batch consumer reads, calls or overrides.
FAUST_INTERNALS = (
    (_driver.Consumer, "_drain_messages"),
    (_driver.Consumer, "_wait_next_records"),
    (_driver.Consumer, "_to_message"),
    (_driver.Consumer, "ack"),
    (_driver.Consumer, "_add_gap"),
    (_driver.Consumer, "perform_seek"),
    (_driver.Consumer, "highwater"),
    (_driver.Consumer, "wait_first"),
    (_driver.Consumer, "callback"),
    (_driver.Consumer, "_commit_offsets"),
    (_driver.Consumer, "_commit"),
    (_driver.Consumer, "on_partitions_assigned"),
    (_driver.Consumer, "flow_active"),
    (_driver.Consumer, "_read_offset"),
    (_driver.Consumer, "on_partitions_revoked"),
    (_driver.Consumer, "seek"),
    (_driver.Consumer, "_thread"),
    (_driver.AIOKafkaConsumerThread, "call_thread"),
    (_driver.AIOKafkaConsumerThread, "_ensure_consumer"),
    (_driver.AIOKafkaConsumerThread, "on_thread_stop"),
    (_driver.Consumer, "_new_consumer_thread"),
    (_driver.Consumer, "_gap"),
    (_driver.Consumer, "_new_offset"),
    (_driver.Consumer, "wait_empty"),
    (_driver.Consumer, "_clean_unacked_messages"),
    (_driver.Consumer, "_wait_for_ack"),
    (_driver.Consumer, "commit_and_end_transactions"),
    (_driver.Transport, "Consumer"),
    (ConsumerMessage, "on_final_ack"),
    (FlowControlEvent, "resume"),
)


# BatchConsumer._starts: a partition between a revocation or an assignment and the seek
# to the committed offsets that follows it; and (never stored) one whose hand-overs since
# that seek started where it put the partition
UNSOUGHT = object()
HANDED_OVER = object()


class BatchMessage(ConsumerMessage):
    """Consecutive records of one partition as one Faust message.

    ``records``: the aiokafka ConsumerRecords, in offset order (at least one);
    ``offset``: the last one's; ``ack_from``: the first offset this batch covers for
    the commit (the one after the previous batch's last, or the first record's);
    ``companions``: for a consumer that hands over items across topics or partitions
    (``BatchConsumer.across_topics``, ``across_partitions``), the other batches of the
    same fetch that travel with this one as one stream item (:func:`members_of`);
    else empty."""

    __slots__ = ("records", "ack_from", "companions")

    def __init__(self, tp, records: list, ack_from: int, generation_id: int | None) -> None:
        last = records[-1]
        super().__init__(tp.topic, tp.partition, last.offset, last.timestamp / 1000.0, last.timestamp_type,
                         None, None, None, None, 0, 0, tp, generation_id=generation_id)
        self.records = records
        self.ack_from = min(ack_from, records[0].offset)
        self.companions: tuple[BatchMessage, ...] = ()


class OneRecord(NamedTuple):
    """A plain Faust message seen as a record of a batch of one."""

    partition: int
    offset: int
    timestamp: int  # ms
    key: bytes | None
    value: bytes | None
    timestamp_type: int  # 0 CreateTime, 1 LogAppendTime


def records_of(message) -> list:
    """The records a stream item carries: a BatchMessage's, or the one record of a
    plain Faust message (what Faust's agent test context and any per-record path put
    on a stream), each with ``partition``, ``offset``, ``timestamp`` (ms), ``key``,
    ``value`` and ``timestamp_type``: what app.records.InputRecord has, so the Usher
    takes them as they are."""
    records = getattr(message, "records", None)
    if records is not None:
        return records
    return [OneRecord(message.partition, message.offset, round(message.timestamp * 1000), message.key, message.value,
                      message.timestamp_type)]


def members_of(message) -> tuple:
    """The messages a stream item carries: a BatchMessage and its companions (the
    other batches of one fetch, one per topic-partition), or the item's message alone."""
    return (message, *getattr(message, "companions", ()))


def chunks(records: list, size: int) -> Iterable[list]:
    for start in range(0, len(records), size):
        yield records[start:start + size]


class BatchConsumer(_driver.Consumer):
    """Faust's aiokafka consumer, delivering ``batch_topics`` in batches (module doc).

    ``batch_topics`` and ``batch_size`` are class attributes, set by :func:`install`."""

    batch_topics: frozenset[str] = frozenset()
    batch_size: int = 256
    # hand over what one fetch returned for one partition NUMBER of every batch topic
    # as one item (partition p of every Clerk source carries copies of the same input
    # partition p, and one item per topic made two rounds of its agent per event
    # where one would do); else one item per topic-partition
    across_topics: bool = False
    # hand over what one fetch returned for every partition of one batch topic as one
    # item (the instances: each partition's batch is judged, flushed and sent on its
    # own within the item, but the item costs one round of the agent and of Faust's
    # stream, not one per partition); else one item per topic-partition. With
    # across_topics too (the Clerk), one item per fetch.
    across_partitions: bool = False
    # the first record the producer failed to deliver (guard_delivery): from then on
    # nothing is committed
    undelivered: BaseException | None = None

    def _new_consumer_thread(self) -> DocketConsumerThread:
        # Faust's, with a bounded close of the consumer (agents/consumer_close.py)
        return DocketConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        # Faust flushes the producer and then commits, but a flush returns as well when
        # a batch FAILED (aiokafka resolves its future with the error): a commit now
        # could pass a batch whose changelog records or copies never reached Kafka.
        if self.undelivered is not None:
            return False
        return await super()._commit_offsets(offsets, start_new_transaction)

    async def _commit(self, offsets) -> bool:
        # Checked again between Faust's flush and the commit request itself: a batch
        # still in flight when the commit began (an item is acknowledged once its
        # batches are queued) may fail during that flush, and its done-callback has
        # set ``undelivered`` by the time the flush returns (it was attached first).
        if self.undelivered is not None:
            return False
        return await super()._commit(offsets)

    # for an app that holds messages unacknowledged on purpose (the Clerk: copies of
    # positions not yet final): returns the message its agent is working on, or None
    in_progress = None

    # for an app that holds some messages unacknowledged for good (an instance: the
    # batches of a partition blocked at an activation it cannot follow): returns them
    held = None

    async def wait_empty(self) -> None:
        """Faust's rebalance drain (Consumer.wait_empty), which waits until every message
        handed to a stream is acknowledged, except that messages the app holds on
        purpose are not waited for: the Clerk holds a copy until its position is final,
        which may need copies that only come after the rebalance. Only the message in
        progress is waited for, so nothing of the old assignment is processed after
        the drain; every other unacknowledged one stays so (the next owner reads it
        again). An instance waits for every message but those it holds (``held``)."""
        if self.in_progress is None and self.held is not None:
            while not self.should_stop:
                self._unacked_messages.difference_update(self.held())
                self._clean_unacked_messages()
                if not self._unacked_messages:
                    break
                await self._wait_for_ack(timeout=1)
            await self.commit_and_end_transactions()
            return
        if self.in_progress is None:
            return await super().wait_empty()
        while not self.should_stop:
            current = self.in_progress()
            self._unacked_messages.intersection_update({current} if current is not None else set())
            self._clean_unacked_messages()
            if not self._unacked_messages:
                break
            await self._wait_for_ack(timeout=1)
        await self.commit_and_end_transactions()

    def handing_over(self, generation: int) -> bool:
        """True while the pieces of a fetch read in consumer-group generation
        ``generation`` may still be handed over and move the read offset: the flow is on
        and the generation is the same.

        Both, because a rebalance shows in that order: Faust's revocation forgets the
        partitions' read offsets and stops the flow at once, but the generation changes
        only at the assignment, after the group's join. A read offset set after the
        revocation (say 923, for a piece the agent never took) outlived the rebalance,
        and the next generation's fetch from the committed offset (887) was cut to the
        records at or above it: offsets 887..922 were never processed by that worker,
        and their gap was acknowledged with the record at 923, so a commit could pass
        them for good. Seen in tests/integration/test_scale_out.py under load: instance
        b judged offset 923 on a state without 895..922, and every later event of the
        entity it touched diverged (NoReadOffsetAcrossARebalance)."""
        return self.flow_active and self.app.consumer_generation_id == generation

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # batch-topic partition -> where its next hand-over must start: the offset the
        # latest seek to the committed offsets put it at (None: there was none, nothing
        # to check), UNSOUGHT from a revocation or an assignment until that seek (or,
        # for a partition of which a fetch was dropped meanwhile, until seek_again);
        # absent once a hand-over started where it should (StartWhereSought)
        self._starts: dict = {}
        # partitions this consumer sought back to their start, whose next fetch is read
        # from there: a first record after the start is then a gap with no record for
        # this consumer (transaction markers, aborted records)
        self._resought: set = set()
        # partition -> the lowest offset of what was fetched and dropped while it was
        # unsought: where to read from when the seek finds no committed offset (the
        # seek leaves the position alone then, past what was dropped)
        self._dropped_from: dict = {}
        self._assigned = False  # between an assignment and the next revocation
        # set while the stream queues keep what is handed over (:meth:`queues_kept`):
        # from the app's first flow resume after the seek to the committed offsets
        # (_sought_in: that seek's generation) until the next revocation, assignment
        # or seek; set before the first assignment, as nothing is fetched then
        self._kept = asyncio.Event()
        self._kept.set()
        self._sought_in: int | None = None
        self._watch_flow_control()

    def _watch_flow_control(self) -> None:
        flow_control = self.app.flow_control
        resume = flow_control.resume

        def resumed() -> None:
            resume()  # clears every stream queue
            if self._assigned and self._sought_in == self.app.consumer_generation_id:
                self._kept.set()

        flow_control.resume = resumed

    async def queues_kept(self, generation: int) -> bool:
        """Wait until a hand-over stays in the stream's queue until the agent takes it;
        False if a rebalance began meanwhile (:meth:`handing_over`): then hand nothing
        over. Why: Faust's recovery resumes the app's flow once the seek to the
        committed offsets is over (faust/tables/recovery.py, on_recovery_completed),
        and mode's FlowControlEvent.resume clears every stream queue. The seek and
        :meth:`seek_again` go partition by partition while the fetch loop runs on, so
        a partition sought early could be handed over before that resume, and what
        still sat in the queue then was lost while the read offset had moved past it:
        in the chaos suite a restarted instance b skipped input partition 1's
        16574..16829 (a 256-record piece) and every later copy of it diverged from
        a's (HandOverAfterTheResume)."""
        while not self._kept.is_set():
            if self.should_stop or not self.handing_over(generation):
                return False
            try:
                await asyncio.wait_for(self._kept.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        return self.handing_over(generation)

    async def on_partitions_revoked(self, revoked) -> None:
        self._assigned = False
        self.unsought(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        self.forget_read_offsets(assigned)
        self._assigned = True
        await super().on_partitions_assigned(assigned, generation_id)

    def forget_read_offsets(self, tps) -> None:
        """Forget the read offsets of the batch topics' partitions among ``tps`` (at an
        assignment): the only read offset a new assignment has is the one its seek to
        the committed offsets sets, and until that seek nothing of them is handed over
        (:meth:`unsought`; NoReadOffsetAcrossARebalance)."""
        for tp in tps:
            if tp.topic in self.batch_topics:
                self._read_offset.pop(tp, None)
        self.unsought(tps)

    def unsought(self, tps) -> None:
        """Hand over nothing of the batch topics' partitions among ``tps`` until the
        next seek to the committed offsets (a revocation or an assignment: what is
        fetched meanwhile comes from a position the seek will move; Faust resumes the
        partitions before it, faust/tables/recovery.py Recovery.on_recovery_completed)."""
        self._kept.clear()
        self._sought_in = None
        for tp in tps:
            if tp.topic in self.batch_topics:
                self._starts[tp] = UNSOUGHT
                self._resought.discard(tp)
                self._dropped_from.pop(tp, None)

    async def seek(self, partition, offset: int) -> None:
        """Faust's Consumer.seek (aiokafka's seek of ``partition`` to ``offset``, and the
        read offset set there), made in the consumer's thread. Faust calls aiokafka's
        seek from the worker's event loop while the consumer's thread may be inside
        aiokafka's fetched_records, which then finds the partition's buffered records
        deleted under it: KeyError, and Faust's Fetcher crashed (fresh-clone CI of
        56a1631, tests/integration/test_pipeline_crash.py, at a seek_again)."""
        thread = self._thread
        await thread.call_thread(thread._ensure_consumer().seek, partition, offset)
        self._read_offset[partition] = offset if offset else None

    async def perform_seek(self) -> None:
        assigned, generation = self._assigned, self.app.consumer_generation_id
        self._kept.clear()  # until the flow resumes after this seek (queues_kept)
        self._sought_in = None
        await super().perform_seek()
        if assigned and self._assigned and generation == self.app.consumer_generation_id:
            # the assignment was neither revoked nor replaced while the seek ran (it
            # awaits a round trip per partition)
            again = self.sought([tp for tp in list(self._read_offset) if tp.topic in self.batch_topics])
            await self.seek_again(again, generation)
            if self._assigned and generation == self.app.consumer_generation_id:
                self._sought_in = generation

    def sought(self, tps) -> dict:
        """The seek to the committed offsets has put ``tps`` at their read offsets: the
        next hand-over of each must start there (:meth:`starts_where_sought`). A
        partition without a committed offset is not moved by the seek: it must start
        at the first offset fetched and dropped before it, if any was (else at
        whatever is fetched first).

        Returns {partition: start} of those of ``tps`` of which a fetch was dropped
        while they were unsought: they stay unsought until :meth:`seek_again` has put
        them at their start once more. Why: Faust's seek goes partition by partition,
        one round trip each, while the fetch loop runs on, so a fetch made from the
        position the seek had just set could be dropped as unsought; aiokafka's
        position was then past those records, and with nothing more written to the
        partition nothing more was ever fetched from it. In the chaos suite a restarted
        instance so never read input partition 2 from its committed offset 175 (the
        fetch 175..459, the partition's end, dropped 64 ms before the seek finished):
        250 events unanswered (StartWhereSought)."""
        again = {}
        for tp in tps:
            dropped_from = self._dropped_from.pop(tp, None)
            start = self._read_offset.get(tp)
            self._resought.discard(tp)
            if dropped_from is not None:
                again[tp] = dropped_from if start is None else start
            else:
                self._starts[tp] = start
        return again

    async def seek_again(self, starts: dict, generation: int) -> None:
        """Seek each partition of ``starts`` (partition -> offset, from :meth:`sought`)
        to its offset, then let its next hand-over start there. A partition revoked or
        reassigned meanwhile stays unsought: the next assignment's seek covers it; one
        whose seek fails stays unsought too, with a log line saying so."""
        for tp, start in starts.items():
            if not (self._assigned and self.app.consumer_generation_id == generation):
                return
            try:
                await self.seek(tp, start)
            except Exception as exc:  # noqa: BLE001  revoked meanwhile: the next assignment seeks again
                log.info("%s[%d]: could not seek to %d again (%r); waiting for the next seek", tp.topic,
                         tp.partition, start, exc)
                continue
            if self._assigned and self.app.consumer_generation_id == generation:
                self._dropped_from.pop(tp, None)
                self._starts[tp] = start
                log.info("%s[%d]: a fetch was dropped while the seek to the committed offsets ran; sought to %d "
                         "again", tp.topic, tp.partition, start)

    def dropped(self, tp, first: int, why: str) -> None:
        """The drain loop drops a fetch of batch-topic partition ``tp`` whose first
        record (at or after the read offset) is at ``first``, without handing it over,
        for a reason of Faust's (``why``, for the log line: the flow is off, or the
        partition is paused): note it so that it is read again, as aiokafka's position
        is past it. A partition still unsought is sought back to ``first`` by the
        recovery's seek (:meth:`sought`, as for a fetch dropped as unsought); one
        whose next hand-over had no start to check (the seek found no committed
        offset, or a hand-over since the seek started where it should) must start its
        next hand-over there (:meth:`starts_where_sought`); one with a start to check
        keeps it, and its next fetch is checked against it even if the dropped one was
        read from there after a seek back. Why: Faust's seek in its loop moves only partitions with a committed
        offset, and the partition's next fetch came from past the dropped records.
        With an idle fetch in flight across an assignment, a worker of instance a so
        dropped input partition 3's first records (paused for the recovery when they
        came back) and handed over its next fetch from offset 4: offset 0 was never
        answered and 115 later copies of the entities it touched diverged (fresh-clone
        CI of 7b6c885; StartWhereSought)."""
        start = self._starts.get(tp, HANDED_OVER)
        if start is UNSOUGHT:
            self._dropped_from[tp] = min(first, self._dropped_from.get(tp, first))
        elif start is None or start is HANDED_OVER:
            self._starts[tp] = first
            self._resought.discard(tp)
        else:
            # if this was what was read from the start the partition was sought back
            # to, the next fetch comes from past it: check it against the start again
            self._resought.discard(tp)
            return
        log.info("%s[%d]: a fetch from offset %d was dropped (%s); it is read again", tp.topic, tp.partition,
                 first, why)

    async def starts_where_sought(self, tp, first: int) -> bool:
        """May a fetch of batch-topic partition ``tp`` whose first record (at or after
        the read offset) is at ``first`` be handed over? Yes once a hand-over since the
        latest seek started where the seek put the partition; no before that seek
        (:meth:`unsought`); for the first fetch after it, yes if it starts there (or
        the seek found no committed offset, or this consumer sought back to it and this
        is what was read from there). Otherwise the records came from another position:
        the partition is sought back to its start and they are dropped, to be read
        again from there.

        Why: under load on a real broker (tests/integration/test_scale_out.py) the
        first fetch after a rebalance's seek to the committed offset 939 began at 1069,
        the end of the partition then. Handed over, offsets 939..1068 would have counted
        as holding no record for this consumer: worker a1 judged 1069 on a state without
        1041..1068, and the commit passed them (StartWhereSought)."""
        start = self._starts.get(tp, HANDED_OVER)
        if start is HANDED_OVER:
            return True
        if start is UNSOUGHT:
            self._dropped_from[tp] = min(first, self._dropped_from.get(tp, first))
            return False
        if start is None or first == start or tp in self._resought:
            del self._starts[tp]
            self._resought.discard(tp)
            return True
        log.info("%s[%d]: the first fetch after the seek to offset %d starts at %d; seeking back to %d",
                 tp.topic, tp.partition, start, first, start)
        try:
            await self.seek(tp, start)
        except Exception as exc:  # noqa: BLE001  revoked meanwhile: the next assignment seeks again
            log.info("%s[%d]: could not seek back to %d (%r); waiting for the next seek", tp.topic, tp.partition,
                     start, exc)
            self._starts[tp] = UNSOUGHT
            return False
        self._resought.add(tp)
        return False

    def cover(self, message: BatchMessage) -> None:
        """Mark the offsets a batch covers below its last record (from ``ack_from``,
        not below the committed offset) as a gap in Faust's commit bookkeeping, before
        the batch is delivered: once the batch's own (last) offset is acknowledged,
        Faust's _new_offset takes the gap below it as acknowledged too, so the commit
        passes the whole batch. Acknowledging is left to Faust as it is: its compiled
        stream iterator (faust/_cython/streams.pyx) marks a message's offset itself,
        without calling Consumer.ack, so an override of ack would never run there.
        A gap above every acknowledged offset is never taken: a batch's gap counts
        only once a batch at or after it is acknowledged, and batches of a partition
        are acknowledged in the order read (OrderedAcks where they finish out of
        order)."""
        tp = message.tp
        committed = self._committed_offset[tp]
        low = message.ack_from if committed is None else max(message.ack_from, committed)
        if low < message.offset:
            self._gap[tp].addi(low, message.offset)

    async def _hand_over(self, parts: list, generation: int, callback, suspend) -> bool:
        """Hand over ``parts`` ([(tp, records, ack_from)], what one fetch returned for
        each partition, the records at or after its read offset, at least one each) in
        pieces of at most ``batch_size`` records per partition: the i-th pieces of all
        of them travel as one item (the first one's BatchMessage, the others its
        companions), in order, each partition's read offset moved past its piece once
        the item is handed over. Returns False when a rebalance began meanwhile: the
        rest is dropped and the read offsets are left to the rebalance
        (:meth:`handing_over` says why)."""
        read_offset = self._read_offset
        pieces = [list(chunks(recs, self.batch_size)) for _, recs, _ in parts]
        acks_from = [ack_from for _, _, ack_from in parts]
        for i in range(max(len(p) for p in pieces)):
            if not self.handing_over(generation):
                return False
            members = []
            for j, (tp, _, _) in enumerate(parts):
                if i < len(pieces[j]):
                    message = BatchMessage(tp, pieces[j][i], acks_from[j], generation)
                    self.cover(message)
                    members.append((j, message))
            first = members[0][1]
            first.companions = tuple(message for _, message in members[1:])
            await self.wait_first(callback(first), suspend())
            if not self.handing_over(generation):
                return False
            for j, message in members:
                acks_from[j] = read_offset[message.tp] = message.offset + 1
        return True

    async def _drain_messages(self, fetcher) -> None:  # pragma: no cover - exercised on a real broker
        # Faust's own loop (faust/transport/consumer.py, Consumer._drain_messages), with
        # the per-record path kept for every topic but ``batch_topics``.
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        batch_topics = self.batch_topics
        to_message = self._to_message
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspend = self.suspend_flow.wait
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    for tp, recs in records.items():
                        if tp.topic in batch_topics:
                            r_offset = read_offset.get(tp)
                            first = next((r.offset for r in recs if r_offset is None or r.offset >= r_offset), None)
                            if first is not None:
                                self.dropped(tp, first, "the flow is off")
                    try:
                        # Faust's seek alone: the partitions stay unsought until the
                        # recovery's seek. Marked sought here (a rebalance that ended
                        # within this wait), a fetch from the committed offset could
                        # be handed over before the recovery's seek put the read offset
                        # back there, and then be handed over again.
                        await super().perform_seek()
                    except Exception as exc:  # noqa: BLE001  as Faust: logged, the loop goes on
                        self.log.warning(f"exception performing seek when flow not active {exc}")
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                # records come after the wait, so after any rebalance's seek
                generation = self.app.consumer_generation_id
                across: dict = {}  # (topic or None, partition or None) -> [(tp, records, ack_from)]
                for tp, recs in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break
                    r_offset = read_offset[tp]
                    if r_offset is not None:
                        recs = [r for r in recs if r.offset >= r_offset]
                        if not recs:
                            continue
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        if tp.topic in batch_topics:
                            self.dropped(tp, recs[0].offset, "the partition is paused")
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if tp.topic in batch_topics:
                        if self._starts.get(tp) is not UNSOUGHT and not await self.queues_kept(generation):
                            across.clear()  # a rebalance began, or the worker stops: hand nothing more over
                            break
                        if not await self.starts_where_sought(tp, recs[0].offset):
                            continue
                        # For a batch topic the read offset is always the next offset
                        # to read, as Faust's seek leaves it (Faust's per-record path
                        # keeps the last offset delivered instead); everything from it
                        # up to a batch's last record is that batch's to acknowledge.
                        ack_from = recs[0].offset if r_offset is None else r_offset
                        if self.across_topics or self.across_partitions:
                            key = (None if self.across_topics else tp.topic,
                                   None if self.across_partitions else tp.partition)
                            across.setdefault(key, []).append((tp, recs, ack_from))
                        else:
                            await self._hand_over([(tp, recs, ack_from)], generation, callback, suspend)
                        continue
                    acks_enabled = acks_enabled_for(tp.topic)
                    for record in recs:
                        offset = record.offset
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset - r_offset > 1 and acks_enabled:
                            await self._add_gap(tp, r_offset + 1, offset)
                        await self.wait_first(callback(to_message(tp, record)), suspend())
                        read_offset[tp] = offset
                for parts in across.values():
                    if not await self._hand_over(parts, generation, callback, suspend):
                        break
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def guard_delivery(app, future: asyncio.Future, what: str) -> None:
    """Watch ``future`` (an aiokafka send's or record batch's) on behalf of ``app``'s
    consumer: if the producer fails to deliver it (an error, or cancelled at shutdown),
    the consumer commits nothing more and the worker crashes, so a restart replays from
    the last commit and writes the lost records again (the Warden restates what a
    replay finds recorded). ``what`` names the records in the ERROR line."""

    def delivered(fut: asyncio.Future) -> None:
        check_delivery(app, fut, what)

    future.add_done_callback(delivered)


def check_delivery(app, future: asyncio.Future, what: str) -> bool:
    """For a done ``future`` (an aiokafka send's or record batch's): True if it was
    delivered, else False, once ``app``'s consumer has been told to commit nothing more
    (:func:`stop_committing`): what :func:`guard_delivery` does, for a caller that
    watches the future with a callback of its own."""
    exc = asyncio.CancelledError("cancelled") if future.cancelled() else future.exception()
    if exc is None:
        return True
    stop_committing(app, exc, what)
    return False


def stop_committing(app, exc: BaseException, what: str) -> None:
    """``what`` (records named in the ERROR line) could not be delivered: ``app``'s
    consumer commits nothing more and the worker crashes, so a restart replays from
    the last commit (see :func:`guard_delivery`). Only the first failure is logged."""
    consumer = app.consumer
    if consumer.undelivered is not None:
        return
    consumer.undelivered = exc
    log.error("%s could not be delivered to Kafka (%r): this worker commits nothing more and stops; "
              "start it again once Kafka is reachable and it replays from its last commit", what, exc)
    asyncio.ensure_future(app.crash(exc))


class OrderedAcks:
    """Acknowledges stream items per partition in the order they were read, whatever
    order they are finished in.

    Why: Faust commits the first run of consecutive acknowledged offsets, and checks
    that the run starts at the committed offset only when a committed offset is known
    and is not 0, and then only to within one (faust-streaming 0.15.3,
    faust/transport/consumer.py ``Consumer._new_offset``: ``if committed_offset: if
    min(acked) - committed_offset > 1``). An item finished before an earlier one would
    let the commit pass the earlier one, which is then not read again after a crash.
    The Clerk finishes items out of order (an item waits for copies that may come after
    later items); held here until every earlier item of its partition is finished, the
    acknowledged offsets always continue the committed ones.

    An item that carries batches of several partitions (a BatchMessage and its
    companions: :func:`members_of`) takes its place in each of their queues, and each
    of its messages is acknowledged when its own partition's turn comes.

    ``read(item)`` when an item is taken, ``finish(item)`` when it may be acknowledged
    (acknowledges what of it is at the head of its partitions' queues, and every
    finished item after it, up to the first unfinished one), ``forget(tps)`` for
    revoked partitions: every item with a message of one of them is forgotten. Items
    are Faust events (``.message``, ``.ack()`` for the message itself) or shares of one
    (``read(share, messages)``: only ``messages`` of the event's members, agents/clerk.py
    Share: the Clerk holds and acknowledges an item partition by partition, so a
    revoked partition forgets only its own share); a companion is acknowledged with
    ``ack_companion(message)`` (the consumer's ``ack``)."""

    def __init__(self, ack_companion=None) -> None:
        self._ack_companion = ack_companion
        self._queues: dict = {}  # TP -> deque of [item, message, finished]
        self._entries: dict = {}  # item -> its entries, one per message

    def read(self, item, messages=None) -> None:
        entries = []
        for message in members_of(item.message) if messages is None else messages:
            entry = [item, message, False]
            entries.append(entry)
            self._queues.setdefault(message.tp, deque()).append(entry)
        self._entries[item] = entries

    def finish(self, item) -> None:
        entries = self._entries.get(item)
        if entries is None:  # its partition was revoked since
            return
        for entry in entries:
            entry[2] = True
        for entry in tuple(entries):  # (entries shrinks as they are acknowledged)
            queue = self._queues[entry[1].tp]
            while queue and queue[0][2]:
                done, message, _ = queue.popleft()
                if message is done.message:
                    done.ack()
                else:
                    self._ack_companion(message)
                left = self._entries[done]
                left[:] = [e for e in left if e[1] is not message]
                if not left:
                    del self._entries[done]

    def waiting(self) -> int:
        """Items read and not yet acknowledged in full."""
        return len(self._entries)

    def forget(self, tps: Iterable) -> None:
        gone = set()
        for tp in tps:
            for item, _, _ in self._queues.pop(tp, ()):
                gone.add(item)
        for item in gone:
            for _, message, _ in self._entries.pop(item, ()):
                queue = self._queues.get(message.tp)
                if queue is not None:
                    self._queues[message.tp] = deque(e for e in queue if e[0] is not item)


def install(app, topics: Iterable[str], batch_size: int, in_progress=None, held=None,
            across_topics: bool = False, across_partitions: bool = False) -> None:
    """Make ``app``'s consumer deliver ``topics`` in batches of at most ``batch_size``
    records. Call before the app's consumer is created (before the worker starts).
    ``in_progress``: for an app that holds messages unacknowledged on purpose, a
    callable returning the message its agent is working on, or None (see
    :meth:`BatchConsumer.wait_empty`); ``held``: for one that holds some messages
    unacknowledged for good, a callable returning them (not waited for either);
    ``across_topics``: one item per partition number of a fetch across ``topics``
    (:attr:`BatchConsumer.across_topics`); ``across_partitions``: one item per topic of a
    fetch across its partitions (:attr:`BatchConsumer.across_partitions`); both: one item
    per fetch, a batch per topic-partition it returned records of; else one per
    topic-partition."""
    consumer_class = type("DocketBatchConsumer", (BatchConsumer,),
                          # named, or mode's logger for it is named after the metaclass's module, "abc"
                          {"__module__": __name__, "batch_topics": frozenset(topics), "batch_size": batch_size,
                           "across_topics": across_topics, "across_partitions": across_partitions,
                           "in_progress": staticmethod(in_progress) if in_progress is not None else None,
                           "held": staticmethod(held) if held is not None else None})
    app.transport.Consumer = consumer_class
