"""The deadline on a worker's graceful stop (agents/stopping.py; specs/integration.allium
WorkerStopHasADeadline), without a broker: the exit is replaced by a recorder."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agents import clerk as clerk_mod
from agents import instance as instance_mod
from agents import worker as worker_mod
from agents.stopping import EXIT_STOP_CUT_SHORT, StopDeadline
from app.settings import ConfigError, load


@pytest.fixture(autouse=True)
def stop_signals_given_back():
    """A deadline armed on the main thread takes SIGTERM and SIGINT over
    (StopDeadline._take_over_stop_signals); pytest gets its own handlers back after each
    test, whether or not the test cancelled its deadline."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        if handler is not None:
            signal.signal(signum, handler)


class Exits:
    """Records the reasons a deadline gave for exiting; ``seen`` is set on the first."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.seen = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.seen.set()


def test_the_stop_is_cut_short_when_the_deadline_passes() -> None:
    """WorkerStopHasADeadline: timeout_ms after the first stop signal, the worker exits
    saying which setting bounds the stop and what the next start does."""
    exits = Exits()
    deadline = StopDeadline(50, exit=exits)
    assert not deadline.armed
    try:
        deadline.requested(signal.SIGTERM)
        assert deadline.armed
        assert exits.seen.wait(30), "the deadline never fired"
    finally:
        deadline.cancel()
    (reason,) = exits.reasons
    assert "did not finish within 50 ms (DOCKET_STOP_TIMEOUT_MS)" in reason
    assert f"status {EXIT_STOP_CUT_SHORT}" in reason and "last committed offsets" in reason


def test_a_second_signal_cuts_the_stop_short_at_once() -> None:
    """WorkerStopHasADeadline: the first SIGTERM only arms the deadline; a SIGINT (or
    SIGTERM) while stopping exits at once, naming the signal."""
    exits = Exits()
    deadline = StopDeadline(600_000, exit=exits)
    try:
        deadline.requested(signal.SIGTERM)
        assert exits.reasons == []
        deadline.requested(signal.SIGINT)
        assert len(exits.reasons) == 1
        assert exits.reasons[0].startswith("SIGINT received again while stopping: exiting at once")
    finally:
        deadline.cancel()


def test_a_second_signal_reaches_a_main_thread_blocked_in_a_wait() -> None:
    """WorkerStopHasADeadline: the second SIGTERM cuts the stop short even while the
    main thread is blocked in a synchronous wait, where the event loop's handler never
    runs (mode's ServiceThread.stop waits for Faust's consumer thread with
    threading.Event.wait() and no timeout: a fresh-clone CI run's worker was still
    stopping 60 s after its second SIGTERM). A real signal to this process; the handler
    it finds first does nothing the test can see, as asyncio's and uvloop's
    add_signal_handler leave it (the loop's callback runs only when the loop reads its
    wakeup fd); cancel() puts that handler back."""
    exits = Exits()

    def loops_handler(_signum, _frame) -> None:
        return None

    before = signal.signal(signal.SIGTERM, loops_handler)
    deadline = StopDeadline(600_000, exit=exits)
    try:
        deadline.requested(signal.SIGTERM)
        assert exits.reasons == []
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        # the main thread now blocks as mode's stop does; only the signal can end the wait
        assert exits.seen.wait(30), "the second SIGTERM never reached the deadline"
        assert exits.reasons[0].startswith("SIGTERM received again while stopping: exiting at once")
    finally:
        deadline.cancel()
        restored = signal.signal(signal.SIGTERM, before)
    assert restored is loops_handler


def _exit_now_after(setup: str) -> subprocess.CompletedProcess:
    """Run, in a fresh interpreter logging to its stdout, ``setup`` and then
    ``exit_now('cut short')`` followed by a line that must never print; deadline 60 s
    (subprocess.TimeoutExpired fails the test)."""
    script = ("import logging, sys\n"
              "logging.basicConfig(stream=sys.stdout)\n"
              + setup
              + "from agents.stopping import exit_now\n"
                "exit_now('cut short')\n"
                "print('not reached')\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_exit_now_exits_75_even_when_the_log_cannot_be_written() -> None:
    """WorkerStopHasADeadline: the exit does not depend on the log; a stderr whose flush
    raises (as a reentrant write does when the handler interrupts one) still ends the
    process with status 75, after the message reached the log."""
    done = _exit_now_after(
        "class Broken:\n"
        "    def write(self, s): return len(s)\n"
        "    def flush(self): raise RuntimeError('reentrant call')\n"
        "sys.stderr = Broken()\n")
    assert done.returncode == EXIT_STOP_CUT_SHORT, done
    assert "cut short" in done.stdout and "not reached" not in done.stdout, done


def test_exit_now_exits_75_even_when_the_log_blocks() -> None:
    """WorkerStopHasADeadline: the exit does not wait for a log that never returns; with
    another thread holding the log handler's lock (as one stuck writing to a full pipe
    does), the process still ends with status 75, EXIT_LOG_GRACE_S later."""
    done = _exit_now_after(
        "import threading, time\n"
        "handler = logging.getLogger().handlers[0]\n"
        "held = threading.Event()\n"
        "def hold():\n"
        "    handler.acquire()\n"
        "    held.set()\n"
        "    time.sleep(3600)\n"
        "threading.Thread(target=hold, daemon=True).start()\n"
        "held.wait()\n")
    assert done.returncode == EXIT_STOP_CUT_SHORT, done
    assert "not reached" not in done.stdout, done


def test_a_deadline_below_one_ms_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_ms=0 must be at least 1"):
        StopDeadline(0)


def test_docket_stop_timeout_ms_is_read_and_checked(monkeypatch) -> None:
    """DOCKET_STOP_TIMEOUT_MS: 30,000 ms by default; a whole number from 1 to 3,600,000."""
    monkeypatch.delenv("DOCKET_STOP_TIMEOUT_MS", raising=False)
    assert load().stop_timeout_ms == 30_000
    monkeypatch.setenv("DOCKET_STOP_TIMEOUT_MS", "2500")
    assert load().stop_timeout_ms == 2500
    monkeypatch.setenv("DOCKET_STOP_TIMEOUT_MS", "3600000")
    assert load().stop_timeout_ms == 3_600_000
    # 10**13 ms overflows threading.Timer (OverflowError), which would switch the
    # deadline off; an hour is more than any stop needs
    monkeypatch.setenv("DOCKET_STOP_TIMEOUT_MS", "3600001")
    with pytest.raises(ConfigError, match="DOCKET_STOP_TIMEOUT_MS=3600001 must be at most 3600000"):
        load()
    monkeypatch.setenv("DOCKET_STOP_TIMEOUT_MS", "0")
    with pytest.raises(ConfigError, match="DOCKET_STOP_TIMEOUT_MS=0 must be at least 1"):
        load()
    monkeypatch.setenv("DOCKET_STOP_TIMEOUT_MS", "30s")
    with pytest.raises(ConfigError, match="DOCKET_STOP_TIMEOUT_MS='30s' is not a whole number"):
        load()


def test_the_docket_worker_arms_its_deadline_on_each_stop_signal(tmp_path, monkeypatch) -> None:
    """WorkerStopHasADeadline: an instance's worker (what `docket instance` and `faust -A
    docket_apps.instance worker` run) carries DOCKET_STOP_TIMEOUT_MS, and mode's handler of
    SIGTERM and SIGINT passes every signal to the deadline, the repeated one included."""
    monkeypatch.setenv("DOCKET_STOP_TIMEOUT_MS", "1234")
    app = instance_mod.build(load(), "a", tmp_path / "a")
    loop = asyncio.new_event_loop()
    try:
        worker = app.Worker(loglevel="WARN", loop=loop)
        assert isinstance(worker, worker_mod.DocketWorker)
        assert worker.stop_deadline is not None and worker.stop_deadline.timeout_ms == 1234
        assert clerk_mod.build(load(), tmp_path / "clerk", None).docket_stop_timeout_ms == 1234
        exits = Exits()
        worker.stop_deadline = StopDeadline(600_000, exit=exits)
        stops: list[object] = []
        monkeypatch.setattr(worker, "stop", lambda: stops.append(True) or asyncio.sleep(0))
        worker._on_sigterm()
        assert worker.stop_deadline.armed and exits.reasons == []
        worker._on_sigint()
        assert len(exits.reasons) == 1 and exits.reasons[0].startswith("SIGINT received again")
        loop.run_until_complete(worker._signal_stop_future)
        assert stops == [True], "mode stops the worker once, on the first signal"
    finally:
        worker.stop_deadline.cancel()
        loop.close()


async def _parked_in_the_stop(release: asyncio.Event) -> None:
    await release.wait()


async def _idle_loop(release: asyncio.Event) -> None:
    await release.wait()


async def _consumer_thread_fetch(release: asyncio.Event) -> None:
    await release.wait()


def test_the_reason_names_what_the_stop_still_waits_on() -> None:
    """WorkerStopHasADeadline: a deadline armed on a running loop (as mode's signal
    handler arms it) says, when it fires, where the loop's pending tasks wait, counted
    by place, the awaits of a stop (a coroutine named stop, _stop..., ..._stop) first,
    then the tasks of any other running loop (Faust's consumer thread has one), and
    where the other threads are, so a stop that hangs with Kafka up can be read from
    the log."""
    exits = Exits()
    deadline = StopDeadline(50, exit=exits)

    async def main() -> None:
        release = asyncio.Event()
        parked = [asyncio.create_task(_parked_in_the_stop(release)) for _ in range(3)]
        parked.append(asyncio.create_task(_idle_loop(release)))
        deadline.requested(signal.SIGTERM)
        assert await asyncio.to_thread(exits.seen.wait, 30), "the deadline never fired"
        release.set()
        await asyncio.gather(*parked)

    # a loop of its own in another thread, as Faust's consumer thread has
    other = asyncio.new_event_loop()
    released = asyncio.Event()
    threading.Thread(target=other.run_until_complete, args=(_consumer_thread_fetch(released),), daemon=True).start()
    try:
        asyncio.run(main())
    finally:
        other.call_soon_threadsafe(released.set)
    (reason,) = exits.reasons
    head, _, waiting = reason.partition(". Still waiting on:\n  ")
    assert "did not finish within 50 ms (DOCKET_STOP_TIMEOUT_MS)" in head
    lines = waiting.split("\n  ")
    assert lines[0].startswith("the stop waits in _parked_in_the_stop -> Event.wait (asyncio/locks.py:"), lines
    assert lines[0].endswith(") (3 tasks)"), lines
    assert not any(line.startswith("the stop waits in") for line in lines[1:]), lines
    assert any(line.startswith("a task in _idle_loop -> Event.wait (asyncio/locks.py:") for line in lines), lines
    assert any(line.startswith("a task in test_the_reason_names_what_the_stop_still_waits_on.<locals>.main -> "
                               "to_thread (asyncio/threads.py:") for line in lines), lines
    assert any(line.startswith("thread MainThread: ") for line in lines), lines
    assert any(line.startswith("in another loop: a task in _consumer_thread_fetch -> Event.wait (asyncio/locks.py:")
               for line in lines), lines


def test_a_deadline_armed_off_the_loop_names_no_tasks() -> None:
    """WorkerStopHasADeadline: armed outside a running loop, the reason is the plain one."""
    exits = Exits()
    deadline = StopDeadline(50, exit=exits)
    deadline.requested(signal.SIGTERM)
    assert exits.seen.wait(30), "the deadline never fired"
    assert "Still waiting on" not in exits.reasons[0]
    assert exits.reasons[0].endswith("as after a crash")


def test_the_exit_happens_even_when_the_diagnostic_fails(monkeypatch) -> None:
    """WorkerStopHasADeadline: reading where the stop waits may fail; the exit may not."""
    import agents.stopping as stopping

    def broken(_loop):
        raise RuntimeError("frames unreadable")

    monkeypatch.setattr(stopping, "waiting_on", broken)
    exits = Exits()
    deadline = StopDeadline(50, exit=exits)
    deadline.requested(signal.SIGTERM)
    assert exits.seen.wait(30), "the deadline never fired"
    assert exits.reasons[0].endswith("Where it waited could not be read (RuntimeError('frames unreadable'))")
