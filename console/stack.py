"""The console's own stack and its controls (specs/console.allium).

- :func:`console_settings`: the Settings of a console run: its own broker directory and
  port, topic prefix ``console``, instances a, b, c, two required copies.
- :class:`Controller`: the nodes (instances a, b, c, the Clerk: chaos/stack.py
  :class:`~chaos.stack.Proc` each; the broker: :class:`~chaos.stack.BrokerKeeper`) and
  what a person may do to them: kill (SIGKILL), restart, slow (a SIGSTOP/SIGCONT duty
  cycle), corrupt (the live fault switch, agents/faults.py LiveFaults), broker stop and
  start. A request the node cannot take is refused with a :class:`ControlError`
  (HTTP status, error code, message), never half done.

The controller only drives processes; it reads no topic (console/monitor.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.kafka_admin import quiet
from app.kafka_config import client_kwargs
from app.settings import Settings
from chaos.stack import BrokerKeeper, Proc, component_env
from launcher.broker import HOST, free_port, free_ports, running_pid

log = logging.getLogger("docket.console")

INSTANCES = ("a", "b", "c")
NODES = (*INSTANCES, "clerk", "broker")
# node kind -> the actions the page may ask for, in the order error messages list them
ACTIONS = {"instance": ("kill", "restart", "slow", "corrupt"), "clerk": ("kill", "restart", "slow"),
           "broker": ("stop", "start")}
FAULT_KINDS = ("bitflip", "state")


def fault_refusal(name: str, others: list[str]) -> str:
    """Why a corrupt switch for ``name`` is refused while ``others`` are faulty: with two
    copies required of three, two faulty instances can agree on one wrong copy (a
    `state` fault adding 1 in one, a bitflip of the low bit in the other) and it is
    published: outside what docket tolerates (one faulty instance), so the console's
    safety check would read BROKEN, calling a wrong result a bug of docket's (a user
    check)."""
    named = " and ".join(others)
    return (f"{named} {'is' if len(others) == 1 else 'are'} faulty already (a corrupt switch on, or state a `state` "
            f"fault corrupted, which stays corrupt): with two copies required of three, docket tolerates one faulty "
            f"instance, and two can agree on a wrong copy, which is then published. Turn {named}'s faults off "
            f"first; state a `state` fault corrupted stays so until the console's stack starts afresh")
# The slow duty cycle: stopped SLOW_STOPPED_S of every SLOW_PERIOD_S seconds (CONTRACT.md).
SLOW_PERIOD_S = 1.0
SLOW_STOPPED_S = 0.6
STOP_TIMEOUT_S = 30.0  # SIGTERM -> SIGKILL for a worker at console exit
HURRIED_STOP_S = 3.0  # the same while the broker is stopped (Controller.stop_timeout_s)


class ControlError(Exception):
    """A control request refused: ``status`` (HTTP), ``code`` (the JSON ``error``),
    ``message`` (for a person)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def console_settings(base: Settings, data_dir: Path, partitions: int, broker_port: int | None = None) -> Settings:
    """``base`` (the DOCKET_* settings) made into a console run's: broker in
    ``data_dir/broker`` on a free port, RocksDB under ``data_dir/data``, topic prefix
    ``console``, the inventory domain (the workload's and the balance's, whatever
    DOCKET_DOMAIN says), ``partitions`` partitions, instances a, b, c, two required copies, a 6 s
    session timeout (the broker's minimum: a killed worker's partitions move soonest), a
    PLAINTEXT connection whatever DOCKET_KAFKA_* say."""
    from app.kafka_config import load_connection

    port = broker_port or free_port()
    return dataclasses.replace(
        # the console's own broker speaks PLAINTEXT: a user's DOCKET_KAFKA_* security
        # settings (meant for their Kafka) must not reach the console's clients
        base, kafka=load_connection({}),
        broker_dir=data_dir / "broker", broker_port=port, kafka_bootstrap=f"{HOST}:{port}",
        topic_prefix="console", domain="inventory", domain_version_limit=0, partitions=partitions,
        instances=INSTANCES, required_copies=2,
        session_timeout_ms=6000, data_root=data_dir / "data")


