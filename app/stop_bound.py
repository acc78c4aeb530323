"""A Kafka client's stop with a bound: the shape shared by the REST API's producer stop
(app/client.py stop_producer, specs/integration.allium ClientStopHasADeadline) and a
worker's consumer close (agents/consumer_close.py, WorkerStopsDuringGroupJoin).

aiokafka's ``stop()`` methods wait for the broker (a producer's flush, a consumer's
group join) for as long as it takes; each caller knows which of the client's tasks
such a wait sits in, and cancelling that task ends the stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import Enum


class StopEnd(Enum):
    """How :func:`stop_within` ended."""

    #: the stop finished within the grace (or ended with a CancelledError within it)
    IN_TIME = "in time"
    #: the grace passed, ``cut`` was called, and the stop then finished
    AFTER_CUT = "after the cut"
    #: the grace passed, ``cut`` was called, and the stop ended with the CancelledError
    #: of the task it cancelled: what the stop had left to do after that await did not run
    CUT_SHORT = "cut short"


async def stop_within(stop: Awaitable, grace_s: float, cut: Callable[[], None]) -> StopEnd:
    """Await ``stop`` (a client's ``stop()`` coroutine); if it has not finished
    ``grace_s`` seconds in, call ``cut()`` (which cancels what it waits on) and await
    it again. A CancelledError the stop ends with is taken as the end of a task it
    awaited (aiokafka's stops re-raise their tasks' cancellations), unless the calling
    task itself is being cancelled: then it is raised. Any other error of the stop is
    raised."""
    stopping = asyncio.ensure_future(stop)
    await asyncio.wait({stopping}, timeout=grace_s)
    in_time = stopping.done()
    if not in_time:
        cut()
    try:
        await stopping
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return StopEnd.IN_TIME if in_time else StopEnd.CUT_SHORT
    return StopEnd.IN_TIME if in_time else StopEnd.AFTER_CUT
