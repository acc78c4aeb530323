"""`make run` end to end: the Procfile through honcho (`docket stack run`) with its own
broker on a free port and throw-away state, exactly as a developer runs it:

1. it prints a curl example, and once "docket is ready" that curl returns 200 with an
   agreed outcome;
2. `docket demo` (small workload) against it exits 0 and its balance check passes;
3. Ctrl-C (SIGINT to make's process group, like a terminal) stops every process
   cleanly: each exits with code 0, none needs SIGKILL, the broker goes last, and no
   process logs an error while stopping;
4. a second `make run` on the same state, as the first process of a pseudo-terminal
   (tests/terminal.py; make leads the session, as with `xterm -e make run`), reuses the
   token, keeps the entity the curl changed, and is ready without waiting for stale
   consumer-group members;
5. closing that terminal stops every process just as cleanly, the broker's JVM
   included, though the kernel's SIGHUP goes to make alone (which waits for its
   children): `docket stack run` notices the hang-up itself; the rest of the output is
   in var/stack.log.

One stack for the module: it costs a broker start and four Faust workers on two cores.
The tests run in file order (each phase builds on the previous one).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from launcher import broker as launcher
from launcher.broker import free_ports, set_parent_death_signal
from launcher.stack import STACK_LOG
from tests.terminal import Terminal, members_of_group, plain

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKET = Path(sys.executable).with_name("docket")
PROCESSES = ("broker", "topics", "instance-a", "instance-b", "clerk", "api")
READY = re.compile(r"\| docket is ready in ([0-9.]+) s")
STOPPING = re.compile(r"\| (.*): stopping the components, then broker")
HANGUP_LINE = re.compile(r"the terminal /dev/pts/\d+ closed \(hang-up\)")
FIRST_READY_S = 240  # a cold broker (storage formatted) and four Faust workers on two cores
NEXT_READY_S = 150


def _uses_project_venv() -> bool:
    return Path(sys.executable).parent.resolve() == (ROOT / ".venv" / "bin").resolve() and shutil.which("make")


@dataclass
class StackRun:
    """One `make run` (or `docket stack run` when the tests do not run from .venv), in its
    own process group like a shell's foreground job, its output in a log file; or, with
    ``in_terminal``, as the first process of a pseudo-terminal (no shell), its output
    copied to the log file until the terminal is closed."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    terminal: Terminal | None = None
    began: float = 0.0
    offset: int = 0  # where this run's output starts in the log
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def by_make(self) -> bool:
        return bool(_uses_project_venv())

    def start(self, *, in_terminal: bool = False) -> StackRun:
        cmd = ["make", "--no-print-directory", "run"] if self.by_make else [str(DOCKET), "stack", "run"]
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.began = time.monotonic()
        if in_terminal:
            self.terminal = Terminal(cmd, self.log_path, cwd=ROOT, env=self.env, shell=False)
            self.proc = self.terminal.proc
            return self
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=set_parent_death_signal if sys.platform == "linux" else None)  # noqa: PLW1509
        return self

    def text(self) -> str:
        with open(self.log_path, "rb") as fh:
            fh.seek(self.offset)
            return plain(fh.read().decode(errors="replace"))

    def tail(self, lines: int = 60) -> str:
        return "--- stack output (tail) ---\n" + "\n".join(self.text().splitlines()[-lines:])

    def wait_ready(self, deadline_s: float) -> float:
        """Seconds from start until "docket is ready" (fails on a deadline or an early exit)."""
        deadline = time.monotonic() + deadline_s
        while True:
            if READY.search(self.text()):
                return time.monotonic() - self.began
            if self.proc.poll() is not None:
                raise AssertionError(f"the stack exited with {self.proc.returncode} before it was ready\n{self.tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"the stack was not ready within {deadline_s:.0f} s\n{self.tail()}")
            time.sleep(0.2)  # poll interval of the readiness line

    def started_pids(self) -> dict[str, int]:
        found = re.findall(r"\| (\S+)\.1 started \(pid=(\d+)\)", self.text())
        self.pids = {name: int(pid) for name, pid in found}
        return self.pids

    def interrupt(self, deadline_s: float = 120) -> int:
        """Ctrl-C: SIGINT to the process group (make and `docket stack run`)."""
        self.started_pids()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the stack did not stop within {deadline_s} s of Ctrl-C\n{self.tail()}") from None

    def cleanup(self, broker_dir: Path) -> None:
        """Whatever the outcome: nothing of this run survives the test."""
        if self.terminal is not None:
            self.terminal.close()  # closing it stops the stack; whatever is left of its group is killed
        elif self.proc is not None and self.proc.poll() is None:
            with _suppress():
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self.started_pids().values():
            with _suppress():
                os.killpg(pid, signal.SIGKILL)  # honcho starts each process in its own session
        launcher.stop_broker(broker_dir, timeout=10)


def _suppress() -> contextlib.AbstractContextManager:
    return contextlib.suppress(ProcessLookupError, PermissionError)


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    api_url: str
    broker_dir: Path
    log_path: Path
    runs: list[StackRun] = field(default_factory=list)

    def run(self, *, in_terminal: bool = False) -> StackRun:
        r = StackRun(self.env, self.log_path).start(in_terminal=in_terminal)
        self.runs.append(r)
        return r

    @property
    def current(self) -> StackRun:
        return self.runs[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        launcher.java_executable()
    except launcher.MissingTool as exc:  # e.g. a host whose tests use a Kafka container
        pytest.skip(f"make run needs the local broker: {exc.message}")
    root = tmp_path_factory.mktemp("make-run")
    broker_port, api_port, clerk_port, a_port, b_port = free_ports(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_") or k == "DOCKET_BROKER_CACHE"}
    env.update({
        "DOCKET_DATA_ROOT": str(root / "var"),
        "DOCKET_BROKER_DIR": str(root / "var" / "broker"),
        "DOCKET_BROKER_PORT": str(broker_port),
        "DOCKET_KAFKA_BOOTSTRAP": f"127.0.0.1:{broker_port}",
        "DOCKET_API_PORT": str(api_port),
        "DOCKET_CLERK_WEB_PORT": str(clerk_port),
        "DOCKET_INSTANCE_A_WEB_PORT": str(a_port),
        "DOCKET_INSTANCE_B_WEB_PORT": str(b_port),
        "DOCKET_PARTITIONS": "4",
        "PYTHONUNBUFFERED": "1",
    })
    s = Stack(root, env, f"http://127.0.0.1:{api_port}", root / "var" / "broker", root / "stack.log")
    s.run()
    try:
        seconds = s.current.wait_ready(FIRST_READY_S)
        print(f"\nfirst `make run`: ready in {seconds:.1f} s")
        yield s
    finally:
        for r in s.runs:
            r.cleanup(s.broker_dir)


# --------------------------------------------------------------------------- helpers


def printed_curl(text: str) -> str:
    """The curl example from the banner (continuation lines joined)."""
    m = re.search(r"^  (curl .*?)\n\n", text, re.DOTALL | re.MULTILINE)
    assert m, f"no curl example in the output:\n{text[:3000]}"
    return m.group(1).replace("\\\n", " ")


def run_curl(command: str) -> tuple[int, dict]:
    """Run the printed curl (with curl, or the same request with urllib where curl is
    missing); returns (HTTP status, JSON body)."""
    argv = shlex.split(command)
    assert argv[0] == "curl"
    if shutil.which("curl"):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
        return int(head.split()[1]), orjson.loads(body)
    url = next(a for a in argv if a.startswith("http"))
    headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    data = argv[argv.index("-d") + 1].encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def get_json(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def token_of(stack: Stack) -> str:
    return (stack.root / "var" / "api-token").read_text().strip()


def assert_ordered_stop(text: str, how: str, run: StackRun, broker_dir: Path) -> None:
    """StackStopsOnSignal, StackStopsBrokerLast, WorkersCloseTheirConsumersOnStop: in
    ``text`` (the output of `docket stack run`), every process stopped with code 0, the
    broker last, none needed SIGKILL, and nothing logged an error from the stop on; no
    process of the run is left, the broker's JVM (a session of its own) included."""
    stopped = dict(re.findall(r"\| (\S+)\.1 stopped \(rc=(-?\d+)\)", text))
    assert stopped == dict.fromkeys(PROCESSES, "0"), f"exit codes after {how}: {stopped}\n{text[-6000:]}"
    assert "SIGKILL" not in text, text[-6000:]
    # the components first, the broker once they had exited
    order = [m.group(1) for m in re.finditer(r"\| (\S+)\.1 stopped", text)]
    assert order[-1] == "broker", order
    # the components logged their stop (Faust workers log nothing at the warning level)
    assert "| SIGTERM received: stopping the broker (controlled shutdown)" in text, text[-6000:]
    assert "| broker stopped" in text, text[-6000:]
    stopping = text[text.index(": stopping the components, then broker"):]
    errors = [line for line in stopping.splitlines() if "[ERROR]" in line or "Unclosed" in line
              or "Traceback" in line]
    assert not errors, f"errors logged while stopping after {how}:\n" + "\n".join(errors[:10])
    for name, pid in run.pids.items():
        assert not launcher._pid_exists(pid), f"{name} (pid {pid}) survived {how}"
        assert not members_of_group(pid), f"processes of {name}'s group survived {how}"
    assert launcher.running_pid(broker_dir) is None, f"the broker survived {how}"


def assert_clean_stop(run: StackRun, code: int, broker_dir: Path) -> None:
    text = run.text()
    # `docket stack run` exits 0 after a clean stop; make itself, interrupted too, dies
    # by SIGINT (and says "Interrupt"), but reports no error of its recipe
    assert code in (0, -signal.SIGINT), f"exit code {code} after Ctrl-C\n{run.tail()}"
    assert not re.search(r"make: \*\*\* .* Error", text), run.tail()
    assert STOPPING.findall(text) == ["SIGINT received"], run.tail()
    assert_ordered_stop(text, "Ctrl-C", run, broker_dir)


# --------------------------------------------------------------------------- the tests


def test_printed_curl_example_returns_200(stack: Stack) -> None:
    text = stack.current.text()
    assert stack.api_url in text
    token = token_of(stack)
    assert f"token      {token}" in text and "generated" in text  # DOCKET_API_TOKENS was not set
    status, body = run_curl(printed_curl(text))
    assert status == 200, body
    assert body["state"] == "decided" and body["replay"] is False
    assert body["outcome"]["status"] == "applied"
    assert body["outcome"]["entities"] == [{"key": "stock:wh-01:sku-0001", "state": {"quantity": 10}, "version": 1}]
    assert sorted(body["instances"]) == ["a", "b"]
    # the same curl again: the original outcome, as a replay
    status, again = run_curl(printed_curl(text))
    assert status == 200 and again["replay"] is True and again["outcome"] == body["outcome"]


def test_every_worker_serves_metrics_on_the_port_the_banner_names(stack: Stack) -> None:
    """Observability: under `make run` instance a, instance b and the Clerk each serve
    /metrics on the port of its setting, which the banner prints; each page counts the
    curl's event (docket's own metrics) beside Faust's sensors."""
    text = stack.current.text()
    printed = dict(re.findall(r"(Clerk|instance a|instance b): http://127\.0\.0\.1:(\d+)/metrics", text))
    settings = {"instance a": "DOCKET_INSTANCE_A_WEB_PORT", "instance b": "DOCKET_INSTANCE_B_WEB_PORT",
                "Clerk": "DOCKET_CLERK_WEB_PORT"}
    assert printed == {who: stack.env[var] for who, var in settings.items()}, text[:2000]
    for who, counter in (("instance a", "docket_instance_events_total"),
                         ("instance b", "docket_instance_events_total"),
                         ("Clerk", "docket_clerk_decisions_total")):
        with urllib.request.urlopen(f"http://127.0.0.1:{printed[who]}/metrics", timeout=30) as page:
            metrics = page.read().decode()
        counted = [line for line in metrics.splitlines() if line.startswith(counter + " ")]
        assert counted and float(counted[0].split()[1]) >= 1, f"{who}: {counted or metrics[:500]}"
        assert "faust_total_rebalances" in metrics, f"{who}: no Faust sensors"
        if who.startswith("instance"):
            # LedgerMemoryOnMetricsPage: the curl's event was
            # written, so its partition's memtable holds something, within the bound
            gauges = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                      if line.startswith("docket_instance_rocksdb")}
            memtables = gauges.get('docket_instance_rocksdb_bytes{kind="memtables"}')
            bound = gauges.get("docket_instance_rocksdb_bound_bytes")
            assert memtables and bound and 0 < memtables <= bound, f"{who}: {gauges}"
            assert 'docket_instance_rocksdb_bytes{kind="block_cache"}' in gauges, f"{who}: {gauges}"


def test_the_workers_create_no_faust_leader_topic(stack: Stack) -> None:
    """WorkerDeclaresNoLeaderTopic (agents/plumbing.py faust_settings,
    topic_disable_leader): once `make run` is ready, the broker holds no Faust
    leader-election topic of any worker (``<app id>-__assignor-__leader``), and the
    start's output never names one (the ERROR "Topic ... not found in cluster
    metadata" it used to log)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def topics() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.env["DOCKET_KAFKA_BOOTSTRAP"])
        await admin.start()
        try:
            return await admin.list_topics()
        finally:
            await admin.close()

    names = asyncio.run(topics())
    assert "docket.input" in names, names  # the listing is the stack's broker's
    assert not [n for n in names if "__assignor" in n], names
    assert "__assignor-__leader" not in stack.current.text()


def test_demo_against_the_stack_passes_its_balance_check(stack: Stack) -> None:
    """`make demo`'s command with a small workload: every event decided, rejections and
    replays among them, and the balance check (from the API's entity reads) passes."""
    env = {**stack.env, "COLUMNS": "120"}
    out = subprocess.run([str(DOCKET), "demo", "--events", "300", "--seed", "5", "--concurrency", "16"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    print(out.stdout)
    assert out.returncode == 0, f"demo exit code {out.returncode}\n{out.stdout}\n{out.stderr}\n{stack.current.tail()}"
    table = out.stdout
    assert re.search(r"balance check\s*│\s*passed", table), table
    assert re.search(r"stock_conserved\s*│\s*50 skus conserved", table), table
    assert re.search(r"no_negative_stock\s*│\s*\d+ published entity states, none negative", table), table
    assert re.search(r"entities read from the API\s*│\s*250 of 250", table), table
    applied = int(re.search(r"applied\s*│\s*(\d+)", table).group(1))
    assert applied > 150, table
    assert "rejected: insufficient_stock" in table, table
    assert "error:" not in table and "undecided" not in table, table


def test_ctrl_c_stops_every_process_cleanly(stack: Stack) -> None:
    run = stack.current
    code = run.interrupt()
    assert_clean_stop(run, code, stack.broker_dir)


def test_second_run_is_fast_and_keeps_the_state(stack: Stack) -> None:
    """The second `make run` runs in a pseudo-terminal, which the next test closes."""
    token = token_of(stack)
    run = stack.run(in_terminal=sys.platform == "linux")
    seconds = run.wait_ready(NEXT_READY_S)
    print(f"\nsecond `make run`: ready in {seconds:.1f} s")
    text = run.text()
    assert f"token      {token}" in text and "(kept in" in text  # the same token, not a new one
    assert "Formatting the broker's storage" not in text  # the broker's data was kept
    status, ent = get_json(f"{stack.api_url}/v1/entities/stock/wh-01:sku-0001", token)
    assert status == 200 and ent["state"] == {"quantity": 10} and ent["version"] == 1, ent
    # the pipeline still decides, with the instances' state of the first run
    status, body = run_curl(printed_curl(text))  # a new Idempotency-Key: a new event
    assert status == 200, body
    assert body["outcome"]["entities"] == [{"key": "stock:wh-01:sku-0001", "state": {"quantity": 20}, "version": 2}]


@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal control and /proc: Linux")
def test_closing_the_terminal_stops_every_process_cleanly(stack: Stack) -> None:
    """StackStopsWhenItsTerminalCloses, StackStopsOnSignal, StackStopsBrokerLast,
    StackOutlivesItsTerminal: the terminal of the second `make run` is closed, as a
    window closes. The kernel hangs it up and sends SIGHUP to make alone, the session's
    leader, which catches it and waits for its children; `docket stack run` hears no
    signal and notices the hang-up by itself. Every process then stops as on Ctrl-C, the
    components first, the broker's JVM last, each with code 0, within a deadline; make
    then dies of its SIGHUP. The output after the hang-up, the stop logged once and the
    components' stop lines among it, is in var/stack.log. (Before, make waited for a
    stack that never heard of the hang-up, and everything went on running.)"""
    run = stack.current
    assert run.terminal is not None and READY.search(run.text()), "the second run is not up in a terminal"
    run.started_pids()
    assert set(run.pids) == set(PROCESSES), run.pids
    fallback = stack.root / "var" / STACK_LOG
    assert not fallback.exists(), "output went to the fallback file while the terminal was open"
    run.terminal.hang_up()
    deadline = time.monotonic() + 120
    while True:
        left = {name: pid for name, pid in run.pids.items() if members_of_group(pid)}
        manager_left = run.terminal.group_members()  # make, `docket stack run`, honcho's relays
        broker_left = launcher.running_pid(stack.broker_dir)
        if not left and not manager_left and broker_left is None:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"120 s after the terminal closed, still running: components {left}, "
                                 f"make/stack run/relays {manager_left}, broker JVM {broker_left}\n"
                                 f"{fallback.read_text() if fallback.exists() else '(no var/stack.log)'}")
        time.sleep(0.2)  # poll interval of the condition
    assert run.proc.wait(timeout=10) == -signal.SIGHUP  # the leader (make) died of the hang-up
    after = fallback.read_text()
    assert after.count("writing to the terminal failed (EIO") == 1, after
    causes = STOPPING.findall(after)
    assert len(causes) == 1, after
    # make passes no signal on; `docket stack run` leading the terminal itself may hear SIGHUP first
    assert HANGUP_LINE.fullmatch(causes[0]) or (not run.by_make and causes[0] == "SIGHUP received"), after
    assert_ordered_stop(run.text() + after, "closing the terminal", run, stack.broker_dir)
