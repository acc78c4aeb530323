"""The event loop docket's processes run on: DOCKET_EVENT_LOOP.

``uvloop`` (the default) is libuv's loop written in C (https://github.com/MagicStack/uvloop),
a drop-in for asyncio's, and the loop mode-streaming and Faust offer themselves
(``mode.loop.use("uvloop")``, ``faust -L uvloop``). An isolated event's CPU is mostly
Python stepping asyncio's machinery (README, Performance, "Where an isolated event's
CPU goes"); with the loop itself in C, an instance spent 10-16% less CPU per event
and the Clerk 13-25% less at 50 and 150 events/s, in two alternating pairs (README,
Performance, "uvloop: the event loop in C").
``asyncio`` is the standard library's loop, for a platform uvloop does not support
or to compare against it (bench/loopcount counts asyncio's loop only).

What an instance computes does not depend on the loop: records are judged in offset
order by the agent's own code, whichever loop schedules it.
"""

from __future__ import annotations

import asyncio

from app.settings import event_loop_setting

EVENT_LOOPS = ("uvloop", "asyncio")


def install(name: str | None = None) -> str:
    """Make ``name`` (default: DOCKET_EVENT_LOOP, checked) the loop every later
    ``asyncio.new_event_loop()`` of this process creates, the worker's and the threads'
    (Faust's consumer thread) alike; call before any loop exists. Returns the name.
    Raises app.settings.ConfigError for a value not in EVENT_LOOPS."""
    name = event_loop_setting() if name is None else name
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif name == "asyncio":
        asyncio.set_event_loop_policy(None)  # the standard library's default policy
    else:
        from app.settings import ConfigError

        raise ConfigError(f"DOCKET_EVENT_LOOP={name!r} must be one of {', '.join(EVENT_LOOPS)}")
    return name
