"""`make soak`: docket held at one rate for ten minutes. Does anything grow?

    python -m bench.soak                                  # the full soak: about 13 minutes
    python -m bench.soak --rate 300 --duration-s 90 --warmup-s 20 --no-warden   # a try

Instances a and b and the Clerk (bench/stack.py, no API) run on a broker of their own
(or ``--bootstrap``'s). The open-model generator of the Kafka-native benchmark
(bench/kafka_native.py send_at_rate) sends inventory events at ONE fixed rate, ``--rate``
(default: the headline of the latest bench/results/bench-*.json, the highest rate with
p99 < 100 ms; 1,000 without one), for ``--warmup-s`` (40) and then ``--duration-s``
(600); every latency runs from a record's intended send time to the moment the Clerk
published its result (no coordinated omission).

Every ``--sample-s`` (5) seconds it samples the RSS of every process (instances, Clerk,
broker, this one: /proc/<pid>/status VmRSS) and the CPU each used and the whole box's
(busy and steal: /proc/<pid>/stat, /proc/stat), the Clerk's
``docket_clerk_pending_positions`` and ``docket_clerk_instance_lag{instance}`` and the
instances' counters from their /metrics pages; latency p50/p99 per window of
publication time comes from the result reader. A progress line every 10 s.

The verdict, over the second half of the measured period (after the warm-up):

* latency: p99 of every result of the measured period < 100 ms;
* RSS of each process: the least-squares slope of the second half, projected over
  10 minutes, grows less than 10% of the first half's mean. An instance's RSS that
  grows more passes only when RocksDB's memory accounts for the excess: the instance's
  ``docket_instance_rocksdb_bytes`` (memtables and block cache, RocksDB's own account)
  stays within ``docket_instance_rocksdb_bound_bytes`` (what the Ledger's RocksDB
  options allow) and its RSS less that memory is flat by the same 10% rule. Memtables
  fill at the pace of the writes (while an instance's RSS passes by itself, its two
  RocksDB series are shown for information only), so below about 60 events/s on 8 partitions their
  first fill takes most of a 10-minute soak (the first flush came 9 to 12 minutes in:
  bench/results/soak-2026-12-03-1223, -1340);
* Clerk pending positions and each instance's lag: the slope projected over 10 minutes
  grows less than, and the second half's highest value stays within, a bound: the
  input of 2 s at the rate for pending positions (rate x 2 s), a partition's input of
  2 s for the lag (rate / partitions x 2 s), at least 50 either way. Both should stay
  near the input of a watermark interval (200 ms) when the pipeline keeps up.

Then (unless ``--no-warden``) the Warden's memory at 10,000 events/s with a 5-minute TTL
(bench/warden_memory.py, in a process of its own, after the stack has stopped; 1.5 to
2.5 minutes of one core) joins the report, and its verdict the exit status.

Report: bench/results/soak-<date>-<HHMM>.json (settings, every sample, every window,
the verdict and its figures) and .png (latency, CPU per process and the box's, RSS,
pending positions and lag over time; the Warden's run). A line for information, never
part of the verdict, says how busy the box was on average, and during the windows
whose p99 reached 100 ms against the others: whether a latency failure came with a
full box. Exit status 0 when p99 < 100 ms and everything is flat, 1
otherwise, saying which. Ctrl-C or SIGTERM stops a soak in order at any step, the
Warden's included (its stack, broker, measurement and work directory go with it; one
line says so; exit status 130 or 143).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from app.kafka_config import client_kwargs
from app.settings import Settings, load
from bench.common import (linear_fit, positive_float, positive_int, proc_memory_kib, report_stem,
                          run_stoppable, say, writable_dir)
from bench.kafka_native import TARGET_P99_MS, ResultWatch, send_at_rate
from bench.profile import box_cpu_seconds, cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

DEFAULT_RATE = 1000  # without a benchmark report to take the headline from
PROJECTION_S = 600.0  # growth is judged as projected over 10 minutes
RSS_GROWTH = 0.10  # of the first half's mean, per PROJECTION_S
PENDING_BOUND_S = 2.0  # pending positions: at most the input of this long
LAG_BOUND_S = 2.0  # an instance's lag: at most a partition's input of this long
MIN_BOUND = 50.0
SEAL_AFTER_S = 30.0  # a latency window is summarised this long after it ended
MIB = 2**20
MIN_SAMPLES_PER_HALF = 3  # a least-squares line through fewer says nothing
WARDEN_STOP_S = 10.0  # a stopped soak waits this long for the Warden measurement to exit, then kills it


# --------------------------------------------------------------------------- latency

def ceil_ms(latency_ms: float) -> int:
    """A latency at 1 ms resolution, rounded up (never below 0)."""
    return max(0, math.ceil(latency_ms - 1e-9))


def counter_percentiles(hist: Counter) -> dict[str, float | int | None]:
    """count, p50, p99, p99.9 and max of latencies counted per whole ms, nearest rank
    (as bench.common.percentiles on the same values)."""
    n = sum(hist.values())
    if not n:
        return {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}
    values = sorted(hist.items())
    out: dict[str, float | int | None] = {"count": n}
    for name, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
        rank = min(n - 1, max(0, math.ceil(q * n) - 1))
        seen = 0
        for value, count in values:
            seen += count
            if seen > rank:
                out[name] = value
                break
    out["max"] = values[-1][0]
    return out


@dataclass
class LatencyWindows:
    """Latencies by window of publication time (``window_s`` from ``origin_ms``, the
    end of the warm-up; negative windows are the warm-up's), and over the measured
    period: the results of records intended at or after ``origin_ms``. Counted per
    whole ms; a window is kept as its summary once :meth:`seal` passes it, so memory
    stays bounded however long the run (a result of a sealed window, read late, still
    counts for the measured period, and as the window's ``late``)."""

    origin_ms: float
    window_s: float
    windows: dict[int, Counter] = field(default_factory=dict)
    sealed: dict[int, dict] = field(default_factory=dict)
    measured: Counter = field(default_factory=Counter)
    warmup: Counter = field(default_factory=Counter)

    def add(self, published_ms: float, intended_ms: float) -> None:
        ms = ceil_ms(published_ms - intended_ms)
        index = math.floor((published_ms - self.origin_ms) / (self.window_s * 1000))
        summary = self.sealed.get(index)
        if summary is None:
            self.windows.setdefault(index, Counter())[ms] += 1
        else:
            summary["late"] += 1
        (self.measured if intended_ms >= self.origin_ms else self.warmup)[ms] += 1

    def _end_ms(self, index: int) -> float:
        return self.origin_ms + (index + 1) * self.window_s * 1000

    def _summary(self, index: int, counts: Counter) -> dict:
        p = counter_percentiles(counts)
        return {"t": round(index * self.window_s, 3), "results": p["count"], "p50_ms": p["p50"],
                "p99_ms": p["p99"], "max_ms": p["max"], "late": 0}

    def seal(self, before_ms: float) -> None:
        """Keep only the summary of every window that ended before ``before_ms``."""
        for index in [i for i in self.windows if self._end_ms(i) < before_ms]:
            self.sealed[index] = self._summary(index, self.windows.pop(index))

    def series(self) -> list[dict]:
        """Per window, in order: its start (s from the origin), results, p50, p99, max,
        and the results read after it was sealed (not in its percentiles)."""
        out = dict(self.sealed)
        out.update({i: self._summary(i, c) for i, c in self.windows.items()})
        return [out[i] for i in sorted(out)]

    def recent(self, now_ms: float, span_s: float) -> dict:
        """Percentiles of the open windows that ended in the ``span_s`` up to ``now_ms``
        (a window ending exactly ``span_s`` before is left out)."""
        hist: Counter = Counter()
        for index, counts in self.windows.items():
            if now_ms - span_s * 1000 < self._end_ms(index) <= now_ms + 1e-6:
                hist.update(counts)
        return counter_percentiles(hist)


@dataclass
class SoakWatch(ResultWatch):
    """ResultWatch that keeps no per-result list: each result is matched with its
    intended send time at once (the entry is dropped) and counted into
    ``LatencyWindows``. A result read before the generator learnt its input's position
    (the acknowledgement callback had not run yet) waits in ``unmatched`` for the next
    read."""

    windows: LatencyWindows | None = None
    read: int = 0
    unmatched: list[tuple[tuple[int, int], int]] = field(default_factory=list)

    def _take(self, messages: list) -> None:
        waiting, self.unmatched = self.unmatched, []
        for pos, published in waiting:
            self._match(pos, published)
        for m in messages:
            self.read += 1
            self._match(*self._result(m))

    def _match(self, pos: tuple[int, int], published: int) -> None:
        intended = self.intended.pop(pos, None)
        if intended is None:
            self.unmatched.append((pos, published))
        else:
            self.windows.add(published, intended)

    @property
    def count(self) -> int:
        return self.read


# --------------------------------------------------------------------------- samples

def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus text page as {name or name{label="v",...}: value}, without histogram
    buckets and ``_created`` samples."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            # interned: the run keeps a page per sample, and the names repeat
            out[sys.intern(f"{s.name}{{{labels}}}" if labels else s.name)] = s.value
    return out


async def fetch_metrics(session, url: str) -> dict[str, float] | None:
    try:
        async with session.get(url) as resp:
            return parse_metrics(await resp.text())
    except Exception:  # noqa: BLE001  a page that does not answer is a gap in the series
        return None


def clerk_figures(metrics: dict[str, float] | None, instances: Sequence[str]) -> tuple[float | None, dict]:
    """(pending positions, {instance: lag}) from the Clerk's page."""
    if metrics is None:
        return None, {}
    lag = {i: metrics.get(f'docket_clerk_instance_lag{{instance="{i}"}}') for i in instances}
    return metrics.get("docket_clerk_pending_positions"), {i: v for i, v in lag.items() if v is not None}


# --------------------------------------------------------------------------- verdict

def judge_relative(ts: Sequence[float], ys: Sequence[float], duration_s: float,
                   limit_share: float = RSS_GROWTH, horizon_s: float = PROJECTION_S) -> dict:
    """Flat when the second half's least-squares slope, projected over ``horizon_s``,
    is below ``limit_share`` of the first half's mean. ``flat`` None: too few samples."""
    first = [y for t, y in zip(ts, ys, strict=True) if 0 <= t < duration_s / 2 and y is not None]
    second = [(t, y) for t, y in zip(ts, ys, strict=True) if duration_s / 2 <= t <= duration_s and y is not None]
    out: dict = {"rule": f"second-half slope x {horizon_s:.0f} s < {limit_share:.0%} of the first-half mean"}
    fit = linear_fit([t for t, _ in second], [y for _, y in second]) if len(second) >= MIN_SAMPLES_PER_HALF else None
    if len(first) < MIN_SAMPLES_PER_HALF or fit is None:
        return {**out, "flat": None, "why": "fewer than 3 samples in a half"}
    mean = sum(first) / len(first)
    projected = fit[0] * horizon_s
    share = projected / mean if mean else math.inf
    return {**out, "flat": share < limit_share, "first_half_mean": round(mean, 3),
            "second_half_mean": round(sum(y for _, y in second) / len(second), 3),
            "slope_per_s": fit[0], "projected_growth": round(projected, 3), "projected_share": round(share, 4)}


def judge_bounded(ts: Sequence[float], ys: Sequence[float], duration_s: float, bound: float,
                  horizon_s: float = PROJECTION_S) -> dict:
    """Flat when the second half's slope projected over ``horizon_s`` grows less than
    ``bound`` and its highest value is within ``bound``."""
    second = [(t, y) for t, y in zip(ts, ys, strict=True) if duration_s / 2 <= t <= duration_s and y is not None]
    out: dict = {"rule": f"second-half slope x {horizon_s:.0f} s < {bound:,.0f} and second-half max <= {bound:,.0f}",
                 "bound": bound}
    fit = linear_fit([t for t, _ in second], [y for _, y in second]) if len(second) >= 3 else None
    if fit is None:
        return {**out, "flat": None, "why": "fewer than 3 samples in the second half"}
    projected = fit[0] * horizon_s
    peak = max(y for _, y in second)
    return {**out, "flat": projected < bound and peak <= bound, "second_half_max": peak,
            "second_half_mean": round(sum(y for _, y in second) / len(second), 3),
            "slope_per_s": fit[0], "projected_growth": round(projected, 3)}


def bounds(rate: float, partitions: int) -> dict[str, float]:
    return {"pending": max(MIN_BOUND, rate * PENDING_BOUND_S),
            "lag": max(MIN_BOUND, rate / partitions * LAG_BOUND_S)}


ROCKS_USED = "docket_instance_rocksdb_bytes"
ROCKS_BOUND = "docket_instance_rocksdb_bound_bytes"


def rocksdb_mib(sample: dict, role: str) -> tuple[float, float] | None:
    """(MiB the role's RocksDB databases hold in memtables and block cache, the most its
    options let them hold) from the role's /metrics page in ``sample``
    (agents/instance.py InstanceMetrics.watch_rocksdb), or None without them."""
    page = (sample.get("metrics") or {}).get(role) or {}
    used = [v for k, v in page.items() if k.startswith(ROCKS_USED + "{")]
    if not used or ROCKS_BOUND not in page:
        return None
    return sum(used) / MIB, page[ROCKS_BOUND] / MIB


def judge_rss(ts: Sequence[float], samples: list[dict], role: str, duration_s: float) -> dict[str, dict]:
    """The role's RSS judged flat or not (judge_relative). For a role that reports its
    RocksDB memory (the instances), also that memory against its configured bound
    (judge_bounded) and the RSS less it (judge_relative): an RSS that grows only by
    RocksDB filling memtables and block cache up to their bound is marked
    ``rocksdb_fill`` (not a failure), since that growth stops at the bound, which at a
    low rate takes most of the soak to reach (tables/rocks_memory.py). While the RSS
    passes by itself, both are marked ``informational``."""
    rss = [s.get("rss_mib", {}).get(role) for s in samples]
    out = {f"rss {role}": judge_relative(ts, rss, duration_s)}
    rocks = [rocksdb_mib(s, role) for s in samples]
    if sum(r is not None for r in rocks) < MIN_SAMPLES_PER_HALF:
        return out
    bound = max(r[1] for r in rocks if r is not None)
    used = [r[0] if r is not None else None for r in rocks]
    rest = [m - u if m is not None and u is not None else None for m, u in zip(rss, used, strict=True)]
    out[f"rocksdb {role}"] = judge_bounded(ts, used, duration_s, bound)
    out[f"rss {role} less rocksdb"] = judge_relative(ts, rest, duration_s)
    j = out[f"rss {role}"]
    if j["flat"] is not False:
        # an RSS that passes needs no explaining: a memtable flush in the judged half
        # would make the RSS less RocksDB's memory rise, and must not fail it
        out[f"rocksdb {role}"]["informational"] = out[f"rss {role} less rocksdb"]["informational"] = True
    elif out[f"rocksdb {role}"]["flat"] and out[f"rss {role} less rocksdb"]["flat"]:
        j["rocksdb_fill"] = True
    return out


def verdict(samples: list[dict], latency: dict, *, duration_s: float, rate: float, partitions: int,
            warden: dict | None = None) -> dict:
    """Every judged series with its figures, and the overall verdict (module docstring)."""
    ts = [s["t"] for s in samples]
    series: dict[str, dict] = {}
    roles = sorted({r for s in samples for r in s.get("rss_mib", {})})
    for role in roles:
        series.update(judge_rss(ts, samples, role, duration_s))
    b = bounds(rate, partitions)
    series["clerk pending positions"] = judge_bounded(ts, [s.get("pending") for s in samples], duration_s,
                                                      b["pending"])
    for inst in sorted({i for s in samples for i in s.get("lag", {})}):
        series[f"lag {inst}"] = judge_bounded(ts, [s.get("lag", {}).get(inst) for s in samples], duration_s, b["lag"])
    p99 = latency.get("p99")
    failures = []
    if p99 is None:
        failures.append("latency: no result in the measured period")
    elif p99 >= TARGET_P99_MS:
        failures.append(f"latency: p99 {p99} ms >= {TARGET_P99_MS:.0f} ms")
    if not latency.get("drained", True):
        failures.append(f"latency: {latency.get('unanswered', '?'):,} events never answered")
    for name, j in series.items():
        if j.get("informational"):
            continue
        if j["flat"] is False and not j.get("rocksdb_fill"):
            growth = (f"{j['projected_share']:+.1%} per 10 min" if "projected_share" in j
                      else f"{j['projected_growth']:+,.0f} per 10 min, max {j['second_half_max']:,.0f}")
            failures.append(f"{name}: not flat ({growth}; the rule: {j['rule']})")
        elif j["flat"] is None:
            failures.append(f"{name}: not judged ({j.get('why')})")
    if warden is not None:
        w = (warden.get("verdict") or {}).get("bounded")
        if w is not True:
            failures.append(f"warden: {'not bounded' if w is False else 'not judged'} "
                            f"({warden.get('error') or (warden.get('verdict') or {}).get('why') or 'see its figures'})")
    return {"latency_ok": p99 is not None and p99 < TARGET_P99_MS and latency.get("drained", True),
            "flat": all(j["flat"] or j.get("rocksdb_fill") or j.get("informational") for j in series.values()),
            "ok": not failures,
            "bounds": b, "series": series, "failures": failures}


def cpu_intervals(samples: list[dict]) -> list[dict]:
    """CPU between consecutive samples that both read it: ``{t, span_s, cores: {role:
    cores}, box: {busy, steal: cores}}``, ``t`` the later sample's (s since the warm-up
    ended), cores = CPU seconds (the kernel's account: /proc/<pid>/stat, /proc/stat)
    over the wall seconds between the two samples. Roles missing from either sample
    (a process gone) are left out; so is a pair without a wall clock span."""
    out = []
    for a, b in zip(samples, samples[1:]):
        span = (b.get("wall_ms", 0) - a.get("wall_ms", 0)) / 1000
        if span <= 0 or b.get("t") is None:
            continue
        ca, cb = a.get("cpu_s") or {}, b.get("cpu_s") or {}
        cores = {r: round((cb[r] - ca[r]) / span, 3) for r in sorted(cb) if r in ca}
        ba, bb = a.get("box_cpu_s"), b.get("box_cpu_s")
        box = ({k: round((bb[k] - ba[k]) / span, 3) for k in ("busy", "steal")} if ba and bb else None)
        out.append({"t": b["t"], "span_s": round(span, 3), "cores": cores, "box": box})
    return out


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def cpu_summary(samples: list[dict], windows: list[dict], window_s: float, cpu_count: int | None = None) -> dict:
    """Where the CPU went over the measured period (t >= 0), for the report and a verdict
    line, never for the verdict itself: each role's mean cores, the box's mean busy and
    steal cores out of ``cpu_count`` (default: this machine's), and the box's mean busy
    cores during the latency windows whose p99 reached the 100 ms target (``slow``)
    and during the others (``fast``). An interval belongs to the window holding its
    midpoint. Does the latency fail when the box is full? These figures say."""
    spans = [i for i in cpu_intervals(samples) if i["t"] - i["span_s"] / 2 >= 0]
    roles = sorted({r for i in spans for r in i["cores"]})
    busy = {"slow": [], "fast": []}
    slow_windows = 0
    for w in windows:
        if w.get("t") is None or w["t"] < 0 or w.get("p99_ms") is None:
            continue
        # a window no interval falls in (the drain's tail after the last sample) says nothing
        during = [i["box"]["busy"] for i in spans
                  if i["box"] is not None and w["t"] <= i["t"] - i["span_s"] / 2 < w["t"] + window_s]
        if not during:
            continue
        slow = w["p99_ms"] >= TARGET_P99_MS
        slow_windows += slow
        busy["slow" if slow else "fast"].extend(during)
    return {"cpu_count": cpu_count or os.cpu_count(), "intervals": len(spans),
            "roles": {r: _mean([i["cores"][r] for i in spans if r in i["cores"]]) for r in roles},
            "box_busy": _mean([i["box"]["busy"] for i in spans if i["box"]]),
            "box_steal": _mean([i["box"]["steal"] for i in spans if i["box"]]),
            "slow_windows": slow_windows, "box_busy_slow": _mean(busy["slow"]), "box_busy_fast": _mean(busy["fast"])}


def cpu_line(cpu: dict) -> str:
    """The verdict's line for :func:`cpu_summary` (for information, never a failure)."""
    if not cpu.get("intervals") or cpu.get("box_busy") is None:
        return f"{'cpu (for information)':<26} no CPU readings in the measured period"
    def cores(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"
    roles = ", ".join(f"{r} {cores(c)}" for r, c in cpu["roles"].items())
    return (f"{'cpu (for information)':<26} the box busy {cores(cpu['box_busy'])} of {cpu['cpu_count']} cores on "
            f"average (steal {cores(cpu['box_steal'])}); {cores(cpu['box_busy_slow'])} during the "
            f"{cpu['slow_windows']} windows with p99 >= {TARGET_P99_MS:.0f} ms, {cores(cpu['box_busy_fast'])} "
            f"during the others; cores per process: {roles}")


# --------------------------------------------------------------------------- report

def verdict_lines(report: dict) -> list[str]:
    v = report["verdict"]
    lat = report["latency_ms"]
    lines = [f"latency over the measured period: {lat['count']:,} results, p50 {lat['p50']} ms, p99 {lat['p99']} ms, "
             f"p99.9 {lat['p999']} ms, max {lat['max']} ms (target p99 < {TARGET_P99_MS:.0f} ms)"]
    for name, j in v["series"].items():
        state = {True: "flat", False: "NOT FLAT", None: "not judged"}[j["flat"]]
        note = ""
        if j.get("rocksdb_fill"):
            state, note = "FILLING", " (passes: RocksDB filling towards its bound, the rest flat)"
        elif j.get("informational"):
            state, note = f"({state.lower()})", " (for information: the RSS itself passes)"
        unit = " MiB" if name.startswith("rocksdb ") else ""
        if "projected_share" in j:
            fig = (f"first half {j['first_half_mean']:,.1f} MiB, second half {j['second_half_mean']:,.1f} MiB, "
                   f"projected {j['projected_growth']:+,.1f} MiB per 10 min ({j['projected_share']:+.1%}; limit "
                   f"{RSS_GROWTH:.0%})")
        elif "projected_growth" in j:
            fig = (f"second half mean {j['second_half_mean']:,.1f}{unit}, max {j['second_half_max']:,.0f}{unit}, "
                   f"projected {j['projected_growth']:+,.1f}{unit} per 10 min (bound {j['bound']:,.0f}{unit})")
        else:
            fig = j.get("why", "")
        lines.append(f"{name:<26} {state:<10} {fig}{note}")
    if "cpu" in report:
        lines.append(cpu_line(report["cpu"]))
    w = report.get("warden")
    if w and "end" in w:
        e = w["end"]
        lines.append(f"warden at {w['rate']:,.0f}/s, TTL {w['ttl_s']:,.0f} s: {e['live_versions']:,} live versions, "
                     f"queue {e['queue_bytes'] / MIB:,.1f} MiB ({e['queue_bytes_per_version']:.0f} B/version), "
                     f"memtables {e['rocks_memtables_bytes'] / MIB:,.1f} MiB, RSS {e['rss_bytes'] / MIB:,.1f} MiB "
                     f"(peak {w['peak_rss_bytes'] / MIB:,.1f}): "
                     f"{ {True: 'bounded', False: 'NOT bounded', None: 'not judged'}[w['verdict'].get('bounded')] }")
    elif w:
        lines.append(f"warden: {w.get('error')}")
    filling = [name for name, j in v["series"].items() if j.get("rocksdb_fill")]
    ok = ("OK: p99 < 100 ms and everything flat" if not filling else
          f"OK: p99 < 100 ms and everything flat but {', '.join(filling)}, which grew only by RocksDB's "
          f"memtables and block cache filling towards their configured bound")
    lines.append("verdict: " + (ok if v["ok"]
                                else "FAILED: " + "; ".join(v["failures"])))
    return lines


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    samples, windows = report["samples"], report["windows"]
    duration = report["settings"]["duration_s"]
    warden = report.get("warden") if report.get("warden") and "samples" in report["warden"] else None
    fig, axes = plt.subplots(5 if warden else 4, 1, figsize=(12, 16 if warden else 13), squeeze=False)
    axes = [a[0] for a in axes]

    def frame(ax) -> None:
        ax.axvspan(-report["settings"]["warmup_s"], 0, color="grey", alpha=0.12, label="warm-up")
        ax.axvspan(duration / 2, duration, color="tab:green", alpha=0.06, label="judged (second half)")
        ax.set_xlabel("seconds since the warm-up ended")
        ax.grid(True, alpha=0.3)

    ax = axes[0]
    for key, style in (("p50_ms", "-"), ("p99_ms", "-")):
        pts = [(w["t"], w[key]) for w in windows if w[key] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=key.replace("_ms", ""))
    ax.axhline(TARGET_P99_MS, color="tab:red", linestyle="--", linewidth=1, label="100 ms")
    ax.set_yscale("log")
    lat = report["latency_ms"]
    ax.set(ylabel="latency (ms)", title=f"latency per {report['settings']['sample_s']:.0f} s window at "
                                          f"{report['settings']['rate']:,} events/s (measured: p50 {lat['p50']} ms, "
                                          f"p99 {lat['p99']} ms)")
    frame(ax)
    ax.legend(fontsize=8, loc="upper left")

    # Stacked, so that the top of the stack is what docket's processes took of the box,
    # and the box's own line above it what everything else on the machine took.
    ax = axes[1]
    spans = cpu_intervals(samples)
    roles = sorted({r for i in spans for r in i["cores"]})
    if spans and roles:
        # each interval drawn at its start, as the latency windows are
        ax.stackplot([i["t"] - i["span_s"] for i in spans], *[[i["cores"].get(r, 0.0) for i in spans] for r in roles],
                     labels=roles, alpha=0.7)
        boxed = [i for i in spans if i["box"]]
        if boxed:
            ax.plot([i["t"] - i["span_s"] for i in boxed], [i["box"]["busy"] for i in boxed], color="black",
                    linewidth=1, label="the box, busy")
            ax.plot([i["t"] - i["span_s"] for i in boxed], [i["box"]["steal"] for i in boxed], color="tab:red",
                    linewidth=1, linestyle=":", label="the box, steal")
    cpus = (report.get("cpu") or {}).get("cpu_count") or os.cpu_count()
    ax.axhline(cpus, color="grey", linestyle="--", linewidth=1, label=f"{cpus} cores")
    ax.set_ylim(0, cpus * 1.6)  # room for the legend above the stack
    ax.set(ylabel="cores", title=f"CPU per {report['settings']['sample_s']:.0f} s, stacked by process (the kernel's "
                                 f"account), and the whole box's")
    frame(ax)
    ax.legend(fontsize=8, loc="upper center", ncol=5)

    # Each process's RSS as the change from its first sample of the measured period (its
    # level in the legend): the broker's hundreds of MiB would flatten the others' lines.
    ax = axes[2]
    for role in sorted({r for s in samples for r in s.get("rss_mib", {})}):
        pts = [(s["t"], s["rss_mib"][role]) for s in samples if s.get("rss_mib", {}).get(role) is not None]
        if not pts:
            continue
        base = next((y for t, y in pts if t >= 0), pts[-1][1])
        line, = ax.plot([t for t, _ in pts], [y - base for _, y in pts], label=f"{role} ({base:,.0f} MiB at 0 s)")
        rocks = [(s["t"], r[0]) for s in samples if (r := rocksdb_mib(s, role)) is not None]
        if rocks:
            rbase = next((y for t, y in rocks if t >= 0), rocks[-1][1])
            ax.plot([t for t, _ in rocks], [y - rbase for _, y in rocks], linestyle="--", color=line.get_color(),
                    label=f"{role}: its RocksDB memtables + block cache ({rbase:,.1f} MiB at 0 s)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(ylabel="RSS change (MiB)", title="resident memory per process (VmRSS; dashed: the instances' RocksDB "
                                             "memory), change since the warm-up ended")
    frame(ax)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[3]
    pts = [(s["t"], s["pending"]) for s in samples if s.get("pending") is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), color="tab:purple", label="Clerk pending positions")
    for inst in sorted({i for s in samples for i in s.get("lag", {})}):
        pts = [(s["t"], s["lag"][inst]) for s in samples if s.get("lag", {}).get(inst) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=f"lag of instance {inst} (offsets)")
    b = report["verdict"]["bounds"]
    ax.axhline(b["pending"], color="tab:purple", linestyle=":", linewidth=1, label=f"pending bound {b['pending']:,.0f}")
    ax.axhline(b["lag"], color="tab:orange", linestyle=":", linewidth=1, label=f"lag bound {b['lag']:,.0f}")
    ax.set(ylabel="positions / offsets", title="Clerk: positions held and instance lag")
    frame(ax)
    ax.legend(fontsize=8, loc="upper left")

    if warden:
        ax = axes[4]
        ws = warden["samples"]
        x = [s["stream_s"] for s in ws]
        ax.plot(x, [s["rss_bytes"] / MIB for s in ws], label="process RSS (MiB)")
        ax.plot(x, [s["queue_bytes"] / MIB for s in ws], label="collection queue (MiB)")
        ax.plot(x, [s["rocks_memtables_bytes"] / MIB for s in ws], label="RocksDB memtables (MiB)")
        ax.axvline(warden["ttl_s"], color="grey", linestyle="--", linewidth=1, label="one TTL")
        ax.set(xlabel="seconds of stream time", ylabel="MiB",
               title=f"Warden at {warden['rate']:,.0f} events/s, TTL {warden['ttl_s']:,.0f} s "
                     f"({warden['end']['live_versions']:,} live versions at the end; measured apart)")
        ax2 = ax.twinx()
        ax2.plot(x, [s["live_versions"] for s in ws], color="black", linestyle=":", label="live versions")
        ax2.set_ylabel("live versions")
        ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.grid(True, alpha=0.3)
        lines, labels = ax.get_legend_handles_labels()
        l2, lab2 = ax2.get_legend_handles_labels()
        ax.legend(lines + l2, labels + lab2, fontsize=8, loc="upper left")

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(report: dict, out: Path, now: datetime.datetime | None = None) -> list[Path]:
    """``soak-<date>-<HHMM>.json`` and ``.png`` in ``out``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now()
    stem = report_stem(out, "soak", now)
    png = plot(report, out / f"{stem}.png")
    path = out / f"{stem}.json"
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return [path, png]


# --------------------------------------------------------------------------- the run

DEFAULT_PARTITIONS = 8  # DOCKET_PARTITIONS's default (app/settings.py)


def headline_rate(results: Path = RESULTS, partitions: int | None = None) -> tuple[int, str]:
    """(rate, where it came from): the highest rate with p99 < 100 ms of the newest
    complete benchmark report that has one for ``partitions`` (the sweep of that many
    partitions; a report of before the sweeps named their count counts as the default
    8), else DEFAULT_RATE."""
    for path in sorted(results.glob("bench-*.json"), reverse=True):  # names sort by date and time
        if "smoke" in path.name:
            continue
        try:
            native = json.loads(path.read_text()).get("kafka_native", {})
            sweeps = [native, *(native.get("by_partitions") or [])]
            rate = next((s.get("max_rate_p99_under_100ms") for s in sweeps
                         if partitions is None or s.get("partitions", DEFAULT_PARTITIONS) == partitions), None)
        except (OSError, ValueError, AttributeError):
            continue
        if rate:
            return int(rate), path.name
    return DEFAULT_RATE, "default"


async def sampler(stack, watch: SoakWatch, pids: dict[str, int], state: dict, sample_s: float,
                  samples: list[dict]) -> None:
    """Every ``sample_s``: RSS per process, the Clerk's and the instances' metrics; a
    progress line every 10 s. Runs until cancelled."""
    import aiohttp

    instances = list(stack.settings.instances)
    last_line = -math.inf
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            now_ms = time.time() * 1000
            origin = state.get("origin_ms")
            pages = dict(zip(stack.metrics_urls, await asyncio.gather(
                *(fetch_metrics(session, url) for url in stack.metrics_urls.values())), strict=True))
            mem = {role: proc_memory_kib(pid) for role, pid in pids.items()}
            try:
                box = box_cpu_seconds()
            except (OSError, ValueError):
                box = None
            pending, lag = clerk_figures(pages.get("clerk"), instances)
            t0 = state.get("t0_ms")
            s = {"t": round((now_ms - origin) / 1000, 2) if origin else None, "wall_ms": round(now_ms),
                 "rss_mib": {r: round(m["VmRSS"] / 1024, 2) for r, m in mem.items() if m},
                 "rss_anon_mib": {r: round(m.get("RssAnon", 0) / 1024, 2) for r, m in mem.items() if m},
                 "cpu_s": {r: round(c, 3) for r, c in cpu_seconds(pids).items()},
                 "box_cpu_s": box and {k: round(v, 3) for k, v in box.items()},
                 "pending": pending, "lag": lag,
                 "due": min(state["total"], max(0, math.floor((now_ms - t0) * state["rate"] / 1000))) if t0 else 0,
                 "results": watch.count, "awaiting": len(watch.intended),
                 "metrics": {role: page for role, page in pages.items() if page is not None}}
            if s["t"] is not None:
                samples.append(s)
                watch.windows.seal(now_ms - SEAL_AFTER_S * 1000)
                if s["t"] - last_line >= 10 - 1e-6:
                    last_line = s["t"]
                    r = watch.windows.recent(now_ms, 10)
                    phase = "warm-up" if s["t"] < 0 else "soak"
                    rss = ", ".join(f"{k} {v:,.0f}" for k, v in s["rss_mib"].items())
                    rocks = {r: m for r in instances if (m := rocksdb_mib(s, r)) is not None}
                    if rocks:
                        rss += " (RocksDB " + ", ".join(f"{r} {m[0]:,.1f}" for r, m in rocks.items()) + ")"
                    lat = (f"p50 {r['p50']} ms p99 {r['p99']} ms" if r["count"] else "no window complete yet")
                    say(f"{phase} t={s['t']:+.0f}s: {s['due']:,} sent, {s['results']:,} answered; last 10 s {lat}; "
                        f"RSS MiB {rss}; pending {pending if pending is None else f'{pending:,.0f}'}; "
                        f"lag {', '.join(f'{k} {v:,.0f}' for k, v in lag.items()) or 'n/a'}")
            await asyncio.sleep(sample_s - (time.time() * 1000 - now_ms) / 1000 % sample_s)


async def soak(settings: Settings, work: Path, args: argparse.Namespace, broker_pid: int | None) -> dict:
    from bench.stack import BenchStack

    rate = args.rate
    total_s = args.warmup_s + args.duration_s
    async with BenchStack(settings, work, name="soak", api=False) as stack:
        pids = {**stack.pids}
        if broker_pid:
            pids["broker"] = broker_pid
        pids["soak (this process)"] = os.getpid()
        producer = AIOKafkaProducer(**client_kwargs(stack.settings, "bench", "producer", bootstrap_servers=stack.settings.kafka_bootstrap, acks="all", linger_ms=1,
                                    max_batch_size=256 * 1024))
        await producer.start()
        state: dict = {"rate": rate, "total": max(1, round(rate * total_s))}
        windows = LatencyWindows(origin_ms=math.inf, window_s=args.sample_s)
        watch = await SoakWatch(stack.settings, windows=windows).start()
        samples: list[dict] = []

        def started(t0_ms: float) -> None:
            state["t0_ms"] = t0_ms
            state["origin_ms"] = windows.origin_ms = t0_ms + args.warmup_s * 1000

        task = None
        try:
            say(f"soak: {rate:,} events/s, {args.warmup_s:.0f} s warm-up then {args.duration_s:.0f} s "
                f"({state['total']:,} events); processes {pids}")
            task = asyncio.create_task(sampler(stack, watch, pids, state, args.sample_s, samples))
            sent = await send_at_rate(producer, stack.settings.input_topic, rate, total_s, args.seed,
                                      watch.intended, on_start=started)
            deadline = max(30.0, args.duration_s / 4)
            say(f"soak: all {sent['sent']:,} sent; waiting up to {deadline:.0f} s for the last results ...")
            drained = await watch.wait_for(sent["sent"], deadline)
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await watch.stop()
            await producer.stop()
    latency = {**counter_percentiles(windows.measured), "drained": drained,
               "unanswered": sent["sent"] - watch.count, "unmatched": len(watch.unmatched)}
    return {"generator": sent, "latency_ms": latency, "warmup_latency_ms": counter_percentiles(windows.warmup),
            "samples": samples, "windows": windows.series(), "pids": pids,
            "partitions": stack.settings.partitions, "topic_prefix": stack.settings.topic_prefix}


async def warden_run(args: argparse.Namespace, work: Path) -> dict:
    """bench/warden_memory.py in a process of its own (its RSS is the figure), awaited on
    the event loop so that a SIGTERM (bench/common.py run_stoppable) stops the soak during
    this step too: the child is terminated and the cancellation goes on."""
    out = work / "warden.json"
    cmd = [sys.executable, "-m", "bench.warden_memory", "--rate", str(args.warden_rate), "--ttl-s",
           str(args.warden_ttl_s), "--ttls", str(args.warden_ttls), "--json", str(out)]
    say(f"warden: {' '.join(cmd[1:])} ...")
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, stdout=subprocess.PIPE)
    try:
        stdout, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), WARDEN_STOP_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        raise
    print(stdout.decode(errors="replace"), end="", flush=True)
    if not out.exists():
        return {"error": f"bench.warden_memory exited {proc.returncode} without figures"}
    result = json.loads(out.read_text())
    say(f"warden: done in {time.monotonic() - began:.0f} s")
    return result


@contextlib.contextmanager
def existing_broker(bootstrap: str):
    yield dataclasses.replace(load(), kafka_bootstrap=bootstrap)


async def run(args: argparse.Namespace) -> int:
    from launcher.broker import running_pid
    from bench.common import own_broker
    from bench.report import machine

    source = "--rate"
    if args.rate is None:
        args.rate, source = headline_rate(partitions=load().partitions)
    work = Path(tempfile.mkdtemp(prefix="docket-soak-"))
    began = time.time()
    report: dict = {
        "began": datetime.datetime.fromtimestamp(began, datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"rate": args.rate, "rate_from": source, "duration_s": args.duration_s,
                     "warmup_s": args.warmup_s, "sample_s": args.sample_s, "seed": args.seed,
                     "bootstrap": args.bootstrap},
        "rules": {"latency": f"p99 of the measured period < {TARGET_P99_MS:.0f} ms",
                  "rss": f"second-half least-squares slope x {PROJECTION_S:.0f} s < {RSS_GROWTH:.0%} "
                         f"of the first-half mean; an instance's RSS past that passes when its RocksDB memory "
                         f"stays within its bound and its RSS less that memory passes the same rule",
                  "pending": f"second-half slope x {PROJECTION_S:.0f} s < bound and second-half max <= bound; "
                             f"bound = max({MIN_BOUND:.0f}, rate x {PENDING_BOUND_S} s)",
                  "lag": f"same, bound = max({MIN_BOUND:.0f}, rate / partitions x {LAG_BOUND_S} s)"},
    }
    try:
        with (existing_broker(args.bootstrap) if args.bootstrap else own_broker(work)) as settings:
            if args.idempotency_ttl_s is not None:
                settings = dataclasses.replace(settings, idempotency_ttl_ms=round(args.idempotency_ttl_s * 1000))
            report["settings"]["idempotency_ttl_ms"] = settings.idempotency_ttl_ms
            broker_pid = args.broker_pid or (None if args.bootstrap else running_pid(settings.broker_dir))
            report.update(await soak(settings, work, args, broker_pid))
        if args.warden:
            report["warden"] = await warden_run(args, work)
        report["wall_s"] = round(time.time() - began)
        report["cpu"] = cpu_summary(report["samples"], report["windows"], args.sample_s)
        report["verdict"] = verdict(report["samples"], report["latency_ms"], duration_s=args.duration_s,
                                    rate=args.rate, partitions=report["partitions"], warden=report.get("warden"))
        paths = write_report(report, Path(args.out))
        print("\n".join(verdict_lines(report)), flush=True)
        say(f"report: {', '.join(str(p) for p in paths)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["verdict"]["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=positive_int, help="events/s [the headline of the latest bench/results/bench-*.json "
                                             f"for DOCKET_PARTITIONS partitions, else {DEFAULT_RATE}]")
    ap.add_argument("--duration-s", type=positive_float, default=600.0, help="measured seconds after the warm-up [600]")
    ap.add_argument("--warmup-s", type=float, default=40.0, help="seconds at the same rate before [40]")
    ap.add_argument("--sample-s", type=positive_float, default=5.0, help="seconds between samples, and per latency window [5]")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--out", default=str(RESULTS), help="report directory [bench/results]")
    ap.add_argument("--bootstrap", help="use this running broker instead of starting one")
    ap.add_argument("--broker-pid", type=int, help="with --bootstrap: the broker's pid, for its RSS")
    ap.add_argument("--idempotency-ttl-s", type=float,
                    help="the stack's Warden TTL (DOCKET_IDEMPOTENCY_TTL_MS) [the settings': 300 s]")
    ap.add_argument("--no-warden", dest="warden", action="store_false",
                    help="skip the Warden memory measurement (bench/warden_memory.py)")
    ap.add_argument("--warden-rate", type=float, default=10_000, help="events/s for the Warden measurement [10000]")
    ap.add_argument("--warden-ttl-s", type=float, default=300, help="its TTL, seconds [300]")
    ap.add_argument("--warden-ttls", type=float, default=2.0, help="TTLs of stream time it records [2]")
    args = ap.parse_args(argv)
    if args.warmup_s < 0:
        ap.error("--warmup-s must not be negative")
    if problem := writable_dir(args.out):
        ap.error(problem)
    if args.duration_s < MIN_SAMPLES_PER_HALF * 2 * args.sample_s:
        ap.error(f"--duration-s {args.duration_s:g} is too short to judge: each half needs "
                 f"{MIN_SAMPLES_PER_HALF} samples of --sample-s {args.sample_s:g} s, so at least "
                 f"{MIN_SAMPLES_PER_HALF * 2 * args.sample_s:g} s")
    return run_stoppable(run(args))


if __name__ == "__main__":
    sys.exit(main())
