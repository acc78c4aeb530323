"""The event loop the instance and Clerk workers run on: DOCKET_EVENT_LOOP.

``uvloop`` (the default) is libuv's loop written in C (https://github.com/MagicStack/uvloop),
a drop-in for asyncio's, and the loop mode-streaming and Faust offer themselves
(``mode.loop.use("uvloop")``). An isolated event's CPU is mostly Python stepping
asyncio's machinery (docs/performance.md, "Where an isolated event's CPU goes"); with
the loop itself in C, each instance spent 10-12% less CPU per event at 150 events/s and
the Clerk 8-14% less, in four alternating pairs (docs/performance.md, "uvloop: the event
loop in C"). ``asyncio`` is the standard library's loop, for a platform uvloop does not
support or to compare against it (bench/loopcount counts asyncio's loop only).

What an instance computes does not depend on the loop: records are judged in offset
order by the agent's own code, whichever loop schedules it.

The REST API (`docket api`) and the other commands stay on asyncio's loop: with the API
on uvloop, `make bench` at 2,000 to 5,000 requests/s offered (more than the stack can
decide) left 4-11% of the requests unanswered after vegeta's 10 s (timeouts, and some
connections reset), where on asyncio's every request got its answer (p99 3-4 s); with
a listen backlog of 1,024 it dropped 10% at 1,000/s too (docs/performance.md, "The REST
API's own cost per request").
"""

from __future__ import annotations

import asyncio

from app.settings import event_loop_setting


def install() -> str:
    """Make DOCKET_EVENT_LOOP's loop the one every later ``asyncio.new_event_loop()`` of
    this process creates, the worker's and its threads' (Faust's consumer thread) alike;
    call before any loop exists. Returns the setting's value, ``uvloop`` or ``asyncio``.
    Raises app.settings.ConfigError, naming the variable, for any other value."""
    name = event_loop_setting()
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # the standard library's default policy
    return name
