"""The fault console's pure parts (specs/console.allium), without a broker: the live
safety check against the replay, the balance, fates, the strip, latency, the score
and the stalled list."""

from __future__ import annotations

import orjson
import pytest

from app.canonical import canonical, digest
from app.records import InputRecord, partition_for
from app.registry import registry
from chaos import workload
from chaos.replay import replay
from console.monitor import Latency, Pending, Strip, fate_of, parse_metrics, percentile, rate_between
from console.safety import SafetyCheck, body_digest

PARTITIONS = 4
TTL_MS = 60_000


def _inputs(events: int = 400, seed: int = 3) -> list[InputRecord]:
    """A workload as the broker would store it: per-partition offsets from 0."""
    next_offset = [0] * PARTITIONS
    out = []
    for r in workload.inventory(seed, events, partitions=PARTITIONS):
        p = partition_for(r.key, PARTITIONS)
        out.append(InputRecord(p, next_offset[p], r.timestamp, r.key, r.value))
        next_offset[p] += 1
    return out


def _results(inputs: list[InputRecord]) -> dict[tuple[int, int], dict]:
    """What a correct Clerk publishes for each input: the agreed body plus digest,
    instances and its state."""
    oracle = replay(inputs, registry.versions("inventory"), PARTITIONS, TTL_MS)
    out = {}
    for pos, body in oracle.bodies.items():
        out[pos] = {**orjson.loads(body), "digest": oracle.digests[pos], "instances": ["a", "b"],
                    "clerk": {"seq": 1, "decided_below": 0, "finished_ranges": []}}
    return out


def _by_partition(inputs):
    parts: dict[int, list[InputRecord]] = {}
    for r in inputs:
        parts.setdefault(r.partition, []).append(r)
    return parts


def _safety() -> SafetyCheck:
    return SafetyCheck(registry.versions("inventory"), PARTITIONS, TTL_MS)


def test_every_published_result_matches_the_replay() -> None:
    """ConsoleReplaysInput, ConsoleChecksEveryResult, BalanceOverFinalPrefix: inputs fed
    per partition in chunks, each result checked against the incremental replay (whose
    digests equal chaos/replay.py's batch replay); every result right, and the balance
    over the whole input holds."""
    inputs = _inputs()
    results = _results(inputs)
    safety = _safety()
    for p, recs in _by_partition(inputs).items():
        for i in range(0, len(recs), 37):
            chunk = recs[i:i + 37]
            safety.add_inputs(chunk)
            for r in chunk:
                assert safety.replay_digest((p, r.offset)) == results[(p, r.offset)]["digest"]
                safety.add_result(results[(p, r.offset)])
    state = safety.state()
    assert state["checked"] == len(inputs) and state["wrong"] == 0 and state["first_wrong"] is None
    assert state["text"] == f"SAFETY HOLDS: 0 wrong results of {len(inputs)}"
    assert state["balance_ok"], state["balance_detail"]
    assert "skus conserved, no negative stock" in state["balance_detail"]
    assert sum(safety.cut.values()) == len(inputs)


def test_a_result_ahead_of_the_replay_waits_for_it() -> None:
    """ResultWaitsForReplay: results read before their input are held, not judged, and
    judged once the replay reaches them."""
    inputs = _inputs(120)
    results = _results(inputs)
    safety = _safety()
    for res in results.values():
        safety.add_result(res)
    assert safety.checked == 0 and len(safety.waiting) == len(results)
    for recs in _by_partition(inputs).values():
        safety.add_inputs(recs)
    assert safety.checked == len(results) and safety.wrong == 0 and not safety.waiting


