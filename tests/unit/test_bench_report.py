"""The pure parts of `make bench`: percentiles, histogram quantiles, the open-model
timeline, py-spy stack summaries, and the report's ratios, tables and README section."""

from __future__ import annotations

import datetime

import math
import re
from pathlib import Path

import pytest

from bench import profile, report
from bench.common import histogram_quantile, percentiles
from bench.kafka_native import marginal_cpu, timeline


def test_percentiles_use_nearest_rank() -> None:
    samples = list(range(1, 1001))  # 1..1000 ms
    got = percentiles(samples)
    assert got == {"count": 1000, "p50": 500, "p99": 990, "p999": 999, "max": 1000}


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles([]) == {"count": 0, "p50": None, "p99": None, "p999": None, "max": None}


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.01, 0), (0.02, 50), (0.05, 100), (math.inf, 100)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.02)
    assert histogram_quantile(buckets, 0.75) == pytest.approx(0.035)
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.015)


def test_histogram_quantile_in_the_overflow_bucket_is_the_last_finite_bound() -> None:
    buckets = [(0.1, 10), (1.0, 50), (math.inf, 100)]
    assert histogram_quantile(buckets, 0.99) == 1.0


def test_histogram_quantile_of_an_empty_histogram_is_none() -> None:
    assert histogram_quantile([(0.1, 0), (math.inf, 0)], 0.5) is None


def test_timeline_groups_results_by_second_of_publication() -> None:
    origin = 10_000.0
    published = [10_100, 10_900, 11_000, 12_500]
    latencies = [5.0, 7.0, 100.0, 3.0]
    assert timeline(published, latencies, origin) == [
        {"t": 0, "results_per_s": 2, "p99_ms": 7.0},
        {"t": 1, "results_per_s": 1, "p99_ms": 100.0},
        {"t": 2, "results_per_s": 1, "p99_ms": 3.0},
    ]


COLLAPSED = """\
_run (asyncio/events.py:80);process (agents/usher.py:40);evaluate (app/domains/inventory.py:90) 30
_run (asyncio/events.py:80);process (agents/usher.py:40);dumps (app/canonical.py:20) 10
_run (asyncio/events.py:80);send (aiokafka/producer/producer.py:400) 60
_run_once (asyncio/base_events.py:1900);select (selectors.py:468) 500
not a stack line
"""


def test_profile_top_counts_own_and_inclusive_time_per_event() -> None:
    got = profile.top(COLLAPSED, events=1000)
    assert got["samples"] == 100
    assert got["idle_samples"] == 500  # waiting in select() is not a cost
    assert got["cpu_seconds"] == 1.0
    assert got["cpu_us_per_event"] == 1000.0  # 1 CPU second over 1,000 events
    assert got["self"][0] == {"function": "send (producer.py)", "share": 0.6, "us_per_event": 600.0}
    inclusive = {r["function"]: r["share"] for r in got["total"]}
    assert inclusive["_run (events.py)"] == 1.0
    assert inclusive["process (usher.py)"] == 0.4


def test_profile_frame_names_keep_function_and_file() -> None:
    assert profile.parse_frame("evaluate (/x/app/domains/inventory.py:90)") == "evaluate (inventory.py)"
    assert profile.parse_frame("<module> (<stdin>:7)") == "<module> (<stdin>)"


