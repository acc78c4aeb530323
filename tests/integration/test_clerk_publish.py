"""The Clerk's transactional publishing on a real broker, when the broker refuses a
record batch of a transaction (specs/clerk.allium ClerkRenewsProducerOnRefusedBatch).

The refusal is the one a broker restart caused in tests/integration/test_chaos.py
(broker-restart, 2026-12-02): the Clerk's producer's sequence numbers for some
partitions ran past the broker's, every later batch for them was refused
(OutOfOrderSequenceNumber), and aiokafka committed each transaction anyway, with only
its markers on those partitions: 467 results lost. Here the same gap is made on purpose
(one step of aiokafka's own sequence counter), so the broker refuses the next batch
exactly as it did then.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import OutOfOrderSequenceNumber

from agents.clerk_core import Publish
from agents.clerk_publish import PartitionProducers, Publisher
from app.kafka_config import client_kwargs
from app.settings import Settings
from tests.integration.clerk_kit import read_all

pytestmark = pytest.mark.integration


def result(p: int, offset: int) -> Publish:
    value = orjson.dumps({"input": {"partition": p, "offset": offset}, "outcome": {"status": "applied"}})
    return Publish(p, offset, f"ik-{offset}".encode(), value, 0)


def skip_sequence(producer: AIOKafkaProducer, topic: str, p: int) -> None:
    """Move ``producer``'s next sequence number for ``topic``[``p``] one past what the
    broker expects (aiokafka's TransactionManager keeps it per partition)."""
    producer._txn_manager.increment_sequence_number(TopicPartition(topic, p), 1)


async def test_aiokafka_commits_a_transaction_one_of_whose_batches_was_refused(docket_settings: Settings) -> None:
    """Why the Publisher checks every batch before it commits: aiokafka (0.14) fails
    only the refused batch's future, and the commit that follows succeeds, without
    that batch. If this ever fails, aiokafka refuses such a commit itself."""
    s = docket_settings
    producer = AIOKafkaProducer(**client_kwargs(s, "clerk", "producer", bootstrap_servers=s.kafka_bootstrap,
                                                transactional_id=f"{s.topic_prefix}-probe", enable_idempotence=True,
                                                acks="all"))
    await producer.start()
    try:
        async with producer.transaction():
            await (await producer.send(s.results_topic, b"first", partition=0))
        skip_sequence(producer, s.results_topic, 0)
        await producer.begin_transaction()
        refused = await producer.send(s.results_topic, b"second", partition=0)
        with pytest.raises(OutOfOrderSequenceNumber):
            await refused
        await producer.commit_transaction()  # no error
    finally:
        await producer.stop()
    assert [r.value for r in await read_all_raw(s)] == [b"first"]


async def read_all_raw(s: Settings):
    from chaos.replay import read_topic

    return await read_topic(s.kafka_bootstrap, s.results_topic, [0])


async def test_a_refused_batch_goes_out_again_on_a_renewed_producer_and_once(docket_settings: Settings) -> None:
    """ClerkRenewsProducerOnRefusedBatch: the transaction with the refused batch is not
    committed, the lane's producer is renewed (same transactional id, new epoch), and
    the same result is published once, after which what waited for it runs; the
    results topic, read_committed, holds each result exactly once."""
    s = docket_settings
    producers = PartitionProducers(s)
    done: list[int] = []
    errors: list[BaseException] = []
    publisher = Publisher(s, producers, on_published=lambda p, rs: done.extend(r.offset for r in rs),
                          on_lost=lambda p, fenced: errors.append(AssertionError(f"lost {p} fenced={fenced}")),
                          on_error=lambda p, exc: errors.append(exc))
    await producers.claim(0)
    try:
        acked: list[int] = []
        publisher.result(0, result(0, 0))
        publisher.then(0, lambda: acked.append(0))
        await asyncio.wait_for(publisher.settle(), 60)
        first = producers.get(0)
        skip_sequence(first, s.results_topic, 0)
        publisher.result(0, result(0, 1))
        publisher.then(0, lambda: acked.append(1))
        await asyncio.wait_for(publisher.settle(), 60)
        assert errors == [] and publisher.failure is None
        assert acked == [0, 1] and done == [0, 1]
        assert producers.get(0) is not first  # renewed
    finally:
        await producers.close()
    offsets = [r.value["input"]["offset"] for r in await read_all(s.kafka_bootstrap, s.results_topic) if r.partition == 0]
    assert offsets == [0, 1]
