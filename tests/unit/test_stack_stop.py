"""How `docket stack run` stops, with stand-in components instead of Kafka and Faust:
the real command, honcho and OrderedManager, over a Procfile of two small Python
processes (``app``, and ``broker``, which the manager stops last). Each stand-in logs
the signal that stops it and exits 0; one killed by SIGHUP would show rc=-1.

The real stack (broker, instances, Clerk, API) is stopped the same ways in
tests/integration/test_stack.py; these run in seconds and pin the mechanics: the
terminal closing (a pseudo-terminal hung up, tests/terminal.py) under a shell, and with
make or a parent like it as the terminal's first process; signals sent to `stack run`
alone; the terminal watch; the output's fallback file; and the paths the components get.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


from launcher.broker import free_port
from launcher.stack import STACK_LOG, StackOutput, TerminalWatch
from tests.terminal import Terminal, members_of_group, plain

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60  # two cores shared with other test suites

# One component: says where it runs and which paths it was given, logs the signal that
# stops it, takes STAND_IN_STOP_S_<NAME> seconds to stop (0 by default) and exits 0.
STAND_IN = """\
import os, signal, sys, time

name = sys.argv[1]


def stop(signum, frame):
    print(f"{name}: {signal.Signals(signum).name} received, stopping", flush=True)
    time.sleep(float(os.environ.get(f"STAND_IN_STOP_S_{name.upper()}", "0")))
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
paths = " ".join(f"{k}={os.environ.get(k)}" for k in ("DOCKET_DATA_ROOT", "DOCKET_BROKER_DIR", "DOCKET_BROKER_CACHE"))
print(f"{name}: running in {os.getcwd()} with {paths}", flush=True)
while True:
    signal.pause()
"""

# A parent as GNU make is to its recipe: it catches SIGHUP, waits for its child, and only
# then dies of the signal; the child keeps SIGHUP's default action and hears nothing.
MAKE_LIKE = """\
import os, signal, subprocess, sys

hung_up = []
signal.signal(signal.SIGHUP, lambda signum, frame: hung_up.append(signum))
code = subprocess.call(sys.argv[1:])
if hung_up:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGHUP)
sys.exit(code)
"""
STOPPING = re.compile(r"\| (.*): stopping the components, then broker")
SWITCHED = re.compile(r"writing to the terminal failed \((\w+): .*\); the output of `docket stack run`")
HANGUP_LINE = re.compile(r"the terminal /dev/pts/\d+ closed \(hang-up\)")

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal control and /proc: Linux")


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str, detail: Callable[[], str]) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {deadline_s} s\n{detail()}")
        time.sleep(0.05)  # poll interval of the condition


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    python, script = shlex.quote(sys.executable), shlex.quote(str(tmp_path / "stand_in.py"))
    (tmp_path / "Procfile").write_text(f"broker: exec {python} {script} broker\n"
                                       f"app: exec {python} {script} app\n")
    return tmp_path


def stack_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env.update({"DOCKET_DATA_ROOT": str(root / "var"), "DOCKET_API_TOKENS": "stand-in-token",
                "PYTHONUNBUFFERED": "1",
                # a port nobody holds: `stack run` refuses to start a broker on a taken one
                "DOCKET_BROKER_PORT": str(free_port())})
    return env


def stack_run_argv(root: Path) -> list[str]:
    return [sys.executable, "-c", "from app.cli import main; main()", "stack", "run",
            "--procfile", str(root / "Procfile")]


def started_pids(text: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"\| (\S+)\.1 started \(pid=(\d+)\)", text)}


def kill_stand_ins(pids: dict[str, int], stack_dir: Path) -> None:
    """Cleanup after a failure: no stand-in the test started survives it. Only a process
    running this test's stand-in script is killed, never a process that took a pid over."""
    script = str(stack_dir / "stand_in.py")
    for pid in pids.values():
        try:
            if script in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass  # gone, or no /proc


