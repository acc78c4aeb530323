"""The resilience suite, CI-sized: ``docket chaos`` (chaos/cli.py) runs every scenario
on its own broker with a few thousand events, as `make resilience` does with 100,000.
The harness is a subprocess, exactly as a user runs it: it starts the broker, instance
a, instance b and the Clerk as OS processes, kills them while the workload flows, and
writes a JSON report, which this test reads.

Spec rules checked (specs/failure-modes.allium; each through the invariants of
chaos/verify.py, after the scenario has drained):

- CrashBeforeWardenWrite, CrashBetweenWardenAndEntityWrites,
  CrashAfterEntityWritesBeforeOutput, CrashAfterOutputBeforeCommit (kill-a, kill-b:
  SIGKILL at random points of the stream), BothInstancesKilled (kill-both),
  InstanceKilledDuringRecovery (kill-during-recovery: killed while restoring a deleted
  RocksDB from the changelog, and during start-up), ClerkKilled (kill-clerk),
  BrokerRestarted (broker-restart), CommitFailedDuringRebalance (a regression: kill-a
  once found an adjustment applied twice): in every scenario exactly one result per input
  event (read_committed), none lost, none duplicated (clerk/ClerkPublishesOnce); no
  divergence; every result equal to the pure replay's, outcome and digest
  (recovery/ReemittedOutputsAreIdentical); no negative stock published and per-sku
  totals equal to the applied adjustments (inventory NonNegativeStock,
  StockConservedPerSku); the stopped instances' Ledgers equal each other and the
  replay's (recovery/NoEventAppliedTwice).

The accounts domain runs a scenario too (``--domain accounts``), through its kit
(app/domains/kit.py) alone: the same generic invariants, and its own NonNegativeBalance,
MoneyConservedPerBook (so MoneyConservedPerCurrency) and ClosedAccountIsEmpty.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app.registry import registry
from chaos.scenarios import SCENARIOS
from chaos.verify import invariants
from launcher import broker as launcher

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 1_500  # per scenario, at 100/s: a 15 s stream, long enough for two kills and their restarts
RATE = 100
KILLS = 2
SEED = 20_240_607


def run_chaos(tmp_path: Path, *args: str, timeout_s: float) -> tuple[dict, subprocess.CompletedProcess, str]:
    """``docket chaos ARGS --report ... --workdir ...`` as a subprocess: (report, process,
    the tail of its output). Skips without Java (the harness runs its own broker)."""
    try:
        launcher.java_executable()
    except launcher.MissingTool as exc:
        pytest.skip(f"docket chaos runs its own broker: {exc}")
    report_path = tmp_path / "chaos.json"
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "chaos", *args,
           "--report", str(report_path), "--workdir", str(tmp_path / "work")]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s,
                          # the harness (and through it every process it starts) dies with the test
                          preexec_fn=launcher.set_parent_death_signal if sys.platform == "linux" else None)
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert report_path.exists(), f"docket chaos wrote no report (exit code {proc.returncode}):\n{output}"
    return json.loads(report_path.read_text()), proc, output


def assert_every_invariant(report: dict, domain: str, events: int, output: str) -> None:
    """Every scenario of ``report`` ran without error and kept every invariant of
    ``domain`` (the generic ones and its kit's), with at least ``events`` inputs."""
    names = list(invariants(registry.kit(domain)))
    assert report["options"]["domain"] == domain
    for e in report["scenarios"]:
        where = f"scenario {e['name']} (logs in {e['logs']})"
        assert e["error"] is None, f"{where}: {e['error']}\n{output}"
        assert list(e["invariants"]) == names, where
        for name in names:
            result = e["invariants"][name]
            assert result["passed"], f"{where}: invariant {name} failed: {result['detail']}"
        assert e["input_records"] >= events, where


@pytest.mark.timeout(900)
def test_every_scenario_keeps_every_invariant(tmp_path: Path) -> None:
    began = time.monotonic()
    report, proc, output = run_chaos(
        tmp_path, "--domain", "inventory", "--scenario", "all", "--events", str(EVENTS), "--rate", str(RATE),
        "--kills", str(KILLS), "--recovery-kills", "2", "--broker-restarts", "1", "--seed", str(SEED),
        timeout_s=840)
    elapsed = time.monotonic() - began

    assert [e["name"] for e in report["scenarios"]] == list(SCENARIOS), output
    assert_every_invariant(report, "inventory", EVENTS, output)
    for e in report["scenarios"]:
        where = f"scenario {e['name']} (logs in {e['logs']})"
        # every kill round recovered: its victims were ready again and every event
        # produced before the kill got its result
        for r in e["recoveries"]:
            assert r.get("recover_s") is not None, f"{where}: round {r} did not recover"
        assert e["passed"], where
    by_name = {e["name"]: e for e in report["scenarios"]}
    for name in ("kill-a", "kill-b", "kill-clerk"):
        assert by_name[name]["kill_count"] == KILLS, by_name[name]["kills"]
        # the first kill of each scenario lands while the workload flows (a later one may
        # wait for the previous restart beyond the end of a 15 s stream)
        assert by_name[name]["kills"][0]["kind"] == "mid-stream", by_name[name]["kills"]
    both = by_name["kill-both"]["kills"]
    assert len(both) == KILLS and all(k["victims"] == ["a", "b"] for k in both), both
    # kill-during-recovery: kills that landed after a restart and before its ready line,
    # in the table restore of a deleted RocksDB (round 1) and in start-up (round 2)
    early = [k for k in by_name["kill-during-recovery"]["kills"] if k["kind"] == "before ready"]
    assert len(early) >= 2, by_name["kill-during-recovery"]["kills"]
    assert any("restoring" in k["phase"].values() for k in early), early
    assert by_name["broker-restart"]["kill_count"] == 1
    assert report["passed"] is True
    assert proc.returncode == 0, output
    summary = proc.stdout[proc.stdout.rfind("docket chaos, seed"):]
    print(f"\ndocket chaos, {EVENTS} events x {len(SCENARIOS)} scenarios in {elapsed:.0f} s:\n{summary}")


ACCOUNTS_EVENTS = 2_000  # at 100/s: a 20 s stream with one kill in it


@pytest.mark.timeout(300)
def test_accounts_survives_instance_kills_with_its_invariants(tmp_path: Path) -> None:
    """The chaos suite on the accounts domain (``docket chaos --domain accounts``): instance
    a is SIGKILLed mid-stream and restarted (CrashBeforeWardenWrite,
    CrashBetweenWardenAndEntityWrites, CrashAfterEntityWritesBeforeOutput,
    CrashAfterOutputBeforeCommit at a random point); exactly one result per input event
    (clerk/ClerkPublishesOnce), no divergence, every result equal to the pure replay's
    (recovery/ReemittedOutputsAreIdentical), the Ledgers of a and b equal the replay's
    (recovery/NoEventAppliedTwice), and the accounts invariants over the published
    results: NonNegativeBalance, MoneyConservedPerBook and MoneyConservedPerCurrency
    (balances == applied deposits - withdrawals per book and currency), ClosedAccountIsEmpty
    (and closed stays closed)."""
    report, proc, output = run_chaos(
        tmp_path, "--domain", "accounts", "--scenario", "kill-a", "--events", str(ACCOUNTS_EVENTS),
        "--rate", str(RATE), "--kills", "1", "--seed", str(SEED), timeout_s=280)
    assert [e["name"] for e in report["scenarios"]] == ["kill-a"], output
    assert_every_invariant(report, "accounts", ACCOUNTS_EVENTS, output)
    entry = report["scenarios"][0]
    assert entry["kill_count"] == 1 and entry["kills"][0]["kind"] == "mid-stream", entry["kills"]
    assert all(r.get("recover_s") is not None for r in entry["recoveries"]), entry["recoveries"]
    detail = entry["invariants"]["closed_accounts_empty"]["detail"]
    assert not detail.startswith("0 accounts closed"), detail  # the workload closes accounts
    assert report["passed"] is True and proc.returncode == 0, output
    print(f"\ndocket chaos --domain accounts: {proc.stdout[proc.stdout.rfind('docket chaos, seed'):]}")


@pytest.mark.timeout(480)
def test_an_activation_in_the_middle_of_a_scenario_keeps_every_invariant(tmp_path: Path) -> None:
    """The chaos suite with live versioning (specs/versioning.allium): `docket chaos
    --activate inventory/2` activates inventory/2 on every partition once half the
    events are produced, while instance b is SIGKILLed and restarted and, in a second
    scenario, the broker stops and starts. ActivationSwitchesPartition,
    ReplayAcrossActivation, OperatorActivatesVersion: every partition got its activation
    mid-stream; one result per input event (activation records included), no
    divergence, every result equal to the pure replay's (which switches version at the
    same offsets), the Ledgers equal the replay's, the inventory invariants hold."""
    report, proc, output = run_chaos(
        tmp_path, "--domain", "inventory", "--scenario", "kill-b", "--scenario", "broker-restart",
        "--events", str(EVENTS), "--rate", str(RATE), "--kills", "1", "--broker-restarts", "1",
        "--activate", "inventory/2", "--seed", str(SEED + 1), timeout_s=400)
    assert [e["name"] for e in report["scenarios"]] == ["kill-b", "broker-restart"], output
    assert_every_invariant(report, "inventory", EVENTS, output)
    for e in report["scenarios"]:
        placed = {int(p): o for p, o in e["activations"].items()}
        assert sorted(placed) == list(range(4)) and all(o > 0 for o in placed.values()), e["activations"]
        assert e["input_records"] >= EVENTS + len(placed), e  # the activation records are inputs too
        assert e["passed"], f"scenario {e['name']} (logs in {e['logs']})"
    assert report["passed"] is True and proc.returncode == 0, output
    print(f"\ndocket chaos --activate inventory/2: {proc.stdout[proc.stdout.rfind('docket chaos, seed'):]}")


@pytest.mark.timeout(180)
def test_an_interrupted_run_stops_everything_and_names_its_kept_directory(tmp_path: Path) -> None:
    """A SIGTERM stops a run as Ctrl-C does: exit code 130, every process it started gone,
    and its work directory kept and named (an interrupted run left its temporary
    directory without a word: the fifteenth fresh-user trial)."""
    import os
    import signal

    try:
        launcher.java_executable()
    except launcher.MissingTool as exc:
        pytest.skip(f"docket chaos runs its own broker: {exc}")
    work = tmp_path / "work"
    log = tmp_path / "chaos.out"
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "chaos", "--scenario", "kill-a",
           "--events", "100000", "--rate", "100", "--workdir", str(work)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=launcher.set_parent_death_signal if sys.platform == "linux" else None)
    try:
        deadline = time.monotonic() + 120
        while "stack ready" not in log.read_text():  # the broker and the workers run
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)  # poll interval of the condition above
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 130, output[-3000:]
    assert "interrupted: every process the run started has been stopped" in output
    assert f"logs and data kept in {work}" in output, output[-3000:]
    assert (work / "broker").is_dir()
    # nothing of the run is left running: no process has the work directory in its command line
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True, check=False).stdout.split()
    assert left == [], left
