"""The pure parts of `make soak` (bench/soak.py) and of the Warden memory measurement
(bench/warden_memory.py): the flatness verdict on synthetic series, the latency window
aggregation, the metrics page parsing, the headline rate and the report writer. No
broker."""

from __future__ import annotations

import datetime
import json
import math
import os
import random
from collections import Counter

import pytest

from bench import profile, soak, warden_memory
from bench.common import linear_fit, percentiles

DURATION = 600.0
TS = [float(t) for t in range(0, 601, 5)]  # a sample every 5 s over the measured 10 minutes


# --------------------------------------------------------------------------- flatness

def test_linear_fit_recovers_a_line() -> None:
    slope, intercept = linear_fit([0, 1, 2, 3], [1, 3, 5, 7])
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(1.0)
    assert linear_fit([1, 1, 1], [1, 2, 3]) is None
    assert linear_fit([1], [1]) is None


def test_a_constant_rss_is_flat() -> None:
    got = soak.judge_relative(TS, [200.0] * len(TS), DURATION)
    assert got["flat"] is True
    assert got["projected_growth"] == pytest.approx(0.0)
    assert got["first_half_mean"] == pytest.approx(200.0)


def test_a_growing_rss_is_not_flat() -> None:
    # 200 MiB growing 0.05 MiB/s: 30 MiB per 10 minutes, 15% of the first half's mean
    ys = [200 + 0.05 * t for t in TS]
    got = soak.judge_relative(TS, ys, DURATION)
    assert got["flat"] is False
    assert got["projected_growth"] == pytest.approx(30.0)
    assert got["projected_share"] == pytest.approx(30.0 / (200 + 0.05 * 147.5), rel=1e-3)


def test_a_slowly_growing_rss_under_the_limit_is_flat() -> None:
    ys = [200 + 0.02 * t for t in TS]  # 12 MiB per 10 minutes: 5.8%
    assert soak.judge_relative(TS, ys, DURATION)["flat"] is True


def test_noise_around_a_level_is_flat() -> None:
    rng = random.Random(7)
    ys = [200 + rng.uniform(-8, 8) for _ in TS]  # +-4% of jitter
    got = soak.judge_relative(TS, ys, DURATION)
    assert got["flat"] is True
    assert abs(got["projected_share"]) < soak.RSS_GROWTH


def test_growth_hidden_in_noise_is_still_found() -> None:
    rng = random.Random(7)
    ys = [200 + 0.1 * t + rng.uniform(-8, 8) for t in TS]  # 60 MiB per 10 minutes under the jitter
    assert soak.judge_relative(TS, ys, DURATION)["flat"] is False


def test_growth_during_the_warm_up_and_first_half_only_is_flat() -> None:
    # memory that grows while caches fill, then levels off: only the second half is judged
    ys = [100 + min(t, 200) * 0.5 for t in TS]
    ts = [-40.0, -20.0, *TS]
    assert soak.judge_relative(ts, [50.0, 80.0, *ys], DURATION)["flat"] is True


def test_a_shrinking_series_is_flat() -> None:
    assert soak.judge_relative(TS, [300 - 0.1 * t for t in TS], DURATION)["flat"] is True


def test_missing_samples_are_skipped_and_too_few_are_not_judged() -> None:
    ys = [None if i % 2 else 100.0 for i in range(len(TS))]
    assert soak.judge_relative(TS, ys, DURATION)["flat"] is True
    got = soak.judge_relative([0, 400], [1.0, 1.0], DURATION)
    assert got["flat"] is None
    assert "fewer than 3" in got["why"]


def test_bounded_series() -> None:
    level = [40 + (5 if i % 3 == 0 else 0) for i in range(len(TS))]
    assert soak.judge_bounded(TS, level, DURATION, bound=100)["flat"] is True
    growing = [t * 0.5 for t in TS]  # reaches 300, projects +300 per 10 minutes
    got = soak.judge_bounded(TS, growing, DURATION, bound=100)
    assert got["flat"] is False
    assert got["second_half_max"] == 300
    spike = list(level)
    spike[-3] = 500  # a level series with one value past the bound
    assert soak.judge_bounded(TS, spike, DURATION, bound=100)["flat"] is False