def assert_ordered_clean_stop(text: str, cause: str | re.Pattern) -> None:
    """The stop began once, for ``cause`` (the text before ": stopping the components", or
    a pattern of it); ``app`` got SIGTERM and exited 0 before the broker got its SIGTERM;
    both logged their stop, once; nothing needed SIGKILL."""
    causes = STOPPING.findall(text)
    assert len(causes) == 1, text
    assert re.fullmatch(cause, causes[0]) if isinstance(cause, re.Pattern) else causes[0] == cause, text
    steps = re.findall(r"\| (sending SIG\w+ to \S+\.1|\S+\.1 stopped \(rc=-?\d+\))", text)
    assert steps == ["sending SIGTERM to app.1", "app.1 stopped (rc=0)",
                     "sending SIGTERM to broker.1", "broker.1 stopped (rc=0)"], text
    assert text.count("app: SIGTERM received, stopping") == 1, text
    assert text.count("broker: SIGTERM received, stopping") == 1, text


def makefile_leader(stack_dir: Path) -> list[str]:
    """`make run` with a Makefile of one recipe, `docket stack run` on the stand-ins."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (stack_dir / "Makefile").write_text(f"run:\n\t@{shlex.join(stack_run_argv(stack_dir))}\n")
    return ["make", "--no-print-directory", "-f", str(stack_dir / "Makefile"), "run"]


# How the terminal runs `docket stack run`: under a shell, which passes SIGHUP on (so
# `stack run` gets two); or led by make or a parent like it, which passes nothing on.
LEADERS = {
    "shell": None,
    "make": makefile_leader,
    "make-like parent": lambda stack_dir: [sys.executable, "-c", MAKE_LIKE, *stack_run_argv(stack_dir)],
}


@linux_only
@pytest.mark.parametrize("leader", list(LEADERS))
def test_closing_the_terminal_stops_the_components_then_the_broker(stack_dir: Path, leader: str) -> None:
    """StackStopsWhenItsTerminalCloses, StackStopsOnSignal, StackStopsBrokerLast,
    StackOutlivesItsTerminal: `docket stack run` in a pseudo-terminal; the terminal is
    closed. Under a shell (``shell``), the kernel sends SIGHUP to the shell, which passes
    it on to its job and dies, and again to the foreground group (`stack run` and
    honcho's relays) once the shell is gone. With make, or a parent that takes SIGHUP as
    make does, as the terminal's first process, the kernel signals that parent alone,
    which waits for its child: `stack run` hears no signal and must notice the hang-up
    by itself. Either way the relays survive, the manager stops ``app`` and then
    ``broker``, each logs its stop once, the stop is logged once, and the output after
    the hang-up (writes to the terminal fail with EIO) is in $DOCKET_DATA_ROOT/stack.log
    after one line saying so. Nothing is left running; the leader dies of SIGHUP."""
    shown = stack_dir / "terminal.log"
    make_argv = LEADERS[leader]
    if make_argv is None:
        term = Terminal(stack_run_argv(stack_dir), shown, cwd=ROOT, env=stack_env(stack_dir))
    else:
        term = Terminal(make_argv(stack_dir), shown, cwd=ROOT, env=stack_env(stack_dir), shell=False)
    fallback = stack_dir / "var" / STACK_LOG
    pids: dict[str, int] = {}
    try:
        def on_screen() -> str:
            return plain(shown.read_text(errors="replace")) if shown.exists() else ""

        wait_until(lambda: "app: running" in on_screen() and "broker: running" in on_screen(), DEADLINE_S,
                   "stand-in running", on_screen)
        pids.update(started_pids(on_screen()))
        assert set(pids) == {"app", "broker"}, on_screen()
        assert not fallback.exists()  # the terminal works: nothing goes to the file yet
        term.hang_up()
        wait_until(lambda: not term.group_members() and not any(members_of_group(p) for p in pids.values()),
                   DEADLINE_S, "exit of every process of the stack",
                   lambda: f"left: {term.group_members()}\n{fallback.read_text() if fallback.exists() else ''}")
        assert term.proc.wait(timeout=10) == -signal.SIGHUP  # the leader died of the hang-up
        after = fallback.read_text()
        assert [m.group(1) for m in SWITCHED.finditer(after)] == ["EIO"], after
        # under a shell, whichever `stack run` noticed first (the SIGHUP or the hang-up);
        # under make, only the hang-up can tell it
        assert_ordered_clean_stop(after, re.compile(f"SIGHUP received|{HANGUP_LINE.pattern}") if make_argv is None
                                  else HANGUP_LINE)
    finally:
        term.close()
        kill_stand_ins(pids, stack_dir)


@dataclass
class FileStack:
    """`docket stack run` with its output in a file (no terminal): ``proc``, ``text()``
    of the output so far, and the stand-ins' ``pids`` once both run."""

    proc: subprocess.Popen
    out_path: Path
    pids: dict[str, int]

    def text(self) -> str:
        return self.out_path.read_text(errors="replace")


@contextlib.contextmanager
def stack_run_to_file(stack_dir: Path, env: dict[str, str],
                      expect: tuple[str, ...] = ("app", "broker")) -> Iterator[FileStack]:
    """Start `stack run` on the stand-ins with ``env``, wait until those in ``expect`` run,
    and yield; on the way out anything still running is killed."""
    out_path = stack_dir / "out.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(stack_run_argv(stack_dir), cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    run = FileStack(proc, out_path, {})
    try:
        wait_until(lambda: all(f"{name}: running" in run.text() for name in expect), DEADLINE_S,
                   "stand-ins running", run.text)
        run.pids.update(started_pids(run.text()))
        yield run
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_stand_ins(run.pids, stack_dir)


def test_sighup_to_stack_run_alone_stops_like_ctrl_c(stack_dir: Path) -> None:
    """StackStopsOnSignal, StackStopsBrokerLast: ``kill -HUP`` of the `stack run` process
    alone (its output a file that keeps working) starts the same ordered stop as Ctrl-C,
    and `stack run` exits 0; the output stays where it was (no fallback file). Without a
    terminal nothing is watched (StackStopsWhenItsTerminalCloses): the SIGHUP is the
    cause."""
    with stack_run_to_file(stack_dir, stack_env(stack_dir)) as run:
        run.proc.send_signal(signal.SIGHUP)
        assert run.proc.wait(timeout=DEADLINE_S) == 0, run.text()
        assert_ordered_clean_stop(run.text(), "SIGHUP received")
        assert not any(members_of_group(p) for p in run.pids.values()) or sys.platform != "linux"
        assert not (stack_dir / "var" / STACK_LOG).exists()


def test_with_your_kafka_the_stop_names_no_broker(stack_dir: Path) -> None:
    """StackStopsOnSignal, StackUsesYourKafka: with DOCKET_KAFKA_BOOTSTRAP elsewhere the
    Procfile's broker is not run, so the stop line says "stopping the components" and no
    more (it said ", then broker": a fresh-clone user check), and `stack run` exits 0."""
    env = {**stack_env(stack_dir), "DOCKET_KAFKA_BOOTSTRAP": "kafka.example:9093"}
    with stack_run_to_file(stack_dir, env, expect=("app",)) as run:
        run.proc.send_signal(signal.SIGHUP)
        assert run.proc.wait(timeout=DEADLINE_S) == 0, run.text()
        text = run.text()
    assert "SIGHUP received: stopping the components\n" in text, text
    assert "then broker" not in text and "broker.1" not in text, text
    assert re.findall(r"\| (sending SIG\w+ to \S+\.1|\S+\.1 stopped \(rc=-?\d+\))", text) == [
        "sending SIGTERM to app.1", "app.1 stopped (rc=0)"], text


def test_later_signals_start_nothing_and_log_nothing(stack_dir: Path) -> None:
    """StackStopsOnSignal: while the stop that a SIGHUP started runs (``app`` takes a
    while to stop), SIGHUP, SIGINT and SIGTERM again change nothing: the stop is logged
    once, for the first SIGHUP, each process gets one SIGTERM, and `stack run` exits 0."""
    with stack_run_to_file(stack_dir, {**stack_env(stack_dir), "STAND_IN_STOP_S_APP": "2"}) as run:
        run.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "app: SIGTERM received" in run.text(), DEADLINE_S, "app stopping", run.text)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            run.proc.send_signal(sig)
            time.sleep(0.05)  # one at a time: each is a signal of its own, not merged with the last
        assert "app.1 stopped" not in run.text(), "app stopped before the later signals came; make it slower"
        assert run.proc.wait(timeout=DEADLINE_S) == 0, run.text()
        assert_ordered_clean_stop(run.text(), "SIGHUP received")


