"""One scenario of `docket chaos` (chaos/cli.py): start the stack on fresh topics, feed
the workload at a steady rate, run the scenario's kill plan while it flows, wait until
everything has drained, stop the workers and check the invariants (chaos/verify.py).

Scenarios (each a kill plan; every random choice is drawn up front from
``random.Random("<seed>:<scenario>")``, so a seed names the same plan every time):

- ``kill-a`` / ``kill-b``: SIGKILL the instance at random points of the stream (after
  its previous restart is ready), restart it;
- ``kill-both``: SIGKILL a and b at the same moment, restart both;
- ``kill-during-recovery``: SIGKILL an instance mid-stream, restart it, then SIGKILL
  the restarted worker before it is ready, several times: in even rounds its RocksDB
  is deleted first, so the restart restores every changelog and the kills land in the
  middle of the table restore; in odd rounds the kills land during start-up and the
  group join;
- ``kill-clerk``: SIGKILL the Clerk repeatedly, restart it;
- ``broker-restart``: stop the broker (launcher.broker.stop_broker: controlled shutdown) and
  start it again on the same directory and port, while everything runs.

A worker that exits without being killed is restarted at once and reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.markup import escape

from app.settings import Settings
from chaos import workload
from chaos.stack import (
    BrokerKeeper,
    Proc,
    Watch,
    clerk_instance_lag,
    component_env,
    group_committed_all,
)
from chaos.verify import Check, invariants, verify
from launcher.broker import free_port

SCENARIOS = ("kill-a", "kill-b", "kill-both", "kill-during-recovery", "kill-clerk", "broker-restart")
START_DEADLINE_S = 180  # Faust start-up, the first rebalance, a busy 2-core machine
RESTART_DEADLINE_S = 180  # plus the dead member's session timeout and the restore


class ChaosTimeout(Exception):
    """A condition the harness waited for did not come true in time."""


@dataclass(frozen=True)
class Options:
    events: int
    seed: int
    rate: float  # input events per second
    kills: int  # kill rounds per scenario (broker-restart: broker_restarts)
    recovery_kills: int  # kill-during-recovery: kills before ready per round
    broker_restarts: int
    partitions: int
    ttl_ms: int
    session_timeout_ms: int
    drain_timeout_s: float
    domain: str = "inventory"  # a registered domain with a kit (DOCKET_DOMAIN's values)
    # a version of the domain to activate live once half the events are acknowledged
    # (`docket domain activate`, specs/versioning.allium); None: no activation
    activate: str | None = None


@dataclass
class Events:
    """What the harness tells the user while a scenario runs (chaos/cli.py renders it)."""

    say: Callable[[str], None] = print
    status: dict = field(default_factory=dict)


async def wait_until(cond: Callable[[], object | Awaitable[object]], deadline_s: float, what: str,
                     interval_s: float = 0.05, detail: Callable[[], str] | None = None) -> object:
    """Poll ``cond`` until truthy; ChaosTimeout(what) after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise ChaosTimeout(f"timed out after {deadline_s:.0f} s waiting for {what}{extra}")
        await asyncio.sleep(interval_s)  # poll interval of the condition, not a synchronisation


