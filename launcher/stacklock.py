"""One `docket stack run` per local broker directory (specs/integration.allium
StackHoldsItsBrokerDirectory).

A stack that runs its own broker holds an exclusive flock on
``<DOCKET_BROKER_DIR>/.docket-stack.lock`` (its pid inside) for its whole life; the
kernel drops it when the process ends, however it ends, and it is not inherited by the
components (Python opens files close-on-exec). Why: a second `make run` with the same
broker port and directory took the first stack's broker for "an earlier stack's, still
stopping", started its workers into the first stack's consumer groups, then failed on
the broker after 20 s; and `make clean` from a shell with another DOCKET_DATA_ROOT
stopped a running stack's broker under it (fresh-clone user checks). Neither can tell a
running stack by its workers' data directories, which a setting moves.

Imports nothing of Faust or Kafka: `docket clean` reads it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

STACK_LOCK = ".docket-stack.lock"

_held: dict[Path, int] = {}  # broker dir -> its lock's descriptor, for the life of the process


def holder(broker_dir: Path) -> str | None:
    """The pid (as the lock file says) of the stack that holds ``broker_dir`` now, or None
    when none does."""
    return lock_holder(broker_dir / STACK_LOCK)


def lock_holder(path: Path) -> str | None:
    """The pid written in lock file ``path`` while a process holds its flock, else None
    (also when there is no such file). Tries the lock without waiting and releases it at
    once: a flock goes with its process however it exits, so the file of a dead holder
    is free, whatever pid it still names."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def hold(broker_dir: Path, wait_s: float, poll_s: float = 0.2) -> str | None:
    """Take ``broker_dir``'s stack lock for the rest of this process, waiting up to
    ``wait_s`` seconds for a stack that is still stopping to let go (its broker stops
    last). Returns None once held (also when this process holds it already), else the
    holder's pid: another stack runs on that directory."""
    broker_dir = broker_dir.resolve()
    if broker_dir in _held:
        return None
    broker_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(broker_dir / STACK_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                return pid
            time.sleep(poll_s)  # polling a lock another process holds: flock has no timeout
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[broker_dir] = fd
    return None
