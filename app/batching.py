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
from collections.abc import Sequence

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
    ("aiokafka.client", "AIOKafkaClient", "_wait_on_metadata"),
)


async def send_batched(producer, topic: str, partition: int,
                       records: Sequence[tuple[bytes | None, bytes | None]]) -> list[tuple[asyncio.Future, int]]:
    """Queue ``records`` (key, value; a None value is a tombstone) for
    ``topic``[``partition``] with ``producer`` (an AIOKafkaProducer), in order, in as
    few record batches as they fit in (the producer's max_batch_size). Returns
    (future, record count) per batch; a future's RecordMetadata names the batch's first
    offset. Raises ValueError for a record larger than a batch, ProducerClosed after the
    producer stopped. Returns once the batches are queued, not sent."""
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
        sent.append((asyncio.shield(batch.future), n))
        i += n
    return sent