def test_bounds_follow_the_rate() -> None:
    assert soak.bounds(1000, 8) == {"pending": 2000, "lag": 250}
    assert soak.bounds(10, 8) == {"pending": soak.MIN_BOUND, "lag": soak.MIN_BOUND}


def _samples(rss_b: float = 0.0, pending_growth: float = 0.0) -> list[dict]:
    return [{"t": t, "rss_mib": {"a": 200.0, "b": 200 + rss_b * t}, "pending": 60 + pending_growth * t,
             "lag": {"a": 3.0, "b": 5.0}} for t in TS]


def test_verdict_all_flat_and_fast() -> None:
    got = soak.verdict(_samples(), {"p99": 40, "drained": True}, duration_s=DURATION, rate=300, partitions=8)
    assert got["ok"] and got["flat"] and got["latency_ok"]
    assert got["failures"] == []
    assert set(got["series"]) == {"rss a", "rss b", "clerk pending positions", "lag a", "lag b"}


def test_verdict_names_what_failed() -> None:
    got = soak.verdict(_samples(rss_b=0.1, pending_growth=2.0), {"p99": 180, "drained": True},
                       duration_s=DURATION, rate=300, partitions=8)
    assert not got["ok"]
    text = "\n".join(got["failures"])
    assert "latency: p99 180 ms" in text
    assert "rss b: not flat" in text
    assert "clerk pending positions: not flat" in text
    assert "rss a" not in text and "lag" not in text


def test_verdict_fails_on_unanswered_events_and_an_unbounded_warden() -> None:
    got = soak.verdict(_samples(), {"p99": 40, "drained": False, "unanswered": 12}, duration_s=DURATION,
                       rate=300, partitions=8, warden={"verdict": {"bounded": False}})
    assert not got["ok"]
    assert any("12 events never answered" in f for f in got["failures"])
    assert any(f.startswith("warden: not bounded") for f in got["failures"])


def _filling(rss_growth: float, rocks_growth: float, bound_mib: float = 352.0) -> list[dict]:
    """Samples whose instance a's RSS grows by ``rss_growth`` MiB/s while its /metrics
    page reports RocksDB memory growing by ``rocks_growth`` MiB/s, under ``bound_mib``."""
    out = _samples()
    for s in out:
        t = s["t"]
        s["rss_mib"]["a"] = 72.0 + rss_growth * t
        rocks = (4.0 + rocks_growth * t) * soak.MIB
        s["metrics"] = {"a": {f'{soak.ROCKS_USED}{{kind="memtables"}}': rocks * 0.9,
                              f'{soak.ROCKS_USED}{{kind="block_cache"}}': rocks * 0.1,
                              soak.ROCKS_BOUND: bound_mib * soak.MIB}}
    return out


def test_rss_that_grows_only_by_rocksdb_filling_to_its_bound_passes() -> None:
    """A first memtable fill (the 50/s soak of 2026-12-03 11:29: +23 MiB in 10 min) is
    RocksDB's bounded memory, not a leak: the verdict passes and says so."""
    got = soak.verdict(_filling(0.04, 0.04), {"p99": 40, "drained": True}, duration_s=DURATION, rate=50,
                       partitions=8)
    assert got["series"]["rss a"]["flat"] is False and got["series"]["rss a"]["rocksdb_fill"] is True
    assert got["series"]["rss a less rocksdb"]["flat"] is True
    assert got["series"]["rocksdb a"]["flat"] is True
    assert got["ok"] and got["flat"] and got["failures"] == []
    lines = soak.verdict_lines({"verdict": got, "latency_ms": {"count": 1, "p50": 1, "p99": 40, "p999": 50,
                                                               "max": 60}})
    assert any(line.startswith("rss a ") and "FILLING" in line and "RocksDB filling towards its bound" in line
               for line in lines)
    assert any(line.startswith("rocksdb a ") and " MiB, max " in line for line in lines)
    assert lines[-1].startswith("verdict: OK") and "rss a" in lines[-1]


