"""What one wake-up of another process costs on this machine.

    python -m bench.wakeup                 # 20,000 round trips per placement, a few seconds
    python -m bench.wakeup --round-trips 5000

Two processes pass one byte back and forth over two pipes; each round trip wakes each
process once. Measured three ways: unpinned, both pinned to the first CPU, and one on
each of the first two CPUs (``os.sched_setaffinity``; Linux only). Printed per round
trip: the wall time, and the CPU time both processes used (getrusage of this process
and its child). docket's pipeline is made of such wake-ups (a record produced wakes the
broker's network thread, a fetch response wakes a consumer, ...), so what one costs
bounds what a pipeline round costs (docs/performance.md, "What a wake-up costs").
"""

from __future__ import annotations

import argparse
import os
import resource
import time


def round_trip_us(round_trips: int, cpus: tuple[int, int] | None) -> tuple[float, float]:
    """(wall µs, CPU µs of both processes) per round trip, the processes pinned to
    ``cpus`` (parent, child) or left to the scheduler. Raises OSError when a CPU in
    ``cpus`` is not available."""
    original = os.sched_getaffinity(0)
    from_parent, to_child = os.pipe()  # (read end, write end)
    from_child, to_parent = os.pipe()
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:  # the child: echo every byte back
        try:
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            for _ in range(round_trips):
                os.read(from_parent, 1)
                os.write(to_parent, b"x")
        finally:
            os._exit(0)
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[0]})
    began = time.perf_counter()
    for _ in range(round_trips):
        os.write(to_child, b"x")
        os.read(from_child, 1)
    wall = time.perf_counter() - began
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, original)
    for fd in (to_child, from_parent, to_parent, from_child):
        os.close(fd)
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum((a.ru_utime + a.ru_stime) - (b.ru_utime + b.ru_stime) for a, b in zip(after, before))
    return wall / round_trips * 1e6, cpu / round_trips * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20_000)
    args = parser.parse_args(argv)
    placements: list[tuple[str, tuple[int, int] | None]] = [("unpinned", None), ("both on CPU 0", (0, 0))]
    if (os.cpu_count() or 1) >= 2:
        placements.append(("one on CPU 0, one on CPU 1", (0, 1)))
    print(f"{args.round_trips:,} round trips per placement")
    print(f"{'placement':<28} {'wall µs':>8} {'CPU µs':>8}  (per round trip: two wake-ups)")
    for name, cpus in placements:
        wall, cpu = round_trip_us(args.round_trips, cpus)
        print(f"{name:<28} {wall:8.1f} {cpu:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
