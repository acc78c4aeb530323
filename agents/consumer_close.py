"""Closing a worker's Kafka consumer when its stop comes during a group join
(specs/integration.allium WorkerStopsDuringGroupJoin).

aiokafka's ``AIOKafkaConsumer.stop`` first waits for its group coordination routine
to end (``GroupCoordinator.close``). That routine checks for the close only between
steps: one that is waiting for the broker's answer to a JoinGroup (which the broker
holds until every member it knows has rejoined, or the missing ones' sessions expire)
or for a metadata update keeps the close waiting as long. A worker stopped in its
first second, while it joined its group, waited 7 to 30 s, and then exited 75 on the
stop's deadline with "is Kafka reachable?" while Kafka was up (measured: a Clerk
interrupted right after it subscribed, 7 of 16 stops with a member of an earlier
stopped start still in the group).

:func:`close_consumer` gives the close :data:`CONSUMER_CLOSE_GRACE_S`; past it the
coordination routine is cancelled and the close finished. The member is then left
to the broker, which drops it when its session expires (DOCKET_SESSION_TIMEOUT_MS),
as after a crash: the worker had committed nothing of a generation it never joined,
and the next start resumes from the last committed offsets (specs/recovery.allium).

The aiokafka attributes this reads are listed in app/private_api.py; the sources it
follows and repeats are pinned by tests/unit/test_consumer_close.py.
"""

from __future__ import annotations

import logging

from faust.transport.consumer import ConsumerThread
from faust.transport.drivers import aiokafka as _driver

from app.stop_bound import StopEnd, stop_within

log = logging.getLogger("docket.worker")

# How long a consumer's close may wait for its group coordination before that is
# abandoned, s. A close with nothing to wait for takes a LeaveGroup round trip (about
# 10 ms on one host); 2 s leaves a slow broker room to answer one.
CONSUMER_CLOSE_GRACE_S = 2.0


async def close_consumer(consumer, grace_s: float = CONSUMER_CLOSE_GRACE_S) -> bool:
    """Stop ``consumer`` (an aiokafka AIOKafkaConsumer): leave its group, close its
    fetcher and its connections. If that has not finished ``grace_s`` seconds in and
    the group coordination routine is what it waits for, cancel the routine and close
    the fetcher and the connections here. Returns True when the coordination was
    abandoned so. Raises what ``consumer.stop()`` raises otherwise."""
    abandoned = False

    def cut() -> None:
        nonlocal abandoned
        coordination = getattr(consumer._coordinator, "_coordination_task", None)
        if coordination is None or coordination.done():
            return  # anything else it waits on is the stop's deadline's (agents/stopping.py)
        log.info("the consumer's group coordination still waited on the broker %.1f s into the stop (a group "
                 "join or a metadata update): abandoned; the broker drops this member when its session expires",
                 grace_s)
        coordination.cancel()
        abandoned = True

    if await stop_within(consumer.stop(), grace_s, cut) is StopEnd.CUT_SHORT:
        # GroupCoordinator.close re-raised the routine's cancellation: the rest of
        # AIOKafkaConsumer.stop did not run
        await consumer._fetcher.close()
        await consumer._client.close()
    return abandoned


class DocketConsumerThread(_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose stop closes the aiokafka consumer with
    :func:`close_consumer` instead of ``AIOKafkaConsumer.stop``."""

    async def on_thread_stop(self) -> None:
        # AIOKafkaConsumerThread.on_thread_stop (its source is pinned by a test):
        # ConsumerThread's stops the method queue, then the consumer is closed
        await ConsumerThread.on_thread_stop(self)
        if self._consumer is not None:
            await close_consumer(self._consumer)
