"""The resilience suite, CI-sized: ``docket chaos`` (app/chaos.py) runs every scenario
on its own broker with a few thousand events, as `make resilience` does with 100,000.
The harness is a subprocess, exactly as a user runs it: it starts the broker, instance
a, instance b and the Clerk as OS processes, kills them while the workload flows, and
writes a JSON report, which this test reads.

Spec rules checked (specs/failure-modes.allium; each through the invariants of
app/chaos_verify.py, after the scenario has drained):

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
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import broker as launcher
from app.chaos_scenarios import SCENARIOS
from app.chaos_verify import INVARIANTS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 1_500  # per scenario, at 100/s: a 15 s stream, long enough for two kills and their restarts
RATE = 100
KILLS = 2
SEED = 20_240_607


@pytest.mark.timeout(900)
def test_every_scenario_keeps_every_invariant(tmp_path: Path) -> None:
    try:
        launcher.java_executable()
    except launcher.MissingTool as exc:
        pytest.skip(f"docket chaos runs its own broker: {exc}")
    report_path = tmp_path / "chaos.json"
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "chaos", "--scenario", "all",
           "--events", str(EVENTS), "--rate", str(RATE), "--kills", str(KILLS), "--recovery-kills", "2",
           "--broker-restarts", "1", "--seed", str(SEED), "--report", str(report_path),
           "--workdir", str(tmp_path / "work")]
    began = time.monotonic()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=840,
                          # the harness (and through it every process it starts) dies with the test
                          preexec_fn=launcher.set_parent_death_signal if sys.platform == "linux" else None)
    elapsed = time.monotonic() - began
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert report_path.exists(), f"docket chaos wrote no report (exit code {proc.returncode}):\n{output}"
    report = json.loads(report_path.read_text())

    assert [e["name"] for e in report["scenarios"]] == list(SCENARIOS), output
    for e in report["scenarios"]:
        where = f"scenario {e['name']} (logs in {e['logs']})"
        assert e["error"] is None, f"{where}: {e['error']}\n{output}"
        for name in INVARIANTS:
            result = e["invariants"][name]
            assert result["passed"], f"{where}: invariant {name} failed: {result['detail']}"
        assert e["input_records"] >= EVENTS, where
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