RESULTS = {
    "kafka_ceiling": {"producer": {"records_per_s": 400_000.0, "record_bytes": 147, "p99_ms": 12},
                      "consumer": {"records_per_s": 900_000.0}},
    "aiokafka": {"produce": {"records_per_s": 50_000.0}, "consume": {"records_per_s": 80_000.0}},
    "faust_floor": {"events_per_s": 4_000.0},
    "quix": {"events": 100_000, "events_per_s": 2_000.0, "seconds": 50.0, "cpu_us_per_event": 75.5,
             "cpu_user_s": 7.0, "cpu_system_s": 0.55, "output_records": 100_000, "changelog_records": 1_280,
             "partitions": 8, "quixstreams": "3.28.1"},
    "drain": {"partitions": 8, "events": 10_000, "results": 10_000, "results_per_s": 12_000,
              "cpu_us_per_event": {"a": 35.2, "b": 34.9, "clerk": 28.0, "broker": 46.1},
              "cpu_us_per_event_total": 144.2},
    "kafka_native": {
        "max_rate_p99_under_100ms": 100, "max_sustained_rate": 200, "not_run": [800],
        "rates": [
            {"rate": 100, "throughput_per_s": 100.0, "results": 3000, "sent": 3000, "drained": True,
             "generator_worst_lag_ms": 3.0, "latency_ms": {"p50": 20, "p99": 80, "p999": 95, "max": 99}},
            {"rate": 400, "throughput_per_s": 320.0, "results": 9000, "sent": 12000, "drained": False,
             "generator_worst_lag_ms": 3.0, "latency_ms": {"p50": 900, "p99": None, "p999": None, "max": 5000}},
        ],
        "timeline": [{"t": 0, "results_per_s": 100, "p99_ms": 80}],
    },
    "http": {"rates": [{"rate": 1000, "requests": 60_000, "decided_per_s": 150.0, "throughput_per_s": 400.0,
                        "success_ratio": 0.25, "status_codes": {"200": 9000, "202": 51000},
                        "latency_ms": {"p50": 5000, "p99": 5100, "p999": 5200},
                        "server_ms": {"api_result_wait": {"count": 60000, "p50": 4000, "p99": 5000, "p999": 5000}},
                        "timeline": [{"t": 0, "ok_per_s": 150, "p99_ms": 5100}]}]},
}


def test_ratios_compare_the_drain_with_floor_and_ceiling() -> None:
    r = report.ratios(RESULTS)
    assert r["docket_per_s"] == 320.0  # the saturated step delivered the most
    # the floor and the ceiling go as fast as they can; so does the drain, not the
    # sweep (whose steps deliver at most what they are offered)
    assert r["docket_drain_per_s"] == 12_000
    assert r["docket_over_faust_floor"] == 3.0
    # Quix Streams is compared with docket's headline, the highest rate with p99 < 100 ms
    assert r["docket_p99_under_100ms_per_s"] == 100
    assert r["docket_over_quix"] == 0.05
    assert r["docket_over_kafka_ceiling"] == 0.03


def test_without_a_drain_the_floor_and_ceiling_ratios_are_not_given() -> None:
    old = {k: v for k, v in RESULTS.items() if k != "drain"}  # a report from before the drain was measured
    r = report.ratios(old)
    assert r["docket_over_faust_floor"] is None and r["docket_over_kafka_ceiling"] is None
    assert r["docket_per_s"] == 320.0
    rows = dict(report.summary_rows(old))
    assert rows["docket / Faust floor (docket's drain)"] == "n/a"
    assert not any(name.startswith("**docket draining") for name in rows)


def test_the_drain_row_follows_quix_with_each_processs_cpu() -> None:
    rows = report.summary_rows(RESULTS)
    names = [name for name, _ in rows]
    name, figure = rows[names.index(report.QUIX_ROW) + 1]
    assert name.startswith("**docket draining a backlog, 8 partitions**") and "10,000 events produced at once" in name
    assert figure == "**12,000 results/s**, 144 µs of CPU per event (a 35, b 35, Clerk 28, broker 46)"
    # a failed measurement is recorded as its error alone (bench/run.py)
    failed = report.summary_rows({"drain": {"error": "BenchError: the drain got 3 results"}})
    assert ("**docket draining a backlog** (closed model, as the Faust floor: events produced at once, first to "
            "last result)", "failed: BenchError: the drain got 3 results") in failed


def test_markdown_has_the_summary_sweep_http_and_stage_tables() -> None:
    text = report.markdown(RESULTS, "2026-11-22", ["x-latency.png"])
    assert "| measurement | figure |" in text
    assert "**100 events/s**" in text  # the headline
    assert "**no: saturated**" in text
    assert "Not run (a lower rate was already past saturation): 800 events/s." in text
    assert "| 1,000 | api_result_wait | 60,000 |" in text
    assert "![x-latency](x-latency.png)" in text


def test_a_failed_measurement_is_reported_as_failed() -> None:
    rows = dict(report.summary_rows({"faust_floor": {"error": "TimeoutError: no"}}))
    assert rows["Faust floor"] == "failed: TimeoutError: no"


def test_quix_row_and_ratio_sit_next_to_the_faust_floor() -> None:
    rows = report.summary_rows(RESULTS)
    names = [name for name, _ in rows]
    assert names.index(report.QUIX_ROW) == names.index("Faust floor: one agent, a RocksDB table update per event") + 1
    assert dict(rows)[report.QUIX_ROW] == "2,000 events/s, 76 µs of CPU per event"
    ratio = "docket / Quix Streams (docket's rate with p99 < 100 ms)"
    assert names.index(ratio) == names.index("docket / Faust floor (docket's drain)") + 1
    assert dict(rows)[ratio] == "0.050"