def build_procs(settings: Settings, data_dir: Path) -> tuple[dict[str, Proc], dict[str, int], dict[str, Path]]:
    """The worker processes of a console run (not started): role -> Proc, role -> web
    port (/metrics), instance -> its live fault switch file (agents/faults.py)."""
    env = component_env(settings)
    logs = data_dir / "logs"
    roles = (*INSTANCES, "clerk")
    ports = dict(zip(roles, free_ports(len(roles)), strict=True))
    files = {i: data_dir / "faults" / f"{i}.faults" for i in INSTANCES}
    procs = {i: Proc(i, env, settings.data_root / f"docket-{i}", logs,
                     args=("--web-port", str(ports[i]), "--faults-file", str(files[i]))) for i in INSTANCES}
    procs["clerk"] = Proc("clerk", env, settings.data_root / "docket-clerk", logs,
                          args=("--web-port", str(ports["clerk"])))
    return procs, ports, files


@dataclass
class Slow:
    """A running duty cycle of one worker."""

    task: asyncio.Task
    pid: int


class Controller:
    """The nodes and the controls. ``procs``: role -> Proc for a, b, c and clerk;
    ``keeper``: the broker (None: a stack without a broker of its own, whose broker
    node only ever reads stopped); ``fault_files``: instance -> live switch file;
    ``fault_rate``: the rate a corrupt switch turns on (0 < rate <= 1)."""

    def __init__(self, procs: dict[str, Proc], keeper: BrokerKeeper | None, fault_files: dict[str, Path],
                 fault_rate: float = 0.3, clock: Callable[[], float] = time.monotonic) -> None:
        self.procs = procs
        self.keeper = keeper
        self.fault_files = fault_files
        self.fault_rate = fault_rate
        self.clock = clock
        self.t0 = clock()
        self.slowed: dict[str, Slow] = {}
        self.corrupt: dict[str, str | None] = dict.fromkeys(INSTANCES)
        # instances whose stored state a `state` fault has touched: corrupt for the rest
        # of the console's stack, whatever their switch says now
        self.tainted: set[str] = set()
        self.broker_starts = 0
        self._broker_task: asyncio.Task | None = None
        self._exits_noted: set[tuple[str, int]] = set()  # (role, start number) whose own exit was logged
        self.log: deque[dict] = deque(maxlen=20)
        self._lock = asyncio.Lock()  # one control at a time: a kill never races a restart
        for name in fault_files:
            self._write_fault_file(name, None)

    # ------------------------------------------------------------------ reading

    def now(self) -> float:
        """Seconds since the console started."""
        return round(self.clock() - self.t0, 2)

    def note(self, text: str) -> None:
        """One line of the page's log (and of the console's own, at INFO)."""
        self.log.append({"t": self.now(), "text": text})
        log.info("%s", text)

    def kind(self, name: str) -> str:
        return "broker" if name == "broker" else "clerk" if name == "clerk" else "instance"

    def broker_state(self) -> str:
        if self._broker_task is not None and not self._broker_task.done():
            return "starting"
        return "ready" if self.keeper is not None and self.keeper.up else "stopped"

    def state_of(self, name: str) -> str:
        """dead | starting | restoring | ready | slowed | faulty (instances and clerk);
        ready | starting | stopped (broker). A stopped process is dead; slowed wins over
        faulty, faulty over the recovery phase. An instance is faulty while its corrupt
        switch is on, and for good once a `state` fault has corrupted its state, which
        stays corrupt (it showed ready after `corrupt off` while the console refused a
        switch elsewhere for it being faulty: the fifteenth fresh-user trial)."""
        if name == "broker":
            return self.broker_state()
        proc = self.procs[name]
        if not proc.alive:
            return "dead"
        if name in self.slowed:
            return "slowed"
        if self.corrupt.get(name) is not None or name in self.tainted:
            return "faulty"
        phase = proc.phase()
        return {"ready": "ready", "restoring": "restoring", "restored": "restoring"}.get(phase, "starting")

    def node(self, name: str) -> dict:
        """The Node JSON of CONTRACT.md without the monitor's figures (lag, rates)."""
        if name == "broker":
            pid = None
            if self.keeper is not None and self.keeper.up:
                pid = running_pid(self.keeper.settings.broker_dir)
            return {"name": "broker", "kind": "broker", "state": self.broker_state(), "pid": pid,
                    "starts": self.broker_starts, "slowed": False, "corrupt": None}
        proc = self.procs[name]
        return {"name": name, "kind": self.kind(name), "state": self.state_of(name),
                "pid": proc.pid if proc.alive else None, "starts": proc.starts, "slowed": name in self.slowed,
                "corrupt": self.corrupt.get(name)}

    def check_exits(self) -> None:
        """Note, once, a worker that exited without being killed (the page shows it dead;
        nothing restarts it on its own: that is the person's call)."""
        for role, proc in self.procs.items():
            key = (role, proc.starts)
            if proc.proc is not None and not proc.alive and not proc.down_on_purpose and key not in self._exits_noted:
                self._exits_noted.add(key)
                self._stop_slow(role)
                self.note(f"{role} exited by itself (exit status {proc.returncode}); log {proc.logs[-1]}")

    # ------------------------------------------------------------------ controls

    def _resolve(self, name: str, action: str) -> str:
        if name not in NODES:
            raise ControlError(404, "unknown_node", f"no node {name!r}: nodes are {', '.join(NODES)}")
        kind = self.kind(name)
        if kind == "clerk" and action == "corrupt":
            raise ControlError(400, "not_an_instance", "only instances a, b, c can be corrupted: the Clerk "
                                                       "compares copies, it makes none")
        if action not in ACTIONS[kind]:
            raise ControlError(400, "unknown_action", f"no action {action!r} for {name}: actions of {name}: "
                                                      f"{', '.join(ACTIONS[kind])}")
        return kind

    async def act(self, name: str, action: str, body: object) -> dict:
        """Carry out ``action`` on node ``name`` (``body``: the request's JSON, None when
        it had none) and return the node's JSON afterwards; ControlError when refused."""
        self._resolve(name, action)
        if action == "slow":
            on = body.get("on") if isinstance(body, dict) else None
            if type(on) is not bool:
                raise ControlError(400, "bad_body", 'slow takes a JSON body {"on": true} or {"on": false}')
        if action == "corrupt":
            if not isinstance(body, dict) or "kind" not in body:
                raise ControlError(400, "bad_kind", 'corrupt takes a JSON body {"kind": "bitflip"}, '
                                                    '{"kind": "state"} or {"kind": null}')
            kind = body["kind"]
            if kind is not None and kind not in FAULT_KINDS:
                raise ControlError(400, "bad_kind", f"kind must be one of {', '.join(FAULT_KINDS)} or null "
                                                    "(faults off)")
        async with self._lock:
            if action == "kill":
                self.kill(name)
            elif action == "restart":
                self.restart(name)
            elif action == "slow":
                self.slow(name, body["on"])
            elif action == "corrupt":
                self.set_corrupt(name, body["kind"])
            elif action == "stop":
                await self.broker_stop()
            elif action == "start":
                self.broker_start()
        return self.node(name)

    def kill(self, name: str) -> None:
        """SIGKILL a running worker (a slowed one is let go on first: it dies the same,
        and its duty cycle must not outlive it). 409 already_dead otherwise."""
        proc = self.procs[name]
        if not proc.alive:
            raise ControlError(409, "already_dead", f"{name} is not running: restart it first")
        self._stop_slow(name)
        pid = proc.pid
        proc.kill()
        self.note(f"killed {name} (SIGKILL, pid {pid})")

    def restart(self, name: str) -> None:
        """Start a worker that is not running, on its own RocksDB directory (it recovers
        from it and the changelogs). 409 already_running while it runs, whatever its
        phase."""
        proc = self.procs[name]
        if proc.alive:
            raise ControlError(409, "already_running", f"{name} is running ({self.state_of(name)}, pid {proc.pid}): "
                                                       "kill it first")
        proc.start()
        self.note(f"restarted {name} (pid {proc.pid}, start {proc.starts})")

    def slow(self, name: str, on: bool) -> None:
        """Turn the duty cycle on or off. 409 dead when the worker is not running."""
        proc = self.procs[name]
        if not proc.alive:
            raise ControlError(409, "dead", f"{name} is not running: there is nothing to slow")
        if on and name not in self.slowed:
            pid = proc.pid
            self.slowed[name] = Slow(asyncio.get_running_loop().create_task(self._duty_cycle(name, pid),
                                                                             name=f"slow {name}"), pid)
            self.note(f"slowed {name}: stopped {SLOW_STOPPED_S * 1000:.0f} ms of every "
                      f"{SLOW_PERIOD_S * 1000:.0f} ms (SIGSTOP/SIGCONT)")
        elif not on and name in self.slowed:
            self._stop_slow(name)
            self.note(f"{name} runs at full speed again")

    async def _duty_cycle(self, name: str, pid: int) -> None:
        try:
            while True:
                _signal(pid, signal.SIGSTOP)
                await asyncio.sleep(SLOW_STOPPED_S)  # the duty cycle's stopped phase
                _signal(pid, signal.SIGCONT)
                await asyncio.sleep(SLOW_PERIOD_S - SLOW_STOPPED_S)  # its running phase
        finally:
            _signal(pid, signal.SIGCONT)  # never leave it stopped: it could not die cleanly

    def _stop_slow(self, name: str) -> None:
        slow = self.slowed.pop(name, None)
        if slow is not None:
            slow.task.cancel()
            _signal(slow.pid, signal.SIGCONT)  # at once, not when the cancelled task next runs

    def set_corrupt(self, name: str, kind: str | None) -> None:
        """Turn live faults of ``kind`` on (None: off) in instance ``name``: the worker
        reads its switch file before its next batch. Allowed while it is down: it reads
        the switch when it starts again. Refused (409 second_faulty_instance) while
        another instance is faulty, its switch on or its state corrupted by an earlier
        `state` fault (ConsoleKeepsOneFaultyInstance)."""
        others = sorted({n for n, k in self.corrupt.items() if k and n != name} | (self.tainted - {name}))
        if kind is not None and others:
            raise ControlError(409, "second_faulty_instance", fault_refusal(name, others))
        if kind == "state":
            self.tainted.add(name)
        self.corrupt[name] = kind
        self._write_fault_file(name, kind)
        self.note(f"corrupt {name}: {kind} at rate {self.fault_rate}" if kind else f"corrupt {name}: off")

    def _write_fault_file(self, name: str, kind: str | None) -> None:
        path = self.fault_files[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{kind}:{self.fault_rate}\n" if kind else "off\n", encoding="utf-8")
        os.replace(tmp, path)  # atomic: the worker never reads half a line

    async def broker_stop(self) -> None:
        """Stop the broker (controlled shutdown). 409 already_stopped, 409 busy while it
        is starting."""
        state = self.broker_state()
        if state == "starting":
            raise ControlError(409, "busy", "the broker is starting: wait until it is ready")
        if state == "stopped":
            raise ControlError(409, "already_stopped", "the broker is not running")
        self.note("stopping the broker")
        await self.keeper.stop()
        self.note("broker stopped")

    def broker_start(self) -> None:
        """Start the broker again on its directory and port, in the background (the
        node reads starting, then ready). 409 already_running while it runs or starts."""
        if self.broker_state() != "stopped":
            raise ControlError(409, "already_running", f"the broker is {self.broker_state()}")
        if self.keeper is None:
            raise ControlError(409, "no_broker", "this console runs no broker of its own")
        self._broker_task = asyncio.get_running_loop().create_task(self._start_broker(), name="broker start")
        self.note("starting the broker")

    async def boot_broker(self) -> float:
        """The console's first start of its broker (the node reads starting meanwhile);
        returns seconds taken; launcher.broker.BrokerError if it does not start."""
        self._broker_task = asyncio.ensure_future(self.keeper.start())
        took = await self._broker_task
        self.broker_starts += 1
        return took

    async def _start_broker(self) -> None:
        try:
            took = await self.keeper.start()
        except Exception as exc:  # noqa: BLE001  shown to the person, who may try again
            self.note(f"the broker did not start: {str(exc).splitlines()[0][:200]}")
            return
        self.broker_starts += 1
        self.note(f"broker ready in {took:.1f} s")

    # ------------------------------------------------------------------ the end

    def stop_timeout_s(self) -> float:
        """How long a worker gets between SIGTERM and SIGKILL at the console's exit:
        STOP_TIMEOUT_S, or HURRIED_STOP_S when the broker is stopped (a worker cannot
        leave its group or commit without it, and would only wait out its timeouts)."""
        return STOP_TIMEOUT_S if self.broker_state() != "stopped" else HURRIED_STOP_S

    def hurry(self) -> None:
        """SIGKILL every worker still running (a second Ctrl-C: the person will not wait)."""
        for name in list(self.slowed):
            self._stop_slow(name)
        for p in self.procs.values():
            if p.alive:
                p.kill()

    async def shutdown(self) -> None:
        """Stop everything the console started: every duty cycle (SIGCONT), every
        worker (SIGTERM, SIGKILL after :meth:`stop_timeout_s`), then the broker."""
        for name in list(self.slowed):
            self._stop_slow(name)
        if self._broker_task is not None and not self._broker_task.done():
            with contextlib.suppress(Exception):
                await self._broker_task  # a broker half started must still be stopped
        timeout_s = self.stop_timeout_s()
        await asyncio.gather(*(p.stop(timeout_s) for p in self.procs.values()), return_exceptions=True)
        if self.keeper is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.keeper.close)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- the workload

