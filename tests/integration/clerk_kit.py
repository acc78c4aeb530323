"""Helpers for the Clerk's integration tests (tests/integration/test_clerk.py), on top
of tests/integration/procs.py (process handling, ``wait_for``, ``OutputCollector``).

- :class:`DocketProc`: a ``docket instance`` or ``docket clerk`` subprocess with extra
  command-line arguments (``--inject-faults``, ``--web-port``); a :class:`procs.Worker`
  otherwise (start, SIGKILL, SIGTERM, log per start). :class:`FaustCliProc`: the same
  for ``faust -A docket_apps.<role> worker``.
- fixtures ``instances`` / ``required_copies`` (override with
  ``@pytest.mark.parametrize``), ``clerk_settings`` and ``spawn``.
- :class:`TopicTail`: reads a topic with ``read_committed`` in the background
  (results, divergences), records with their Kafka timestamps.
- :func:`group_caught_up`: a consumer group has committed every record of some topics.
- :func:`clerk_metrics`, :func:`histogram_quantile`: the Clerk's Prometheus page.
- :func:`fault_positions`: the positions an instance logged as ``FAULT INJECTED``.
- :class:`Paced`: keeps each record's scheduled send time, for latency measured from
  it at a fixed arrival rate.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.kafka_config import client_kwargs
from app.settings import Settings
from chaos.workload import Record
from tests.integration.procs import BackgroundReader, Worker, killed_at_teardown, worker_env

Position = tuple[int, int]
CLERK_PARTITIONS = 4


# --------------------------------------------------------------------------- processes


@dataclass
class DocketProc(Worker):
    """``docket <command> ...`` (instance, clerk or api): for ``instance``, ``--id <instance>``
    is added, for all but ``api`` ``--data-dir``; ``args``
    are appended (e.g. ``("--inject-faults", "bitflip:0.01")``). Logs go to
    ``<log_dir>/<instance>-<n>.log`` (the clerk's ``instance`` is ``"clerk"``)."""

    command: str = "instance"
    args: tuple[str, ...] = ()

    def start(self) -> DocketProc:
        cmd = [sys.executable, "-c", "from app.cli import main; main()", self.command]
        if self.command == "instance":
            cmd += ["--id", self.instance]
        if self.command != "api":  # the API keeps no data
            cmd += ["--data-dir", str(self.data_dir)]
        return self._launch(cmd + list(self.args))


@dataclass
class FaustCliProc(Worker):
    """``faust -A <module> worker <args>``: a docket worker started through Faust's own
    command line (docket_apps/), from another directory than the checkout (the modules
    are installed); the DOCKET_* settings (DOCKET_INSTANCE_ID for an instance) come from
    ``env``. A :class:`procs.Worker` otherwise (start, SIGKILL, SIGTERM, log per start)."""

    module: str = "docket_apps.instance"
    args: tuple[str, ...] = ()

    def start(self) -> FaustCliProc:
        faust_cli = Path(sys.executable).with_name("faust")
        return self._launch([str(faust_cli), "-A", self.module, "worker", *self.args],
                            log_name=f"{self.instance}-faust", cwd=self.log_dir)


@pytest.fixture
def instances() -> str:
    """DOCKET_INSTANCES for the test; override with parametrize("instances", [...])."""
    return "a,b"


@pytest.fixture
def required_copies() -> str:
    return "2"


@pytest.fixture
def clerk_env(instances: str, required_copies: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKET_PARTITIONS", str(CLERK_PARTITIONS))
    monkeypatch.setenv("DOCKET_INSTANCES", instances)
    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", required_copies)


@pytest.fixture
async def clerk_settings(clerk_env: None, docket_settings: Settings) -> Settings:
    """docket_settings (own prefix, topics created for every instance, own data root)
    with CLERK_PARTITIONS partitions and the test's instances / required copies."""
    assert docket_settings.partitions == CLERK_PARTITIONS
    return docket_settings


@pytest.fixture
async def spawn(clerk_settings: Settings, tmp_path: Path) -> AsyncIterator[Callable[..., DocketProc]]:
    """``spawn(name, *args, command="instance")`` -> DocketProc (not started). For
    ``command="clerk"`` the name is only the log name. Everything spawned is SIGKILLed at
    teardown if still running, whatever the test's outcome."""
    spawned: list[DocketProc] = []

    def make(name: str, *args: str, command: str = "instance") -> DocketProc:
        role = name if command == "instance" else "clerk"
        proc = DocketProc(instance=name, env=worker_env(clerk_settings),
                          data_dir=clerk_settings.data_root / f"{clerk_settings.app_id(role)}-{name}",
                          log_dir=tmp_path / "logs", command=command, args=tuple(args))
        spawned.append(proc)
        return proc

    with killed_at_teardown(spawned):
        yield make


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    timestamp: int  # ms, the record's Kafka timestamp
    key: bytes | None
    value: dict


class TopicTail(BackgroundReader):
    """Reads ``topic`` from the beginning, ``read_committed``, in a background task;
    ``records`` grows as records arrive, each record once."""

    isolation_level = "read_committed"

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.records: list[Rec] = []

    def on_record(self, m: Any) -> None:
        self.records.append(Rec(m.partition, m.offset, m.timestamp, m.key, orjson.loads(m.value)))

    def positions(self) -> set[Position]:
        self.check()
        return {(r.value["input"]["partition"], r.value["input"]["offset"]) for r in self.records}


async def read_all(bootstrap: str, topic: str) -> list[Rec]:
    """Every record of ``topic`` up to its current end, ``read_committed``, each once
    (chaos.replay.read_topic keeps a record the consumer delivers twice; two results for
    one position are two records at different offsets, so this hides no duplicate)."""
    from chaos.replay import read_topic

    records = {(r.partition, r.offset): r for r in await read_topic(bootstrap, topic)}
    return [Rec(r.partition, r.offset, r.timestamp, r.key, orjson.loads(r.value))
            for _, r in sorted(records.items())]


def by_position(records: Iterable[Rec]) -> dict[Position, list[Rec]]:
    out: dict[Position, list[Rec]] = {}
    for r in records:
        out.setdefault((r.value["input"]["partition"], r.value["input"]["offset"]), []).append(r)
    return out


async def _admin(bootstrap: str):
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(None, "test", "admin", bootstrap_servers=bootstrap, request_timeout_ms=10000))
    await admin.start()
    return admin


async def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group, e.g. ("Stable", 1); ("Unknown", 0)
    while the broker has no coordinator for it yet (a fresh broker)."""
    from aiokafka.errors import CoordinatorNotAvailableError

    admin = await _admin(bootstrap)
    try:
        try:
            resp = (await admin.describe_consumer_groups([group]))[0].to_object()
        except CoordinatorNotAvailableError:
            return "Unknown", 0
        g = resp["groups"][0]
        return g.get("state", g.get("group_state", "?")), len(g["members"])
    finally:
        await admin.close()


async def group_caught_up(bootstrap: str, group: str, topics: list[str]) -> bool:
    """True when ``group`` has committed, on every partition of ``topics``, the end offset."""
    from chaos.replay import end_offsets

    admin = await _admin(bootstrap)
    try:
        committed = {(tp.topic, tp.partition): om.offset
                     for tp, om in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()
    for topic in topics:
        for partition, end in (await end_offsets(bootstrap, topic)).items():
            if end > 0 and committed.get((topic, partition), -1) < end:
                return False
    return True


# --------------------------------------------------------------------------- metrics


def clerk_metrics(port: int) -> dict[str, Any]:
    """The Clerk's /metrics page, as {sample name + sorted labels: value}; {} if it does
    not answer (yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def histogram_buckets(metrics: dict[str, Any], name: str) -> list[tuple[float, float]]:
    """[(upper bound, cumulative count)] of histogram ``name``, ascending."""
    pat = re.compile(rf"^{re.escape(name)}_bucket\{{le=([^}}]+)\}}$")
    rows = [(float(m[1]), v) for k, v in metrics.items() if (m := pat.match(k))]
    return sorted(rows)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower  # beyond the largest finite bucket: its bound is all we know
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]


# --------------------------------------------------------------------------- logs, inputs


_FAULT = re.compile(r"FAULT INJECTED kind=(\w+) instance=(\S+) partition=(\d+) offset=(\d+)")


def fault_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "FAULT INJECTED" in line]


