"""The baselines' pure parts: reading the Kafka perf tools' output, naming topics,
the workload sample, the Quix Streams app's per-event work and its figures. No broker; no speed is asserted.

The fixtures are the tools' real output (Kafka 4.1.2 on this project's broker)."""

from __future__ import annotations

import orjson
import pytest

from bench.aiokafka_ceiling import figures, sample_records
from bench.faust_floor_app import changelog_topic
from bench.kafka_ceiling import BenchError, parse_consumer_output, parse_producer_output, topic_name
from bench.quix import figures as quix_figures
from bench.quix_app import changelog_topic as quix_changelog_topic
from bench.quix_app import decide
from chaos.workload import inventory

# ProducerPerformance, 2,000,000 records of 147 B: one progress line (no percentiles),
# then the summary.
PRODUCER_OUT = """\
1278621 records sent, 255468.7 records/sec (35.81 MB/sec), 326.5 ms avg latency, 961.0 ms max latency.
2000000 records sent, 315258.5 records/sec (44.20 MB/sec), 346.65 ms avg latency, 961.00 ms max latency, \
408 ms 50th, 762 ms 95th, 874 ms 99th, 913 ms 99.9th.
"""

# ProducerPerformance against an address where no broker answers: exit code 0, all failed.
PRODUCER_FAILED_OUT = """\
org.apache.kafka.common.errors.TimeoutException: Topic t1 not present in metadata after 2000 ms.
org.apache.kafka.common.errors.TimeoutException: Topic t1 not present in metadata after 2000 ms.
0 records sent, 0.0 records/sec (0.00 MB/sec), NaN ms avg latency, 0.00 ms max latency, \
0 ms 50th, 0 ms 95th, 0 ms 99th, 0 ms 99.9th.
"""

CONSUMER_OUT = """\
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, \
fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-22 02:54:55:344, 2026-11-22 02:54:57:159, 322.4373, 177.6514, 2300000, 1267217.6309, 378, 1437, \
224.3822, 1600556.7154
"""

# ConsumerPerformance on an empty topic, --messages 1000 --timeout 2000: it gives up,
# warns between the header and the values, and still exits 0.
CONSUMER_GAVE_UP_OUT = """\
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, \
fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
WARNING: Exiting before consuming the expected number of messages: timeout (2000 ms) exceeded. \
You can use the --timeout option to increase the timeout.
2026-11-22 02:56:21:518, 2026-11-22 02:56:23:596, 0.0000, 0.0000, 0, 0.0000, 536, 1542, 0.0000, 0.0000
"""


def test_producer_summary_is_the_line_with_percentiles():
    figures_ = parse_producer_output(PRODUCER_OUT)
    assert figures_ == {
        "records": 2_000_000, "records_per_s": 315258.5, "mb_per_s": 44.2,
        "avg_latency_ms": 346.65, "max_latency_ms": 961.0,
        "p50_ms": 408, "p95_ms": 762, "p99_ms": 874, "p999_ms": 913,
    }


def test_producer_progress_lines_alone_are_no_summary():
    progress_only = PRODUCER_OUT.splitlines()[0] + "\n"
    with pytest.raises(BenchError, match="no summary line"):
        parse_producer_output(progress_only)


def test_failed_producer_run_parses_with_zero_records():
    # the caller compares records with what it asked for; the parser must not choke on NaN
    assert parse_producer_output(PRODUCER_FAILED_OUT)["records"] == 0


def test_producer_error_shows_the_output():
    with pytest.raises(BenchError, match="Exception in thread main"):
        parse_producer_output("Exception in thread main java.lang.NoClassDefFoundError\n")


def test_consumer_summary():
    figures_ = parse_consumer_output(CONSUMER_OUT)
    assert figures_ == {
        "mb": 322.4373, "mb_per_s": 177.6514, "records": 2_300_000, "records_per_s": 1267217.6309,
        "rebalance_ms": 378, "fetch_ms": 1437, "fetch_mb_per_s": 224.3822,
        "fetch_records_per_s": 1600556.7154, "seconds": 1.815,
    }
    assert isinstance(figures_["records"], int)


