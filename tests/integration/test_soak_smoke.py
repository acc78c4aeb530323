"""`make soak`'s harness at smoke size (`python -m bench.soak` for half a minute on the
session's broker): it samples every process, reads the instances' RocksDB memory from
their /metrics (specs/integration.allium LedgerMemoryOnMetricsPage) into the verdict,
and writes its report and plot. It asserts that the harness measures, never how fast
anything is or whether so short a soak is flat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import soak

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_soak_smoke_samples_rocksdb_memory_and_writes_the_report(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env["DOCKET_DATA_ROOT"] = str(tmp_path / "data")
    out = tmp_path / "results"
    rate, duration = 20, 30
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--bootstrap", kafka_bootstrap, "--rate", str(rate), "--warmup-s", "5",
         "--duration-s", str(duration), "--sample-s", "2", "--no-warden", "--out", str(out)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=540)
    # exit 1 is a verdict (half a minute is too short to judge flatness), not a crash
    assert proc.returncode in (0, 1), f"bench.soak failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    assert "verdict: " in proc.stdout, proc.stdout[-3000:]
    assert "(RocksDB a " in proc.stderr, proc.stderr[-3000:]  # the progress line (stderr) shows it

    (path,) = out.glob("soak-*.json")
    report = json.loads(path.read_text())
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert report["latency_ms"]["drained"] and report["latency_ms"]["count"] == rate * duration
    measured = [s for s in report["samples"] if s["t"] >= 0]
    assert len(measured) >= duration // 2 - 2
    for role in ("a", "b"):
        read = [soak.rocksdb_mib(s, role) for s in measured]
        assert all(r is not None for r in read), role
        assert all(0 < used <= bound for used, bound in read), (role, read)
        for name in (f"rss {role}", f"rocksdb {role}", f"rss {role} less rocksdb"):
            assert report["verdict"]["series"][name]["flat"] is not None, name
    assert soak.rocksdb_mib(measured[-1], "clerk") is None  # the Clerk keeps no Ledger