def test_a_wrong_result_is_caught_and_named() -> None:
    """ConsoleNamesWrongResult, WrongNeverExceedsChecked: a self-consistent wrong result
    (a quantity changed and the digest recomputed over the changed body, as a corrupted
    Clerk could publish), a result whose body does not hash to its digest, and a second
    result for a position are each counted wrong; the first is named; the balance's cut
    goes past a wrong result (clients saw it)."""
    inputs = _inputs(300)
    results = _results(inputs)
    target = next(pos for pos, r in results.items()
                  if r["outcome"]["status"] == "applied" and r["outcome"]["entities"] and r["duplicate_of"] is None)
    bad = orjson.loads(orjson.dumps(results[target]))
    bad["outcome"]["entities"][0]["state"]["quantity"] += 1
    bad["digest"] = body_digest(bad)  # self-consistent: only the replay can tell
    results[target] = bad
    safety = _safety()
    for recs in _by_partition(inputs).values():
        safety.add_inputs(recs)
    for pos in sorted(results):
        safety.add_result(results[pos])
    state = safety.state()
    assert state["wrong"] == 1 and state["checked"] == len(inputs)
    assert state["first_wrong"]["p"] == target[0] and state["first_wrong"]["o"] == target[1]
    assert "!= replay's" in state["first_wrong"]["why"]
    assert sum(safety.cut.values()) == len(inputs)
    assert state["text"] == f"SAFETY BROKEN: 1 wrong result of {len(inputs)} (first: {target[0]}@{target[1]})"
    # a body that does not hash to the digest it claims (the replay's)
    other = next(pos for pos in sorted(results) if pos != target and results[pos]["outcome"]["entities"])
    lying = orjson.loads(orjson.dumps(results[other]))
    lying["outcome"]["entities"][0]["state"]["quantity"] += 1
    fresh = _safety()
    for recs in _by_partition(inputs).values():
        fresh.add_inputs(recs)
    fresh.add_result(lying)
    assert fresh.wrong == 1 and "hashes to" in fresh.first_wrong["why"]
    # published twice
    fresh.add_result(results[other])
    assert fresh.wrong == 2 and fresh.checked == 2
    assert fresh.wrong <= fresh.checked


def test_balance_is_taken_over_the_final_prefix_and_counts_diverged_events() -> None:
    """BalanceOverFinalPrefix: a position with no result yet stops its partition's cut
    (the balance holds over what is before it); a diverged report makes it final, its
    applied effect counted from the replay, and the detail says so."""
    inputs = _inputs(300)
    results = _results(inputs)
    gap = next(pos for pos, r in sorted(results.items())
               if pos[1] > 20 and r["outcome"]["status"] == "applied" and r["duplicate_of"] is None
               and r["event_name"] == "stock.adjust")
    safety = _safety()
    for recs in _by_partition(inputs).values():
        safety.add_inputs(recs)
    for pos in sorted(results):
        if pos != gap:
            safety.add_result(results[pos])
    assert safety.cut[gap[0]] == gap[1]
    ok, detail = safety.balance()
    assert ok, detail
    safety.add_divergence({"input": {"partition": gap[0], "offset": gap[1]}, "cause": "mismatch",
                           "decided": None, "copies": []})
    ok, detail = safety.balance()
    assert ok, detail
    assert sum(safety.cut.values()) == len(inputs)
    assert "1 diverged events counted from the replay" in detail
    # a report with a decision is no divergence of the position: it stays as it was
    safety.add_divergence({"input": {"partition": 0, "offset": 0}, "cause": "mismatch", "decided": "x"})
    assert safety.diverged_in_cut == 1


def test_result_body_digest_is_the_replays() -> None:
    """ConsoleChecksEveryResult: a result's body, without the Clerk's fields, in
    canonical form, hashes to the digest the Clerk published."""
    inputs = _inputs(50)
    for res in _results(inputs).values():
        body = {k: v for k, v in res.items() if k not in ("digest", "instances", "clerk")}
        assert digest(canonical(body)) == res["digest"] == body_digest(res)


# --------------------------------------------------------------------------- fates


def test_fate_agreed_withheld_diverged_pending() -> None:
    """PositionAgreed, PositionWithheld, PositionDiverged, PositionPending: a published
    result without a report is agreed; a report with a decision names the outvoted
    copies (withheld); a report without one and no result is diverged; nothing yet is
    pending; a replay_mismatch report alone decides nothing."""
    assert fate_of(["b", "a"], []) == {"fate": "agreed", "instances": ["a", "b"]}
    report = {"decided": "d1", "cause": "mismatch",
              "copies": [{"instance": "a", "digest": "d2"}, {"instance": "b", "digest": "d1"},
                         {"instance": "c", "digest": "d1"}]}
    assert fate_of(["b", "c"], [report]) == {"fate": "withheld", "instances": ["b", "c"], "outvoted": ["a"]}
    assert fate_of(None, [report])["fate"] == "withheld"  # decided, its result not read yet
    diverged = {"decided": None, "cause": "mismatch", "copies": [{"instance": "a", "digest": "x"}]}
    assert fate_of(None, [diverged]) == {"fate": "diverged", "instances": []}
    assert fate_of(None, []) == {"fate": "pending", "instances": []}
    assert fate_of(None, [{"decided": None, "cause": "replay_mismatch", "copies": []}])["fate"] == "pending"