def test_a_component_that_outlives_its_stop_deadline_gets_one_sigkill(stack_dir: Path) -> None:
    """StackStopsOnSignal, WorkerStopHasADeadline: the stack waits DOCKET_STOP_TIMEOUT_MS
    plus 5 s (here 1 + 5 s) for a component after SIGTERM, then sends it SIGKILL once,
    saying how long it waited, and stops the broker as usual; `stack run` does not
    exit 0, since a process had to be killed."""
    env = {**stack_env(stack_dir), "DOCKET_STOP_TIMEOUT_MS": "1000", "STAND_IN_STOP_S_APP": "600"}
    with stack_run_to_file(stack_dir, env) as run:
        pids = run.pids
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=DEADLINE_S) != 0, run.text()
        steps = re.findall(r"\| (sending SIG\w+ to \S+\.1 \(pid \d+\)[^\n]*|\S+\.1 stopped \(rc=-?\d+\))", run.text())
        assert steps == [f"sending SIGTERM to app.1 (pid {pids['app']})",
                         f"sending SIGKILL to app.1 (pid {pids['app']}): still running 6 s after SIGTERM",
                         "app.1 stopped (rc=-9)",
                         f"sending SIGTERM to broker.1 (pid {pids['broker']})", "broker.1 stopped (rc=0)"], run.text()