def test_quix_ratio_needs_both_figures() -> None:
    no_headline = {**RESULTS, "kafka_native": {**RESULTS["kafka_native"], "max_rate_p99_under_100ms": None}}
    assert report.ratios(no_headline)["docket_over_quix"] is None
    assert report.ratios({**RESULTS, "quix": {"error": "BenchError: no"}})["docket_over_quix"] is None
    rows = dict(report.summary_rows({}))
    assert report.QUIX_ROW not in rows  # not measured: no row
    assert rows["docket / Quix Streams (docket's rate with p99 < 100 ms)"] == "n/a"


def test_a_failed_quix_run_is_reported_as_failed() -> None:
    rows = dict(report.summary_rows({"quix": {"error": "BenchError: the Quix app exited"}}))
    assert rows[report.QUIX_ROW] == "failed: BenchError: the Quix app exited"
    failed = {"quix": {"error": "BenchError: the Quix app exited"}}
    assert "Failed: BenchError: the Quix app exited" in report.markdown(failed, "2026-11-22", [])


def test_markdown_has_the_quix_table() -> None:
    text = report.markdown(RESULTS, "2026-11-22", [])
    assert "## Quix Streams stateful app" in text
    assert "| 100,000 | 2,000 | 50.000 | 75.5 | 7.00 | 0.55 | 100,000 | 1,280 | 8 | 3.28.1 |" in text


def test_readme_block_has_the_quix_row_and_ratio(tmp_path: Path, monkeypatch) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.BEGIN}\nold\n{report.END}\n")
    monkeypatch.setattr(report, "README", readme)
    write_section = report.replace_readme_section
    monkeypatch.setattr(report, "replace_readme_section", lambda block: write_section(block, readme))
    written = report.write({**RESULTS}, tmp_path / "out", tmp_path, update_readme=True)
    assert readme in written
    text = readme.read_text()
    assert f"| {report.QUIX_ROW} | 2,000 events/s, 76 µs of CPU per event |" in text
    assert "| docket / Quix Streams (docket's rate with p99 < 100 ms) | 0.050 |" in text


def test_readme_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n")
    assert report.replace_readme_section("new table", readme)
    assert readme.read_text() == f"# x\n\nbefore\n{report.BEGIN}\nnew table\n{report.END}\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not report.replace_readme_section("new table", plain)
    assert plain.read_text() == "no markers\n"


def test_report_writes_json_markdown_and_two_pngs(tmp_path: Path) -> None:
    written = report.write({**RESULTS, "smoke": True}, tmp_path, tmp_path, update_readme=False)
    names = sorted(p.name for p in written)
    assert [n.split("-smoke")[1] for n in names] == ["-latency.png", "-timeline.png", ".json", ".md"]
    assert all(re.fullmatch(r"bench-\d{4}-\d\d-\d\d-\d{4}-smoke.*", n) for n in names), names
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_second_report_in_the_same_minute_overwrites_nothing(tmp_path: Path) -> None:
    at = datetime.datetime(2026, 12, 3, 11, 3, 45)
    first = report.write({**RESULTS, "smoke": True}, tmp_path, tmp_path, update_readme=False, now=at)
    second = report.write({**RESULTS, "smoke": True}, tmp_path, tmp_path, update_readme=False, now=at)
    assert not {p.name for p in first} & {p.name for p in second}
    assert sorted(p.name for p in second if p.suffix == ".md") == ["bench-2026-12-03-110345-smoke.md"]
    assert sorted(p.name for p in first if p.suffix == ".md") == ["bench-2026-12-03-1103-smoke.md"]
    assert len(list(tmp_path.glob("*.md"))) == 2


def test_profile_section_lists_every_process_cpu_and_the_top_functions() -> None:
    top = profile.top(COLLAPSED, events=1000)
    cpu = {"instance": {"user_s": 3.0, "system_s": 1.0, "cores": 0.2, "us_per_event": 1000.0},
           "broker": {"user_s": 5.0, "system_s": 1.0, "cores": 0.3, "us_per_event": 1500.0}}
    results = {"kafka_native": {"profile": {"rate": 50, "seconds": 20, "files": {"instance": "x.collapsed.txt"},
                                            "cpu": cpu, "instance": {**top, "cpu": cpu["instance"]}}}}
    text = report.profile_tables(results)
    lines = text.splitlines()
    broker = lines.index("| broker | 0.30 | 1,500 | 5.0 | 1.0 |")
    assert lines[broker + 1] == "| instance | 0.20 | 1,000 | 3.0 | 1.0 |"  # busiest first
    assert "| **all** | 0.50 | **2,500** |  |  |" in text
    assert "| `send (producer.py)` | 60.0% | 600.0 |" in text