def test_rss_that_grows_beyond_rocksdb_growth_fails() -> None:
    got = soak.verdict(_filling(0.04, 0.0), {"p99": 40, "drained": True}, duration_s=DURATION, rate=50,
                       partitions=8)
    assert not got["ok"]
    assert "rocksdb_fill" not in got["series"]["rss a"]
    assert any(f.startswith("rss a: not flat") for f in got["failures"])
    assert any(f.startswith("rss a less rocksdb: not flat") for f in got["failures"])


def test_rocksdb_memory_past_its_bound_fails() -> None:
    got = soak.verdict(_filling(0.04, 0.04, bound_mib=20.0), {"p99": 40, "drained": True}, duration_s=DURATION,
                       rate=50, partitions=8)
    assert not got["ok"]
    assert any(f.startswith("rocksdb a: not flat") for f in got["failures"])
    assert any(f.startswith("rss a: not flat") for f in got["failures"])


def test_a_flat_rss_passes_whatever_rocksdb_memory_does_meanwhile() -> None:
    """A memtable flush in the judged half (RocksDB's memory falls, RSS keeps the
    pages) makes the RSS less RocksDB rise; with the RSS itself flat that is shown for
    information and fails nothing (found by the fresh-clone check of 2026-12-03)."""
    samples = _filling(0.0, 0.0)
    for s in samples:
        if s["t"] >= 450:
            for k in s["metrics"]["a"]:
                if k.startswith(soak.ROCKS_USED):
                    s["metrics"]["a"][k] /= 10
    got = soak.verdict(samples, {"p99": 40, "drained": True}, duration_s=DURATION, rate=50, partitions=8)
    assert got["series"]["rss a"]["flat"] is True
    assert got["series"]["rss a less rocksdb"]["flat"] is False
    assert got["series"]["rss a less rocksdb"]["informational"] is True
    assert got["ok"] and got["flat"] and got["failures"] == []
    lines = soak.verdict_lines({"verdict": got, "latency_ms": {"count": 1, "p50": 1, "p99": 40, "p999": 50,
                                                               "max": 60}})
    assert any(line.startswith("rss a less rocksdb") and "for information" in line for line in lines)


def test_rocksdb_mib_reads_the_instance_page_only() -> None:
    s = _filling(0.0, 0.0)[0]
    assert soak.rocksdb_mib(s, "a") == pytest.approx((4.0, 352.0))
    assert soak.rocksdb_mib(s, "b") is None
    assert soak.rocksdb_mib({"t": 0}, "a") is None


# --------------------------------------------------------------------------- latency windows

def test_counter_percentiles_match_the_sample_percentiles() -> None:
    rng = random.Random(3)
    values = [rng.randint(1, 400) for _ in range(5000)]
    got = soak.counter_percentiles(Counter(values))
    assert got == percentiles(values)
    assert soak.counter_percentiles(Counter()) == {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}


def test_latencies_are_whole_ms_rounded_up() -> None:
    assert [soak.ceil_ms(x) for x in (0.0, 0.2, 1.0, 1.01, -0.4)] == [0, 1, 1, 2, 0]


