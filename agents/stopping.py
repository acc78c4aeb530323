"""A deadline on a worker's graceful stop (specs/integration.allium WorkerStopHasADeadline).

Faust stops a worker gracefully on SIGTERM or SIGINT: the agents finish, the offsets are
committed, the Clerk's transaction ends. Each of those needs the broker, and aiokafka
retries them for as long as it is away, so a worker told to stop while Kafka is
unreachable never exits (measured: an instance and the Clerk of a `make bench` stack,
SIGTERMed together with their broker, were still stopping 4 minutes later). A
:class:`StopDeadline` ends such a stop: ``timeout_ms`` after the first signal, or at once
on a second one, the worker logs why and exits with :data:`EXIT_STOP_CUT_SHORT`.

Cutting a stop short is safe for the same reason a SIGKILL is (specs/recovery.allium,
proven by `make resilience`): the next start resumes from the last committed offsets and
the Warden makes the replay idempotent.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import signal
import sys
import threading
import types
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("docket.worker")

# sysexits.h EX_TEMPFAIL: the stop did not finish, and a restart (once Kafka answers)
# recovers from it; distinct from 0 (a clean stop) and 1 (an error).
EXIT_STOP_CUT_SHORT = 75
# How long exit_now gives its log line before it exits without it, s.
EXIT_LOG_GRACE_S = 2.0


def exit_now(message: str) -> None:
    """Log ``message`` as an error, flush the log handlers and end the process with
    :data:`EXIT_STOP_CUT_SHORT` (``os._exit``: no further clean-up, which is what hangs).
    The exit happens whatever the logging raises: run as a signal handler, this may
    interrupt the main thread inside a write to the same stream (a reentrant write
    raises RuntimeError). Nor may the logging block it: another thread may hold a log
    handler's lock while its write waits on a full pipe, so a daemon timer exits
    :data:`EXIT_LOG_GRACE_S` s later if the log has not returned by then."""
    watchdog = threading.Timer(EXIT_LOG_GRACE_S, os._exit, (EXIT_STOP_CUT_SHORT,))
    watchdog.daemon = True
    watchdog.start()
    try:
        log.error("%s", message)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001  a handler that cannot flush must not keep us alive
                pass
        sys.stderr.flush()
    finally:
        os._exit(EXIT_STOP_CUT_SHORT)


class StopDeadline:
    """The deadline of one worker's graceful stop.

    ``timeout_ms`` (DOCKET_STOP_TIMEOUT_MS, default 30,000 ms): how long the stop may take
    after the first SIGTERM or SIGINT. ``exit``: called with the reason when the stop is
    cut short (default :func:`exit_now`, which does not return); the timer calls it from
    a daemon thread of its own, so a wedged event loop cannot hold it back.

    :meth:`requested` is called on every stop signal: the first starts the timer, a later
    one cuts the stop short at once (the convention of pressing Ctrl-C twice). When the
    first signal arrives on a running event loop (mode's signal handler), the reason
    given on the deadline also names what the stop was still waiting on
    (:func:`waiting_on`), so that a stop that hangs with Kafka up can be told apart from
    one that waits for an unreachable broker.

    From the first signal on, SIGTERM and SIGINT reach :meth:`requested` as the
    process's own signal handlers, run by the main thread, instead of through the
    event loop: mode's handler is a callback of the loop, which a main thread blocked
    in a synchronous wait never runs (mode's ``ServiceThread.stop`` waits for Faust's
    consumer thread with ``threading.Event.wait()`` and no timeout; Linux delivers a
    signal sent to the process to its main thread, whose wait is interrupted, and the
    handler runs). :meth:`cancel` puts the previous handlers back. On asyncio's loop
    (not uvloop's), closing the loop at the very end of a stop gives both signals their
    defaults again."""

    def __init__(self, timeout_ms: int, exit: Callable[[str], None] = exit_now) -> None:
        if timeout_ms < 1:
            raise ValueError(f"timeout_ms={timeout_ms} must be at least 1")
        self.timeout_ms = timeout_ms
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: dict[int, object] = {}

    @property
    def armed(self) -> bool:
        """True once a stop signal started the timer."""
        return self._timer is not None

    def requested(self, signum: int) -> None:
        """A stop signal ``signum`` (SIGTERM or SIGINT) arrived."""
        name = signal.Signals(signum).name
        if self._timer is not None:
            self._exit(f"{name} received again while stopping: exiting at once without finishing the graceful "
                       f"stop (status {EXIT_STOP_CUT_SHORT}); the next start resumes from the last committed "
                       "offsets, as after a crash")
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop (tests): the reason names no tasks
            self._loop = None
        self._timer = threading.Timer(self.timeout_ms / 1000, self._overdue)
        self._timer.daemon = True
        self._timer.start()
        self._take_over_stop_signals()

    def _take_over_stop_signals(self) -> None:
        """Make :meth:`requested` the handler of SIGTERM and SIGINT (Python runs it in the
        main thread, between two bytecodes or when a wait it is blocked in is
        interrupted). Only the main thread may set a handler: called from another
        (tests), the signals stay with the loop."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, self._on_signal)
            # None: a handler set outside Python, which cannot be set back; the default
            self._previous[signum] = signal.SIG_DFL if previous is None else previous

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.requested(signum)

    def cancel(self) -> None:
        """Stop the timer and give SIGTERM and SIGINT their previous handlers back
        (tests; a worker keeps them until its loop closes). Call it from the main thread."""
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _overdue(self) -> None:
        try:
            waiting = waiting_on(self._loop)
        except Exception as exc:  # noqa: BLE001  the exit must happen whatever the diagnostic does
            waiting = f". Where it waited could not be read ({exc!r})"
        self._exit(f"the graceful stop did not finish within {self.timeout_ms:,} ms (DOCKET_STOP_TIMEOUT_MS): "
                   "is Kafka reachable? Exiting without it (status "
                   f"{EXIT_STOP_CUT_SHORT}); the next start resumes from the last committed offsets, as after a "
                   "crash" + waiting)


# A coroutine of a stop: mode's Service.stop, _stop_children, the worker's _stop_on_signal,
# stop_and_shutdown.
STOP_NAME = re.compile(r"(^|_)stop(_|$)")

# Enough lines to find the stuck await; a worker has some 100 tasks, most of them idle
# service loops that every stop shows alike.
MAX_WAITING_LINES = 60


def _place(code: types.CodeType, line: int) -> str:
    """``<qualname> (<package dir>/<file>:<line>)``: the directory tells asyncio's
    locks.py from mode's."""
    path = code.co_filename
    return f"{code.co_qualname} ({os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}:{line})"


def _awaiting(coro: object) -> tuple[bool, str]:
    """Where a task's chain of awaits ends, read from its frames (``cr_await`` /
    ``gi_yieldfrom``): (whether the chain passes through a stop, as mode's
    ``Service.stop`` or the worker's ``_stop_on_signal``; ``<outer coroutine> ->
    <innermost coroutine> (<dir>/<file>:<line>)``)."""
    outer = inner = None
    stopping = False
    for _ in range(64):  # a chain of awaits, bounded should it ever loop
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            outer = outer or frame.f_code.co_qualname
            inner = _place(frame.f_code, frame.f_lineno)
            stopping = stopping or STOP_NAME.search(frame.f_code.co_name) is not None
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if nxt is None:
            break
        coro = nxt
    if inner is None:
        return False, repr(coro)[:120]
    return stopping, inner if inner.startswith(outer + " (") else f"{outer} -> {inner}"


def _task_lines(loop: asyncio.AbstractEventLoop, where_from: str) -> list[str]:
    """``loop``'s pending tasks counted by where they wait (:func:`_awaiting`), those
    whose awaits pass through a stop first; each line begins with ``where_from`` ("" for
    the worker's loop). A task set that cannot be read is one line saying so."""
    try:
        waits = Counter(_awaiting(t.get_coro()) for t in asyncio.all_tasks(loop) if not t.done())
    except Exception as exc:  # noqa: BLE001  a diagnostic must not keep the worker alive
        return [f"{where_from}tasks: unreadable ({exc!r})"]
    # the stop's own awaits first: the rest are service loops every stop shows alike
    return ([f"{where_from}the stop waits in {where}" + (f" ({n} tasks)" if n > 1 else "")
             for (stopping, where), n in sorted(waits.items()) if stopping]
            + [f"{where_from}{n} tasks in {where}" if n > 1 else f"{where_from}a task in {where}"
               for (stopping, where), n in sorted(waits.items()) if not stopping])


def waiting_on(loop: asyncio.AbstractEventLoop | None) -> str:
    """What a stop still waits on, as text to append to the deadline's reason: the
    pending tasks of ``loop`` (:func:`_task_lines`), then those of every other event loop
    running in the process ("in another loop: ..."; Faust runs its consumer in a thread
    with a loop of its own, and the stop waits on calls into it), then each other
    thread's innermost frame; at most :data:`MAX_WAITING_LINES` lines; "" when ``loop``
    is None. Read from the timer's thread while the loops run, a best effort."""
    if loop is None:
        return ""
    lines = _task_lines(loop, "")
    # the other loops are found among the live objects: nothing registers them
    others = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o is not loop
              and o.is_running()]
    for other in others:
        lines += _task_lines(other, "in another loop: ")
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    for ident, frame in sorted(sys._current_frames().items(), key=lambda kv: names.get(kv[0], "")):
        if ident != me:
            lines.append(f"thread {names.get(ident, ident)}: {_place(frame.f_code, frame.f_lineno)}")
    more = len(lines) - MAX_WAITING_LINES
    shown = lines[:MAX_WAITING_LINES] + ([f"... and {more} more"] if more > 0 else [])
    return ". Still waiting on:\n  " + "\n  ".join(shown)