class Scenario:
    def __init__(self, name: str, opts: Options, base: Settings, keeper: BrokerKeeper, workdir: Path,
                 ui: Events) -> None:
        self.name = name
        self.opts = opts
        self.keeper = keeper
        self.ui = ui
        self.dir = workdir / name
        self.rng = random.Random(f"{opts.seed}:{name}")
        self.settings = dataclasses.replace(
            base, kafka_bootstrap=keeper.bootstrap, topic_prefix=f"chaos-{name}", partitions=opts.partitions,
            instances=("a", "b"), required_copies=2, idempotency_ttl_ms=opts.ttl_ms, domain=opts.domain,
            session_timeout_ms=opts.session_timeout_ms, data_root=self.dir / "data")
        env = component_env(self.settings)
        logs = self.dir / "logs"
        self.clerk_port = free_port()
        self.procs = {
            "a": Proc("a", env, self.settings.data_root / "docket-a", logs),
            "b": Proc("b", env, self.settings.data_root / "docket-b", logs),
            "clerk": Proc("clerk", env, self.settings.data_root / "docket-clerk", logs,
                          args=("--web-port", str(self.clerk_port))),
        }
        self.watch: Watch | None = None
        self.t0 = time.monotonic()
        self.acked = 0
        self.produced_done = False
        self.kills: list[dict] = []
        self.recoveries: list[dict] = []
        self.unexpected: list[dict] = []
        self.max_clerk_lag = 0
        self.max_instance_lag = 0.0
        self.produce_retries = 0
        self.state = "starting"
        self._trackers: list[asyncio.Task] = []

    # ------------------------------------------------------------------ helpers

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def say(self, text: str) -> None:
        self.ui.say(f"{escape(f'[{self.name} +{self.now():6.1f}s]')} {text}")

    def targets(self, n: int) -> list[int]:
        """n kill points, as counts of acknowledged input events: one at a random point of
        each of n equal slices of 8-80 % of the stream."""
        width = 0.72 / n
        return [int(self.rng.uniform(0.08 + i * width, 0.08 + (i + 1) * width) * self.opts.events) for i in range(n)]

    async def wait_acked(self, target: int) -> None:
        deadline = self.opts.events / self.opts.rate * 3 + 600
        await wait_until(lambda: self.acked >= target or self.produced_done, deadline,
                         f"{target} input events acknowledged", interval_s=0.02)

    async def activate_midway(self, entry: dict) -> None:
        """Once half the events are acknowledged, activate ``opts.activate`` on every
        partition, as `docket domain activate` does (while the scenario's kills go on;
        after a broker restart it tries again until the broker takes it). Records
        entry["activations"]: {partition: offset}."""
        from app.domain_cli import produce_activations

        await self.wait_acked(self.opts.events // 2)
        for attempt in range(60):
            try:
                placed = await asyncio.wait_for(produce_activations(self.settings, self.opts.activate), 30)
                break
            except Exception as exc:  # noqa: BLE001  the broker may be down right now (TimeoutError too)
                self.say(f"activating {self.opts.activate} failed ({exc.__class__.__name__}); trying again")
                await asyncio.sleep(1.0)  # back-off while the broker comes back
        else:
            raise ChaosTimeout(f"could not activate {self.opts.activate} in 60 attempts")
        entry["activations"] = {str(p): o for p, o in placed}  # JSON: keys are text
        self.say(f"activated {self.opts.activate} at {self.acked} events: offsets {dict(placed)}")

    async def wait_ready(self, procs: list[Proc], deadline_s: float = RESTART_DEADLINE_S) -> None:
        for p in procs:
            await wait_until(lambda p=p: p.ready, deadline_s, f"{p.role} to be ready", interval_s=0.05,
                             detail=p.log_tail)

    def _update_status(self) -> None:
        w = self.watch
        self.ui.status.update({
            "scenario": self.name, "elapsed": self.now(), "state": self.state,
            "events": self.opts.events, "acked": self.acked, "answered": w.answered if w else 0,
            "kills": len(self.kills), "duplicates": len(w.duplicates) if w else 0,
            "divergences": w.divergences if w else 0, "max_clerk_lag": self.max_clerk_lag,
            "procs": {r: p.phase() for r, p in self.procs.items()},
            "broker": "up" if self.keeper.up else "down", "unexpected": len(self.unexpected),
        })

    # ------------------------------------------------------------------ background work

    async def feed(self, records: list[workload.Record]) -> None:
        """workload.produce at the steady rate; if the broker goes away and the producer
        gives up, produce the rest again from the last acknowledged chunk (a record of the
        failed chunk may then be on the input twice: a repeat, which the replay judges
        like the instances do)."""
        chunk = max(10, int(self.opts.rate / 10))
        done = 0
        while done < len(records):
            base = done

            def progress(n: int, base: int = base) -> None:
                nonlocal done
                done = base + n
                self.acked = done

            try:
                await workload.produce(self.settings.kafka_bootstrap, self.settings.input_topic, records[done:],
                                       rate=self.opts.rate, chunk=chunk, progress=progress)
                done = len(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.produce_retries += 1
                if self.produce_retries > 50:
                    raise
                self.say(f"producer failed at event {done} ({exc.__class__.__name__}); producing the rest again")
                await asyncio.sleep(1.0)  # back-off while the broker comes back
        self.acked = len(records)
        self.produced_done = True
        self.say(f"all {len(records)} events produced")

    async def monitor(self) -> None:
        """Restarts a worker that exits on its own; samples the lags; feeds the display."""
        last_sample = 0.0
        while True:
            for p in self.procs.values():
                if p.proc is not None and not p.alive and not p.down_on_purpose and len(self.unexpected) < 20:
                    self.unexpected.append({"role": p.role, "t_s": self.now(), "rc": p.returncode,
                                            "log": str(p.logs[-1]), "tail": p.log_tail(12)})
                    self.say(f"[red]{p.role} exited by itself (rc {p.returncode}); restarting it[/red]")
                    p.start()
            if time.monotonic() - last_sample >= 1.0:
                last_sample = time.monotonic()
                ends = await self.watch.input_ends() if self.keeper.up else None
                if ends is not None:
                    self.max_clerk_lag = max(self.max_clerk_lag, sum(ends.values()) - self.watch.answered)
                lag = await clerk_instance_lag(self.clerk_port) if self.procs["clerk"].ready else None
                if lag is not None:
                    self.max_instance_lag = max(self.max_instance_lag, lag)
            self._update_status()
            await asyncio.sleep(0.25)  # supervision and display tick

    def track(self, round_: dict, procs: list[Proc], ends: dict[int, int] | None, began: float) -> None:
        """In the background: seconds from the kill until the victims are ready again
        (back_s) and until every input event produced before the kill has a result
        (recover_s)."""
        async def run() -> None:
            try:
                await self.wait_ready(procs, RESTART_DEADLINE_S * 2)
                round_["back_s"] = round(time.monotonic() - began, 2)
                if ends is not None:
                    await wait_until(lambda: self.watch.covers(ends), self.opts.drain_timeout_s,
                                     "results for every event produced before the kill", interval_s=0.05)
                    round_["recover_s"] = round(time.monotonic() - began, 2)
                    self.say(f"round {round_['round']}: back after {round_['back_s']:.1f} s, every earlier "
                             f"event answered after {round_['recover_s']:.1f} s")
            except ChaosTimeout as exc:
                round_["error"] = str(exc).splitlines()[0]

        self._trackers.append(asyncio.create_task(run()))

    def _kill(self, procs: list[Proc], round_no: int, kind: str) -> None:
        phases = {p.role: p.phase() for p in procs}
        for p in procs:  # back to back: "the same moment"
            p.kill()
        if kind == "mid-stream" and self.produced_done:
            kind = "after the stream"  # the target was reached while a restart was still under way
        self.kills.append({"round": round_no, "t_s": self.now(), "victims": [p.role for p in procs],
                           "kind": kind, "phase": phases, "at_event": self.acked})
        self.say(f"SIGKILL {'+'.join(p.role for p in procs)} ({kind}; phase {', '.join(phases.values())}; "
                 f"{self.acked} events produced)")

    # ------------------------------------------------------------------ kill plans

    async def plan_kill(self, victims: Callable[[int], list[Proc]]) -> None:
        draws = [(t, self.rng.uniform(0, 0.5), self.rng.uniform(0, 1.0)) for t in self.targets(self.opts.kills)]
        for i, (target, jitter, pause) in enumerate(draws):
            procs = victims(i)
            await self.wait_acked(target)
            await self.wait_ready(procs)
            await asyncio.sleep(jitter)  # a random moment, not a clean boundary
            ends = await self.watch.input_ends()
            began = time.monotonic()
            self._kill(procs, i + 1, "mid-stream")
            round_ = {"round": i + 1, "victims": [p.role for p in procs], "kills": 1}
            self.recoveries.append(round_)
            await asyncio.sleep(pause)  # restart delay
            for p in procs:
                p.start()
            self.track(round_, procs, ends, began)

    async def plan_recovery(self) -> None:
        m = self.opts.recovery_kills
        attempts = 2 * m + 1
        a, b = self.procs["a"], self.procs["b"]
        rounds = [(t, self.rng.choice([a, b]), self.rng.uniform(0, 0.5),
                   [self.rng.uniform(0, 1) for _ in range(attempts)]) for t in self.targets(self.opts.kills)]
        for i, (target, victim, jitter, delays) in enumerate(rounds):
            mode = "restore" if i % 2 == 0 else "start-up"
            await self.wait_acked(target)
            await self.wait_ready([victim])
            await asyncio.sleep(jitter)
            ends = await self.watch.input_ends()
            began = time.monotonic()
            self._kill([victim], i + 1, "mid-stream")
            round_ = {"round": i + 1, "victims": [victim.role], "mode": mode, "kills": 1, "before_ready": 0}
            self.recoveries.append(round_)
            wipe = mode == "restore"
            attempt = 0
            while True:
                if wipe:
                    # the restart must restore the whole changelog: a long restore to land in
                    shutil.rmtree(victim.data_dir, ignore_errors=True)
                    self.say(f"deleted {victim.role}'s RocksDB: the restart restores it from the changelog")
                victim.start()
                if round_["before_ready"] >= m or attempt >= attempts:
                    break
                if mode == "restore":
                    await wait_until(lambda v=victim: v.seen("restoring") or v.ready or not v.alive,
                                     RESTART_DEADLINE_S, f"{victim.role} to start restoring", interval_s=0.01,
                                     detail=victim.log_tail)
                    await asyncio.sleep(delays[attempt] * 0.3)  # up to 0.3 s into the restore
                else:
                    await asyncio.sleep(0.5 + delays[attempt] * 3.0)  # 0.5-3.5 s after the start
                attempt += 1
                landed = not victim.ready
                self._kill([victim], i + 1, "before ready" if landed else "after ready (missed)")
                round_["kills"] += 1
                round_["before_ready"] += int(landed)
                wipe = mode == "restore" and not landed  # missed: make the next restore long again
            self.track(round_, [victim], ends, began)

    async def plan_broker(self) -> None:
        draws = [(t, self.rng.uniform(0, 0.5), self.rng.uniform(0.5, 3.0))
                 for t in self.targets(self.opts.broker_restarts)]
        for i, (target, jitter, down_s) in enumerate(draws):
            await self.wait_acked(target)
            await self.wait_ready(list(self.procs.values()))
            await asyncio.sleep(jitter)
            ends = await self.watch.input_ends()
            began = time.monotonic()
            self.say(f"stopping the broker ({self.acked} events produced)")
            await self.keeper.stop()
            stopped = time.monotonic() - began
            self.kills.append({"round": i + 1, "t_s": self.now(), "victims": ["broker"], "kind": "broker stop",
                               "at_event": self.acked, "stop_s": round(stopped, 2)})
            await asyncio.sleep(down_s)  # the broker stays down a while
            boot = await self.keeper.start()
            round_ = {"round": i + 1, "victims": ["broker"], "kills": 1, "down_s": round(time.monotonic() - began, 2),
                      "boot_s": round(boot, 2)}
            self.recoveries.append(round_)
            self.say(f"broker back after {round_['down_s']:.1f} s (stop {stopped:.1f} s, boot {boot:.1f} s)")
            self.track(round_, list(self.procs.values()), ends, began)

    def plan(self) -> Awaitable[None]:
        a, b, clerk = self.procs["a"], self.procs["b"], self.procs["clerk"]
        return {
            "kill-a": lambda: self.plan_kill(lambda i: [a]),
            "kill-b": lambda: self.plan_kill(lambda i: [b]),
            "kill-both": lambda: self.plan_kill(lambda i: [a, b]),
            "kill-during-recovery": self.plan_recovery,
            "kill-clerk": lambda: self.plan_kill(lambda i: [clerk]),
            "broker-restart": self.plan_broker,
        }[self.name]()

    # ------------------------------------------------------------------ the run

    async def run(self) -> dict:
        from app.topics import create_topics

        self.t0 = time.monotonic()
        entry: dict = {"name": self.name, "events": self.opts.events, "rate": self.opts.rate,
                       "prefix": self.settings.topic_prefix}
        monitor = None
        error = None
        try:
            await create_topics(self.settings)
            for p in self.procs.values():
                p.start()
            self.watch = await Watch(self.settings).start()
            monitor = asyncio.create_task(self.monitor())
            await self.wait_ready(list(self.procs.values()), START_DEADLINE_S)
            self.say(f"stack ready in {self.now():.1f} s; producing {self.opts.events} events at "
                     f"{self.opts.rate:.0f}/s")
            self.state = "running"
            # bytes(memoryview(...)): a copy at its size; orjson's output keeps a 4 KiB
            # buffer, 400 MB for 100,000 records held until the last one is produced
            records = [r._replace(value=None if r.value is None else bytes(memoryview(r.value)))
                       for r in workload.records(self.kit(), self.opts.seed, self.opts.events,
                                                 ttl_ms=self.opts.ttl_ms, partitions=self.opts.partitions)]
            started = time.monotonic()
            feeder = asyncio.create_task(self.feed(records))
            activator = asyncio.create_task(self.activate_midway(entry)) if self.opts.activate else None
            plan_deadline = self.opts.events / self.opts.rate * 3 + (self.opts.kills + 1) * 4 * RESTART_DEADLINE_S
            try:
                await asyncio.wait_for(self.plan(), plan_deadline)
                await asyncio.wait_for(asyncio.shield(feeder), self.opts.events / self.opts.rate * 3 + 600)
                if activator is not None:
                    await asyncio.wait_for(activator, 600)
            finally:
                for task in (feeder, activator):
                    if task is not None and not task.done():
                        task.cancel()
            entry["produce_s"] = round(time.monotonic() - started, 1)
            self.state = "draining"
            ends = await wait_until(self.watch.input_ends, 120, "the input topic's end offsets")
            entry["input_records"] = sum(ends.values())
            await wait_until(lambda: self.watch.covers(ends), self.opts.drain_timeout_s,
                             "a result for every input event", interval_s=0.1,
                             detail=lambda: f"{self.watch.answered} of {sum(ends.values())} answered; "
                                            f"first missing {self.watch.missing(ends)}")
            entry["drained_s"] = round(time.monotonic() - started, 1)
            self.say(f"drained: every input event has a result ({entry['drained_s']:.1f} s after the first event)")
            # Every copy read by the Clerk: a late duplicate would be on the topic by now.
            outputs = [self.settings.output_topic(i) for i in self.settings.instances]
            await wait_until(lambda: group_committed_all(self.settings, self.settings.app_id("clerk"), outputs),
                             120, "the Clerk to commit every output record", interval_s=0.5)
            for t in self._trackers:
                await asyncio.wait_for(t, self.opts.drain_timeout_s)
        except (TimeoutError, ChaosTimeout) as exc:
            error = str(exc) or f"{exc.__class__.__name__} (a deadline of the scenario passed)"
        except Exception as exc:  # noqa: BLE001  reported, and the next scenario still runs
            error = f"{exc.__class__.__name__}: {exc}"
        finally:
            for t in self._trackers:
                t.cancel()
            self.state = "stopping"
            if monitor is not None:
                monitor.cancel()
            codes = await asyncio.gather(*(p.stop() for p in self.procs.values()))
            entry["stop_codes"] = dict(zip(self.procs, codes))
            if self.watch is not None:
                await self.watch.stop()
        if error:
            self.say(f"[red]{error.splitlines()[0]}[/red]")
            for line in error.splitlines()[1:12]:
                self.ui.say("    " + line)
        self.state = "verifying"
        checks = await self.check(error)
        entry.update({
            "passed": all(c.passed for c in checks.values()) and error is None,
            "error": error,
            "kill_count": len(self.kills),
            "kills": self.kills,
            "recoveries": self.recoveries,
            "recover_s": [r.get("recover_s") for r in self.recoveries],
            "back_s": [r.get("back_s") for r in self.recoveries],
            "max_clerk_lag": self.max_clerk_lag,
            "max_instance_lag": self.max_instance_lag,
            "unexpected_exits": self.unexpected,
            "duplicates_seen_live": len(self.watch.duplicates) if self.watch else None,
            "produce_retries": self.produce_retries,
            "invariants": {name: c.as_dict() for name, c in checks.items()},
            "wall_s": self.now(),
            "logs": str(self.dir / "logs"),
        })
        return entry

    def kit(self):
        """The DomainKit of the scenario's domain (NoKit when it has none)."""
        import app.domains  # noqa: F401  registers the built-in domains
        from app.registry import registry

        return registry.kit(self.settings.domain)

    async def check(self, error: str | None) -> dict[str, Check]:
        """Read what the topics and the stopped workers hold, and verify it."""
        import app.domains  # noqa: F401  registers the built-in domains
        from app.registry import registry
        from chaos.replay import read_topic, replay
        from tables.dump import dump_entities

        s = self.settings
        try:
            def once(recs):  # a record the consumer delivered twice is one record
                return sorted({(r.partition, r.offset): r for r in recs}.values(), key=lambda r: (r.partition, r.offset))

            inputs = once(await read_topic(s.kafka_bootstrap, s.input_topic, timeout_s=180))
            results = [_compact(orjson.loads(r.value)) for r in
                       once(await read_topic(s.kafka_bootstrap, s.results_topic, timeout_s=180))]
            divergences = [orjson.loads(r.value) for r in
                           once(await read_topic(s.kafka_bootstrap, s.divergences_topic))]
            oracle = replay(inputs, registry.versions(s.domain), s.partitions, s.idempotency_ttl_ms)
            dumps: dict[str, dict | str] = {}
            for inst in s.instances:
                try:
                    dumps[inst] = dump_entities(self.procs[inst].data_dir)
                except Exception as exc:  # noqa: BLE001  reported as the check's detail
                    dumps[inst] = f"cannot dump {self.procs[inst].data_dir}: {exc}"
            return verify(self.kit(), inputs, results, divergences, oracle, dumps)
        except Exception as exc:  # noqa: BLE001
            why = f"not checked: {exc.__class__.__name__}: {exc}"
            return {name: Check(False, why) for name in invariants(self.kit())}


def _compact(result: dict) -> dict:
    """A result without what no check reads (the Clerk's restart state): 100,000 of them
    are held at once."""
    result.pop("clerk", None)
    result.pop("instances", None)
    return result
