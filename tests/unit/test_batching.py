"""app/batching.py: records to one partition as aiokafka record batches, queued behind
the partition's earlier batches, and the Outbox that gathers concurrent sends. Driven
against a stand-in of aiokafka's producer and accumulator (tests/unit/test_spec_workers
RecordingProducer); what aiokafka itself does with the batches is the integration
tests' business (tests/integration)."""

from __future__ import annotations

import asyncio

import pytest

from app.batching import MAX_QUEUED, Deliveries, Outbox, send_batched
from tests.unit.test_spec_workers import RecordingProducer


async def test_records_go_in_order_in_as_few_batches_as_fit() -> None:
    """ResultsProducedInBatches, ChangelogOrderPerBatch: records keep their order, fill
    a batch before the next is started, and each batch's future names its first
    offset with the number of records it holds."""
    producer = RecordingProducer(batch_room=3)
    records = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(7)]
    sent = await send_batched(producer, "t", 2, records)
    assert [n for _, n in sent] == [3, 3, 1]
    assert [(e[2], e[3], e[4]) for e in producer.log] == [(k, v, 2) for k, v in records]
    assert [(await fut).offset for fut, _ in sent] == [0, 3, 6]
    assert await send_batched(producer, "t", 2, []) == []


async def test_a_record_larger_than_a_batch_is_refused() -> None:
    producer = RecordingProducer(batch_room=0)
    with pytest.raises(ValueError, match="does not fit a producer batch"):
        await send_batched(producer, "t", 0, [(b"k", b"v" * 10)])


async def test_batches_queue_behind_earlier_ones_up_to_a_bound() -> None:
    """A partition's batches are queued behind the ones waiting (no produce round trip
    in between), and only MAX_QUEUED of them: then the oldest must leave first."""
    producer = RecordingProducer(batch_room=1)
    drained = asyncio.Event()

    class Waiting:
        async def wait_drain(self, timeout):
            await drained.wait()
            queue.clear()

    from aiokafka.structs import TopicPartition

    queue = [Waiting() for _ in range(MAX_QUEUED)]
    producer._batches[TopicPartition("t", 0)] = queue
    task = asyncio.create_task(send_batched(producer, "t", 0, [(b"k", b"v")]))
    await asyncio.sleep(0.05)  # let the task run up to its wait (it must be waiting, not done)
    assert not task.done() and producer.log == []
    drained.set()
    await asyncio.wait_for(task, 5)
    assert len(producer.log) == 1


async def test_outbox_gathers_concurrent_sends_into_one_batch_per_partition() -> None:
    """ApiProducesInBatches: sends made in one turn of the event loop go out as one
    batch per partition; each caller learns its own (partition, offset, timestamp)."""
    producer = RecordingProducer()
    outbox = Outbox(producer, "in")
    futures = [outbox.send(p, f"k{i}".encode(), f"v{i}".encode()) for i, p in enumerate([0, 1, 0, 0, 1])]
    got = await asyncio.gather(*futures)
    assert producer.batches == 2
    assert sorted((g.partition, g.offset) for g in got) == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4)]
    assert [g.partition for g in got] == [0, 1, 0, 0, 1]
    by_value = {e[3]: e[4] for e in producer.log}
    assert by_value == {b"v0": 0, b"v1": 1, b"v2": 0, b"v3": 0, b"v4": 1}


async def test_outbox_reports_a_failed_batch_to_each_of_its_callers() -> None:
    class Failing(RecordingProducer):
        def _append_batch(self, batch, tp):
            queued = super()._append_batch(batch, tp)
            queued.future = asyncio.get_running_loop().create_future()
            queued.future.set_exception(RuntimeError("broker said no"))
            return queued

    outbox = Outbox(Failing(), "in")
    futures = [outbox.send(0, b"k", b"v"), outbox.send(0, b"k", b"w")]
    for fut in futures:
        with pytest.raises(RuntimeError, match="broker said no"):
            await fut


