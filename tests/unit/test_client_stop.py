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