def test_windows_group_by_publication_time_and_split_the_warm_up() -> None:
    origin = 1_000_000.0
    w = soak.LatencyWindows(origin_ms=origin, window_s=5)
    w.add(origin - 3000, origin - 3010)  # warm-up: intended and published before the origin
    w.add(origin + 20, origin - 10)  # intended in the warm-up, published after: the warm-up's
    for i in range(100):  # window 0: latencies 1..100 ms
        w.add(origin + 100 + i, origin + 100 + i - (i + 1))
    w.add(origin + 5000, origin + 4990)  # the first ms of window 1
    series = w.series()
    assert [s["t"] for s in series] == [-5, 0, 5]
    assert series[0] == {"t": -5, "results": 1, "p50_ms": 10, "p99_ms": 10, "max_ms": 10, "late": 0}
    assert series[1]["results"] == 101 and series[1]["p99_ms"] == 99 and series[1]["max_ms"] == 100
    assert series[2]["results"] == 1 and series[2]["p50_ms"] == 10
    assert sum(w.warmup.values()) == 2
    assert soak.counter_percentiles(w.measured)["count"] == 101
    assert w.recent(origin + 5000, 5)["count"] == 101  # window 0 ended at +5 s
    assert w.recent(origin + 10_000, 5)["count"] == 1


def test_sealed_windows_keep_their_summary_and_count_late_results() -> None:
    origin = 1_000_000.0
    w = soak.LatencyWindows(origin_ms=origin, window_s=5)
    for i in range(100):
        w.add(origin + 100 + i, origin + 100 + i - (i + 1))  # window 0: 1..100 ms
    w.add(origin + 6000, origin + 5990)  # window 1
    before = w.series()
    w.seal(origin + 5000)  # window 0 ended at +5 s: not before it
    assert set(w.windows) == {0, 1} and not w.sealed
    w.seal(origin + 5001)
    assert set(w.windows) == {1} and set(w.sealed) == {0}
    assert w.series() == before
    w.add(origin + 4000, origin + 3500)  # read late: 500 ms, into the sealed window 0
    after = w.series()
    assert after[0] == {**before[0], "late": 1}
    assert soak.counter_percentiles(w.measured)["count"] == 102
    assert soak.counter_percentiles(w.measured)["max"] == 500


# --------------------------------------------------------------------------- pages and files

PAGE = """# HELP docket_clerk_pending_positions positions held in memory
# TYPE docket_clerk_pending_positions gauge
docket_clerk_pending_positions 42.0
# HELP docket_clerk_instance_lag offsets an instance is behind the most advanced one
# TYPE docket_clerk_instance_lag gauge
docket_clerk_instance_lag{instance="a"} 0.0
docket_clerk_instance_lag{instance="b"} 7.0
# HELP docket_clerk_decisions results published
# TYPE docket_clerk_decisions counter
docket_clerk_decisions_total 1234.0
docket_clerk_decisions_created 1.7e9
# HELP docket_clerk_decision_latency_seconds input -> result
# TYPE docket_clerk_decision_latency_seconds histogram
docket_clerk_decision_latency_seconds_bucket{le="0.1"} 3.0
docket_clerk_decision_latency_seconds_bucket{le="+Inf"} 4.0
docket_clerk_decision_latency_seconds_count 4.0
docket_clerk_decision_latency_seconds_sum 0.5
"""


def test_metrics_page_parsing_and_the_clerk_figures() -> None:
    got = soak.parse_metrics(PAGE)
    assert got["docket_clerk_pending_positions"] == 42
    assert got['docket_clerk_instance_lag{instance="b"}'] == 7
    assert got["docket_clerk_decisions_total"] == 1234
    assert got["docket_clerk_decision_latency_seconds_count"] == 4
    assert not any(k.endswith(("_created",)) or "_bucket" in k for k in got)
    assert soak.clerk_figures(got, ["a", "b"]) == (42, {"a": 0, "b": 7})
    assert soak.clerk_figures(None, ["a", "b"]) == (None, {})