def with_partitions() -> dict:
    native = dict(RESULTS["kafka_native"], partitions=8)
    native["rates"] = [dict(native["rates"][0], stages_ms={"instance a": {"p50": 7, "p99": 30},
                                                           "clerk": {"p50": 11, "p99": 40}})] + native["rates"][1:]
    other = {"partitions": 2, "max_rate_p99_under_100ms": 2000, "max_sustained_rate": 5000, "not_run": [],
             "rates": [{"rate": 2000, "throughput_per_s": 2000.0, "results": 40000, "sent": 40000, "drained": True,
                        "generator_worst_lag_ms": 3.0, "latency_ms": {"p50": 40, "p99": 90, "p999": 95, "max": 99},
                        "cpu": {"broker": {"seconds": 6.0, "cores": 0.3}, "clerk": {"seconds": 4.0, "cores": 0.2}},
                        "cpu_us_per_event": 250.0}]}
    return {**RESULTS, "kafka_native": dict(native, by_partitions=[other, {"partitions": 1, "error": "OSError: x"}])}


def test_each_partition_count_has_its_headline_row_and_its_own_tables() -> None:
    results = with_partitions()
    rows = dict(report.summary_rows(results))
    assert rows["**docket over Kafka, 8 partitions: highest rate with p99 < 100 ms** (open model, intended send -> "
                "result published)"] == "**100 events/s**"
    assert rows["**docket over Kafka, 2 partitions: highest rate with p99 < 100 ms**"] == \
        "**2,000 events/s, 250 µs of CPU per event** (sustained: 5,000 events/s)"
    assert rows["docket over Kafka, 1 partitions"] == "failed: OSError: x"
    assert rows["docket / Quix Streams, 2 partitions"] == "1.000"  # 2,000 against Quix's 2,000
    text = report.markdown(results, "2026-12-01", [])
    assert "### 8 partitions" in text and "### 2 partitions" in text
    assert "| 2,000 | 2,000 | 40,000/40,000 | 40 | 90 | 95 | 99 | 3 | 0.50 | 250 | yes |" in text
    # the stage table of the 8-partition sweep, with a column per stage measured
    assert "| 100 | n/a | 7 / 30 | n/a | n/a | 11 / 40 | n/a |" in text


def test_the_latency_plot_draws_every_partition_count(tmp_path: Path) -> None:
    written = report.write({**with_partitions(), "smoke": True}, tmp_path, tmp_path, update_readme=False)
    assert any(p.name.endswith("-latency.png") for p in written)


def _http_step(rate: int, decided: float, p99: float) -> dict:
    return {"rate": rate, "requests": rate * 60, "decided_per_s": decided, "success_ratio": 1.0,
            "status_codes": {"200": rate * 60}, "latency_ms": {"p50": p99 / 4, "p99": p99, "p999": p99 * 2},
            "warmup": {"rate": min(rate, 200), "duration_s": 10.0, "requests": 2000, "decided_per_s": 200.0,
                       "latency_ms": {"p50": 300, "p99": 2000}, "settled": True},
            "timeline": [{"t": 0, "ok_per_s": decided, "p99_ms": p99}]}


HTTP_BY_PARTITIONS = {"http": {
    "partitions": 8, "rates": [_http_step(100, 100.0, 30.0), _http_step(1000, 990.0, 250.0)],
    "by_partitions": [{"partitions": 2, "rates": [_http_step(1000, 1000.0, 60.0), _http_step(3000, 2990.0, 90.0),
                                                  _http_step(5000, 3100.0, 900.0)]},
                      {"partitions": 1, "error": "TimeoutError: api not ready"}]}}


def test_http_headline_is_the_most_decided_with_p99_under_100_ms() -> None:
    """The HTTP target's figure: decided/s of the best rate whose p99 (every answer) < 100 ms."""
    runs = report.http_runs(HTTP_BY_PARTITIONS)
    assert [r["partitions"] for r in runs] == [8, 2, 1]
    assert report.http_headline(runs[0])["rate"] == 100  # 1,000/s had p99 250 ms
    assert report.http_headline(runs[1])["rate"] == 3000  # 5,000/s decided more, but p99 900 ms
    assert report.http_headline({"rates": [_http_step(100, 100.0, 100.0)]}) is None  # not under


