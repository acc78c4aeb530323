"""`make bench`'s harness at smoke size (`python -m bench.run --smoke`) on the session's
broker: each of the seven measurements yields figures, the report has its tables and
plots. It asserts that the harness measures, never how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_bench_smoke_measures_all_seven_and_writes_the_report(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKET_")}
    env["DOCKET_DATA_ROOT"] = str(tmp_path / "data")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--bootstrap", kafka_bootstrap, "--out", str(out),
         "--no-readme"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, f"bench.run failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"

    reports = list(out.glob("bench-*-smoke.json"))
    assert len(reports) == 1, sorted(p.name for p in out.iterdir())
    results = json.loads(reports[0].read_text())
    for key in ("kafka_ceiling", "aiokafka", "faust_floor", "quix", "drain", "kafka_native", "http"):
        assert key in results and "error" not in results[key], (key, results.get(key))

    assert results["kafka_ceiling"]["producer"]["records_per_s"] > 0
    assert results["kafka_ceiling"]["consumer"]["records_per_s"] > 0
    assert results["aiokafka"]["produce"]["records_per_s"] > 0
    assert results["aiokafka"]["consume"]["records_per_s"] > 0
    assert results["faust_floor"]["events_per_s"] > 0
    quix = results["quix"]
    assert quix["events"] == quix["output_records"] == results["plan"]["quix_events"]
    assert quix["events_per_s"] > 0 and quix["cpu_us_per_event"] is not None

    drain = results["drain"]
    # every event of the backlog got its result; the ratios to the floor and ceiling are the drain's
    assert drain["events"] == drain["results"] == results["plan"]["drain_events"]
    assert drain["results_per_s"] > 0 and set(drain["cpu_us_per_event"]) >= {"a", "b", "clerk"}

    native = results["kafka_native"]
    assert "max_rate_p99_under_100ms" in native
    assert [s["rate"] for s in native["rates"]] == results["plan"]["native_rates"]
    for step in native["rates"]:
        # every input record of the rate got exactly its one result
        assert step["drained"] and step["results"] == step["sent"] == round(step["rate"] * step["duration_s"])
        assert step["latency_ms"]["count"] == step["sent"] and step["latency_ms"]["p99"] is not None

    (http,) = results["http"]["rates"]
    # vegeta's pacer may stop one request short of rate x duration; what it sent is
    # what must be accounted for, each request by the status it got
    assert 0 < http["requests"] <= round(http["rate"] * http["duration_s"])
    assert sum(http["status_codes"].values()) == http["requests"], http["status_codes"]
    decided = sum(n for code, n in http["status_codes"].items() if code in ("200", "409"))
    assert decided > 0 and http["decided"] == decided, http["status_codes"]
    assert "api_result_wait" in http["server_ms"] and "clerk_decision" in http["server_ms"], http["server_ms"]
    # the CPU of every process of the HTTP stack and of vegeta was accounted, per request
    cpu = http["cpu"]["by_role"]
    assert {"api", "a", "b", "clerk", "vegeta"} <= set(cpu), cpu  # (the broker: only one bench.run started)
    assert cpu["api"]["seconds"] > 0 and cpu["vegeta"]["seconds"] > 0, cpu
    assert http["cpu"]["us_per_request"] > 0
    # the HTTP floor: a plain aiohttp app at the same rate, its server's CPU per request
    (floor,) = results["http"]["floor"]["rates"]
    assert floor["rate"] == http["rate"] and floor["requests"] > 0 and floor["success_ratio"] == 1.0, floor
    assert floor["cpu"]["by_role"]["server"]["seconds"] > 0, floor["cpu"]

    markdown = reports[0].with_suffix(".md").read_text()
    assert "| measurement | figure |" in markdown and "docket over HTTP" in markdown
    assert "Quix Streams stateful app (librdkafka)" in markdown
    images = sorted(out.glob("bench-*-smoke-*.png"))
    assert [p.name.rsplit("-", 1)[1] for p in images] == ["latency.png", "timeline.png"]
    for image in images:
        assert image.read_bytes()[:8] == PNG_MAGIC
