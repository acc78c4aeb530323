"""stop_consumer (app/client.py): the CancelledError that aiokafka's consumer.stop() lets out
when the broker is away (aio-libs/aiokafka#647) does not escape a stop nobody cancelled; a
cancellation of the stopping task itself still does."""

from __future__ import annotations

import asyncio

import pytest

from app.client import stop_consumer


class LeakyConsumer:
    """Stands in for an AIOKafkaConsumer whose Fetcher.close awaits a fetch task it has
    just cancelled: stop() raises CancelledError though its caller was not cancelled."""

    def __init__(self) -> None:
        self.stops = 0

    async def stop(self) -> None:
        self.stops += 1
        fetch = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        fetch.cancel()
        await fetch


class SlowConsumer:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.sleep(3600)


def test_a_leaked_cancellation_does_not_escape_the_stop() -> None:
    consumer = LeakyConsumer()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(consumer.stop())  # the leak itself, without the guard
    asyncio.run(stop_consumer(consumer))
    assert consumer.stops == 2


def test_a_cancelled_stop_is_still_cancelled() -> None:
    async def main() -> None:
        consumer = SlowConsumer()
        task = asyncio.ensure_future(stop_consumer(consumer))
        await consumer.stopping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


# ---- stop_producer: ClientStopHasADeadline -------------------------------------------


def _stuck_producer():
    """A real AIOKafkaProducer, never connected, holding one record it cannot deliver
    and a sender task that never sends it: what a producer looks like whose broker died
    under load (aiokafka's stop would wait on its flush for good)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    producer._sender._sender_task = asyncio.ensure_future(asyncio.sleep(3600))
    return producer, TopicPartition("docket.input", 0)


def test_a_stop_cuts_short_a_flush_kafka_cannot_take() -> None:
    """ClientStopHasADeadline: a record Kafka never acknowledges bounds the stop at the
    flush timeout; the sender task is cancelled and the record's future never says
    delivered."""
    from app.client import stop_producer

    async def main() -> None:
        producer, tp = _stuck_producer()
        delivery = await producer._message_accumulator.add_message(tp, None, b"{}", timeout=1)
        began = asyncio.get_running_loop().time()
        delivered = await asyncio.wait_for(stop_producer(producer, 0.2), 10)
        took = asyncio.get_running_loop().time() - began
        assert delivered is False
        # asyncio runs a timer up to its clock resolution early, and the float sum of the
        # deadline can land a hair below it: 0.19999999999708962 failed a full run once
        assert 0.2 - 0.001 <= took < 5
        assert producer._sender.sender_task.cancelled()
        assert not (delivery.done() and not delivery.cancelled() and delivery.exception() is None)

    asyncio.run(main())


def test_a_stop_with_nothing_held_is_aiokafkas_own() -> None:
    """ClientStopHasADeadline: with no record held the flush is over at once and the
    stop is aiokafka's as it is, reported as complete; the sender is stopped by it."""
    from app.client import stop_producer

    async def main() -> None:
        producer, _ = _stuck_producer()
        assert await asyncio.wait_for(stop_producer(producer, 5), 10) is True
        assert producer._sender.sender_task.done()

    asyncio.run(main())