@linux_only
def test_terminal_watch_sees_the_hang_up_and_nothing_else(tmp_path: Path) -> None:
    """StackStopsWhenItsTerminalCloses: TerminalWatch takes the first terminal among the
    descriptors it is given and reports its hang-up (the master side closed), once; it
    watches nothing when none is a terminal (a pipe, /dev/null, a file)."""
    master, slave = os.openpty()
    read_end, write_end = os.pipe()
    with open(os.devnull, "rb") as devnull, open(tmp_path / "out", "wb") as file:
        idle = TerminalWatch((devnull.fileno(), write_end, file.fileno()), interval_s=0)
        watch = TerminalWatch((devnull.fileno(), write_end, slave), interval_s=0)
    try:
        assert not idle.watching and not idle.hung_up()
        assert watch.watching and watch.name == os.ttyname(slave)
        os.write(slave, b"output\n")
        assert not watch.hung_up() and not watch.hung_up()
        os.close(slave)  # the watch has a descriptor of its own
        slave = -1
        assert not watch.hung_up()
        os.close(master)
        master = -1
        assert watch.hung_up()
        assert not watch.watching and not watch.hung_up()  # reported once
    finally:
        watch.close()
        for fd in (master, slave, read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_components_get_the_paths_the_banner_shows(stack_dir: Path) -> None:
    """StackPassesAbsolutePaths: `stack run` started in a checkout with a relative
    DOCKET_DATA_ROOT and DOCKET_BROKER_CACHE (DOCKET_BROKER_DIR left to its default,
    var/broker), on a Procfile elsewhere (--procfile): honcho runs the processes in the
    Procfile's directory, yet they get the data root and broker directory the banner
    shows, and the broker cache, as absolute paths under the checkout."""
    checkout = stack_dir / "checkout"
    checkout.mkdir()
    elsewhere = stack_dir / "elsewhere"
    elsewhere.mkdir()
    (stack_dir / "Procfile").rename(elsewhere / "Procfile")
    env = {**stack_env(stack_dir), "DOCKET_DATA_ROOT": "var", "DOCKET_BROKER_CACHE": "cache",
           "PYTHONPATH": str(ROOT)}
    env.pop("DOCKET_BROKER_DIR", None)
    out_path = stack_dir / "out.log"
    argv = [*stack_run_argv(stack_dir)[:-1], str(elsewhere / "Procfile")]
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    pids: dict[str, int] = {}
    try:
        def text() -> str:
            return out_path.read_text(errors="replace")

        wait_until(lambda: "app: running" in text() and "broker: running" in text(), DEADLINE_S,
                   "stand-ins running", text)
        pids.update(started_pids(text()))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE_S) == 0, text()
        data_root, broker_dir = checkout.resolve() / "var", checkout.resolve() / "var" / "broker"
        assert f"state      {data_root} (RocksDB of each worker, the token); broker: {broker_dir}" in text(), text()
        for name in ("app", "broker"):
            assert (f"{name}: running in {elsewhere.resolve()} with DOCKET_DATA_ROOT={data_root} "
                    f"DOCKET_BROKER_DIR={broker_dir} DOCKET_BROKER_CACHE={checkout.resolve() / 'cache'}\n"
                    ) in text(), text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_stand_ins(pids, stack_dir)