def fault_positions(text: str) -> list[Position]:
    """The positions of every ``FAULT INJECTED`` line, in log order (repeats kept)."""
    out = []
    for line in fault_lines(text):
        m = _FAULT.search(line)
        assert m, f"unparseable fault line: {line!r}"
        out.append((int(m[3]), int(m[4])))
    return out


_LOG_TIME = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")


def log_line_time_ms(text: str, needle: str | None) -> int | None:
    """Wall-clock time (ms since the epoch, local time zone) of the first log line
    containing ``needle`` (``None``: the first timestamped line), from Faust's
    ``[YYYY-mm-dd HH:MM:SS,mmm]`` prefix."""
    for line in text.splitlines():
        if needle is None or needle in line:
            m = _LOG_TIME.search(line)
            if m is None:
                if needle is None:
                    continue
                return None
            return int(time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S"))) * 1000 + int(m[2])
    return None


@dataclass
class Paced:
    """Wraps records for ``workload.produce(..., rate=rate)``: record i is scheduled at
    t0 + i / rate, where t0 is the wall clock when the producer asks for the first
    record (just after it starts its schedule), and ``stamped`` keeps each record with
    that time as its timestamp. The broker replaces the timestamp (LogAppendTime), so a
    test keeps the schedule by position: "scheduled send -> result published" is the
    latency a client submitting at that rate would see (no coordinated omission)."""

    records: list[Record]
    rate: float
    t0_ms: int | None = None
    stamped: list[Record] = field(default_factory=list)

    def __iter__(self) -> Iterator[Record]:
        self.t0_ms = int(time.time() * 1000)
        for i, rec in enumerate(self.records):
            stamped = rec._replace(timestamp=self.t0_ms + round(i * 1000 / self.rate))
            self.stamped.append(stamped)
            yield stamped