class RealBatches(RecordingProducer):
    """A RecordingProducer whose queued batches are aiokafka's own MessageBatch (its
    future, its drain waiter, its done and failure), kept in ``queued`` for the test to
    finish as the sender would."""

    def __init__(self, batch_room: int = 1000) -> None:
        super().__init__(batch_room)
        self.queued: list = []

    def _append_batch(self, batch, tp):
        from aiokafka.producer.message_accumulator import MessageBatch

        super()._append_batch(batch, tp)
        real = MessageBatch(tp, batch, ttl=30, linger_time=0)
        self.queued.append(real)
        return real


def _never_retrieved(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Collect the loop's "exception was never retrieved" reports from now on."""
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    return seen


async def test_on_done_is_one_callback_per_batch_and_retrieves_a_failed_drain_waiter() -> None:
    """ChangelogOrderPerBatch's batches, watched: with ``on_done`` each batch calls it
    once, with its future (aiokafka's own, not a shield) and its record count, whether
    delivered or failed; a producer that fails a batch before draining it fails the
    drain waiter too, and nothing is left for asyncio to report as never retrieved."""
    import gc

    loop = asyncio.get_running_loop()
    seen = _never_retrieved(loop)
    producer = RealBatches(batch_room=2)
    calls: list[tuple[object, int]] = []
    sent = await send_batched(producer, "t", 1, [(b"k", b"v")] * 5, on_done=lambda f, n: calls.append((f, n)))
    assert [n for _, n in sent] == [2, 2, 1]
    assert [f for f, _ in sent] == [b.future for b in producer.queued]  # unshielded
    first, second, third = producer.queued
    first.drain_ready()
    first.done(base_offset=40)
    second.failure(RuntimeError("broker said no"))  # before draining: its drain waiter fails too
    third.drain_ready()
    third.failure(RuntimeError("broker said no again"))
    await asyncio.sleep(0)
    assert [(f.result().offset if f.exception() is None else str(f.exception()), n) for f, n in calls] == [
        (40, 2), ("broker said no", 2), ("broker said no again", 1)]
    assert second._drain_waiter.done()  # (failed: reading its exception here would retrieve it)
    del sent, calls, first, second, third
    producer.queued.clear()
    gc.collect()
    await asyncio.sleep(0)
    assert seen == []


async def test_deliveries_wait_for_every_batch_and_return_the_failures() -> None:
    """What the Clerk's transaction waits for before it commits: every batch of it done,
    the failed ones' exceptions returned (a cancelled batch as CancelledError), whether
    a batch finished before wait() was called or after."""
    producer = RealBatches(batch_room=1)
    deliveries = Deliveries()
    deliveries.queued(await send_batched(producer, "t", 0, [(b"k", b"v")] * 2, on_done=deliveries.done))
    early, late = producer.queued
    early.drain_ready()
    early.done(base_offset=0)
    await asyncio.sleep(0)
    deliveries.queued(await send_batched(producer, "t", 1, [(b"k", b"v")], on_done=deliveries.done))
    cancelled = producer.queued[2]
    waiting = asyncio.ensure_future(deliveries.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    late.drain_ready()
    late.failure(RuntimeError("refused"))
    await asyncio.sleep(0)
    assert not waiting.done()  # one batch still out
    cancelled.future.cancel()
    failed = await asyncio.wait_for(waiting, 5)
    assert [type(e) for e in failed] == [RuntimeError, asyncio.CancelledError]
    assert await Deliveries().wait() == []  # nothing queued: nothing to wait for


async def test_cancelling_the_wait_for_deliveries_cancels_no_batch() -> None:
    producer = RealBatches()
    deliveries = Deliveries()
    deliveries.queued(await send_batched(producer, "t", 0, [(b"k", b"v")], on_done=deliveries.done))
    waiting = asyncio.ensure_future(deliveries.wait())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not producer.queued[0].future.cancelled()
    producer.queued[0].drain_ready()
    producer.queued[0].done(base_offset=0)
    await asyncio.sleep(0)
    assert deliveries.failed == []
