"""What the console's page shows, read from the topics and the workers' /metrics
(specs/console.allium).

:class:`Monitor` reads, with one read_committed consumer (as every docket reader), from
the beginning: the input topic (positions, their broker timestamps, and the safety
check's replay), each instance's output topic (its watermark per partition: lag), the
results topic and the divergences topic (fates, latency, the safety check). Every
second it scrapes /metrics of a, b, c and the Clerk (prometheus_client's text parser):
events/s per instance, decisions/s, divergences/s and pending positions of the Clerk.

The pure parts, each testable without a broker:

- :func:`fate_of`: a position's fate from its result and divergence reports;
- :class:`Strip`: the newest positions per partition and their fates;
- :class:`Latency`: decision latency (result timestamp - input timestamp, both the
  broker's LogAppendTime, ms) per second of console time: p50/p99 series, and the
  score's delay;
- :class:`Pending`: input positions not final yet, the longest-stalled first;
- :func:`rate_between`: a counter's rate between two scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from app.kafka_admin import ISOLATION_LEVEL, quiet
from app.kafka_config import client_kwargs
from app.records import InputRecord
from app.settings import Settings
from console.safety import DIVERGED_CAUSES, SafetyCheck

log = logging.getLogger("docket.console")

Position = tuple[int, int]
STRIP_PER_PARTITION = 40  # newest positions per partition on the strip
SERIES_S = 180  # seconds of latency history
STALLED_TOP = 5
# The score counts a decision's delay beyond this: a decision held up more than a second
# is one the player held up (at the default rate p99 stays far below it, so a calm
# stack scores about nothing, also on a busy machine).
DELAY_FREE_MS = 1000.0
SCRAPE_EVERY_S = 1.0
SCRAPE_TIMEOUT_S = 0.8  # a slowed worker answers late or not at all: its figures stay


# --------------------------------------------------------------------------- fates


def fate_of(instances: list[str] | None, reports: Iterable[Mapping]) -> dict:
    """The fate of one position from its result's ``instances`` (None: no result yet)
    and its divergence reports so far:

    - ``agreed``: published, and no report says a copy disagreed;
    - ``withheld``: published (or decided, its result not read yet) while a copy
      disagreed: ``outvoted`` names the instances whose copies differ from the decision;
    - ``diverged``: copies disagreed and nothing was published (``decided`` null);
    - ``pending``: none of these yet.

    Returns {"fate", "instances", "outvoted"?}."""
    outvoted: set[str] = set()
    decided = None
    diverged = False
    for r in reports:
        if r.get("decided") is not None:
            decided = r["decided"]
            outvoted |= {c["instance"] for c in r.get("copies", ()) if c.get("digest") != decided}
        elif r.get("cause") in DIVERGED_CAUSES:
            diverged = True
    if instances is not None or decided is not None:
        out = {"fate": "withheld" if outvoted else "agreed", "instances": sorted(instances or [])}
        if outvoted:
            out["outvoted"] = sorted(outvoted)
        return out
    if diverged:
        return {"fate": "diverged", "instances": []}
    return {"fate": "pending", "instances": []}


@dataclass
class _Spot:
    instances: list[str] | None = None
    reports: list[dict] = field(default_factory=list)


class Strip:
    """The newest ``per_partition`` input positions of each partition and what became
    of them (:func:`fate_of`). Results and reports for positions already off the strip,
    or not read from the input yet, are kept only while they could still show."""

    def __init__(self, partitions: int, per_partition: int = STRIP_PER_PARTITION) -> None:
        self.partitions = partitions
        self.per_partition = per_partition
        self.order: dict[int, deque[int]] = {p: deque() for p in range(partitions)}
        self.spots: dict[Position, _Spot] = {}
        self.early: dict[Position, _Spot] = {}  # a result or report read before its input

    def add_input(self, p: int, o: int) -> None:
        order = self.order.setdefault(p, deque())
        if order and o <= order[-1]:
            return
        order.append(o)
        self.spots[(p, o)] = self.early.pop((p, o), None) or _Spot()
        while len(order) > self.per_partition:
            self.spots.pop((p, order.popleft()), None)

    def _spot(self, pos: Position) -> _Spot | None:
        spot = self.spots.get(pos)
        if spot is not None:
            return spot
        order = self.order.get(pos[0])
        if order and pos[1] <= order[-1]:
            return None  # off the strip already
        if len(self.early) > 10_000:
            self.early.clear()  # results far ahead of the input reader: not for showing
        return self.early.setdefault(pos, _Spot())

    def add_result(self, pos: Position, instances: list[str]) -> None:
        spot = self._spot(pos)
        if spot is not None:
            spot.instances = list(instances)

    def add_report(self, pos: Position, report: dict) -> None:
        spot = self._spot(pos)
        if spot is not None:
            spot.reports.append({"decided": report.get("decided"), "cause": report.get("cause"),
                                 "copies": [{"instance": c.get("instance"), "digest": c.get("digest")}
                                            for c in report.get("copies", ())]})

    def positions(self) -> list[dict]:
        """The strip of the State JSON: per partition, oldest first."""
        out = []
        for p in sorted(self.order):
            for o in self.order[p]:
                spot = self.spots[(p, o)]
                out.append({"p": p, "o": o, **fate_of(spot.instances, spot.reports)})
        return out


# --------------------------------------------------------------------------- latency


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Latency:
    """Decision latencies, ms, bucketed by the second of console time the result was
    published in (its broker timestamp, ``t0_ms``: the console's start on the wall
    clock, ms). ``delay_s``: the settled part of the score, the sum of max(0, latency -
    DELAY_FREE_MS) in s."""

    def __init__(self, t0_ms: float, keep_s: int = SERIES_S) -> None:
        self.t0_ms = t0_ms
        self.keep_s = keep_s
        self.buckets: dict[int, list[float]] = {}
        self.delay_s = 0.0
        self.count = 0

    def add(self, result_ts_ms: int, input_ts_ms: int) -> float:
        latency = max(0.0, float(result_ts_ms - input_ts_ms))
        second = int((result_ts_ms - self.t0_ms) // 1000)
        self.buckets.setdefault(second, []).append(latency)
        self.delay_s += max(0.0, latency - DELAY_FREE_MS) / 1000
        self.count += 1
        if len(self.buckets) > self.keep_s + 5:
            for s in sorted(self.buckets)[: len(self.buckets) - self.keep_s]:
                del self.buckets[s]
        return latency

    def series(self, now_s: float | None = None) -> list[list[float]]:
        """[[t, p50_ms, p99_ms], ...] per second with results, the last ``keep_s``
        seconds (before ``now_s``, console time, when given), oldest first."""
        seconds = sorted(self.buckets)
        if now_s is not None:
            seconds = [s for s in seconds if now_s - self.keep_s <= s <= now_s]
        else:
            seconds = seconds[-self.keep_s:]
        return [[float(s), round(percentile(self.buckets[s], 50), 1), round(percentile(self.buckets[s], 99), 1)]
                for s in seconds]

    def window(self, last_s: int, now_s: float) -> tuple[float, float] | None:
        """(p50, p99) ms over the results of the last ``last_s`` whole seconds."""
        values = [v for s, vs in self.buckets.items() if now_s - last_s <= s < now_s for v in vs]
        return (percentile(values, 50), percentile(values, 99)) if values else None


class Pending:
    """Input positions read but not final yet (no result, not diverged), with their
    input broker timestamp (ms), and results read before their input."""

    def __init__(self) -> None:
        self.since: dict[Position, int] = {}
        self.early: dict[Position, int] = {}  # position -> result timestamp, input not read yet
        self.final_below: dict[int, int] = {}

    def add_input(self, pos: Position, ts_ms: int) -> int | None:
        """Note an input; returns the timestamp of its result if that came first."""
        early = self.early.pop(pos, None)
        if early is None:
            self.since[pos] = ts_ms
        return early

    def settle(self, pos: Position, result_ts_ms: int | None = None) -> int | None:
        """The position is final; returns its input timestamp if the input was read
        (else the result's timestamp is kept until it is)."""
        ts = self.since.pop(pos, None)
        if ts is None and result_ts_ms is not None:
            self.early[pos] = result_ts_ms
        return ts

    def overdue_s(self, now_ms: float, free_ms: float = DELAY_FREE_MS) -> float:
        """The score's open part: the sum over positions not final yet of max(0, age -
        ``free_ms``), in s, so the score climbs while decisions are held up."""
        return sum(max(0.0, now_ms - ts - free_ms) for ts in self.since.values()) / 1000

    def stalled(self, now_ms: float, top: int = STALLED_TOP) -> list[dict]:
        oldest = heapq.nsmallest(top, self.since.items(), key=lambda kv: (kv[1], kv[0]))
        return [{"p": p, "o": o, "age_ms": max(0, int(now_ms - ts))} for (p, o), ts in oldest]


# --------------------------------------------------------------------------- metrics


def rate_between(prev: tuple[float, float] | None, now: tuple[float, float]) -> float:
    """Per-second rate of a counter between two (monotonic time, value) samples; 0 after
    a restart (the counter went back) or without an earlier sample."""
    if prev is None or now[0] <= prev[0] or now[1] < prev[1]:
        return 0.0
    return (now[1] - prev[1]) / (now[0] - prev[0])


def parse_metrics(text: str) -> dict[str, float]:
    """Sample name (with labels, ``name{k="v"}``) -> value, of a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


# --------------------------------------------------------------------------- the monitor


class Monitor:
    """The console's reader. ``controller``: console/stack.py Controller (node states);
    ``ports``: role -> web port; ``feeder``: the workload (rate, produced);
    ``safety``: the live check."""

    def __init__(self, settings: Settings, controller, ports: Mapping[str, int], feeder, safety: SafetyCheck,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.controller = controller
        self.ports = dict(ports)
        self.feeder = feeder
        self.safety = safety
        self.wall = wall
        self.t0_ms = wall() * 1000 - controller.now() * 1000  # the console's start, wall clock
        self.strip = Strip(settings.partitions)
        self.latency = Latency(self.t0_ms)
        self.pending = Pending()
        self.input_end: dict[int, int] = {}
        self.watermarks: dict[str, dict[int, int]] = {i: {} for i in settings.instances}
        self.results = 0
        self.divergences = 0
        self.metrics: dict[str, dict] = {}  # role -> figures from its /metrics
        self._samples: dict[tuple[str, str], tuple[float, float]] = {}
        self._next: dict = {}  # TopicPartition -> next offset to take (a record again after a reconnect)
        self._consumer = None
        self._tasks: list[asyncio.Task] = []
        self.read_errors = 0

    # ------------------------------------------------------------------ records

    def on_input(self, recs: list[InputRecord]) -> None:
        """Records of one input partition, in offset order."""
        self.safety.add_inputs(recs)
        for r in recs:
            pos = (r.partition, r.offset)
            self.strip.add_input(*pos)
            result_ts = self.pending.add_input(pos, r.timestamp)
            if result_ts is not None:
                self.latency.add(result_ts, r.timestamp)
            self.input_end[r.partition] = max(self.input_end.get(r.partition, 0), r.offset + 1)

    def on_output(self, instance: str, record: dict) -> None:
        self.watermarks.setdefault(instance, {})[record["partition"]] = record["watermark"]

    def on_result(self, result: dict, ts_ms: int) -> None:
        pos = (result["input"]["partition"], result["input"]["offset"])
        self.results += 1
        self.safety.add_result(result)
        self.strip.add_result(pos, result.get("instances") or [])
        input_ts = self.pending.settle(pos, ts_ms)
        if input_ts is not None:
            self.latency.add(ts_ms, input_ts)

    def on_divergence(self, report: dict) -> None:
        pos = (report["input"]["partition"], report["input"]["offset"])
        self.divergences += 1
        self.safety.add_divergence(report)
        self.strip.add_report(pos, report)
        if report.get("decided") is None and report.get("cause") in DIVERGED_CAUSES:
            self.pending.settle(pos)

    async def start(self) -> Monitor:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        consumer = AIOKafkaConsumer(**client_kwargs(
            s, "console", "consumer", bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level=ISOLATION_LEVEL, max_partition_fetch_bytes=4 * 1024 * 1024,
            # at most ~10 fetches a second, each as full as 100 ms of records make it: the page shows
            # a result within ~0.1 s, and the console's fetching takes little CPU from the workers
            fetch_max_wait_ms=100, fetch_min_bytes=64 * 1024))
        await consumer.start()
        topics = [s.input_topic, *(s.output_topic(i) for i in s.instances), s.results_topic, s.divergences_topic]
        tps = [TopicPartition(t, p) for t in topics for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._consumer = consumer
        self._tasks = [asyncio.create_task(self._read(), name="console reader"),
                       asyncio.create_task(self._scrape_loop(), name="console scrape")]
        return self

    async def _read(self) -> None:
        s = self.settings
        outputs = {s.output_topic(i): i for i in s.instances}
        while True:
            try:
                with quiet("aiokafka"):
                    batches = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001  the broker is stopped or restarting: the consumer reconnects
                self.read_errors += 1
                await asyncio.sleep(0.5)  # back-off before the next fetch
                continue
            # inputs first: a result read in the same fetch finds its input position known
            for tp in sorted(batches, key=lambda tp: (tp.topic != s.input_topic, tp.topic, tp.partition)):
                msgs = [m for m in batches[tp] if m.offset >= self._next.get(tp, 0)]
                if not msgs:
                    continue
                self._next[tp] = msgs[-1].offset + 1
                try:
                    self._take(tp.topic, msgs, outputs)
                except Exception:  # noqa: BLE001  one unreadable record must not stop the panel
                    log.warning("console: a record of %s[%d] could not be read", tp.topic, tp.partition,
                                exc_info=True)

    def _take(self, topic: str, msgs: list, outputs: Mapping[str, str]) -> None:
        s = self.settings
        if topic == s.input_topic:
            self.on_input([InputRecord(m.partition, m.offset, m.timestamp, m.key, m.value, m.timestamp_type)
                           for m in msgs])
        elif topic in outputs:
            for m in msgs:
                self.on_output(outputs[topic], orjson.loads(m.value))
        elif topic == s.results_topic:
            for m in msgs:
                self.on_result(orjson.loads(m.value), m.timestamp)
        elif topic == s.divergences_topic:
            for m in msgs:
                self.on_divergence(orjson.loads(m.value))

    # ------------------------------------------------------------------ /metrics

    async def _scrape_loop(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)) as session:
            while True:
                began = time.monotonic()
                await asyncio.gather(*(self._scrape(session, role, port) for role, port in self.ports.items()))
                await asyncio.sleep(max(0.0, SCRAPE_EVERY_S - (time.monotonic() - began)))  # the scrape period

    async def _scrape(self, session, role: str, port: int) -> None:
        proc = self.controller.procs.get(role)
        if proc is None or not proc.alive:
            self.metrics[role] = {}
            return
        try:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        except Exception:  # noqa: BLE001  starting, stopped by the duty cycle, or dying
            return
        self.take_metrics(role, parse_metrics(text), time.monotonic())

    def take_metrics(self, role: str, values: Mapping[str, float], at: float) -> None:
        """Figures of one scrape of ``role``'s /metrics (``values``: parse_metrics)."""
        def rate(name: str) -> float:
            now = (at, values.get(name, 0.0))
            r = rate_between(self._samples.get((role, name)), now)
            self._samples[(role, name)] = now
            return round(r, 1)

        if role == "clerk":
            self.metrics[role] = {"decisions_per_s": rate("docket_clerk_decisions_total"),
                                  "divergences_per_s": rate("docket_clerk_divergences_total"),
                                  "pending": int(values.get("docket_clerk_pending_positions", 0))}
        else:
            self.metrics[role] = {"events_per_s": rate("docket_instance_events_total")}

    # ------------------------------------------------------------------ the State

    def lag(self, instance: str) -> int:
        """Input records not yet covered by the instance's copies (its watermarks), over
        every partition."""
        marks = self.watermarks.get(instance, {})
        return sum(max(0, end - marks.get(p, 0)) for p, end in self.input_end.items())

    def nodes(self) -> list[dict]:
        c = self.controller
        c.check_exits()
        out = []
        for name in ("a", "b", "c", "clerk", "broker"):
            node = c.node(name)
            m = self.metrics.get(name, {}) if node["pid"] is not None else {}
            if node["kind"] == "instance":
                node.update(lag=self.lag(name), events_per_s=m.get("events_per_s", 0.0))
            elif node["kind"] == "clerk":
                node.update(pending=m.get("pending", 0), decisions_per_s=m.get("decisions_per_s", 0.0),
                            divergences_per_s=m.get("divergences_per_s", 0.0))
            out.append(node)
        return out

    def window(self, now: float, last_s: int = 60) -> dict:
        """p50/p99 decision latency (ms) over the results of the last ``last_s`` seconds
        (an addition to CONTRACT.md's State: the figure to quote for a rate)."""
        got = self.latency.window(last_s, now)
        return {"s": last_s, "p50_ms": None if got is None else round(got[0], 1),
                "p99_ms": None if got is None else round(got[1], 1)}

    def state(self) -> dict:
        """The State JSON of CONTRACT.md."""
        now = self.controller.now()
        safety = self.safety.state()
        return {
            "t": now,
            "rate": self.feeder.rate,
            "produced": self.feeder.produced,
            "nodes": self.nodes(),
            "strip": {"partitions": self.settings.partitions, "positions": self.strip.positions()},
            "safety": safety,
            "liveness": {"series": self.latency.series(now),
                         "stalled": self.pending.stalled(self.wall() * 1000),
                         "window": self.window(now)},
            "score": {"delay_s": round(self.latency.delay_s + self.pending.overdue_s(self.wall() * 1000), 1),
                      "safety_unbroken": safety["wrong"] == 0},
            "log": list(self.controller.log),
        }

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
