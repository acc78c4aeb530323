"""What a process's event loops ran between two snapshots of bench/loopcount.

    python -m bench.loopdiff BEFORE.json AFTER.json [--events N] [--top 25]

BEFORE and AFTER are copies of one process's ``<pid>.json`` taken some seconds apart
(bench/loopcount/sitecustomize.py says how to make them). Printed per thread: the event
loop's iterations between the two (those with callbacks ready, which poll with a zero
timeout, and those that waited), then the callbacks that ran most often. With
``--events`` (the events the process handled between the two copies, for example the
rate times the seconds between them) every count is also shown per event.
"""

from __future__ import annotations

import argparse
import json


def difference(before: dict, after: dict) -> dict:
    """``after`` minus ``before`` (two snapshots of one process): ``{"iterations":
    {thread: {"ready": n, "waiting": n}}, "callbacks": [[thread, name, n], ...]}``, the
    callbacks by count, largest first, zero differences left out. Raises ValueError when
    the two are not of the same process (their ``pid`` differs)."""
    if before.get("pid") != after.get("pid"):
        raise ValueError(f"the snapshots are of two processes ({before.get('pid')} and {after.get('pid')}); "
                         "take both copies of one <pid>.json")
    iterations = {}
    for thread, counts in after["iterations"].items():
        was = before["iterations"].get(thread, {})
        iterations[thread] = {kind: counts[kind] - was.get(kind, 0) for kind in ("ready", "waiting")}
    was = {(t, n): c for t, n, c in before["callbacks"]}
    callbacks = [[t, n, c - was.get((t, n), 0)] for t, n, c in after["callbacks"]]
    callbacks = sorted((row for row in callbacks if row[2]), key=lambda row: (-row[2], row[0], row[1]))
    return {"iterations": iterations, "callbacks": callbacks}


def render(diff: dict, events: int | None, top: int) -> str:
    """The difference as text: one line per thread's iterations, then the ``top``
    callbacks; counts per event too when ``events`` is given (> 0)."""
    def per(n: int) -> str:
        return f" ({n / events:,.1f} per event)" if events else ""

    lines = []
    for thread, counts in sorted(diff["iterations"].items()):
        lines.append(f"{thread}: {counts['ready']:,} iterations with callbacks ready{per(counts['ready'])}, "
                     f"{counts['waiting']:,} that waited{per(counts['waiting'])}")
    lines.append("callbacks run, most often first:")
    for thread, name, n in diff["callbacks"][:top]:
        lines.append(f"  {n:>9,}{per(n)}  {thread}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--events", type=int, default=None, help="events handled between the two copies")
    parser.add_argument("--top", type=int, default=25, help="callbacks shown [25]")
    args = parser.parse_args(argv)
    with open(args.before) as f:
        before = json.load(f)
    with open(args.after) as f:
        after = json.load(f)
    print(render(difference(before, after), args.events, args.top))


if __name__ == "__main__":
    main()
