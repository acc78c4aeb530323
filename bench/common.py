"""What every benchmark of ``make bench`` shares: progress lines, percentiles (from
samples and from Prometheus histograms), the size of a docket event, and a broker of
the benchmark's own on a free port of 127.0.0.1.

Benchmarks print figures; nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.settings import Settings, load
from chaos.workload import inventory
from launcher import broker as launcher

_BEGAN = time.monotonic()


def say(message: str) -> None:
    """One progress line on stderr, stamped with seconds since the bench began."""
    print(f"[bench {time.monotonic() - _BEGAN:7.1f}s] {message}", file=sys.stderr, flush=True)


def event_size(sample: int = 5000) -> tuple[int, int]:
    """(key bytes, value bytes) of a typical docket input event: the mean over the
    inventory workload the Kafka-native benchmark sends."""
    records = [r for r in inventory(seed=1, events=sample) if r.key is not None and r.value is not None]
    return (round(sum(len(r.key) for r in records) / len(records)),
            round(sum(len(r.value) for r in records) / len(records)))


def percentiles(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """count, p50, p99, p99.9 and max of latency samples (ms), nearest rank."""
    values = sorted(samples_ms)
    n = len(values)

    def rank(q: float) -> float | None:
        if not n:
            return None
        return round(values[min(n - 1, max(0, math.ceil(q * n) - 1))], 3)

    return {"count": n, "p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999),
            "max": round(values[-1], 3) if n else None}


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Quantile ``q`` of a Prometheus histogram, given its cumulative buckets as
    (upper bound, count) sorted by bound (the last bound is +Inf), interpolating
    linearly inside a bucket as Prometheus' histogram_quantile does. None if empty.
    A quantile that falls in the +Inf bucket is reported as the highest finite bound
    (a lower bound of the truth)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    target = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (target - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def proc_memory_kib(pid: int | str = "self") -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile and VmHWM (KiB) of a process from /proc/<pid>/status;
    None if it is gone (or not Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            found[name] = int(rest.split()[0])
    return found or None


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line through the points; None with
    fewer than two distinct x."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return slope, my - slope * mx


@contextlib.contextmanager
def own_broker(work: Path) -> Iterator[Settings]:
    """A Kafka broker of the benchmark's own (data in ``work/broker``, a free port on
    127.0.0.1), stopped on exit. Yields the settings with its bootstrap."""
    settings = dataclasses.replace(load(), broker_dir=work / "broker", broker_port=launcher.free_port())
    say(f"starting a broker on 127.0.0.1:{settings.broker_port} ...")
    handle = launcher.start_broker(settings, timeout=120, die_with_parent=True)
    try:
        yield dataclasses.replace(settings, kafka_bootstrap=handle.bootstrap)
    finally:
        launcher.stop_broker(settings.broker_dir)


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (rates in events/s, partition counts, event counts).
    Raises argparse.ArgumentTypeError, which argparse reports as a usage error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (durations in seconds)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number")
    return value


def writable_dir(path: str) -> str | None:
    """Creates the report directory ``path`` at start-up; the reason it cannot be
    written, or None. A benchmark checks this before it measures, so a bad ``--out``
    never costs a run's results."""
    import tempfile

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"cannot write reports to {path}: {exc.strerror or exc}"
    return None


def report_stem(out: Path, kind: str, now, suffix: str = "") -> str:
    """The file stem of a report of ``kind`` ("bench", "soak") written at ``now`` (a
    datetime) into ``out``: ``<kind>-<YYYY-MM-DD>-<HHMM><suffix>``, or with seconds
    (``HHMMSS``, then a counter) when a report of that stem is already there, so that
    two runs in one minute never overwrite each other. Names sort by time either way
    (``1103`` < ``110345`` < ``1104``), which is how the newest report is found."""
    stem = f"{kind}-{now:%Y-%m-%d-%H%M}{suffix}"
    n = 0
    while any(out.glob(f"{stem}.*")):
        n += 1
        stem = f"{kind}-{now:%Y-%m-%d-%H%M%S}{n - 1 if n > 1 else ''}{suffix}"
    return stem


def run_stoppable(main) -> int:
    """``asyncio.run(main)`` (a coroutine whose value is the exit status) that SIGTERM
    (``kill``, a CI job's timeout) stops as Ctrl-C does: the main task is cancelled, so
    every stack, broker and temporary directory the run started is stopped and removed
    on the way out; then one line says so and the status is 128 + the signal's number
    (143, or 130 for Ctrl-C). Python's default for SIGTERM ends the process at once,
    leaving the children to their parent-death signal and the work directory on disk.
    The signal is handled by the event loop, so a step that blocks the loop would
    finish first: the measurements' subprocesses are awaited on it (the soak's Warden
    measurement: bench/soak.py warden_run)."""
    import asyncio
    import signal

    stopped: list[signal.Signals] = []

    async def guarded():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_sigterm() -> None:
            stopped.append(signal.SIGTERM)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sig = stopped[0] if stopped else signal.SIGINT
        say(f"stopped by {sig.name}: what the run had started is stopped and its work directory removed")
        return 128 + sig


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (0 turns a measurement off)."""
    import argparse

    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("greater than 0", "0 or more")) from None
