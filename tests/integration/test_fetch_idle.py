"""A worker consumer's idle fetch on the real broker (app/faust_tuning.py pace;
specs/integration.allium FetchWaitsForTheFirstRecordWhenIdle, FetchWaitsForARound)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from app.faust_tuning import FetchPacer, pace
from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs

pytestmark = pytest.mark.integration

ROUND_WAIT_MS, ROUND_MIN_BYTES = 20, 1 << 20
IDLE_WAIT_MS = 10_000  # the most DOCKET_FETCH_IDLE_WAIT_MS allows: a fetch that ran it out is unmistakable


async def wait_until(check, what: str, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s} s"
        await asyncio.sleep(0.01)


async def test_an_idle_consumer_fetches_the_first_record_at_once_then_rounds(docket_settings) -> None:
    """FetchWaitsForTheFirstRecordWhenIdle: once a round (20 ms, 1 MiB) comes back
    empty, the consumer's next fetch asks the broker for 1 byte and waits up to the idle
    wait (10 s here); a record produced meanwhile comes back with that fetch, long before
    the wait would end; the fetch after it is a round again (FetchWaitsForARound)."""
    tp = TopicPartition(docket_settings.input_topic, 0)
    consumer = AIOKafkaConsumer(**client_kwargs(None, "test", "consumer", bootstrap_servers=docket_settings.kafka_bootstrap,
                                                 enable_auto_commit=False, isolation_level=ISOLATION_LEVEL,
                                                 fetch_max_wait_ms=ROUND_WAIT_MS, fetch_min_bytes=ROUND_MIN_BYTES,
                                                 auto_offset_reset="latest"))
    consumer.assign([tp])
    await consumer.start()
    producer = AIOKafkaProducer(**client_kwargs(None, "test", "producer", bootstrap_servers=docket_settings.kafka_bootstrap))
    await producer.start()
    try:
        fetcher = consumer._fetcher
        pace(fetcher, FetchPacer(IDLE_WAIT_MS))
        asked: list[tuple[int, int]] = []  # (max wait ms, min bytes) of every fetch sent, in order
        paced = fetcher._proc_fetch_request

        async def recording(assignment, node_id, request):
            asked.append((request._max_wait_ms, request._min_bytes))
            return await paced(assignment, node_id, request)

        fetcher._proc_fetch_request = recording
        await wait_until(lambda: (IDLE_WAIT_MS, 1) in asked, "an idle fetch after an empty round")
        first_idle = asked.index((IDLE_WAIT_MS, 1))
        assert first_idle > 0 and asked[first_idle - 1] == (ROUND_WAIT_MS, ROUND_MIN_BYTES)  # after an empty round

        sent_at = time.monotonic()
        meta = await producer.send_and_wait(tp.topic, b"{}", key=b"k", partition=tp.partition)
        record = await asyncio.wait_for(consumer.getone(), IDLE_WAIT_MS / 1000)
        took_s = time.monotonic() - sent_at
        assert (record.partition, record.offset) == (meta.partition, meta.offset)
        assert took_s < IDLE_WAIT_MS / 1000 / 2, f"the record took {took_s:.1f} s: the idle fetch ran out its wait"
        answered = len(asked)
        deadline = time.monotonic() + 20.0
        while (ROUND_WAIT_MS, ROUND_MIN_BYTES) not in asked[answered:]:
            # reading on, as a worker does: aiokafka fetches a partition again once
            # what it buffered of it has been read
            assert time.monotonic() < deadline, f"no round after the record within 20 s: {asked[answered:]}"
            assert not any((await consumer.getmany(timeout_ms=50)).values()), "a record nobody produced"
    finally:
        await producer.stop()
        await consumer.stop()
