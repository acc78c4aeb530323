"""Count what every asyncio event loop of a Python process runs: a diagnostic.

    DOCKET_LOOPCOUNT_DIR=/tmp/loops PYTHONPATH=bench/loopcount \\
        .venv/bin/python -m bench.run --only kafka_native --native-rates 50 ...
    .venv/bin/python -m bench.loopdiff /tmp/loops/<pid>.json <a copy taken later> --events N

Python imports ``sitecustomize`` at start from the first directory on its path that has
one, so with this directory on ``PYTHONPATH`` every Python process started from that
environment (the bench's workers inherit it) counts, per thread:

* the iterations of its event loop (``BaseEventLoop._run_once``), split into those that
  found callbacks already ready (they poll the selector with a zero timeout) and those
  that waited for I/O or a timer;
* the callbacks each iteration ran, by name: a task's step is named by its coroutine
  and the innermost coroutine it was awaiting, with the line (``task Sender._sender_routine
  @ _wait:535``).

Every ``DOCKET_LOOPCOUNT_INTERVAL_S`` seconds (default 10) the running totals since
the process started are written to ``<DOCKET_LOOPCOUNT_DIR>/<pid>.json`` (replaced
atomically): ``{"pid", "argv", "iterations": {thread: {"ready", "waiting"}},
"callbacks": [[thread, name, count], ...]}``; two copies taken some seconds apart give
what happened between them (bench/loopdiff.py). Without ``DOCKET_LOOPCOUNT_DIR`` this
module does nothing; with it, the process runs on asyncio's own loop (it sets
``DOCKET_EVENT_LOOP=asyncio`` unless set: uvloop's loop, in C, cannot be counted).
It slows every iteration (a few µs): read its counts, not the latency or CPU of a run
it instruments. Why it exists: docs/performance.md, "Where an
isolated event's CPU goes".
"""

from __future__ import annotations

import os


def _step_name(handle, task_type: type) -> str:
    """A name for what ``handle`` (an asyncio Handle) runs: the callback's qualified
    name, or for a step of a ``task_type`` (asyncio.Task) ``task <coroutine> @
    <innermost awaited coroutine>:<line>``."""
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, task_type):
        coro = owner.get_coro()
        inner = coro
        while hasattr(getattr(inner, "cr_await", None), "cr_frame"):
            inner = inner.cr_await
        frame = getattr(inner, "cr_frame", None)
        line = frame.f_lineno if frame is not None else "?"
        return f"task {getattr(coro, '__qualname__', type(coro).__name__)} @ {getattr(inner, '__qualname__', '?')}:{line}"
    name = getattr(callback, "__qualname__", None)
    return name if name is not None else type(callback).__name__


def _install(directory: str, interval_s: float) -> None:
    import asyncio
    import asyncio.base_events as base_events
    import collections
    import json
    import sys
    import threading
    import time

    iterations: collections.Counter = collections.Counter()
    callbacks: collections.Counter = collections.Counter()
    original = base_events.BaseEventLoop._run_once

    def run_once(loop) -> None:
        thread = threading.current_thread().name
        ready = loop._ready
        iterations[(thread, "ready" if ready else "waiting")] += 1
        for handle in tuple(ready):
            callbacks[(thread, _step_name(handle, asyncio.Task))] += 1
        original(loop)

    def dump() -> None:
        path = os.path.join(directory, f"{os.getpid()}.json")
        while True:
            time.sleep(interval_s)  # the dump's period, not a synchronisation
            threads = sorted({t for t, _ in list(iterations)})
            snapshot = {
                "pid": os.getpid(),
                "argv": sys.argv,
                "iterations": {t: {"ready": iterations[(t, "ready")], "waiting": iterations[(t, "waiting")]}
                               for t in threads},
                "callbacks": sorted(([t, n, c] for (t, n), c in list(callbacks.items())), key=lambda r: -r[2]),
            }
            with open(path + ".tmp", "w") as f:
                json.dump(snapshot, f)
            os.replace(path + ".tmp", path)

    base_events.BaseEventLoop._run_once = run_once
    threading.Thread(target=dump, name="docket-loopcount", daemon=True).start()


def _interval_s(raw: str) -> float:
    """DOCKET_LOOPCOUNT_INTERVAL_S as seconds (> 0). Raises ValueError naming the
    variable: Python prints it at start ("Error in sitecustomize") and runs on without
    the counter, where a bare float() error would not say which setting is wrong."""
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"DOCKET_LOOPCOUNT_INTERVAL_S={raw!r}: give the dump period in seconds, a number > 0")
    return value


if os.environ.get("DOCKET_LOOPCOUNT_DIR"):
    # it counts asyncio's own loop (BaseEventLoop), not uvloop's (C): docket's processes
    # run on asyncio's while counted, unless DOCKET_EVENT_LOOP says otherwise
    os.environ.setdefault("DOCKET_EVENT_LOOP", "asyncio")
    _install(os.environ["DOCKET_LOOPCOUNT_DIR"], _interval_s(os.environ.get("DOCKET_LOOPCOUNT_INTERVAL_S", "10")))