def test_http_rows_and_tables_per_partition_count() -> None:
    rows = dict(report.summary_rows(HTTP_BY_PARTITIONS))
    head = "**docket over HTTP, {}: most decided/s with p99 < 100 ms** (vegeta, after a warm-up)"
    assert rows[head.format("8 partitions")] == "**100 decided/s at 100/s offered**"
    assert rows[head.format("2 partitions")] == "**2,990 decided/s at 3,000/s offered**"
    assert rows["docket over HTTP, 1 partitions"] == "failed: TimeoutError: api not ready"
    text = report.http_tables(HTTP_BY_PARTITIONS)
    assert text.index("### 8 partitions") < text.index("### 2 partitions")
    assert "after a warm-up of 10 s at up to 200 requests/s" in text  # the fastest warm-up of the count
    assert "| 3,000 | 180,000 | 2,990 |" in text


def test_http_tables_show_each_processs_cpu_per_request_when_measured() -> None:
    """The API's own per-request cost (issue 13, item 6) next to every other process's."""
    step = {**_http_step(1000, 990.0, 250.0),
            "cpu": {"by_role": {"vegeta": {"seconds": 9.0, "cores": 0.18, "us_per_request": 150.0},
                                "api": {"seconds": 31.2, "cores": 0.52, "us_per_request": 520.0},
                                "clerk": {"seconds": 11.4, "cores": 0.19, "us_per_request": 190.0}},
                    "us_per_request": 860.0, "cores": 0.89}}
    text = report.http_table([step, _http_step(100, 100.0, 30.0)])
    assert "| offered /s | api | clerk | vegeta | all | cores |" in text  # the API first, the rest in a fixed order
    assert "| 1,000 | 520 | 190 | 150 | **860** | 0.89 |" in text
    assert "CPU per request" not in report.http_table([_http_step(100, 100.0, 30.0)])  # an older report: none


def _floor_step(rate: int, server_us: float) -> dict:
    return {"rate": rate, "requests": rate * 20, "success_ratio": 1.0, "latency_ms": {"p50": 0.4, "p99": 1.1},
            "cpu": {"by_role": {"server": {"seconds": 1.0, "cores": 0.2, "us_per_request": server_us},
                                "vegeta": {"seconds": 1.0, "cores": 0.2, "us_per_request": 120.0}},
                    "us_per_request": server_us + 120.0, "cores": 0.4}}


def _with_cpu(step: dict, api_us: float) -> dict:
    return {**step, "cpu": {"by_role": {"api": {"seconds": 1.0, "cores": 0.5, "us_per_request": api_us}},
                            "us_per_request": api_us, "cores": 0.5}}


def test_the_summary_puts_the_apis_cpu_per_request_next_to_the_http_floors() -> None:
    results = {"http": {"partitions": 8, "rates": [_with_cpu(_http_step(1000, 990.0, 250.0), 573.0),
                                                   _with_cpu(_http_step(2000, 1500.0, 900.0), 547.0)],
                        "floor": {"rates": [_floor_step(1000, 275.0), _floor_step(2000, 176.0)]}}}
    rows = dict(report.summary_rows(results))
    assert rows["docket's REST API: CPU per request, 8 partitions (the API process only)"] == \
        "573 µs at 1,000/s, 547 at 2,000/s"
    assert rows[report.HTTP_FLOOR_ROW] == "275 µs at 1,000/s, 176 at 2,000/s"
    text = report.markdown(results, "2026-12-03", [])
    assert "## The HTTP floor: a plain aiohttp app" in text
    assert "| 1,000 | 20,000 | 100.0% | 0.4 | 1.1 | 275 | 120 |" in text


def test_a_failed_http_floor_is_reported_as_failed_and_an_old_report_has_no_floor() -> None:
    results = {"http": {"partitions": 8, "rates": [_http_step(100, 100.0, 30.0)],
                        "floor": {"error": "RuntimeError: the HTTP floor's server exited 1"}}}
    assert dict(report.summary_rows(results))[report.HTTP_FLOOR_ROW] == \
        "failed: RuntimeError: the HTTP floor's server exited 1"
    old = dict(report.summary_rows(HTTP_BY_PARTITIONS))
    assert report.HTTP_FLOOR_ROW not in old and not any("CPU per request" in k for k in old)
    assert report.http_floor_table(HTTP_BY_PARTITIONS) == "Not measured."