def test_headline_rate_is_the_latest_complete_reports(tmp_path) -> None:
    assert soak.headline_rate(tmp_path) == (soak.DEFAULT_RATE, "default")
    (tmp_path / "bench-2026-11-21-0900.json").write_text(json.dumps({"kafka_native": {"max_rate_p99_under_100ms": 150}}))
    (tmp_path / "bench-2026-11-22-0412.json").write_text(json.dumps({"kafka_native": {"max_rate_p99_under_100ms": 200}}))
    (tmp_path / "bench-2026-11-23-0100-smoke.json").write_text(json.dumps({"kafka_native": {"max_rate_p99_under_100ms": 50}}))
    (tmp_path / "bench-2026-11-23-0200.json").write_text(json.dumps({"kafka_native": {"error": "boom"}}))
    assert soak.headline_rate(tmp_path) == (200, "bench-2026-11-22-0412.json")


def test_headline_rate_is_the_one_of_the_partition_count_soaked(tmp_path) -> None:
    (tmp_path / "bench-2026-11-22-0412.json").write_text(json.dumps({"kafka_native": {"max_rate_p99_under_100ms": 200}}))
    (tmp_path / "bench-2026-12-01-1400.json").write_text(json.dumps({"kafka_native": {
        "partitions": 8, "max_rate_p99_under_100ms": 150,
        "by_partitions": [{"partitions": 2, "max_rate_p99_under_100ms": 1000}, {"partitions": 1, "error": "x"}]}}))
    assert soak.headline_rate(tmp_path, 2) == (1000, "bench-2026-12-01-1400.json")
    assert soak.headline_rate(tmp_path, 8) == (150, "bench-2026-12-01-1400.json")
    # a report of before the per-count sweeps is the default count's
    (tmp_path / "bench-2026-12-01-1400.json").unlink()
    assert soak.headline_rate(tmp_path, 8) == (200, "bench-2026-11-22-0412.json")
    assert soak.headline_rate(tmp_path, 4) == (soak.DEFAULT_RATE, "default")


def _report(with_warden: bool, with_cpu: bool = False) -> dict:
    samples = [{**s, "t": s["t"]} for s in _samples()]
    samples.insert(0, {"t": -10.0, "rss_mib": {"a": 150.0, "b": 150.0}, "pending": 10, "lag": {}})
    windows = [{"t": t, "results": 1500, "p50_ms": 15, "p99_ms": 60 + (t % 20), "max_ms": 90} for t in TS[:-1]]
    latency = {"count": 180_000, "p50": 15, "p99": 70, "p999": 90, "max": 120, "drained": True}
    report = {"settings": {"rate": 300, "duration_s": DURATION, "warmup_s": 40, "sample_s": 5},
              "samples": samples, "windows": windows, "latency_ms": latency, "partitions": 8}
    if with_warden:
        ws = [{"stream_s": s, "rss_bytes": (100 + min(s, 300)) * 2**20, "queue_bytes": min(s, 300) * 2**20 // 4,
               "rocks_memtables_bytes": 64 * 2**20, "live_versions": min(s, 300) * 10_000} for s in range(0, 601, 30)]
        report["warden"] = {"rate": 10_000, "ttl_s": 300, "samples": ws, "peak_rss_bytes": 400 * 2**20,
                            "end": {**ws[-1], "queue_bytes_per_version": 26.2},
                            "verdict": warden_memory.bounded(ws, rate=10_000, ttl_s=300, commit_lag_s=0)}
    report["verdict"] = soak.verdict(samples, latency, duration_s=DURATION, rate=300, partitions=8,
                                     warden=report.get("warden"))
    if with_cpu:
        for s in samples:
            s["wall_ms"] = 1_000_000 + s["t"] * 1000
            s["cpu_s"] = {"a": 0.5 * s["t"] + 100, "clerk": 0.25 * s["t"] + 100}
            s["box_cpu_s"] = {"busy": 1.5 * s["t"] + 1000, "idle": 0.5 * s["t"], "steal": 0.0}
        report["cpu"] = soak.cpu_summary(samples, windows, 5, cpu_count=2)
    return report