RATE_MIN, RATE_MAX = 1, 2000  # events/s the page may ask for (POST /api/rate)
WORKLOAD_EVENTS = 10**12  # the generator's length: unbounded in practice, generated lazily


class Feeder:
    """The inventory workload (chaos/workload.py, seed ``seed``) produced straight to the
    input topic at ``rate`` events/s on a fixed schedule (no coordinated omission: a
    late send does not move later ones), acks=all, idempotent. While the broker is not
    ready it waits (and the schedule starts afresh, so it never bursts to catch up);
    a producer that failed is replaced. ``produced``: records the broker acknowledged."""

    def __init__(self, settings: Settings, rate: float, seed: int,
                 broker_ready: Callable[[], bool] = lambda: True, note: Callable[[str], None] = log.info) -> None:
        self.settings = settings
        self.rate = rate
        self.seed = seed
        self.broker_ready = broker_ready
        self.note = note
        self.produced = 0
        self.failed = 0
        self._records = None
        self._task: asyncio.Task | None = None
        self._rate_changed = asyncio.Event()

    def set_rate(self, rate: float) -> None:
        if not RATE_MIN <= rate <= RATE_MAX:
            raise ValueError(f"rate must be from {RATE_MIN} to {RATE_MAX} events/s")
        self.rate = rate
        self._rate_changed.set()

    def start(self) -> Feeder:
        from app.domains.inventory_kit import kit
        from chaos import workload

        self._records = workload.records(kit, self.seed, WORKLOAD_EVENTS, partitions=self.settings.partitions)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="console workload")
        return self

    def _acked(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
        else:
            self.produced += 1

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        topic = self.settings.input_topic
        while True:
            while not self.broker_ready():
                await asyncio.sleep(0.2)  # poll interval of the broker's state
            producer = AIOKafkaProducer(**client_kwargs(
                self.settings, "console-workload", "producer", bootstrap_servers=self.settings.kafka_bootstrap,
                # linger: a few records per request rather than one (a record's broker timestamp,
                # where its decision latency starts, is taken when the batch is appended)
                acks="all", enable_idempotence=True, linger_ms=10))
            try:
                with quiet("aiokafka"):
                    await producer.start()
                failed_before = self.failed
                began, sent = time.monotonic(), 0
                while self.broker_ready() and self.failed == failed_before:
                    if self._rate_changed.is_set():
                        self._rate_changed.clear()
                        began, sent = time.monotonic(), 0
                    due = began + sent / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)  # the fixed arrival schedule
                    elif delay < -1.0:
                        began, sent = time.monotonic(), 0  # a second behind (a stall): start the schedule afresh
                    rec = next(self._records)
                    future = await producer.send(topic, rec.value, rec.key, rec.partition, rec.timestamp)
                    future.add_done_callback(self._acked)
                    sent += 1
                if self.failed != failed_before:
                    self.note("the workload producer lost records (broker stopped?): starting a new one")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  the broker went away mid-start: try again when it is back
                self.note(f"the workload producer stopped ({exc.__class__.__name__}); starting a new one")
                await asyncio.sleep(1.0)  # back-off before a new producer
            finally:
                with contextlib.suppress(Exception), quiet("aiokafka"):
                    await asyncio.wait_for(producer.stop(), 5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
