"""The moving parts of `docket chaos` (chaos/cli.py): the stack's OS processes, the
broker on a thread of its own, and a read_committed watch of the results.

- :class:`Proc`: one ``docket instance`` / ``docket clerk`` subprocess: start, SIGKILL,
  SIGTERM, one log file per start, and the recovery phase its log shows.
- :class:`BrokerKeeper`: starts and stops the scenario broker (launcher.broker) on one
  dedicated thread, so the event loop keeps running while the JVM boots and the
  broker still dies with this process (PR_SET_PDEATHSIG follows the starting thread).
- :class:`Watch`: consumes ``<prefix>.results`` (read_committed) and
  ``<prefix>.divergences`` from the beginning, counting results per input position, so
  the harness can wait until every input position is answered and notice a duplicate
  the moment it is published.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_admin import quiet
from app.kafka_config import client_kwargs
from app.settings import Settings
from launcher.broker import set_parent_death_signal, start_broker, stop_broker

ROOT = Path(__file__).resolve().parent.parent
READY_INSTANCE = "ready: recovery complete"  # agents/instance.py, the instanceReady gate
# Faust's own line (info level), the Clerk's ready line: "[^<worker class>]: Ready", and
# the worker class is agents/worker.py DocketWorker ("[^DocketWorker]: Ready")
READY_FAUST = "Worker]: Ready"

# Faust's info lines, in the order a (re)starting worker logs them.
PHASES = (
    ("assigned", "Setting newly assigned partitions"),
    ("restoring", "[^---Recovery]: Highwater for active changelog partitions"),
    ("restored", "[^---Recovery]: Recovery complete"),
)

log = logging.getLogger("docket.chaos")


def component_env(settings: Settings, log_level: str = "info") -> dict[str, str]:
    """Environment of a docket subprocess: the scenario's settings as DOCKET_* variables.
    Info level, so the harness can see which recovery phase a worker is in. The loop
    counter's DOCKET_LOOPCOUNT_* (bench/loopcount, a diagnostic) and DOCKET_EVENT_LOOP
    (which loop the workers run on, app/event_loop.py) pass through."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DOCKET_") or k.startswith("DOCKET_LOOPCOUNT_") or k == "DOCKET_EVENT_LOOP"}
    env.update({
        "DOCKET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "DOCKET_TOPIC_PREFIX": settings.topic_prefix,
        "DOCKET_PARTITIONS": str(settings.partitions),
        "DOCKET_DOMAIN": settings.domain,
        "DOCKET_INSTANCES": ",".join(settings.instances),
        "DOCKET_REQUIRED_COPIES": str(settings.required_copies),
        "DOCKET_IDEMPOTENCY_TTL_MS": str(settings.idempotency_ttl_ms),
        "DOCKET_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "DOCKET_FETCH_MAX_WAIT_MS": str(settings.fetch_max_wait_ms),
        "DOCKET_FETCH_MIN_BYTES": str(settings.fetch_min_bytes),
        "DOCKET_FETCH_IDLE_WAIT_MS": str(settings.fetch_idle_wait_ms),
        "DOCKET_COMMIT_CHECK_INTERVAL_MS": str(settings.commit_check_interval_ms),
        "DOCKET_MAX_LAG": str(settings.max_lag),
        "DOCKET_BATCH_SIZE": str(settings.batch_size),
        "DOCKET_CACHE_CAPACITY": str(settings.cache_capacity),
        "DOCKET_DATA_ROOT": str(settings.data_root),
        "DOCKET_BROKER_CACHE": str(settings.broker_cache),
        "DOCKET_LOG_LEVEL": log_level,
        "DOCKET_FAUST_METRICS": "on" if settings.faust_metrics else "off",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass
class Proc:
    """``docket instance --id <role>`` or (role ``clerk``) ``docket clerk``."""

    role: str
    env: dict[str, str]
    data_dir: Path
    log_dir: Path
    args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    starts: int = 0
    started_at: float = 0.0  # monotonic
    down_on_purpose: bool = False  # killed by the harness, restart pending
    logs: list[Path] = field(default_factory=list)
    _seen: dict[str, float] = field(default_factory=dict)  # marker -> monotonic time first seen, this run
    _read: int = 0
    _tail: bytes = b""

    @property
    def is_clerk(self) -> bool:
        return self.role == "clerk"

    @property
    def ready_marker(self) -> str:
        return READY_FAUST if self.is_clerk else READY_INSTANCE

    def command(self) -> list[str]:
        cmd = [sys.executable, "-c", "from app.cli import main; main()"]
        cmd += ["clerk"] if self.is_clerk else ["instance", "--id", self.role]
        return cmd + ["--data-dir", str(self.data_dir), "--wait", "60", *self.args]

    def start(self) -> Proc:
        if self.alive:
            raise RuntimeError(f"{self.role} is already running (pid {self.proc.pid})")
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{self.role}-{self.starts}.log"
        self.logs.append(path)
        self._seen, self._read, self._tail = {}, 0, b""
        with open(path, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(), env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
                # Ctrl-C in the harness's terminal must not reach it: the harness stops it
                # (one SIGTERM, a graceful stop); a second signal cuts a stop short (exit 75)
                start_new_session=True,
                # dies with the harness, even if the harness is SIGKILLed
                preexec_fn=set_parent_death_signal if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        self.started_at = time.monotonic()
        self.down_on_purpose = False
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL and reap. The harness restarts it; until then it is down on purpose."""
        self.down_on_purpose = True
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    async def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (Faust shuts down gracefully), then SIGKILL after ``timeout_s``.
        Returns the exit status (None if it had to be SIGKILLed)."""
        if self.proc is None:
            return None
        self.down_on_purpose = True
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                self.kill()
                return None
            await asyncio.sleep(0.1)  # poll interval of the exit condition
        return self.proc.returncode

    # -- the log of the current run

    def scan(self) -> None:
        """Read what the current run logged since the last scan; note the first time
        each phase marker and the ready line appear."""
        if not self.logs:
            return
        try:
            with open(self.logs[-1], "rb") as f:
                f.seek(self._read)
                chunk = f.read()
        except OSError:
            return
        if not chunk:
            return
        self._read += len(chunk)
        text = (self._tail + chunk).decode("utf-8", errors="replace")
        self._tail = chunk[-300:]  # a marker split across two reads is still found
        now = time.monotonic()
        for name, marker in (*PHASES, ("ready", self.ready_marker)):
            if name not in self._seen and marker in text:
                self._seen[name] = now

    def seen(self, name: str) -> float | None:
        """Monotonic time the current run first logged phase ``name`` (or ``ready``)."""
        self.scan()
        return self._seen.get(name)

    @property
    def ready(self) -> bool:
        return self.alive and self.seen("ready") is not None

    def phase(self) -> str:
        """Where the current run is: down, starting (before its partitions are
        assigned), assigned, restoring (reading changelogs), restored, ready."""
        if not self.alive:
            return "down"
        self.scan()
        if "ready" in self._seen:
            return "ready"
        for name, _ in reversed(PHASES):
            if name in self._seen:
                return name
        return "starting"

    def log_tail(self, lines: int = 30) -> str:
        if not self.logs or not self.logs[-1].exists():
            return f"({self.role} has no log)"
        text = self.logs[-1].read_text(errors="replace").rstrip().splitlines()
        return f"--- tail of {self.logs[-1]} ---\n" + "\n".join(text[-lines:])


class BrokerKeeper:
    """The scenario broker, started and stopped on one thread that lives as long as
    the keeper (start_broker's die_with_parent ties the JVM to its starting thread)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chaos-broker")
        self.bootstrap: str | None = None
        self.up = False

    async def start(self, timeout_s: float = 180.0) -> float:
        """Start (or restart on the same directory and port); returns seconds taken."""
        began = time.monotonic()
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(
            self._pool, lambda: start_broker(self.settings, timeout=timeout_s, die_with_parent=True))
        self.bootstrap = handle.bootstrap
        self.up = True
        return time.monotonic() - began

    async def stop(self, timeout_s: float = 30.0) -> None:
        """launcher.broker.stop_broker: SIGTERM (controlled shutdown), SIGKILL after timeout_s."""
        self.up = False
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, lambda: stop_broker(self.settings.broker_dir, timeout=timeout_s))

    def close(self) -> None:
        """Stop the broker (if it runs) and the thread. Safe to call twice."""
        self.up = False
        with contextlib.suppress(Exception):
            self._pool.submit(stop_broker, self.settings.broker_dir, 20).result(timeout=60)
        self._pool.shutdown(wait=True)


Position = tuple[int, int]


class Watch:
    """Follows the results (read_committed) and divergences topics from the beginning.
    ``answered`` counts distinct input positions with a result; ``duplicates`` lists
    positions that got a second one. Survives a broker restart (errors are counted and
    the consumer retries)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts: dict[Position, int] = {}
        self.duplicates: list[Position] = []
        self.divergences = 0
        self.errors = 0
        self.unreadable = 0
        self.last_result_at: float | None = None
        self._low: dict[int, int] = {}  # partition -> every offset below has a result
        self._above: dict[int, set[int]] = {}
        self._next: dict = {}  # TopicPartition -> next record offset to take
        self._consumer = None
        self._task: asyncio.Task | None = None

    @property
    def answered(self) -> int:
        return len(self.counts)

    def covers(self, ends: dict[int, int]) -> bool:
        """Every input offset below ``ends[p]`` has a result, on every partition."""
        return all(self._low.get(p, 0) >= end for p, end in ends.items())

    def missing(self, ends: dict[int, int], limit: int = 5) -> list[Position]:
        out = []
        for p, end in sorted(ends.items()):
            o = self._low.get(p, 0)
            while o < end and len(out) < limit:
                if o not in self._above.get(p, ()):
                    out.append((p, o))
                o += 1
        return out

    async def start(self) -> Watch:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self.settings
        consumer = AIOKafkaConsumer(**client_kwargs(s, "chaos", "consumer", bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", isolation_level=ISOLATION_LEVEL,
                                    max_partition_fetch_bytes=4 * 1024 * 1024))
        await consumer.start()
        tps = [TopicPartition(t, p) for t in (s.results_topic, s.divergences_topic) for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="chaos watch")
        return self

    async def _run(self) -> None:
        results = self.settings.results_topic
        while True:
            try:
                with quiet("aiokafka"):
                    batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001  the broker is restarting: the consumer reconnects
                self.errors += 1
                await asyncio.sleep(0.5)  # back-off before the next fetch
                continue
            for tp, msgs in batches.items():
                # a record the consumer delivers again (after a reconnect) is the same record
                msgs = [m for m in msgs if m.offset >= self._next.get(tp, 0)]
                if not msgs:
                    continue
                self._next[tp] = msgs[-1].offset + 1
                if tp.topic != results:
                    self.divergences += len(msgs)
                    continue
                for m in msgs:
                    try:
                        inp = orjson.loads(m.value)["input"]
                        pos = (inp["partition"], inp["offset"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        self.unreadable += 1  # the verification reads the topic again and says what
                        continue
                    self._record(pos)

    def _record(self, pos: Position) -> None:
        n = self.counts.get(pos, 0) + 1
        self.counts[pos] = n
        self.last_result_at = time.monotonic()
        if n > 1:
            self.duplicates.append(pos)
            return
        p, o = pos
        low = self._low.get(p, 0)
        if o < low:
            return
        above = self._above.setdefault(p, set())
        above.add(o)
        while low in above:
            above.discard(low)
            low += 1
        self._low[p] = low

    async def input_ends(self) -> dict[int, int] | None:
        """partition -> end offset of the input topic now; None if the broker does not answer."""
        from aiokafka import TopicPartition

        tps = [TopicPartition(self.settings.input_topic, p) for p in range(self.settings.partitions)]
        try:
            with quiet("aiokafka"):
                ends = await asyncio.wait_for(self._consumer.end_offsets(tps), 5)
        except Exception:  # noqa: BLE001  broker down or restarting
            return None
        return {tp.partition: off for tp, off in ends.items()}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()


async def group_committed_all(settings: Settings, group: str, topics: list[str]) -> bool:
    """``group`` has committed the end offset of every non-empty partition of ``topics``."""
    from app.kafka_admin import connect_admin
    from chaos.replay import end_offsets

    admin = await connect_admin(settings.kafka_bootstrap, 10, settings)
    try:
        committed = {(tp.topic, tp.partition): om.offset
                     for tp, om in (await admin.list_consumer_group_offsets(group)).items()}
    finally:
        await admin.close()
    for topic in topics:
        for partition, end in (await end_offsets(settings.kafka_bootstrap, topic)).items():
            if end > 0 and committed.get((topic, partition), -1) < end:
                return False
    return True


async def clerk_instance_lag(port: int) -> float | None:
    """The Clerk's own ``docket_clerk_instance_lag`` (max over instances), from its
    /metrics page; None if it does not answer."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                    session.get(f"http://127.0.0.1:{port}/metrics") as resp):
            text = await resp.text()
    except Exception:  # noqa: BLE001  down or restarting
        return None
    values = [s.value for fam in text_string_to_metric_families(text) for s in fam.samples
              if s.name == "docket_clerk_instance_lag"]
    return max(values) if values else None