@pytest.mark.parametrize("with_warden", [False, True])
def test_the_report_writer_writes_json_and_a_png(tmp_path, with_warden) -> None:
    report = _report(with_warden, with_cpu=with_warden)
    paths = soak.write_report(report, tmp_path / "out", now=datetime.datetime(2026, 12, 1, 9, 5))
    assert [p.name for p in paths] == ["soak-2026-12-01-0905.json", "soak-2026-12-01-0905.png"]
    back = json.loads(paths[0].read_text())
    assert back["verdict"]["ok"] is True
    assert back["latency_ms"]["p99"] == 70
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = soak.verdict_lines(report)
    assert lines[-1] == "verdict: OK: p99 < 100 ms and everything flat"
    assert any(line.startswith("rss b") and "flat" in line for line in lines)
    assert with_warden == any(line.startswith("warden at 10,000/s") for line in lines)
    # the CPU line is there when the samples read the CPU, and never decides the verdict
    cpu = [line for line in lines if line.startswith("cpu (for information)")]
    assert len(cpu) == with_warden
    if with_warden:
        assert "the box busy 1.50 of 2 cores" in cpu[0] and "cores per process: a 0.50, clerk 0.25" in cpu[0]


# --------------------------------------------------------------------------- CPU (for information)

def test_box_cpu_seconds_reads_the_cpu_line_of_proc_stat() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    stat = "cpu  100 20 30 400 50 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    got = profile.box_cpu_seconds(stat)
    assert got == {"busy": (100 + 20 + 30 + 6 + 7) / tick, "idle": (400 + 50) / tick, "steal": 8 / tick}
    with pytest.raises(ValueError):
        profile.box_cpu_seconds("intr 1 2 3\n")
    live = profile.box_cpu_seconds()  # this machine's own /proc/stat
    assert live["busy"] > 0 and live["idle"] >= 0 and live["steal"] >= 0


def _cpu_sample(t: float, a: float | None, busy: float, steal: float = 0.0) -> dict:
    return {"t": t, "wall_ms": 5_000_000 + t * 1000, "cpu_s": {"clerk": t * 0.3, **({"a": a} if a is not None else {})},
            "box_cpu_s": {"busy": busy, "idle": 0.0, "steal": steal}}


def test_cpu_intervals_are_cores_between_consecutive_samples() -> None:
    samples = [_cpu_sample(0, 10.0, 100.0), _cpu_sample(5, 12.5, 109.0, 0.5), _cpu_sample(10, None, 118.0, 0.5),
               {**_cpu_sample(10, 20.0, 120.0), "wall_ms": 5_000_000 + 10_000}]  # no wall time between: skipped
    got = soak.cpu_intervals(samples)
    assert len(got) == 2
    assert got[0] == {"t": 5, "span_s": 5.0, "cores": {"a": 0.5, "clerk": 0.3}, "box": {"busy": 1.8, "steal": 0.1}}
    # instance a gone from the later sample: left out, not read as zero
    assert got[1]["cores"] == {"clerk": 0.3} and got[1]["box"] == {"busy": 1.8, "steal": 0.0}
    # samples of an older report (no CPU readings) give no cores and no box figures
    assert soak.cpu_intervals([{"t": 0, "wall_ms": 0}, {"t": 5, "wall_ms": 5000}]) == [
        {"t": 5, "span_s": 5.0, "cores": {}, "box": None}]


