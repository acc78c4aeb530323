"""The CPU each thread of a process used, grouped by thread name (a diagnostic).

    python -m bench.threads <pid> --seconds 15 --times 8     # e.g. the broker during a sweep

Reads ``/proc/<pid>/task/*/stat`` (the kernel's account: user + system time) before
and after each ``--seconds`` span and prints, per group of threads, the cores they
used meanwhile, largest first. Threads are grouped by their name with digits
replaced by ``#``, as the kernel shows it (15 characters at most: a JVM's C2 and C1
compiler threads are ``C# CompilerThre``, Kafka's network and request-handler
threads both ``data-plane-kafk``). A thread that started during a span counts from
zero; one that ended is left out. It reads only /proc, so it costs the process it
watches nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from bench.common import positive_float, positive_int
from bench.profile import stat_times


def read_threads(pid: int, proc: Path = Path("/proc")) -> dict[str, tuple[str, float]]:
    """tid -> (thread name, CPU seconds so far: user + system) of every thread of
    ``pid``. Raises FileNotFoundError when the process is gone; a thread that ends
    while being read is skipped."""
    out = {}
    for task in (proc / str(pid) / "task").iterdir():
        try:
            name, user, system = stat_times((task / "stat").read_text())
        except OSError:
            continue
        out[task.name] = (name, user + system)
    return out


def group(name: str) -> str:
    """A thread's group: its name with every run of digits replaced by ``#``."""
    return re.sub(r"\d+", "#", name)


def cores_by_group(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]],
                   seconds: float) -> Counter:
    """group -> cores its threads used between two :func:`read_threads` readings
    ``seconds`` of wall time apart. Raises ValueError when ``seconds`` is not positive."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, not {seconds}")
    used: Counter = Counter()
    for tid, (name, cpu) in after.items():
        used[group(name)] += (cpu - before.get(tid, (name, 0.0))[1]) / seconds
    return used


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pid", type=positive_int)
    ap.add_argument("--seconds", type=positive_float, default=15.0, help="length of each span [15]")
    ap.add_argument("--times", type=positive_int, default=1, help="spans one after the other [1]")
    ap.add_argument("--top", type=positive_int, default=8, help="groups shown per span [8]")
    args = ap.parse_args(argv)
    try:
        for _ in range(args.times):
            before, began = read_threads(args.pid), time.monotonic()
            time.sleep(args.seconds)
            used = cores_by_group(before, read_threads(args.pid), time.monotonic() - began)
            print(f"{time.strftime('%H:%M:%S')} {args.seconds:g} s: {sum(used.values()):.3f} cores: "
                  + ", ".join(f"{g} {c:.3f}" for g, c in used.most_common(args.top)), flush=True)
    except FileNotFoundError:
        print(f"no process {args.pid} (it never ran, or it has ended)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends a run of many spans: no traceback
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