def test_strip_keeps_the_newest_positions_per_partition() -> None:
    """PositionPending, PositionAgreed: the strip holds the newest positions of each
    partition, oldest first; a result read before its input shows once the input is read;
    one for a position already off the strip is dropped."""
    strip = Strip(2, per_partition=3)
    strip.add_result((0, 1), ["a", "c"])  # before its input
    for o in range(5):
        strip.add_input(0, o)
    strip.add_input(1, 0)
    strip.add_result((0, 3), ["a", "b"])
    strip.add_result((0, 0), ["a", "b"])  # off the strip
    got = strip.positions()
    assert [(x["p"], x["o"]) for x in got] == [(0, 2), (0, 3), (0, 4), (1, 0)]
    assert [x["fate"] for x in got] == ["pending", "agreed", "pending", "pending"]
    strip2 = Strip(1, per_partition=3)
    strip2.add_result((0, 1), ["a", "c"])
    strip2.add_input(0, 0)
    strip2.add_input(0, 1)
    assert strip2.positions()[1] == {"p": 0, "o": 1, "fate": "agreed", "instances": ["a", "c"]}


# --------------------------------------------------------------------------- latency, score


def test_latency_series_and_score() -> None:
    """LatencyIsBrokerTime, ScoreCountsDelayAboveTarget: latency is the result's broker
    timestamp minus the input's; p50/p99 per second of console time (nearest rank);
    the score adds max(0, latency - 1 s) per result, in seconds, and while positions
    wait, max(0, age - 1 s) for each of them."""
    t0 = 1_700_000_000_000
    lat = Latency(t0)
    for i in range(100):  # second 0: latencies 1..100 ms
        lat.add(t0 + 500, t0 + 500 - (i + 1))
    lat.add(t0 + 1500, t0 + 1500 - 1350)  # second 1: one result 1,350 ms late
    assert lat.series() == [[0.0, 50.0, 99.0], [1.0, 1350.0, 1350.0]]
    assert lat.delay_s == pytest.approx(0.35)  # only the late one, by 350 ms
    waiting = Pending()
    waiting.add_input((0, 1), t0)
    waiting.add_input((0, 2), t0 + 2500)
    assert waiting.overdue_s(t0 + 3000) == pytest.approx(2.0)  # (0, 1) 3 s old; (0, 2) within its second
    waiting.settle((0, 1))
    assert waiting.overdue_s(t0 + 3000) == 0.0
    assert lat.add(t0 + 1600, t0 + 1700) == 0.0  # clocks never make a latency negative
    assert lat.window(60, now_s=2.0) == (50.0, 100.0)  # every result of seconds 0 and 1
    assert lat.window(60, now_s=1.0) == (50.0, 99.0)
    assert lat.series(now_s=200.0) == []  # older than the 180 s window
    assert percentile([5.0], 99) == 5.0


def test_pending_positions_and_stalled_order() -> None:
    """PositionPending: positions without a result wait; the stalled list is the oldest
    first, with their age; a result read before its input gives its latency when the
    input is read."""
    pend = Pending()
    pend.add_input((0, 1), 1000)
    pend.add_input((1, 7), 900)
    pend.add_input((0, 2), 1100)
    assert pend.settle((0, 1), 1050) == 1000
    assert pend.stalled(2000) == [{"p": 1, "o": 7, "age_ms": 1100}, {"p": 0, "o": 2, "age_ms": 900}]
    assert pend.settle((3, 3), 5000) is None  # its input not read yet
    assert pend.add_input((3, 3), 4900) == 5000
    assert (3, 3) not in pend.since


def test_counter_rates_and_metrics_parsing() -> None:
    """The node figures: a counter's rate between two scrapes, 0 after a restart; the
    Prometheus text page parsed with prometheus_client's parser."""
    assert rate_between(None, (1.0, 10.0)) == 0.0
    assert rate_between((1.0, 10.0), (3.0, 110.0)) == 50.0
    assert rate_between((1.0, 10.0), (2.0, 3.0)) == 0.0  # restarted: the counter went back
    text = ("# TYPE docket_clerk_decisions counter\ndocket_clerk_decisions_total 42.0\n"
            "# TYPE docket_clerk_pending_positions gauge\ndocket_clerk_pending_positions 3.0\n"
            '# TYPE docket_clerk_copies counter\ndocket_clerk_copies_total{instance="a"} 7.0\n')
    values = parse_metrics(text)
    assert values["docket_clerk_decisions_total"] == 42.0
    assert values["docket_clerk_pending_positions"] == 3.0
    assert values['docket_clerk_copies_total{instance="a"}'] == 7.0


