"""Helpers for integration tests that run real docket processes against a real broker.

- :class:`Worker`: one ``docket instance --id X`` subprocess (start, SIGKILL,
  graceful stop), its output in a log file per start. The ``workers`` fixture
  (tests/integration/conftest.py) hands them out and kills whatever is left.
- :func:`wait_for`: poll a condition until a deadline, then fail saying what was
  awaited (and what was seen). Tests synchronise only through it, never by sleeping.
- :func:`thread_stacks`: every thread's stack of a live Python process (py-spy dump),
  for a failure message when a process is stuck.
- :class:`OutputCollector`: consumes ``<prefix>.output.<id>`` in the background and
  groups the copies per input position, so a test can wait until every input
  position has an output and then inspect every copy (re-emissions included).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.kafka_config import client_kwargs
from app.settings import Settings
from launcher.broker import set_parent_death_signal

Position = tuple[int, int]

# After a SIGKILL the group coordinator keeps the dead member until its session times
# out, and a restarted worker's rebalance waits for that: DOCKET_SESSION_TIMEOUT_MS, 10 s
# by default, 6 s here (the broker's minimum; heartbeats every 1.2 s). Faust's own
# variables (BROKER_SESSION_TIMEOUT, ...) would be ignored: docket's apps read only
# DOCKET_* settings (agents/worker.py new_app).
WORKER_TEST_ENV = {
    "DOCKET_SESSION_TIMEOUT_MS": "6000",
}


def thread_stacks(pid: int) -> str:
    """The Python stack of every thread of process ``pid`` (``py-spy dump``, at most 30 s),
    or why it could not be read; for the failure message of a test whose process does
    not react, so that where its threads are is known without a rerun."""
    from bench.profile import py_spy

    try:
        done = subprocess.run([py_spy(), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"\n(no stacks of pid {pid}: {exc})"
    return f"\nthreads of pid {pid} (py-spy dump, exit {done.returncode}):\n{done.stdout}{done.stderr}"


async def wait_for(
    condition: Callable[[], Any | Awaitable[Any]],
    deadline_s: float,
    what: str,
    *,
    interval_s: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` (sync or async) until it returns something truthy and return
    that; after ``deadline_s`` seconds fail with ``what`` and ``detail()`` (e.g. a
    progress count or a log tail)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}{extra}")
        await asyncio.sleep(interval_s)  # poll interval of the condition, not a synchronisation


@contextlib.contextmanager
def killed_at_teardown(made: list):
    """Run the body (a fixture's ``yield``), then SIGKILL every process of ``made`` (Workers,
    appended to as they are made) still running, whatever the test's outcome; fails if one
    survives that."""
    try:
        yield
    finally:
        for proc in made:
            proc.kill()
        leftovers = [proc.pid for proc in made if proc.alive]
        assert not leftovers, f"processes survived teardown: {leftovers}"


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a docket subprocess: the test's settings as DOCKET_* variables."""
    env = dict(os.environ)
    env.update({
        "DOCKET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "DOCKET_TOPIC_PREFIX": settings.topic_prefix,
        "DOCKET_PARTITIONS": str(settings.partitions),
        "DOCKET_DOMAIN": settings.domain,
        "DOCKET_INSTANCES": ",".join(settings.instances),
        "DOCKET_IDEMPOTENCY_TTL_MS": str(settings.idempotency_ttl_ms),
        "DOCKET_BATCH_SIZE": str(settings.batch_size),
        "DOCKET_CACHE_CAPACITY": str(settings.cache_capacity),
        "DOCKET_DATA_ROOT": str(settings.data_root),
        "DOCKET_LOG_LEVEL": settings.log_level,
        "PYTHONUNBUFFERED": "1",
        **WORKER_TEST_ENV,
    })
    env.update(extra)
    return env