def test_stack_output_goes_on_in_the_file_once_the_pipe_is_gone(tmp_path: Path) -> None:
    """StackOutlivesItsTerminal: a write to a pipe whose reader has gone (EPIPE; a hung-up
    terminal gives EIO) switches StackOutput to the fallback file, with a line saying
    why; the failed line and every later one land there, once each."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    fallback = tmp_path / "var" / STACK_LOG
    switched: list[bool] = []
    out = StackOutput(write_end, fallback, lambda: switched.append(True), also=())
    try:
        out.write("first line\n")
        out.write("second line\n")
        out.flush()
    finally:
        os.close(write_end)  # now the file's descriptor (dup2)
    lines = fallback.read_text().splitlines()
    assert re.match(r"--- .*: writing to the terminal failed \(EPIPE: .*\); the output of `docket stack run` "
                    rf"\(pid {os.getpid()}\) goes on here ---", lines[0]), lines
    assert lines[1:] == ["first line", "second line"]
    assert switched == [True] and out.switched and not out.isatty()


def test_a_component_reported_started_after_the_stop_began_gets_its_signal() -> None:
    """StackStopsOnSignal: a stop that begins before a relay has reported its process's
    pid (Ctrl-C in the first tenths of a second of `make run`) signals that process as
    soon as the pid is reported: a component with SIGTERM, the broker only in its own
    step. Before, such components were sent nothing and got SIGKILL 35 s later (a
    fresh-user trial: `make run` stopped 0.14 s after its start took 35.8 s). Real
    processes in sessions of their own, as honcho starts them."""
    from honcho.printer import Printer

    from launcher.stack import ordered_manager

    lines: list[str] = []

    class Lines:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    manager = ordered_manager(last=("broker",), printer=Printer(Lines(), colour=False, prefix=False), grace_s=30.0)
    for name in ("app.1", "broker.1"):
        manager.add_process(name, "sleep 60")
    app = subprocess.Popen(["sleep", "60"], start_new_session=True)
    broker = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        manager.terminate()  # the stop begins: no pid reported yet, nothing can be signalled
        assert not any("sending" in line for line in lines), lines
        manager._started("broker.1", broker.pid)
        manager._started("app.1", app.pid)
        assert app.wait(timeout=DEADLINE_S) == -signal.SIGTERM
        assert broker.poll() is None  # the broker waits for its step
        assert [line for line in lines if "sending" in line] == [f"sending SIGTERM to app.1 (pid {app.pid})"], lines
        assert not manager.forced
    finally:
        for proc in (app, broker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