def test_consumer_values_after_a_warning_line():
    figures_ = parse_consumer_output(CONSUMER_GAVE_UP_OUT)
    assert figures_["records"] == 0
    assert figures_["rebalance_ms"] == 536
    assert figures_["seconds"] == 2.078


@pytest.mark.parametrize("text", [
    "",
    "Exception in thread \"main\" joptsimple.OptionException\n",
    CONSUMER_OUT.splitlines()[0] + "\n",  # header without values
    CONSUMER_OUT.replace(", 1600556.7154", ""),  # a column short
    CONSUMER_OUT.replace("2300000", "many"),
])
def test_consumer_output_without_a_readable_summary(text):
    with pytest.raises(BenchError):
        parse_consumer_output(text)


def test_topic_names_carry_the_kind_and_differ_over_time(monkeypatch):
    import bench.kafka_ceiling as kc

    clock = iter([1000.0, 1000.001])
    monkeypatch.setattr(kc.time, "time", lambda: next(clock))
    first, second = topic_name("kc"), topic_name("kc")
    assert first == "bench-kc-1000000"
    assert second != first


def test_sample_records_cycles_keyed_inventory_events():
    records = sample_records(25, sample=10)
    assert len(records) == 25
    assert all(isinstance(k, bytes) and k and isinstance(v, bytes) and v for k, v in records)
    assert records[10:20] == records[:10]


def test_figures_rate():
    assert figures(1000, 0.5) == {"records": 1000, "records_per_s": 2000.0, "seconds": 0.5}
    assert figures(1000, 0.0)["records_per_s"] is None


def test_changelog_topic_is_fausts_name():
    assert changelog_topic("bench-ff-1-app") == "bench-ff-1-app-counts-changelog"


# --------------------------------------------------------------------------- Quix Streams