@dataclass
class Worker:
    """One ``docket instance`` worker process. ``start`` may be called again after
    ``kill`` or ``stop`` (same data dir unless changed); each start logs to its own
    file, ``<log_dir>/<instance>-<n>.log``."""

    instance: str
    env: dict[str, str]
    data_dir: Path
    log_dir: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> Worker:
        return self._launch([sys.executable, "-c", "from app.cli import main; main()",
                             "instance", "--id", self.instance, "--data-dir", str(self.data_dir)])

    def _launch(self, cmd: list[str], log_name: str | None = None, cwd: Path | None = None) -> Worker:
        """Start ``cmd`` (in the checkout, or ``cwd``) with its output in a new log file,
        ``<log_dir>/<log_name or instance>-<n>.log``."""
        if self.alive:
            raise RuntimeError(f"worker {self.instance} is already running (pid {self.proc.pid})")
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{log_name or self.instance}-{self.starts}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=cwd or Path(__file__).resolve().parents[2],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # the worker dies with the test process, even if that is SIGKILLed
                preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        return self

    def log_text(self, run: int | None = None) -> str:
        """The log of start number ``run`` (1-based; default the latest)."""
        path = self.logs[-1 if run is None else run - 1]
        return path.read_text(errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    async def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (Faust shuts down gracefully) and wait for the exit status. Fails
        if the worker does not exit within ``timeout_s`` (then it is SIGKILLed)."""
        if self.proc is None:
            raise RuntimeError(f"worker {self.instance} was never started")
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await wait_for(lambda: self.proc.poll() is not None, timeout_s,
                           f"worker {self.instance} (pid {self.proc.pid}) to exit after SIGTERM",
                           detail=self.log_tail)
        except AssertionError:
            self.kill()
            raise
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        if not self.logs:
            return f"(worker {self.instance} has no log)"
        text = self.logs[-1].read_text(errors="replace") if self.logs[-1].exists() else ""
        tail = "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"
        return f"--- tail of {self.logs[-1]} ---\n{tail}"

    def notable_lines(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the latest log that a reader of a failure wants
        among INFO noise: docket's own loggers, warnings and errors, and the
        assignments (cut to 240 characters)."""
        if not self.logs or not self.logs[-1].exists():
            return f"(worker {self.instance} has no log)"
        kept = [line[:240] for line in self.logs[-1].read_text(errors="replace").splitlines()
                if "] docket." in line or "[WARNING]" in line or "[ERROR]" in line
                or "newly assigned partitions" in line]
        return f"--- docket's lines of {self.logs[-1]} ---\n" + ("\n".join(kept[-lines:]) or "(none)")

    def assert_alive(self) -> None:
        assert self.alive, f"worker {self.instance} exited with {self.proc.returncode}\n{self.log_tail()}"


@dataclass(frozen=True)
class Copy:
    """One output record as read from an output topic."""

    partition: int  # partition of the output topic it was read from
    offset: int
    value: bytes
    instance: str
    digest: str
    body: dict


class BackgroundReader:
    """Reads ``topic`` from the beginning in a background task and hands each record to
    :meth:`on_record` once: a record the consumer delivers again (after an offset reset)
    is the same record, counted in ``reread``, not handled twice. A failure of the task
    is kept and raised by :meth:`check`."""

    isolation_level = "read_uncommitted"
    what = "reader"

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.reread = 0
        self.error: BaseException | None = None
        self._seen: set[tuple[int, int]] = set()
        self._next: dict[int, int] = {}  # partition -> next offset to read
        self._task: asyncio.Task | None = None
        self._consumer = None

    def on_record(self, m: Any) -> None:
        raise NotImplementedError

    async def start(self):
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from chaos.replay import _partitions

        consumer = AIOKafkaConsumer(**client_kwargs(None, "test", "consumer", bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", isolation_level=self.isolation_level))
        await consumer.start()
        tps = [TopicPartition(self.topic, p) for p in sorted(await _partitions(consumer, self.topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"{self.what} {self.topic}")
        return self

    async def _run(self) -> None:
        try:
            while True:
                for msgs in (await self._consumer.getmany(timeout_ms=200, max_records=5000)).values():
                    for m in msgs:
                        if (m.partition, m.offset) in self._seen:
                            self.reread += 1
                            continue
                        self._seen.add((m.partition, m.offset))
                        self._next[m.partition] = max(self._next.get(m.partition, 0), m.offset + 1)
                        self.on_record(m)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by check()
            self.error = exc
            raise

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"{self.what} of {self.topic} failed: {self.error!r}") from self.error

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # a failure of the task is kept in self.error and raised by check() below
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        self.check()


class OutputCollector(BackgroundReader):
    """Groups the copies in the copy-batch records of ``topic`` by the input position
    they answer (``body["input"]``), each in its single-record form; every record's
    watermark (the next input offset it covers) is kept apart, in ``watermarks``."""

    what = "collector"

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.copies: dict[Position, list[Copy]] = {}
        self.records = 0  # copies read (re-emissions included)
        self.watermarks: list[tuple[int, int, dict]] = []  # (partition, offset, record)
        self.timestamps: dict[tuple[int, int], int] = {}  # (partition, offset) -> record timestamp, ms

    def on_record(self, m: Any) -> None:
        from app.records import seal_digested, unseal_batch

        instance, watermark, copies = unseal_batch(m.value)
        self.timestamps[(m.partition, m.offset)] = m.timestamp
        for dig, body in copies:
            out = orjson.loads(body)
            pos = (out["input"]["partition"], out["input"]["offset"])
            # each copy in its single-record form, so copies compare byte for byte
            self.copies.setdefault(pos, []).append(
                Copy(m.partition, m.offset, seal_digested(body, dig, instance), instance, dig, out))
            self.records += 1
        if watermark is not None:  # the record's promise: every input below has its copy
            self.watermarks.append((m.partition, m.offset, {"watermark": watermark, "instance": instance,
                                                            "partition": m.partition}))

    @property
    def positions(self) -> int:
        return len(self.copies)

    def covers(self, positions: Iterable[Position]) -> bool:
        self.check()
        return all(p in self.copies for p in positions)

    async def wait_complete(self, positions: set[Position], deadline_s: float,
                            detail: Callable[[], str] | None = None) -> None:
        """Wait until every input position in ``positions`` has at least one output."""
        def progress() -> str:
            missing = [p for p in positions if p not in self.copies]
            text = (f"{self.topic}: {len(positions) - len(missing)} of {len(positions)} positions "
                    f"answered ({self.records} records); first missing: {sorted(missing)[:5]}")
            return text + ("\n" + detail() if detail else "")

        await wait_for(lambda: self.covers(positions), deadline_s,
                       f"an output for every input position on {self.topic}", detail=progress)

    async def wait_caught_up(self, deadline_s: float = 30.0) -> None:
        """Wait until everything the topic holds now has been read (e.g. after the only
        writer was killed, so that later counts belong to its successor)."""
        from chaos.replay import end_offsets

        ends = await end_offsets(self.bootstrap, self.topic)

        def behind() -> dict[int, int]:
            return {p: e - self._next.get(p, 0) for p, e in ends.items() if self._next.get(p, 0) < e}

        await wait_for(lambda: self.check() or not behind(), deadline_s,
                       f"the collector of {self.topic} to read up to {ends}",
                       detail=lambda: f"records behind per partition: {behind()}")

# --------------------------------------------------------------------------- comparisons


def assert_copies_match_oracle(collector: OutputCollector, instance: str, oracle, expected: set[Position]) -> int:
    """Every input position has at least one output on ``collector``'s topic, no output
    answers a position that does not exist, and every copy (re-emissions included) is
    byte for byte the oracle's body sealed for ``instance``, on the input's partition.
    Returns the number of re-emitted copies."""
    from app.records import seal

    collector.check()
    unknown = sorted(set(collector.copies) - expected)
    assert not unknown, f"{collector.topic}: outputs for positions that are not inputs: {unknown[:5]}"
    missing = sorted(expected - set(collector.copies))
    assert not missing, f"{collector.topic}: no output for {len(missing)} positions, first {missing[:5]}"
    extra = 0
    for pos in sorted(expected):
        want = seal(oracle.bodies[pos], instance)
        copies = collector.copies[pos]
        extra += len(copies) - 1
        for c in copies:
            assert c.partition == pos[0], f"output for {pos} was written to partition {c.partition}"
            assert c.instance == instance, f"output for {pos} names instance {c.instance!r}"
            assert c.digest == oracle.digests[pos], (
                f"{collector.topic} {pos}: digest {c.digest} != oracle {oracle.digests[pos]}\n"
                f"  got    {c.value[:400]!r}\n  oracle {want[:400]!r}")
            assert c.value == want, f"{collector.topic} {pos}: same digest, different bytes: {c.value!r} != {want!r}"
    return extra


def oracle_entities(oracle) -> dict[str, dict]:
    """The oracle's final states in :func:`tables.dump.dump_entities`'s shape."""
    return {key: {"state": state, "version": version} for key, (state, version) in oracle.states.items()}


def assert_inventory_invariants(inputs, oracle, entities: dict[str, dict]) -> dict[str, int]:
    """NonNegativeStock (in every applied output and the final states) and
    StockConservedPerSku (per sku, the final total equals the sum of the deltas of the
    adjustments that were applied, duplicates not counted again). Returns outcome
    counts for the caller's sanity checks."""
    from collections import Counter

    counts: Counter = Counter()
    applied_delta: Counter = Counter()
    by_pos = {(r.partition, r.offset): r for r in inputs}
    for pos, raw in oracle.bodies.items():
        body = orjson.loads(raw)
        out = body["outcome"]
        dup = body["duplicate_of"] is not None
        counts[f"{out['status']}:{out['reason'] or '-'}{':duplicate' if dup else ''}"] += 1
        for ent in out["entities"]:
            assert ent["state"]["quantity"] >= 0, f"{pos} drove {ent['key']} negative: {ent}"
        if out["status"] == "applied" and not dup:
            payload = orjson.loads(by_pos[pos].value)["payload"]
            if body["event_name"] == "stock.adjust":
                applied_delta[payload["sku"]] += payload["delta"]
            else:
                src = f"stock:{payload['from_warehouse']}:{payload['sku']}"
                after = {e["key"]: e["state"]["quantity"] for e in out["entities"]}
                if after[src] == 0:
                    counts["transfer_drained_to_zero"] += 1
    totals: Counter = Counter()
    for key, ent in entities.items():
        assert ent["state"]["quantity"] >= 0, f"final state of {key} is negative: {ent}"
        _, _warehouse, sku = key.split(":")
        totals[sku] += ent["state"]["quantity"]
    wrong = {s: (totals[s], applied_delta[s]) for s in sorted(set(totals) | set(applied_delta))
             if totals[s] != applied_delta[s]}
    assert not wrong, f"per-sku totals differ from the sum of applied adjustments (total, sum): {wrong}"
    assert applied_delta, "no adjustment was applied: the conservation check proves nothing"
    return dict(counts)


def assert_watermarks_follow_outputs(collector: OutputCollector, instance: str) -> int:
    """A watermark ``w`` on partition p promises outputs for every input offset below
    ``w``: each must have a copy in the same record or earlier on the same output
    partition (a recovering instance must not advertise progress it has not
    re-emitted). Returns the number of watermarks checked."""
    first_copy: dict[Position, int] = {pos: min(c.offset for c in copies) for pos, copies in collector.copies.items()}
    # per partition: latest[o] = the output offset by which inputs 0..o all have a copy
    latest: dict[int, list[int]] = {}
    for partition in {p for p, _ in first_copy}:
        running, row, o = -1, [], 0
        while (partition, o) in first_copy:
            running = max(running, first_copy[(partition, o)])
            row.append(running)
            o += 1
        latest[partition] = row
    for partition, out_offset, mark in collector.watermarks:
        assert mark["instance"] == instance and mark["partition"] == partition, mark
        w = mark["watermark"]
        if w == 0:
            continue
        row = latest.get(partition, [])
        assert len(row) >= w and row[w - 1] <= out_offset, (
            f"{collector.topic}: watermark {w} at partition {partition} offset {out_offset} precedes "
            f"an output of an input offset below {w}")
    return len(collector.watermarks)


async def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the consumer group's committed offset, as the broker has it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(None, "test", "admin", bootstrap_servers=bootstrap, request_timeout_ms=10000))
    await admin.start()
    try:
        return {(tp.topic, tp.partition): om.offset
                for tp, om in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()


async def wait_committed_to_end(bootstrap: str, group: str, topic: str, deadline_s: float,
                                detail: Callable[[], str] | None = None) -> None:
    """Wait until ``group`` has committed every partition of ``topic`` up to its end
    offset: the worker has processed everything, and a stop now leaves nothing to
    replay. (Outputs alone do not say so: a restarted worker replays from its committed
    offsets, re-emitting outputs that are already there.)"""
    from chaos.replay import end_offsets

    ends = {(topic, p): off for p, off in (await end_offsets(bootstrap, topic)).items()}

    async def caught_up() -> bool:
        committed = await committed_offsets(bootstrap, group)
        return all(committed.get(tp, -1) >= end for tp, end in ends.items())

    await wait_for(caught_up, deadline_s, f"{group} to commit {topic} up to {ends}", interval_s=0.2, detail=detail)


async def changelog_fold(bootstrap: str, topic: str) -> dict[int, dict[bytes, bytes]]:
    """What restoring from the changelog ``topic`` alone yields: partition -> {key: value},
    the last record per key, tombstones removing it, except that an entity record is
    not put over one with a higher stamp (tables/faust_store.py LedgerRocksStore,
    RestoreKeepsNewestEntityRecord)."""
    from chaos.replay import read_topic
    from tables.ledger import ENTITY_PREFIX, keeps_stored_entity

    state: dict[int, dict[bytes, bytes]] = {}
    for rec in await read_topic(bootstrap, topic):
        part = state.setdefault(rec.partition, {})
        if rec.value is None:
            part.pop(rec.key, None)
        elif not (rec.key[:2] == ENTITY_PREFIX and keeps_stored_entity(part.get(rec.key), rec.value)):
            part[rec.key] = rec.value
    return state


def assert_changelog_holds_ledger(local: dict[int, dict[bytes, bytes]],
                                  changelog: dict[int, dict[bytes, bytes]]) -> None:
    """The Ledger's durability is its changelog: every key a stopped worker's RocksDB
    holds must be in the changelog with the same value, or a restore (new data dir,
    another worker) would lose it. Entities must match exactly both ways. The changelog
    may keep Warden versions the local table no longer has: a collection's tombstone
    lost in a crash leaves an expired version that a restore brings back and the next
    collection deletes again; it cannot change any verdict."""
    from tables.ledger import ENTITY_PREFIX

    problems = []
    for partition in sorted(set(local) | set(changelog)):
        mine, logged = local.get(partition, {}), changelog.get(partition, {})
        for key, value in mine.items():
            if logged.get(key) != value:
                problems.append(f"p{partition} {key!r}: local {value[:80]!r}, changelog {logged.get(key, b'(absent)')[:80]!r}")
        for key in logged.keys() - mine.keys():
            if key.startswith(ENTITY_PREFIX):
                problems.append(f"p{partition} {key!r}: only in the changelog")
    assert not problems, (f"{len(problems)} Ledger keys the changelog would not restore as the worker "
                          f"holds them:\n  " + "\n  ".join(problems[:10]))