def test_cpu_summary_splits_the_box_by_the_latency_of_its_window() -> None:
    # the box busy 1.0 core during the warm-up (excluded), then 1.9 during the one slow window, 1.2 in the rest
    # samples a little before each window starts, as a real soak's fall; the interval
    # from -0.2 to 4.8 s is the measured period's first (its midpoint is past 0)
    busy, samples = 0.0, []
    for t in range(-10, 31, 5):
        samples.append(_cpu_sample(t - 0.2, (t - 0.2) * 0.5, busy))
        busy += 5 * (1.0 if t < 0 else 1.9 if 10 <= t < 15 else 1.2)
    # the window at 30 s is the drain's tail, after the last sample: slow, but no CPU
    # interval falls in it, so it is not counted
    windows = [{"t": float(t), "p99_ms": 180 if t in (10, 30) else 40} for t in range(-10, 35, 5)]
    got = soak.cpu_summary(samples, windows, 5, cpu_count=2)
    assert got["intervals"] == 6  # 0..30 s: the warm-up's two intervals are left out
    assert got["slow_windows"] == 1
    assert got["box_busy_slow"] == 1.9 and got["box_busy_fast"] == 1.2
    assert got["box_busy"] == round((1.9 + 5 * 1.2) / 6, 3)
    assert got["roles"] == {"a": 0.5, "clerk": 0.3}
    line = soak.cpu_line(got)
    assert "1.90 during the 1 windows with p99 >= 100 ms, 1.20 during the others" in line
    assert soak.cpu_line(soak.cpu_summary([], windows, 5, cpu_count=2)).endswith("no CPU readings in the measured period")


def test_two_soaks_in_one_minute_keep_both_reports(tmp_path) -> None:
    """A second report of the same minute takes the seconds into its name rather than
    overwrite the first, and sorts after it (how the newest report is found)."""
    at = datetime.datetime(2026, 12, 1, 9, 5, 42)
    first = soak.write_report(_report(False), tmp_path, now=at)
    second = soak.write_report(_report(False), tmp_path, now=at)
    third = soak.write_report(_report(False), tmp_path, now=at)
    assert [p.name for p in second] == ["soak-2026-12-01-090542.json", "soak-2026-12-01-090542.png"]
    assert [p.name for p in third] == ["soak-2026-12-01-0905421.json", "soak-2026-12-01-0905421.png"]
    names = [p.name for p in (*first, *second, *third)]
    assert len(set(names)) == 6 and all((tmp_path / n).exists() for n in names)
    later = soak.write_report(_report(False), tmp_path, now=at.replace(minute=6, second=0))
    jsons = sorted(p.name for p in tmp_path.glob("*.json"))
    assert jsons == [first[0].name, second[0].name, third[0].name, later[0].name]


# --------------------------------------------------------------------------- the Warden's verdict

def test_warden_bounded_once_the_ttl_has_passed() -> None:
    ttl, rate = 300, 100.0
    level = [{"stream_s": s, "live_versions": rate * min(s, ttl), "queue_bytes": 85 * rate * min(s, ttl),
              "rss_bytes": 50e6 + 120 * rate * min(s, ttl)} for s in range(0, 601, 30)]
    assert warden_memory.bounded(level, rate=rate, ttl_s=ttl, commit_lag_s=0)["bounded"] is True
    leaking = [{**s, "rss_bytes": s["rss_bytes"] + 40_000 * s["stream_s"]} for s in level]
    got = warden_memory.bounded(leaking, rate=rate, ttl_s=ttl, commit_lag_s=0)
    assert got["bounded"] is False and got["rss_bytes_growth_per_ttl"] > warden_memory.GROWTH_PER_TTL
    never_collected = [{**s, "live_versions": rate * s["stream_s"]} for s in level]
    assert warden_memory.bounded(never_collected, rate=rate, ttl_s=ttl, commit_lag_s=0)["bounded"] is False
    assert warden_memory.bounded(level[:12], rate=rate, ttl_s=ttl, commit_lag_s=0)["bounded"] is None


def test_warden_measurement_at_a_small_scale(tmp_path) -> None:
    """The real Warden on real RocksDB, 2 TTLs of a 2-second TTL at 2,000/s: the live
    versions level off at rate x (ttl + lag)."""
    got = warden_memory.measure(2000, 2.0, ttls=3.0, commit_lag_s=0.5, root=tmp_path)
    assert got["records"] == 12_000
    live = [s["live_versions"] for s in got["samples"] if s["stream_s"] > 3]
    assert live and all(abs(v - 5000) <= 0.02 * 5000 + 256 for v in live)
    assert got["end"]["queue_bytes_per_version"] < 200
    assert math.isfinite(got["end"]["rss_bytes"])