class DictState:
    """What bench.quix_app.decide needs of Quix's State: get with a default, and set."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.sets = 0

    def get(self, key, default=None):
        return self.data.get(key, default)

    def set(self, key, value) -> None:
        self.data[key] = value
        self.sets += 1


def test_quix_changelog_topic_is_quixs_name():
    assert quix_changelog_topic("bench-qx-1-app", "bench-qx-1") == "changelog__bench-qx-1-app--bench-qx-1--default"


def test_quix_decide_keeps_the_stock_of_the_workload():
    state = DictState()
    events = [orjson.loads(r.value) for r in inventory(seed=1, events=2_000)]
    outs = [decide(e, state) for e in events]
    assert len(outs) == len(events) and {o["status"] for o in outs} == {"applied", "rejected"}
    # stock moves only by applied adjustments; transfers conserve it; none goes negative
    adjusted = sum(e["payload"]["delta"] for e, o in zip(events, outs, strict=True)
                   if o["status"] == "applied" and e["event_name"] == "stock.adjust")
    assert sum(s["quantity"] for s in state.data.values()) == adjusted
    assert all(s["quantity"] >= 0 for s in state.data.values())
    assert state.sets == sum(len(o["changes"]) for o in outs if o["status"] == "applied")


def test_quix_decide_is_inventorys_arithmetic():
    state = DictState()
    adjust = {"idempotency_key": "k1", "event_name": "stock.adjust",
              "payload": {"warehouse": "wh-00", "sku": "s", "delta": 5}}
    assert decide(adjust, state) == {"idempotency_key": "k1", "event_name": "stock.adjust", "status": "applied",
                                     "reason": None, "changes": {"stock:wh-00:s": {"quantity": 5}}}
    move = {"idempotency_key": "k2", "event_name": "stock.transfer",
            "payload": {"sku": "s", "from_warehouse": "wh-00", "to_warehouse": "wh-01", "quantity": 6}}
    assert decide(move, state)["reason"] == "insufficient_stock"
    move["payload"]["quantity"] = 5
    assert decide(move, state)["changes"] == {"stock:wh-00:s": {"quantity": 0}, "stock:wh-01:s": {"quantity": 5}}
    assert state.data == {"stock:wh-00:s": {"quantity": 0}, "stock:wh-01:s": {"quantity": 5}}


@pytest.mark.parametrize(("value", "reason"), [
    ([1, 2], "malformed_record"),
    ({"idempotency_key": "k", "event_name": "stock.teleport", "payload": {}}, "unknown_event"),
    ({"idempotency_key": "k", "event_name": "stock.adjust",
      "payload": {"warehouse": "wh-00", "sku": "s", "delta": 0}}, "zero_delta"),
])
def test_quix_decide_rejects_bad_events_without_touching_state(value, reason):
    state = DictState()
    out = decide(value, state)
    assert (out["status"], out["reason"]) == ("rejected", reason)
    assert state.data == {}


def test_quix_figures_rate_over_the_timestamp_span_and_cpu_per_event():
    got = quix_figures(10_000, 1_000, 3_000, (10.0, 1.0), (10.6, 1.2))
    assert got == {"events": 10_000, "events_per_s": 5000.0, "seconds": 2.0,
                   "cpu_user_s": 0.6, "cpu_system_s": 0.2, "cpu_us_per_event": 80.0}


def test_quix_figures_without_a_span_or_cpu_are_none():
    got = quix_figures(1, 5_000, 5_000, None, None)
    assert got["events_per_s"] is None and got["seconds"] == 0.0 and got["cpu_us_per_event"] is None
    assert quix_figures(10, None, None, (0.0, 0.0), (0.1, 0.0))["events_per_s"] is None


def test_bench_run_has_quix_after_the_faust_floor():
    from bench import run

    assert run.MEASUREMENTS.index("quix") == run.MEASUREMENTS.index("faust_floor") + 1
    assert run.quix_events(smoke=True) < run.quix_events(smoke=False)


def test_bench_run_drains_a_backlog_before_the_sweep():
    from bench import run

    assert run.MEASUREMENTS.index("drain") == run.MEASUREMENTS.index("quix") + 1 < run.MEASUREMENTS.index("kafka_native")
    assert 0 < run.SMOKE["drain_events"] < run.FULL["drain_events"]


def test_the_drain_has_no_rate_when_its_results_span_no_time():
    """A backlog whose results all carry one broker timestamp (or none came) has no
    rate, rather than a division by zero; bench.run then fails the measurement."""
    from bench.drain import figures

    cpu = {"a": 0.02, "clerk": 0.01}
    one_ms = figures(1, 5_000, 5_000, cpu)
    assert one_ms["results_per_s"] is None and one_ms["seconds"] is None
    assert figures(0, 0, 0, cpu)["results_per_s"] is None
    timed = figures(3_000, 1_000, 1_250, cpu)
    assert timed["results_per_s"] == 12_000 and timed["seconds"] == 0.25
    assert timed["cpu_us_per_event"] == {"a": 6.7, "clerk": 3.3} and timed["cpu_us_per_event_total"] == 10.0


def test_bench_drain_refuses_a_backlog_of_no_events(monkeypatch, capsys):
    import sys

    from bench import drain

    for bad in ("0", "-3"):
        monkeypatch.setattr(sys, "argv", ["bench.drain", "--events", bad])
        with pytest.raises(SystemExit) as exit_:
            drain.main()
        assert exit_.value.code == 2 and "must be greater than 0" in capsys.readouterr().err


def _drain_backlog(monkeypatch, tmp_path, events: int, got: dict) -> dict:
    import asyncio
    import dataclasses

    from app.settings import load
    from bench import drain, run

    async def measure(settings, work, n):
        return {"events": n, **got}

    monkeypatch.setattr(drain, "measure", measure)
    return asyncio.run(run.drain_backlog(dataclasses.replace(load(), partitions=8), tmp_path, events))


@pytest.mark.parametrize(("got", "message"), [
    ({"results": 7, "results_per_s": 900}, "the drain got 7 results of 10 events"),
    ({"results": 10, "results_per_s": None}, "give --drain-events a few thousand or more"),
])
def test_bench_run_fails_a_drain_missing_results_or_a_rate(monkeypatch, tmp_path, got, message):
    with pytest.raises(BenchError, match=message):
        _drain_backlog(monkeypatch, tmp_path, 10, got)


def test_bench_run_records_a_whole_drain_with_its_partitions(monkeypatch, tmp_path):
    out = _drain_backlog(monkeypatch, tmp_path, 10, {"results": 10, "results_per_s": 900})
    assert out == {"partitions": 8, "events": 10, "results": 10, "results_per_s": 900}
