"""Producing many records to one partition as aiokafka record batches.

``AIOKafkaProducer.send`` costs tens of microseconds of Python per record; a batch
builder's ``append`` a few, and the batch goes to the broker as one produce request.
docket produces its changelog records, results and entity records this way.

Unlike ``AIOKafkaProducer.send_batch``, which waits until the partition's previous
batch has been handed to the broker (a produce round trip, in the middle of the
pipeline), :func:`send_batched` queues a batch behind the ones already waiting, up to
:data:`MAX_QUEUED` per partition: the sender still takes them one at a time, in order.
It uses aiokafka's accumulator directly (``_message_accumulator``, its ``_batches``
and ``_append_batch``, and ``client._wait_on_metadata``), as pinned in pyproject.toml
and checked by tests/unit/test_intake.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka.errors import ProducerClosed
from aiokafka.structs import TopicPartition

# Batches queued for one partition before send_batched waits for the oldest to leave.
MAX_QUEUED = 16

# (object, attribute) pairs of aiokafka this module relies on (tests/unit/test_intake.py)
AIOKAFKA_INTERNALS = (
    ("aiokafka.producer.producer", "AIOKafkaProducer", "create_batch"),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator", "_append_batch"),
    ("aiokafka.producer.message_accumulator", "MessageBatch", "wait_drain"),
    ("aiokafka.producer.message_accumulator", "MessageBatch", "future"),
    ("aiokafka.producer.message_accumulator", "MessageBatch", "_drain_waiter"),
    ("aiokafka.client", "AIOKafkaClient", "_wait_on_metadata"),
    # agents/clerk_publish.py Publisher._publish: the transaction waiter of a producer
    # whose batch failed
    ("aiokafka.producer.producer", "AIOKafkaProducer", "_txn_manager"),
    ("aiokafka.producer.transaction_manager", "TransactionManager", "wait_for_transaction_end"),
)


async def send_batched(producer, topic: str, partition: int,
                       records: Sequence[tuple[bytes | None, bytes | None]],
                       on_done: Callable[[asyncio.Future, int], None] | None = None,
                       ) -> list[tuple[asyncio.Future, int]]:
    """Queue ``records`` (key, value; a None value is a tombstone) for
    ``topic``[``partition``] with ``producer`` (an AIOKafkaProducer), in order, in as
    few record batches as they fit in (the producer's max_batch_size). Returns
    (future, record count) per batch; a future's RecordMetadata names the batch's first
    offset. Raises ValueError for a record larger than a batch, ProducerClosed after the
    producer stopped. Returns once the batches are queued, not sent.

    With ``on_done``, ``on_done(future, record count)`` is called once for each batch
    when it is delivered or has failed, and the futures returned are aiokafka's own,
    not shielded: for a caller that only watches them and never awaits them (a
    cancelled await would cancel the batch's future inside the producer). That is one
    event-loop callback per batch where there were three and the caller's own (the
    shield's two, the drain waiter's): an instance queues a changelog batch per input
    partition per round, the Clerk a batch per partition and topic per transaction
    (docs/performance.md, "What a round costs")."""
    if not records:
        return []
    await producer.client._wait_on_metadata(topic)
    accumulator = producer._message_accumulator
    tp = TopicPartition(topic, partition)
    timeout = producer._request_timeout_ms / 1000
    sent = []
    i = 0
    while i < len(records):
        builder = producer.create_batch()
        n = 0
        for key, value in records[i:]:
            if builder.append(key=key, value=value, timestamp=None) is None:
                break
            n += 1
        if n == 0:
            size = len(records[i][1] or b"") + len(records[i][0] or b"")
            raise ValueError(f"a record of {size} bytes for {topic} does not fit a producer batch")
        pending = accumulator._batches.get(tp)
        while pending and len(pending) >= MAX_QUEUED:
            await pending[0].wait_drain(timeout=timeout)
        if accumulator._closed:
            raise ProducerClosed()
        batch = accumulator._append_batch(builder, tp)
        # A failed producer (fenced, stopped) fails the batch's drain waiter too, which
        # only wait_drain reads: retrieve it, or asyncio logs "Future exception was never
        # retrieved" when the producer is collected (the caller hears of the failure
        # through the batch's future and the transaction's outcome)
        if on_done is None:
            batch._drain_waiter.add_done_callback(retrieved)
            sent.append((asyncio.shield(batch.future), n))
        else:
            batch.future.add_done_callback(_watched(batch, n, on_done))
            sent.append((batch.future, n))
        i += n
    return sent


def _watched(batch, n: int, on_done: Callable[[asyncio.Future, int], None]) -> Callable[[asyncio.Future], None]:
    def done(future: asyncio.Future) -> None:
        # aiokafka fails a batch's future and then its drain waiter in one call, and
        # drains a batch before it can be delivered: the waiter is done by now
        waiter = batch._drain_waiter
        if waiter.done():
            retrieved(waiter)
        else:
            waiter.add_done_callback(retrieved)
        on_done(future, n)
    return done


def retrieved(future: asyncio.Future) -> None:
    """A done-callback that marks ``future``'s exception as retrieved (so asyncio
    does not log it when the future is collected); for futures whose failure the
    caller learns of otherwise."""
    if not future.cancelled():
        future.exception()


class Deliveries:
    """Record batches queued with ``send_batched(..., on_done=deliveries.done)`` and
    counted with :meth:`queued`, awaited together: :meth:`wait` returns once every one
    of them is delivered or has failed, with the failures (exceptions, in the order the
    batches finished; a cancelled batch as CancelledError). What ``asyncio.gather(...,
    return_exceptions=True)`` over shielded futures gives, at one event-loop callback
    per batch instead of five; cancelling the waiting task cancels no batch."""

    __slots__ = ("failed", "_queued", "_done", "_waiter")

    def __init__(self) -> None:
        self.failed: list[BaseException] = []
        self._queued = 0
        self._done = 0
        self._waiter: asyncio.Future | None = None

    def queued(self, sent: list) -> None:
        """Count the batches ``send_batched`` returned (its list)."""
        self._queued += len(sent)

    def done(self, future: asyncio.Future, _n: int) -> None:
        """The ``on_done`` of each batch."""
        self._done += 1
        exc = asyncio.CancelledError() if future.cancelled() else future.exception()
        if exc is not None:
            self.failed.append(exc)
        if self._waiter is not None and self._done >= self._queued and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> list[BaseException]:
        if self._done < self._queued:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.failed


class Produced(tuple):
    """(partition, offset, timestamp) of one record an :class:`Outbox` sent; the
    timestamp is the broker's for a LogAppendTime topic (ms)."""

    __slots__ = ()

    @property
    def partition(self) -> int:
        return self[0]

    @property
    def offset(self) -> int:
        return self[1]

    @property
    def timestamp(self) -> int:
        return self[2]


