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

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("docket.worker")

# sysexits.h EX_TEMPFAIL: the stop did not finish, and a restart (once Kafka answers)
# recovers from it; distinct from 0 (a clean stop) and 1 (an error).
EXIT_STOP_CUT_SHORT = 75


def exit_now(message: str) -> None:
    """Log ``message`` as an error, flush the log handlers and end the process with
    :data:`EXIT_STOP_CUT_SHORT` (``os._exit``: no further clean-up, which is what hangs)."""
    log.error("%s", message)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001  a handler that cannot flush must not keep us alive
            pass
    sys.stderr.flush()
    os._exit(EXIT_STOP_CUT_SHORT)


class StopDeadline:
    """The deadline of one worker's graceful stop.

    ``timeout_ms`` (DOCKET_STOP_TIMEOUT_MS, default 30,000 ms): how long the stop may take
    after the first SIGTERM or SIGINT. ``exit``: called with the reason when the stop is
    cut short (default :func:`exit_now`, which does not return); the timer calls it from
    a daemon thread of its own, so a wedged event loop cannot hold it back.

    :meth:`requested` is called on every stop signal: the first starts the timer, a later
    one cuts the stop short at once (the convention of pressing Ctrl-C twice)."""

    def __init__(self, timeout_ms: int, exit: Callable[[str], None] = exit_now) -> None:
        if timeout_ms < 1:
            raise ValueError(f"timeout_ms={timeout_ms} must be at least 1")
        self.timeout_ms = timeout_ms
        self._exit = exit
        self._timer: threading.Timer | None = None

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
        self._timer = threading.Timer(self.timeout_ms / 1000, self._overdue)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        """Stop the timer (tests; a worker keeps it until the process ends)."""
        if self._timer is not None:
            self._timer.cancel()

    def _overdue(self) -> None:
        self._exit(f"the graceful stop did not finish within {self.timeout_ms:,} ms (DOCKET_STOP_TIMEOUT_MS): "
                   "is Kafka reachable? Exiting without it (status "
                   f"{EXIT_STOP_CUT_SHORT}); the next start resumes from the last committed offsets, as after a "
                   "crash")