def test_http_report_of_before_partitions_still_renders() -> None:
    """A report written before the HTTP runs had partition counts (one run, no header)."""
    text = report.http_tables(RESULTS)
    assert "###" not in text and "| 1,000 | 60,000 | 150 |" in text


def test_a_table_cell_stays_one_row_whatever_the_message() -> None:
    """A failure's message with line breaks and pipes (Kafka's per-topic errors) stays in its cell."""
    text = report.table(["measurement", "figure"], [["docket over HTTP", "failed: TopicError:\n a | b\n  c"]])
    assert text.splitlines()[2] == "| docket over HTTP | failed: TopicError: a \\| b c |"


def test_http_headline_needs_the_requests_decided() -> None:
    """Requests that failed answer fast: a step that decided under 99% is no headline."""
    failing = {**_http_step(5000, 40.0, 20.0), "success_ratio": 0.09}
    assert report.http_headline({"rates": [failing]}) is None
    assert report.http_headline({"rates": [failing, _http_step(100, 100.0, 30.0)]})["rate"] == 100


def _sweep_with_idle() -> dict:
    return {
        "partitions": 8,
        "idle": {"seconds": 10.0, "cpu": {"a": {"seconds": 0.5, "cores": 0.05}, "broker": {"seconds": 1.0, "cores": 0.1}}},
        "rates": [
            {"rate": 50, "cpu": {"a": {"seconds": 3.0, "cores": 0.15}, "broker": {"seconds": 6.0, "cores": 0.3},
                                 "clerk": {"seconds": 4.0, "cores": 0.2}}},
            {"rate": 1000, "cpu": {"a": {"seconds": 9.0, "cores": 0.45}, "broker": {"seconds": 12.0, "cores": 0.6}}},
            {"rate": 2000},  # no CPU figures (a stack without pids): left out
        ],
    }


def test_marginal_cpu_is_each_rates_cpu_above_idle_per_event_and_the_rate_that_fills_the_box() -> None:
    costs = marginal_cpu(_sweep_with_idle(), cores=2)
    assert [c["rate"] for c in costs] == [50, 1000]
    # (0.15 - 0.05) / 50 and (0.3 - 0.1) / 50 cores per event/s; the Clerk has no idle figure
    assert costs[0]["us_per_event"] == {"a": 2000.0, "broker": 4000.0}
    assert costs[0]["total_us"] == 6000.0
    assert costs[0]["bound_per_s"] == 333  # 2 cores / 6 ms
    assert costs[1]["us_per_event"] == {"a": 400.0, "broker": 500.0}
    assert costs[1]["bound_per_s"] == 2222


def test_marginal_cpu_needs_an_idle_measurement() -> None:
    assert marginal_cpu({"rates": _sweep_with_idle()["rates"]}) == []
    assert marginal_cpu({"idle": None, "rates": []}) == []


def test_the_report_shows_the_cost_above_idle_per_rate_and_in_the_summary() -> None:
    results = {"kafka_native": {**_sweep_with_idle(), "max_rate_p99_under_100ms": 50, "max_sustained_rate": 1000,
                                "timeline": []}}
    for step in results["kafka_native"]["rates"]:
        step.update(throughput_per_s=step["rate"], results=10, sent=10, drained=True,
                    latency_ms={"p50": 1, "p99": 2, "p999": 3, "max": 4})
    text = report.native_tables(results)
    assert "CPU per event above the idle stack (idle for 10 s after the warm-up, cores: a 0.050, broker 0.100)" in text
    assert "| offered /s | a µs | broker µs | total µs | every core at /s |" in text
    assert "| 50 | 2,000 | 4,000 | 6,000 |" in text
    rows = dict(report.summary_rows(results))
    assert rows["docket over Kafka: CPU per event above the idle stack at 50 events/s (every process)"].startswith(
        "6,000 µs: every core of the box at ")


def test_a_sweep_not_run_or_failed_is_one_line_not_an_empty_table() -> None:
    """`--only drain` (no sweep) printed the sweep's table header with no rows."""
    assert report.native_tables({}) == "Not measured."
    assert report.native_tables({"drain": {}}) == "Not measured."
    assert report.native_tables({"kafka_native": {"error": "RuntimeError: a | b"}}) == \
        "Not measured: RuntimeError: a \\| b"