class Outbox:
    """Records for one topic, handed to the producer as record batches per partition.

    :meth:`send` queues a record and returns a future of its :class:`Produced`; on the
    next turn of the event loop everything queued meanwhile goes out with
    :func:`send_batched`, one batch per partition: many concurrent callers (the REST
    API's requests) cost one batch, not one ``send`` each."""

    def __init__(self, producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._pending: dict[int, list[tuple[bytes | None, bytes, asyncio.Future]]] = {}
        self._flushing: asyncio.Task | None = None

    def send(self, partition: int, key: bytes | None, value: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.setdefault(partition, []).append((key, value, fut))
        if self._flushing is None or self._flushing.done():
            self._flushing = loop.create_task(self._flush())
        return fut

    async def _flush(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, {}
            for partition, items in sorted(pending.items()):
                try:
                    sent = await send_batched(self.producer, self.topic, partition, [(k, v) for k, v, _ in items])
                except Exception as exc:  # noqa: BLE001  every caller of this batch hears of it
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                start = 0
                for batch, n in sent:
                    batch.add_done_callback(_resolver(partition, items[start:start + n]))
                    start += n


def _resolver(partition: int, items: list):
    def resolve(batch: asyncio.Future) -> None:
        if batch.cancelled() or batch.exception() is not None:
            exc = batch.exception() if not batch.cancelled() else asyncio.CancelledError()
            for _, _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        try:
            meta = batch.result()
            base, stamped = meta.offset, meta.timestamp
        except Exception as exc:  # noqa: BLE001  no caller may be left waiting
            for _, _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for j, (_, _, fut) in enumerate(items):
            if not fut.done():
                fut.set_result(Produced((partition, base + j, stamped)))
    return resolve