def test_console_settings_are_its_own(tmp_path) -> None:
    """The console's stack: its own broker directory and port, topic prefix console,
    instances a, b, c with two required copies, and the inventory domain (its workload
    and balance are inventory's) and a PLAINTEXT connection whatever the DOCKET_* settings
    say."""
    import dataclasses

    from app.settings import load
    from console.stack import build_procs, console_settings

    base = dataclasses.replace(load(), domain="accounts", topic_prefix="mine", required_copies=3)
    s = console_settings(base, tmp_path, 4, broker_port=45678)
    assert (s.domain, s.topic_prefix, s.instances, s.required_copies, s.partitions) == (
        "inventory", "console", ("a", "b", "c"), 2, 4)
    assert s.kafka_bootstrap == "127.0.0.1:45678" and s.broker_dir == tmp_path / "broker"
    procs, ports, files = build_procs(s, tmp_path)
    assert set(procs) == {"a", "b", "c", "clerk"} and len(set(ports.values())) == 4
    assert procs["a"].args == ("--web-port", str(ports["a"]), "--faults-file", str(files["a"]))
    assert procs["clerk"].args == ("--web-port", str(ports["clerk"]))
    assert procs["b"].env["DOCKET_INSTANCES"] == "a,b,c" and procs["b"].env["DOCKET_REQUIRED_COPIES"] == "2"
    # a user's security settings are for their Kafka, not the console's PLAINTEXT broker
    from app.kafka_config import client_kwargs, load_connection

    secure = dataclasses.replace(base, kafka=load_connection({
        "DOCKET_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DOCKET_KAFKA_SASL_MECHANISM": "PLAIN",
        "DOCKET_KAFKA_USERNAME": "u", "DOCKET_KAFKA_PASSWORD": "p"}))
    own = client_kwargs(console_settings(secure, tmp_path, 4, broker_port=45678), "console", "consumer")
    assert own["security_protocol"] == "PLAINTEXT" and "sasl_mechanism" not in own


def test_data_dir_is_wiped_only_when_it_is_a_consoles(tmp_path) -> None:
    """--data-dir is wiped at start, but only a directory a console made (its marker
    file) or an empty or missing one: anything else is refused, untouched."""
    import click

    from console.cli import MARKER, wipe

    fresh = tmp_path / "fresh"
    wipe(fresh)
    assert (fresh / MARKER).exists()
    (fresh / "old-run.log").write_text("x")
    wipe(fresh)
    assert sorted(p.name for p in fresh.iterdir()) == [MARKER]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(click.ClickException, match="not a console's data directory"):
        wipe(precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    # a regular file, or a path below one, is refused naming it, untouched (a
    # NotADirectoryError traceback before: the thirteenth fresh-user trial)
    plain = tmp_path / "plain"
    plain.write_text("keep")
    with pytest.raises(click.ClickException, match="plain is not a directory: give --data-dir"):
        wipe(plain)
    with pytest.raises(click.ClickException, match=r"cannot use .*plain/x as the console's data directory"):
        wipe(plain / "x")
    assert plain.read_text() == "keep"


def test_the_console_keeps_its_data_under_docket_data_root(monkeypatch, tmp_path) -> None:
    """The console's --data-dir defaults to $DOCKET_DATA_ROOT/console (it was var/console
    whatever DOCKET_DATA_ROOT said; a fresh-clone user check); DOCKET_CONSOLE_DATA_DIR
    and --data-dir still name another."""
    from click.testing import CliRunner

    from console import cli as console_cli

    seen = []

    async def run_console(port, rate, partitions, seed, data_dir, fault_rate, open_browser):
        seen.append(data_dir)
        return 0

    monkeypatch.setattr(console_cli, "run_console", run_console)
    monkeypatch.setenv("DOCKET_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("DOCKET_CONSOLE_DATA_DIR", raising=False)
    assert CliRunner().invoke(console_cli.console, []).exit_code == 0
    monkeypatch.setenv("DOCKET_CONSOLE_DATA_DIR", str(tmp_path / "env"))
    assert CliRunner().invoke(console_cli.console, []).exit_code == 0
    assert CliRunner().invoke(console_cli.console, ["--data-dir", str(tmp_path / "flag")]).exit_code == 0
    assert seen == [(tmp_path / "root" / "console").resolve(), (tmp_path / "env").resolve(),
                    (tmp_path / "flag").resolve()]
