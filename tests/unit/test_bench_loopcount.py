"""bench/loopcount and bench/loopdiff: the loop counter counts what a process's event
loop ran, and the difference of two snapshots is what ran between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loopdiff import difference, main, render

LOOPCOUNT = Path(__file__).resolve().parents[2] / "bench" / "loopcount"

# A process whose loop steps one task 500 times, then waits (with a deadline) for the
# counter's first dump that covers them, and prints it.
PROGRAM = """
import asyncio, json, os, time

async def spinner():
    for _ in range(500):
        await asyncio.sleep(0)

asyncio.run(spinner())
path = os.path.join(os.environ["DOCKET_LOOPCOUNT_DIR"], f"{os.getpid()}.json")
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    if os.path.exists(path):
        with open(path) as f:
            snap = json.load(f)
        if any(n.startswith("task spinner") and c >= 500 for _, n, c in snap["callbacks"]):
            print(json.dumps(snap))
            break
    time.sleep(0.05)
"""


def test_every_task_step_and_iteration_is_counted(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(LOOPCOUNT), DOCKET_LOOPCOUNT_DIR=str(tmp_path),
               DOCKET_LOOPCOUNT_INTERVAL_S="0.1")
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout, "no dump counted the spinner's 500 steps within 20 s"
    snap = json.loads(out.stdout)
    steps = {n: c for t, n, c in snap["callbacks"] if t == "MainThread"}
    # the spinner's 500 steps, each resumed from inside asyncio.sleep(0), the innermost
    # coroutine it awaited; its first step started it (a line of spinner itself)
    sleeps = {n: c for n, c in steps.items() if n.startswith("task spinner @ sleep:")}
    assert list(sleeps.values()) == [500]
    assert [c for n, c in steps.items() if n.startswith("task spinner @ spinner:")] == [1]
    main_thread = snap["iterations"]["MainThread"]
    assert main_thread["ready"] >= 500  # each step was ready when its iteration began
    assert snap["pid"] != os.getpid()


def test_without_the_directory_nothing_is_installed(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DOCKET_LOOPCOUNT_DIR"}
    env["PYTHONPATH"] = str(LOOPCOUNT)
    probe = ("import asyncio.base_events as b, sys; "
             "print(b.BaseEventLoop._run_once.__module__, 'sitecustomize' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["asyncio.base_events", "True"]


def _snap(pid: int, ready: int, waiting: int, callbacks: list) -> dict:
    return {"pid": pid, "argv": [], "iterations": {"MainThread": {"ready": ready, "waiting": waiting}},
            "callbacks": callbacks}


def test_the_difference_is_what_ran_between_the_snapshots() -> None:
    before = _snap(7, 100, 40, [["MainThread", "task a @ x:1", 50], ["MainThread", "cb", 9]])
    after = _snap(7, 160, 45, [["MainThread", "task a @ x:1", 70], ["MainThread", "cb", 9],
                               ["Thread-2", "task f @ y:2", 30]])
    diff = difference(before, after)
    assert diff["iterations"] == {"MainThread": {"ready": 60, "waiting": 5}}
    # largest first; a callback that did not run between them is left out
    assert diff["callbacks"] == [["Thread-2", "task f @ y:2", 30], ["MainThread", "task a @ x:1", 20]]
    text = render(diff, events=10, top=5)
    assert "60 iterations with callbacks ready (6.0 per event)" in text
    assert "task f @ y:2" in text and "cb" not in text.split("most often first:")[1]


def test_snapshots_of_two_processes_are_refused() -> None:
    with pytest.raises(ValueError, match="two processes"):
        difference(_snap(1, 0, 0, []), _snap(2, 0, 0, []))


def test_the_command_reads_two_files(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_snap(3, 1, 1, [["MainThread", "cb", 1]])))
    b.write_text(json.dumps(_snap(3, 4, 1, [["MainThread", "cb", 5]])))
    main([str(a), str(b), "--events", "2"])
    out = capsys.readouterr().out
    assert "3 iterations with callbacks ready (1.5 per event)" in out
    assert "4 (2.0 per event)  MainThread  cb" in out


def test_the_workers_environment_keeps_the_counters_variables(monkeypatch) -> None:
    import dataclasses

    from app.settings import load
    from chaos.stack import component_env

    settings = dataclasses.replace(load(), fetch_max_wait_ms=37, fetch_min_bytes=4096)
    monkeypatch.setenv("DOCKET_LOOPCOUNT_DIR", "/tmp/loops")
    monkeypatch.setenv("DOCKET_FETCH_MAX_WAIT_MS", "999")  # a setting: from the Settings only
    monkeypatch.setenv("DOCKET_FETCH_MIN_BYTES", "1")
    env = component_env(settings)
    assert env["DOCKET_LOOPCOUNT_DIR"] == "/tmp/loops"
    assert env["DOCKET_FETCH_MAX_WAIT_MS"] == "37"
    assert env["DOCKET_FETCH_MIN_BYTES"] == "4096"  # the stack's workers fetch as its settings say


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "nan"])
def test_a_bad_dump_period_is_refused_naming_the_variable(tmp_path, raw) -> None:
    env = dict(os.environ, PYTHONPATH=str(LOOPCOUNT), DOCKET_LOOPCOUNT_DIR=str(tmp_path),
               DOCKET_LOOPCOUNT_INTERVAL_S=raw)
    probe = "import asyncio.base_events as b; print(b.BaseEventLoop._run_once.__module__)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert "DOCKET_LOOPCOUNT_INTERVAL_S" in out.stderr and "a number > 0" in out.stderr
    # the process runs on, without the counter
    assert out.returncode == 0 and out.stdout.split() == ["asyncio.base_events"]
