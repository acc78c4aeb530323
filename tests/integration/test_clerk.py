"""The Clerk on a real broker: redundant instances (``docket instance``) and a Clerk
(``docket clerk``) as separate processes. What the Clerk publishes on ``results`` and
``divergences`` (read with ``read_committed``) is compared with the pure replay of the
recorded input (chaos/replay.py) and with the faults the instances log.

Every test ends the same way: once every input position is answered, the Clerk's
consumer group must have committed every output record (so it has seen every copy), the
processes are stopped, and only then are the results read in full: a late duplicate
would be on the topic by then.
"""
# ruff: noqa: F811  (test arguments name the fixtures imported from clerk_kit)

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence

import orjson
import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app.kafka_config import client_kwargs
from app.canonical import canonical, digest
from app.divergences import diff_copies
from app.records import unseal_batch
from app.registry import registry
from app.settings import Settings
from chaos import workload
from chaos.replay import end_offsets, read_topic, replay
from launcher.broker import free_port
from tests.integration.clerk_kit import (
    CLERK_PARTITIONS,
    DocketProc,
    Paced,
    Position,
    Rec,
    TopicTail,
    by_position,
    clerk_env,  # noqa: F401  fixture
    clerk_metrics,
    clerk_settings,  # noqa: F401  fixture
    fault_positions,
    group_caught_up,
    group_state,
    histogram_buckets,
    histogram_quantile,
    instances,  # noqa: F401  fixture
    log_line_time_ms,
    percentile,
    read_all,
    required_copies,  # noqa: F401  fixture
    spawn,  # noqa: F401  fixture
)
from tests.integration.procs import (
    OutputCollector,
    assert_watermarks_follow_outputs,
    committed_offsets,
    wait_for,
)

pytestmark = pytest.mark.integration

EVENTS = 10_000
READY = "ready: recovery complete"
START_DEADLINE_S = 90  # Faust start-up and the first rebalance of a group
RESTART_DEADLINE_S = 90  # plus the dead member's session timeout (procs.WORKER_TEST_ENV)


# --------------------------------------------------------------------------- helpers


def start_instances(spawn, names: str, faults: dict[str, str] | None = None) -> dict[str, DocketProc]:
    faults = faults or {}
    procs = {}
    for name in names.split(","):
        args = ("--inject-faults", faults[name]) if name in faults else ()
        procs[name] = spawn(name, *args).start()
    return procs


def start_clerk(spawn) -> tuple[DocketProc, int]:
    port = free_port()
    return spawn("clerk", "--web-port", str(port), command="clerk").start(), port


async def wait_ready(s: Settings, insts: dict[str, DocketProc], clerk: DocketProc) -> None:
    """Every instance has logged its instanceReady line and the Clerk's group has a
    stable assignment: what is produced next is processed right away."""
    for name, proc in insts.items():
        await wait_for(lambda proc=proc: proc.assert_alive() or READY in proc.log_text(), START_DEADLINE_S,
                       f"instance {name} to log {READY!r}", detail=proc.log_tail)
    await wait_clerk_assigned(s, clerk)


async def wait_clerk_assigned(s: Settings, clerk: DocketProc, deadline_s: float = START_DEADLINE_S) -> None:
    async def stable() -> bool:
        clerk.assert_alive()
        return await group_state(s.kafka_bootstrap, s.app_id("clerk")) == ("Stable", 1)

    await wait_for(stable, deadline_s, "the Clerk's consumer group to be Stable with one member",
                   interval_s=0.25, detail=clerk.log_tail)


async def wait_answered(s: Settings, expected: set[Position], results: TopicTail, divergences: TopicTail,
                        procs: list[DocketProc], deadline_s: float, *,
                        diverged: Callable[[], set[Position]] = set, logs: Sequence[DocketProc] = ()) -> None:
    """Every expected position has a result, or a divergence report if it is in
    ``diverged()`` (e.g. the positions a faulty instance has logged so far); then the
    Clerk's group has committed every output record. ``logs``: workers (say, ones
    that have left) whose docket lines a failure shows too (Worker.notable_lines)."""
    def answered() -> bool:
        for p in procs:
            p.assert_alive()
        done = results.positions() | (divergences.positions() & diverged())
        return expected <= done

    def progress() -> str:
        done = results.positions() | (divergences.positions() & diverged())
        missing = sorted(expected - done)
        return (f"{len(done & expected)} of {len(expected)} positions answered; first missing {missing[:5]}\n"
                + "\n".join(p.log_tail(15) for p in procs)
                + "".join("\n" + p.notable_lines() for p in logs))

    try:
        await wait_for(answered, deadline_s, "a result (or divergence) for every input position",
                       interval_s=0.2, detail=progress)
    except AssertionError as exc:
        # what diverged, read whole from the topic: the caller's tail may not be reading it
        reports = await read_all(s.kafka_bootstrap, s.divergences_topic)
        raise AssertionError(f"{exc}\n{divergence_summary(reports)}{await copies_off_replay(s, reports)}") from None
    outputs = [s.output_topic(i) for i in s.instances]
    await wait_for(lambda: group_caught_up(s.kafka_bootstrap, s.app_id("clerk"), outputs), 60,
                   "the Clerk to commit every output record", interval_s=0.5,
                   detail=lambda: "\n".join(p.log_tail(15) for p in procs))


def divergence_summary(reports: list[Rec], shown: int = 3) -> str:
    """For a failure message: how many divergence reports there are, by cause, and the
    field-level diff (app/divergences.py diff_copies) of the first ``shown`` of them in
    input order, so a mismatch says which entity or field the copies disagree on."""
    if not reports:
        return ""
    causes: dict[str, int] = {}
    for r in reports:
        causes[r.value["cause"]] = causes.get(r.value["cause"], 0) + 1
    lines = [f"{len(reports)} divergence report(s): "
             + ", ".join(f"{n} {cause}" for cause, n in sorted(causes.items()))]
    first = sorted(reports, key=lambda r: (r.value["input"]["partition"], r.value["input"]["offset"]))[:shown]
    for r in first:
        where = f"input[{r.value['input']['partition']}]@{r.value['input']['offset']}"
        rows = diff_copies(r.value.get("copies") or [])
        lines.append(f"  {where} {r.value['cause']}: " + ("; ".join(row.text() for row in rows) or "(no diff)"))
    return "\n".join(lines) + "\n"


async def copies_off_replay(s: Settings, reports: list[Rec]) -> str:
    """For a failure message: which instance's copies in the divergence ``reports``
    differ from the pure replay of the input topic, with the first such offset of each
    input partition; so a mismatch says which instance went wrong, and from where."""
    if not reports:
        return ""
    _inputs, oracle = await replay_input(s)
    off: dict[str, dict[int, list[int]]] = {}
    for r in reports:
        p, o = r.value["input"]["partition"], r.value["input"]["offset"]
        for copy in r.value.get("copies") or []:
            if copy.get("digest") != oracle.digests.get((p, o)):
                off.setdefault(str(copy.get("instance")), {}).setdefault(p, []).append(o)
    if not off:
        return "every reported copy equals the replay's\n"
    return "".join(f"copies of {name} off the replay: "
                   + "; ".join(f"input[{p}] {len(os)}, first @{min(os)}" for p, os in sorted(by_p.items())) + "\n"
                   for name, by_p in sorted(off.items()))


def assert_sequence_numbers_unique(results: list[Rec], reports: list[Rec]) -> None:
    """ClerkSequenceNumbersUnique: the ``clerk.seq`` of every result and divergence
    record of a partition is different (the restart seed depends on it)."""
    seen: dict[tuple[int, int], Rec] = {}
    for r in [*results, *reports]:
        key = (r.partition, r.value["clerk"]["seq"])
        assert key not in seen, f"two records of partition {r.partition} carry seq {key[1]}: {seen[key]} and {r}"
        seen[key] = r


async def stop_all(procs: list[DocketProc]) -> None:
    """SIGTERM each worker (instances, Clerk) in turn: each exits 0, and what it logged
    from the SIGTERM on holds no ``[ERROR]`` and no ``Unclosed`` line
    (WorkersCloseTheirConsumersOnStop: a clean stop closes the Kafka consumers a worker
    opened beside Faust's own; the Clerk used to log ``Unclosed AIOKafkaConsumer``).
    Start-up noise of a fresh broker (a coordinator not yet available) is not a stop's."""
    for p in procs:
        log_path = p.logs[-1]
        stop_began = log_path.stat().st_size if log_path.exists() else 0
        assert await p.stop() == 0, p.log_tail()
        with open(log_path, "rb") as fh:
            fh.seek(stop_began)
            stopping = fh.read().decode(errors="replace")
        bad = [line for line in stopping.splitlines() if "[ERROR]" in line or "Unclosed" in line]
        assert not bad, f"{p.instance} logged errors while stopping:\n" + "\n".join(bad[:10]) + f"\n{p.log_tail()}"


async def replay_input(s: Settings):
    """The input topic read whole, each record once in (partition, offset) order, and the
    pure replay of it (the oracle): ``(inputs, oracle)``."""
    # each record once, should the consumer deliver one twice (see clerk_kit.read_all)
    inputs = sorted({(r.partition, r.offset): r for r in await read_topic(s.kafka_bootstrap, s.input_topic)}.values(),
                    key=lambda r: (r.partition, r.offset))
    return inputs, replay(inputs, registry.versions(s.domain), s.partitions, s.idempotency_ttl_ms)


async def oracle_for(s: Settings, expected: set[Position]):
    """:func:`replay_input`, once the input topic holds exactly the ``expected`` positions."""
    inputs, oracle = await replay_input(s)
    assert [(r.partition, r.offset) for r in inputs] == sorted(expected), "the input topic is not what was produced"
    return inputs, oracle


def duplicates_of(oracle) -> dict[Position, Position]:
    """Each position the oracle's replay answers as a duplicate -> the original it names
    (duplicate_of)."""
    out = {}
    for pos, raw in oracle.bodies.items():
        original = orjson.loads(raw)["duplicate_of"]
        if original is not None:
            out[pos] = (original["partition"], original["offset"])
    return out


def withheld(diverged: set[Position], duplicates: dict[Position, Position]) -> set[Position]:
    """ClerkWithholdsDuplicateOfDivergedOriginal: the duplicates of ``diverged`` positions
    that did not diverge themselves (their copies agree, cause original_diverged)."""
    return {d for d, original in duplicates.items() if original in diverged and d not in diverged}


def assert_withheld(reports: dict[Position, list[Rec]], positions: set[Position], oracle) -> None:
    """Each of ``positions`` has one report, cause original_diverged, decided null, whose
    copies all carry the oracle's digest (the duplicate's outcome as every instance
    stored it)."""
    for pos in positions:
        (rec,) = reports[pos]
        assert rec.value["cause"] == "original_diverged" and rec.value["decided"] is None, rec.value
        assert {c["digest"] for c in rec.value["copies"]} == {oracle.digests[pos]}, rec.value


def assert_one_result_each(results: list[Rec], expected: set[Position], oracle,
                           not_published: set[Position] = frozenset(), required: int = 2) -> dict[Position, Rec]:
    """ClerkPublishesOnce: exactly one result per expected position outside
    ``not_published``, none for those, none for positions that are not inputs; each on
    the input's partition (ResultOnInputPartition), keyed by its idempotency key
    (ResultKeyedByIdempotencyKey), naming exactly ``required`` agreeing instances
    (ResultNamesRequiredInstances), carrying the oracle's outcome, digest and
    duplicate_of."""
    groups = by_position(results)
    twice = {pos: len(rs) for pos, rs in groups.items() if len(rs) > 1}
    assert not twice, f"{len(twice)} positions have more than one result, e.g. {sorted(twice.items())[:5]}"
    published_bad = sorted(set(groups) & set(not_published))
    assert not published_bad, f"results were published for divergent positions {published_bad[:5]}"
    unknown = sorted(set(groups) - expected)
    assert not unknown, f"results for positions that are not inputs: {unknown[:5]}"
    missing = sorted(expected - set(not_published) - set(groups))
    assert not missing, f"{len(missing)} positions have no result, first {missing[:5]}"
    out = {}
    for pos, (r,) in groups.items():
        body = orjson.loads(oracle.bodies[pos])
        assert r.partition == pos[0], f"result for {pos} is on results partition {r.partition}"
        assert r.value["digest"] == oracle.digests[pos], f"{pos}: result digest differs from the oracle's: {r.value}"
        assert r.value["outcome"] == body["outcome"], f"{pos}: outcome {r.value['outcome']} != oracle {body['outcome']}"
        assert r.value["duplicate_of"] == body["duplicate_of"], f"{pos}: duplicate_of differs: {r.value}"
        assert r.value["idempotency_key"] == body["idempotency_key"], f"{pos}: idempotency key differs: {r.value}"
        assert r.key == body["idempotency_key"].encode(), f"{pos}: result key {r.key!r}"
        assert len(set(r.value["instances"])) == len(r.value["instances"]) == required, (
            f"{pos}: result names instances {r.value['instances']}, not {required} distinct ones")
        out[pos] = r
    return out


# --------------------------------------------------------------------------- 1 (and 6)


async def test_two_clean_instances_one_result_per_event_equal_to_the_oracle(clerk_settings, spawn) -> None:
    """Spec rules checked (specs/clerk.allium, specs/recovery.allium):

    - ClerkOpensPosition, ClerkHoldsCopy, ClerkDecidesOnRequiredCopies, ClerkPublishesResult,
      ClerkPublishesOnce: two clean instances a, b and 10,000 events: exactly one result
      per input position, on its partition (ResultOnInputPartition), keyed by its
      idempotency key (ResultKeyedByIdempotencyKey); its outcome, digest and
      duplicate_of are the pure replay's.
    - ResultIsAnAgreedCopy, DecidedPositionHasRequiredCopies, ResultNamesRequiredInstances:
      each result names a and b,
      and each of them emitted a copy with the result's digest (read from their output
      topics).
    - ClerkRecomputesDigest: zero divergence records (clean copies agree byte for byte);
      ClerkSequenceNumbersUnique: the sequence numbers of a partition's records differ.
    - ClerkRecordsWatermark, ClerkAdvancesDecidedWatermark, ClerkDropsBelowLowestWatermark
      (memory bounded by events in flight): once both instances have advertised
      watermarks past the end, the Clerk's ``docket_clerk_pending_positions`` gauge is 0;
      ClerkAcksOnlyFinalPositions: the Clerk's group then has every output record
      committed.
    Prints decision latency p50/p99 (scheduled send time -> result record timestamp,
    and the Clerk's own histogram) for a fixed arrival rate; no timing is asserted.
    """
    s = clerk_settings
    rate = 400.0  # events/s, a fixed schedule (Paced keeps each record's scheduled send time)
    began = time.monotonic()
    insts = start_instances(spawn, "a,b")
    clerk, port = start_clerk(spawn)
    # Only the results are read while it runs (the test shares the two cores with the
    # broker, the instances and the Clerk); copies are read from the output topics after.
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    procs = [*insts.values(), clerk]
    try:
        await wait_ready(s, insts, clerk)
        started = time.monotonic()
        paced = Paced(list(workload.inventory(20240612, EVENTS)), rate)
        positions = await workload.produce(s.kafka_bootstrap, s.input_topic, paced, rate=rate)
        sent = time.monotonic() - started
        expected = set(positions)
        assert len(expected) == EVENTS
        await wait_answered(s, expected, results, divergences, procs, 150)
        answered = time.monotonic() - started

        def pending() -> float | None:
            return clerk_metrics(port).get("docket_clerk_pending_positions")

        # The gauge is refreshed every second; positions are dropped once every
        # instance's watermark has passed them.
        await wait_for(lambda: pending() == 0, 30, "the Clerk's pending positions to return to 0",
                       interval_s=0.25, detail=lambda: f"pending {pending()}; {clerk_metrics(port)}")
        metrics = clerk_metrics(port)
    finally:
        await results.stop()
        await divergences.stop()
    await stop_all(procs)

    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    published = assert_one_result_each(final, expected, oracle)
    reports = await read_all(s.kafka_bootstrap, s.divergences_topic)
    assert reports == [], f"{len(reports)} divergence records from clean instances, e.g. {reports[:2]}"
    assert_sequence_numbers_unique(final, reports)
    # (instance, position) -> digests of its copies and the timestamp of the first
    copies: dict[tuple[str, Position], tuple[set[str], int]] = {}
    for i in ("a", "b"):
        for rec in await read_topic(s.kafka_bootstrap, s.output_topic(i)):
            for dig, body in unseal_batch(rec.value)[2]:
                b = orjson.loads(body)
                pos = (b["input"]["partition"], b["input"]["offset"])
                digests, first = copies.get((i, pos), (set(), rec.timestamp))
                copies[(i, pos)] = (digests | {dig}, min(first, rec.timestamp))
    for pos, r in published.items():
        assert r.value["instances"] == ["a", "b"], r.value
        for i in r.value["instances"]:
            assert r.value["digest"] in copies[(i, pos)][0], (
                f"{pos}: {i} emitted no copy with the result's digest {r.value['digest']}")
    assert metrics["docket_clerk_decisions_total"] == EVENTS, metrics
    assert metrics.get("docket_clerk_divergences_total", 0) == 0, metrics

    # Latency: result record timestamp (the broker's, LogAppendTime) minus the scheduled
    # send time of its input record (the broker stamps the input itself, so the schedule
    # is kept here by position).
    scheduled = {pos: rec.timestamp for pos, rec in zip(positions, paced.stamped, strict=True)}
    lat_ms = [r.timestamp - scheduled[pos] for pos, r in published.items()]
    # The Clerk's own share: result timestamp minus the timestamp of the later of the two
    # copies (set by each instance's producer when it sent the copy).
    clerk_ms = [r.timestamp - max(copies[("a", pos)][1], copies[("b", pos)][1]) for pos, r in published.items()]
    outputs_done = {i: round((max(ts for (j, _), (_, ts) in copies.items() if j == i) - paced.t0_ms) / 1000, 1)
                    for i in ("a", "b")}
    buckets = histogram_buckets(metrics, "docket_clerk_decision_latency_seconds")
    assert buckets and buckets[-1][1] == EVENTS, buckets
    print(f"\nclerk, clean a+b: {EVENTS} events at {rate:.0f}/s sent in {sent:.1f} s; every output of an "
          f"instance by {outputs_done} s, every result by {answered:.1f} s (seen) after the first send; "
          f"decision latency from result timestamps p50 {percentile(lat_ms, 0.50):.0f} ms, "
          f"p99 {percentile(lat_ms, 0.99):.0f} ms, max {max(lat_ms):.0f} ms; "
          f"from the Clerk's histogram p50 {1000 * histogram_quantile(0.50, buckets):.0f} ms, "
          f"p99 {1000 * histogram_quantile(0.99, buckets):.0f} ms (30000 = beyond the last bucket); "
          f"the Clerk's share (result timestamp - later copy's timestamp) p50 {percentile(clerk_ms, 0.50):.0f} ms, "
          f"p99 {percentile(clerk_ms, 0.99):.0f} ms; "
          f"pending positions after the run {metrics['docket_clerk_pending_positions']:.0f}; "
          f"test {time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- 2


async def test_bitflips_in_one_of_two_instances_are_reported_never_published(clerk_settings, spawn) -> None:
    """Spec rules checked (specs/clerk.allium):

    - ClerkRecomputesDigest, ClerkReportsDivergence, ClerkPublishesDivergence,
      DivergentPositionNeverPublished: instance b flips a bit in ~1% of its outputs.
      Divergence records == the "FAULT INJECTED" lines in b's log (> 0), at exactly the
      logged positions, on the input's partition (DivergenceOnInputPartition), each with
      a's copy (the oracle's digest) and b's (another), decided = null; none of those
      positions has a result (CorruptedCopyNeverPublished).
    - ClerkAdvancesDecidedWatermark (a diverged position is final: it does not hold the
      rest back), ClerkPublishesOnce: every other position has exactly one result, the
      oracle's; ClerkSequenceNumbersUnique.
    - ClerkWithholdsDuplicateOfDivergedOriginal: the workload repeats requests; a repeat
      of a corrupted one gets agreeing copies (b's state is right) and is reported
      original_diverged, never published.
    - The diagnosis a timed-out wait_answered prints (copies_off_replay) names b, whose
      copies differ from the replay, and not a.
    """
    s = clerk_settings
    began = time.monotonic()
    insts = start_instances(spawn, "a,b", faults={"b": "bitflip:0.01"})
    clerk, _port = start_clerk(spawn)
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    procs = [*insts.values(), clerk]
    b = insts["b"]
    try:
        await wait_ready(s, insts, clerk)
        assert "FAULT INJECTION ON" in b.log_text(), "instance b did not announce fault injection"
        positions = await workload.produce(s.kafka_bootstrap, s.input_topic, workload.inventory(31337, EVENTS))
        expected = set(positions)
        _inputs, oracle = await oracle_for(s, expected)
        duplicates = duplicates_of(oracle)

        def diverged() -> set[Position]:
            injected = set(fault_positions(b.all_logs()))
            return injected | withheld(injected, duplicates)

        # b's log names the positions it corrupted; wait until each (and each duplicate of
        # one) is answered one way or the other.
        await wait_answered(s, expected, results, divergences, procs, 120, diverged=diverged)
    finally:
        await results.stop()
        await divergences.stop()
    await stop_all(procs)

    injected = fault_positions(b.all_logs())
    assert len(injected) > 0, "b injected no fault: the test proves nothing"
    assert len(set(injected)) == len(injected), f"b corrupted some position twice: {injected}"
    held_back = withheld(set(injected), duplicates)
    everything = await read_all(s.kafka_bootstrap, s.divergences_topic)
    assert_withheld(by_position(everything), held_back, oracle)
    reports = [r for r in everything if r.value["cause"] != "original_diverged"]
    assert len(reports) == len(injected), (
        f"{len(reports)} divergence records for {len(injected)} injected faults "
        f"(reported {sorted(set(by_position(reports)) - set(injected))[:5]} not injected, "
        f"injected {sorted(set(injected) - set(by_position(reports)))[:5]} not reported)")
    assert set(by_position(reports)) == set(injected)
    assert set(by_position(everything)) == set(injected) | held_back
    for r in reports:
        pos = (r.value["input"]["partition"], r.value["input"]["offset"])
        copies = {c["instance"]: c["digest"] for c in r.value["copies"]}
        assert r.partition == pos[0], r
        assert copies.keys() == {"a", "b"}, r.value
        assert copies["a"] == oracle.digests[pos] != copies["b"], r.value
        assert r.value["decided"] is None, f"{pos}: a divergence with two of two copies decided something: {r.value}"
    # what a timed-out wait_answered would say: b's copies, not a's, are off the replay
    named = await copies_off_replay(s, reports)
    assert named.startswith("copies of b off the replay: ") and "copies of a" not in named, named
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    assert_one_result_each(final, expected, oracle, not_published=set(injected) | held_back)
    assert_sequence_numbers_unique(final, everything)
    print(f"\nclerk, b bitflip 1%: {len(injected)} faults injected, {len(reports)} divergences reported, "
          f"{len(held_back)} duplicates of them withheld, {len(final)} results for {EVENTS} events; "
          f"test {time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- 3


@pytest.mark.parametrize("instances", ["a,b,c"])
@pytest.mark.parametrize("required_copies", ["2"])
async def test_three_instances_two_required_faulty_c_is_outvoted_and_reported(clerk_settings, spawn) -> None:
    """Spec rules checked (specs/clerk.allium):

    - ClerkDecidesOnRequiredCopies with required_copies 2 of a, b, c: the first two
      matching copies decide; c flips bits in ~2% of its outputs and every position is
      still published exactly once, with the oracle's outcome and a, b as the agreeing
      instances wherever c's copy was bad (ClerkPublishesOnce, ResultIsAnAgreedCopy).
    - ClerkComparesLateCopies, ClerkReportsDivergence, ClerkPublishesDivergence: every bad
      copy of c is reported, divergence records == c's "FAULT INJECTED" lines, at those
      positions, each listing all three copies and naming c's digest as the odd one (a's
      and b's equal the decided digest, the oracle's). ClerkSequenceNumbersUnique.
    - ClerkPublishesDivergence, DivergenceNamedByOneOfItsCopies: each report names the
      request as the decided copy of a says it (the oracle's key and event name), and
      carries the three bodies: a's and b's are the oracle's bytes, c's the bytes its
      digest covers, the oracle's with one quantity's bit flipped.
      Both paths are forced: c starts only after a and b have decided the first half
      (all its copies of that half arrive after the decision), then the second half runs
      with all three racing (c's copy may come first, second or last).
    """
    s = clerk_settings
    events = 6_000
    began = time.monotonic()
    insts = start_instances(spawn, "a,b")
    clerk, _port = start_clerk(spawn)
    c = spawn("c", "--inject-faults", "bitflip:0.02")
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    out_c = await OutputCollector(s.kafka_bootstrap, s.output_topic("c")).start()
    procs = [*insts.values(), clerk]
    try:
        await wait_ready(s, insts, clerk)
        records = list(workload.inventory(99, events))
        first = set(await workload.produce(s.kafka_bootstrap, s.input_topic, records[:events // 2]))
        await wait_for(lambda: first <= results.positions(), 120, "a and b to decide the first half",
                       interval_s=0.2, detail=lambda: f"{len(first & results.positions())} of {len(first)}")
        c.start()
        procs.append(c)
        await wait_ready(s, {"c": c}, clerk)
        await out_c.wait_complete(first, 120, detail=c.log_tail)  # c has caught up: now all three race
        second = set(await workload.produce(s.kafka_bootstrap, s.input_topic, records[events // 2:]))
        expected = first | second
        await out_c.wait_complete(expected, 120, detail=c.log_tail)
        await wait_answered(s, expected, results, divergences, procs, 120)
        await wait_for(lambda: set(fault_positions(c.all_logs())) <= divergences.positions(), 30,
                       "a divergence report for every fault c logged",
                       detail=lambda: f"{len(fault_positions(c.all_logs()))} injected, "
                                      f"{len(divergences.records)} reported")
    finally:
        await results.stop()
        await divergences.stop()
        await out_c.stop()
    await stop_all(procs)

    injected = fault_positions(c.all_logs())
    assert len(set(injected)) == len(injected), f"c corrupted some position twice: {injected}"
    late = [pos for pos in injected if pos in first]
    assert late, "c corrupted no copy of the first half: the late-copy path was not exercised"
    assert len(injected) > len(late), "c corrupted no copy of the second half"
    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    published = assert_one_result_each(final, expected, oracle)
    reports = await read_all(s.kafka_bootstrap, s.divergences_topic)
    assert len(reports) == len(injected), (
        f"{len(reports)} divergence records for {len(injected)} faults of c ({len(late)} in the first half, "
        f"where c's copies came after the decision; reported there: "
        f"{sum(1 for pos in by_position(reports) if pos in first)})")
    assert set(by_position(reports)) == set(injected)
    assert_sequence_numbers_unique(final, reports)
    for r in reports:
        pos = (r.value["input"]["partition"], r.value["input"]["offset"])
        copies = {cp["instance"]: cp["digest"] for cp in r.value["copies"]}
        good = oracle.digests[pos]
        assert r.partition == pos[0], r
        assert r.value["decided"] == good, f"{pos}: decided {r.value['decided']} is not the oracle's {good}"
        assert copies.get("c") not in (None, good), f"{pos}: the report does not name c's bad copy: {r.value}"
        assert all(d == good for i, d in copies.items() if i != "c"), f"{pos}: a or b is the odd one: {r.value}"
        assert copies.keys() == {"a", "b", "c"}, f"{pos}: the report does not list every copy: {r.value}"
        assert set(published[pos].value["instances"]) == {"a", "b"}, published[pos].value
        expected_body = orjson.loads(oracle.bodies[pos])
        assert r.value["named_by"] == "a", r.value
        assert (r.value["idempotency_key"], r.value["event_name"]) == (expected_body["idempotency_key"],
                                                                       expected_body["event_name"]), r.value
        bodies = {cp["instance"]: canonical(cp["body"]) for cp in r.value["copies"]}
        assert bodies["a"] == bodies["b"] == oracle.bodies[pos], f"{pos}: a's or b's body is not the oracle's"
        assert digest(bodies["c"]) == copies["c"] and bodies["c"] != oracle.bodies[pos]
    counts = {}
    for pos, r in published.items():
        key = ("first" if pos in first else "second") + " half " + ",".join(r.value["instances"])
        counts[key] = counts.get(key, 0) + 1
    assert any(k.startswith("second") and "c" in k for k in counts), (
        f"c decided nothing in the second half: it never raced a and b {counts}")
    print(f"\nclerk, a,b,c with c bitflip 2%, 2 required: {len(injected)} faults ({len(late)} after the decision), "
          f"{len(reports)} reported; "
          f"deciding pairs {counts}; test {time.monotonic() - began:.1f} s")


@pytest.mark.parametrize("instances", ["a,b,c"])
@pytest.mark.parametrize("required_copies", ["2"])
async def test_three_instances_two_required_c_down_for_good_keeps_the_clerk_bounded(
        clerk_settings, spawn, monkeypatch) -> None:
    """Spec rules checked (specs/clerk.allium): ClerkAdvancesDecidedWatermark and
    ClerkDropsBelowLowestWatermark with a, b, c, 2 required and c never started. The
    input comes from a transactional producer, so a commit marker follows every
    partition's records of each transaction. a and b decide every event; the decided
    watermark passes each marker once a and b have (before: it stopped at the first,
    and every later marker became a finished range carried by every result record),
    and the Clerk holds at most DOCKET_MAX_LAG (here 100) decided positions per
    partition for c (before: every one)."""
    from aiokafka import AIOKafkaProducer

    s = clerk_settings
    max_lag, transactions = 100, 300
    monkeypatch.setenv("DOCKET_MAX_LAG", str(max_lag))
    insts = start_instances(spawn, "a,b")
    clerk, port = start_clerk(spawn)
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    procs = [*insts.values(), clerk]
    records = list(workload.inventory(7, transactions * CLERK_PARTITIONS))
    txn = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap,
                                           transactional_id=f"{s.topic_prefix}-c-down"))
    expected: set[Position] = set()
    try:
        await wait_ready(s, insts, clerk)
        await txn.start()
        for t in range(transactions):
            async with txn.transaction():
                sent = [await txn.send(s.input_topic, r.value, key=r.key, partition=p)
                        for p, r in enumerate(records[t * CLERK_PARTITIONS:(t + 1) * CLERK_PARTITIONS])]
            metas = [await f for f in sent]
            expected |= {(m.partition, m.offset) for m in metas}
        await wait_answered(s, expected, results, divergences, procs, 120)
        bound = CLERK_PARTITIONS * (max_lag + 20)  # + the positions of a copy batch in flight
        await wait_for(lambda: clerk_metrics(port).get("docket_clerk_pending_positions", 1e9) <= bound, 30,
                       f"the Clerk to hold at most {bound} positions",
                       detail=lambda: f"held: {clerk_metrics(port).get('docket_clerk_pending_positions')}")
    finally:
        await txn.stop()
        await results.stop()
        await divergences.stop()
    await stop_all(procs)
    assert not divergences.records, divergences.records[:3]
    last = {}
    for r in results.records:
        if r.partition not in last or r.value["clerk"]["seq"] > last[r.partition].value["clerk"]["seq"]:
            last[r.partition] = r
    assert len(last) == CLERK_PARTITIONS
    for p, r in sorted(last.items()):
        state = r.value["clerk"]
        # a marker at every other offset: the decided watermark passes the markers of
        # a copy batch once its watermark is handled, so the last record's state holds
        # the batch's own decisions, not one range per transaction since the first
        # marker (300 here before the fix, decided_below stuck at the first marker). How
        # many the last batch holds depends on how far the instances ran ahead of the
        # Clerk: 37 on a slow CI box, 95 on a busy one (2026-12-06), so the bound is half
        # the transactions, not a batch size; it still fails the stuck watermark.
        batch = transactions // 2
        assert len(state["finished_ranges"]) <= batch, (p, state)
        assert state["decided_below"] >= r.value["input"]["offset"] - 2 * batch, (p, state)


@pytest.mark.parametrize("instances", ["a,b,c"])
@pytest.mark.parametrize("required_copies", ["2"])
async def test_a_disagreeing_pair_with_c_down_for_good_is_reported_and_releases_the_clerk(
        clerk_settings, spawn, monkeypatch) -> None:
    """Spec rules checked (specs/clerk.allium): ClerkGivesUpUndecidedPosition with a, b,
    c, 2 required and c never started; b flips a bit in ~1% of its outputs, so a and b
    disagree there. Each such position is reported (mismatch, decided null, a's copy
    and b's) once a and b are DOCKET_MAX_LAG (here 50) offsets past it, and never
    published; every other position has its result; the Clerk holds a bounded number of
    positions and commits every output record (ClerkAcksOnlyFinalPositions: the items
    holding those copies are released). Before, each such position waited for c for
    good: the decided watermark stopped there, and the Clerk's commits with it. b is
    restarted without faults for a tail of events, so no disagreement is left within
    max_lag of a partition's end. A repeat of such a position is held while it is
    undecided and withheld once it is given up (ClerkHoldsDuplicateOfUndecidedOriginal,
    ClerkSettlesHeldDuplicate)."""
    s = clerk_settings
    max_lag = 50
    monkeypatch.setenv("DOCKET_MAX_LAG", str(max_lag))
    insts = start_instances(spawn, "a,b", faults={"b": "bitflip:0.01"})
    clerk, port = start_clerk(spawn)
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    b = insts["b"]
    procs = [*insts.values(), clerk]
    try:
        await wait_ready(s, insts, clerk)
        positions = await workload.produce(s.kafka_bootstrap, s.input_topic, workload.inventory(424242, 2_000))
        await wait_for(lambda: b.all_logs().count("FAULT INJECTED") >= 1 and len(results.positions()) > 1_500, 120,
                       "b to inject a fault and most positions to be decided", interval_s=0.2,
                       detail=lambda: f"{len(results.positions())} results\n" + b.log_tail(15))
        await b.stop()
        injected = set(fault_positions(b.all_logs()))
        b.args = ()  # the tail without faults
        b.start()
        tail = await workload.produce(s.kafka_bootstrap, s.input_topic,
                                      workload.inventory(4242, CLERK_PARTITIONS * (max_lag + 30) * 2))
        per_partition = {p: sum(1 for q, _ in tail if q == p) for p in range(CLERK_PARTITIONS)}
        assert min(per_partition.values()) > max_lag, per_partition
        expected = set(positions) | set(tail)
        _inputs, oracle = await oracle_for(s, expected)
        held_back = withheld(injected, duplicates_of(oracle))  # each held until its original is given up
        await wait_answered(s, expected, results, divergences, procs, 120, diverged=lambda: injected | held_back)
        # The gauge is refreshed once a second, so the value read as the last answer
        # comes may be one taken mid-burst (840 seen in CI); bounded means it comes back
        # within the bound once a and b are past every position (before the fix it grew
        # with every event: 2,001 held after 4,000 offsets, never released).
        bound = CLERK_PARTITIONS * (max_lag + 40)
        (held,) = await wait_for(
            lambda: (lambda h: [h] if h <= bound else None)(clerk_metrics(port).get("docket_clerk_pending_positions",
                                                                                    1e9)),
            30, f"the Clerk's pending positions within {bound}", interval_s=0.5,
            detail=lambda: str(clerk_metrics(port).get("docket_clerk_pending_positions")))
    finally:
        await results.stop()
        await divergences.stop()
    await stop_all(procs)
    assert injected, "b injected no fault: the test proves nothing"
    # (b's restart may replay a position it corrupted: a replay_mismatch report besides)
    reports = by_position(r for r in divergences.records if r.value["cause"] != "replay_mismatch")
    assert set(reports) == injected | held_back, (sorted(set(reports) - injected - held_back)[:5],
                                                  sorted(injected - set(reports))[:5])
    assert_withheld(reports, held_back, oracle)
    for pos in injected:
        (rec,) = reports[pos]
        assert rec.value["cause"] == "mismatch" and rec.value["decided"] is None, rec.value
        assert sorted(c["instance"] for c in rec.value["copies"]) == ["a", "b"], rec.value
    published = by_position(results.records)
    assert not (injected | held_back) & set(published), sorted((injected | held_back) & set(published))[:5]
    assert set(published) == expected - injected - held_back
    assert all(len(recs) == 1 for recs in published.values())
    assert held <= CLERK_PARTITIONS * (max_lag + 40), held


# --------------------------------------------------------------------------- 4


async def test_clerk_sigkilled_three_times_still_one_result_per_event(clerk_settings, spawn) -> None:
    """Spec rules checked (specs/clerk.allium, specs/recovery.allium):

    - ClerkKilled, ClerkPublishesOnce across Clerk crashes: the Clerk is SIGKILLed three times at
      seeded random points of a 10,000-event run and restarted each time; a
      read_committed reader still sees exactly one result per position, none missing,
      each the oracle's (ClerkNeverDropsANeededCopy); ClerkSequenceNumbersUnique.
    - ClerkSeedsFromNewestReadableRecords, ClerkChecksCopyOfForgottenPosition,
      ClerkAcksOnlyFinalPositions / CommitOnlyAcknowledgedOffsets: each restart re-reads
      copies after the group's committed offsets, and for at least one kill some of
      those belong to positions already published (so the restart had to recognise them
      from the state embedded in the last records, not publish them again).
    """
    s = clerk_settings
    rng = random.Random(8675309)
    began = time.monotonic()
    insts = start_instances(spawn, "a,b")
    clerk, port = start_clerk(spawn)
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    out = {i: await OutputCollector(s.kafka_bootstrap, s.output_topic(i)).start() for i in ("a", "b")}
    procs = [*insts.values(), clerk]
    kills = []
    try:
        await wait_ready(s, insts, clerk)
        records = list(workload.inventory(4711, EVENTS))
        # Paced, so the run lasts through three Clerk restarts (each waits out the dead
        # member's session, then works off the backlog in a few batches, so results
        # arrive in jumps of thousands); the instances keep going meanwhile.
        producing = asyncio.create_task(workload.produce(s.kafka_bootstrap, s.input_topic, records, rate=250))
        for k in range(3):
            target = len(results.records) + rng.randint(300, 1800)
            await wait_for(lambda target=target: clerk.assert_alive() or len(results.records) >= target, RESTART_DEADLINE_S,
                           f"Clerk run {clerk.starts} to publish up to {target} results",
                           interval_s=0.05, detail=lambda: f"{len(results.records)} results\n{clerk.log_tail()}")
            clerk.kill()
            published = by_position(await read_all(s.kafka_bootstrap, s.results_topic))
            committed = await committed_offsets(s.kafka_bootstrap, s.app_id("clerk"))
            # Positions already published whose copies lie at or after the committed offsets:
            # the next run reads those copies again.
            reread = sum(1 for i in ("a", "b") for pos, copies in out[i].copies.items()
                         if pos in published and any(c.offset >= committed.get((s.output_topic(i), c.partition), 0)
                                                     for c in copies))
            kills.append({"results": len(published), "reread_decided": reread})
            assert len(published) < EVENTS, f"the run was over before kill {k + 1}: {kills}"
            clerk.start()
        positions = await producing
        expected = set(positions)
        assert len(expected) == EVENTS
        await wait_answered(s, expected, results, divergences, procs, 180)
        metrics = clerk_metrics(port)
    finally:
        if "producing" in locals() and not producing.done():
            producing.cancel()
        await results.stop()
        await divergences.stop()
        for collector in out.values():
            await collector.stop()
    await stop_all(procs)

    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    assert_one_result_each(final, expected, oracle)
    assert await read_all(s.kafka_bootstrap, s.divergences_topic) == []
    assert_sequence_numbers_unique(final, [])
    assert any(k["reread_decided"] > 0 for k in kills), (
        f"no restart re-read a copy of an already published position: the kills tested nothing {kills}")
    print(f"\nclerk, 3 SIGKILLs: {kills}; {len(final)} results for {EVENTS} events; pending positions "
          f"after the run {metrics.get('docket_clerk_pending_positions')}; test {time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- 5


async def test_restarted_instance_claims_no_progress_before_ready_and_clerk_keeps_every_copy(
        clerk_settings, spawn) -> None:
    """Spec rules checked (specs/recovery.allium, specs/clerk.allium):

    - InstanceBecomesReady, AdvertiseWatermarkOnlyWhenReady, NoWatermarkBeforeRestore (the
      instanceReady gate), observed on the wire: instance b is SIGKILLed mid-run and
      restarted; no watermark of the new run is on b's output topic before the new run
      logs its ready line (checked while polling, and by the record timestamps against
      the log line's).
    - WatermarksCoverOnlyEmittedOutputs, no pre-crash progress claimed: every watermark W
      the new run advertises on partition p is at most 1 + the highest input offset
      among the copies the new run emitted on p in or before its record; and (across runs) every input
      offset below W has a copy earlier on the partition.
    - ReplayReemitsOriginalOutput, ClerkIgnoresIdenticalReplay, ClerkNeverDropsANeededCopy,
      ClerkPublishesOnce, CrashAfterOutputBeforeCommit: the restart re-emitted copies,
      no divergence was reported, and the Clerk published exactly one result per
      position, each the oracle's.
    """
    s = clerk_settings
    events = 6_000
    began = time.monotonic()
    insts = start_instances(spawn, "a,b")
    clerk, _port = start_clerk(spawn)
    b = insts["b"]
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    out_b = await OutputCollector(s.kafka_bootstrap, s.output_topic("b")).start()
    procs = [*insts.values(), clerk]
    try:
        await wait_ready(s, insts, clerk)
        records = list(workload.inventory(2024, events))
        producing = asyncio.create_task(workload.produce(s.kafka_bootstrap, s.input_topic, records, rate=600))
        await wait_for(lambda: b.assert_alive() or out_b.positions >= events * 2 // 5, 60,
                       "b to answer 40% of the events", detail=b.log_tail)
        b.kill()
        # A run is told by its records' timestamps, the broker's (the output topic is
        # LogAppendTime): the new run's records are stamped after it was started. The
        # dead run's last produce request may still be on its way to the broker and be
        # stamped after the kill (a CI run saw that), so the boundary is taken after
        # the collector has read what the topic held, and the new process spends
        # more than a second importing before it can produce anything.
        await out_b.wait_caught_up()
        before_kill = out_b.positions
        assert before_kill < events, "b was done before the kill"
        restarted_ms = int(time.time() * 1000)
        b.start()

        def new_run(p: int, off: int) -> bool:
            # While the test runs; after it, the boundary moves to the new process's first
            # log line (below): a dead run's last produce request can still be appended,
            # and stamped, after the collector caught up (CI saw one 34 ms before the new
            # run's ready line), but never after the new process has started logging.
            return out_b.timestamps[(p, off)] > restarted_ms

        def new_marks() -> list:
            return [(p, off, m) for p, off, m in out_b.watermarks if new_run(p, off)]

        def gate_holds() -> bool:
            # The order (ready line, then watermarks) is checked after the run, by the
            # ready line's time against the watermarks' broker timestamps: whether the
            # line is in the log file yet when a watermark is read is a race (two CI runs
            # read an empty log while the new run's watermark was already on the wire).
            b.assert_alive()
            return READY in b.log_text() and new_marks()

        await wait_for(gate_holds, RESTART_DEADLINE_S, "b's new run to log ready and advertise a watermark",
                       interval_s=0.02, detail=b.log_tail)
        positions = await producing
        expected = set(positions)
        await wait_answered(s, expected, results, divergences, procs, 150)
        await out_b.wait_complete(expected, 30)
        # b advertises its final watermarks within a watermark interval of its last output.
        ends = {}
        for rec in await read_topic(s.kafka_bootstrap, s.input_topic):
            ends[rec.partition] = rec.offset + 1
        await wait_for(lambda: all(any(p == q and m["watermark"] == end for q, _, m in new_marks())
                                   for p, end in ends.items()), 30, "b's final watermarks")
    finally:
        if "producing" in locals() and not producing.done():
            producing.cancel()
        await results.stop()
        await divergences.stop()
        await out_b.stop()
    await stop_all(procs)

    ready_ms = log_line_time_ms(b.log_text(2), READY)
    assert ready_ms is not None, f"no timestamped ready line in b's second log\n{b.log_tail()}"
    started_ms = log_line_time_ms(b.log_text(2), None)
    assert started_ms is not None and started_ms <= ready_ms, f"b's second log\n{b.log_tail()}"
    restarted_ms = max(restarted_ms, started_ms)
    marks = new_marks()
    early = [(p, off, out_b.timestamps[(p, off)]) for p, off, _m in marks if out_b.timestamps[(p, off)] < ready_ms]
    assert not early, f"b's new run sent watermarks before its ready line ({ready_ms}): {early[:5]}"

    old_marks: dict[int, int] = {}
    for p, off, m in out_b.watermarks:
        if not new_run(p, off):
            old_marks[p] = max(old_marks.get(p, 0), m["watermark"])
    assert old_marks, "b advertised no watermark before the kill: nothing to claim"
    boundary = {p: min(off for (q, off) in out_b.timestamps if q == p and new_run(q, off))
                for p in {p for p, _off, _m in marks}}  # the new run's first record per partition
    # Every new-run watermark W on p <= 1 + the highest input offset among the new run's
    # copies on p in its record or before it on the output partition (a copy-batch
    # record carries its watermark with its copies).
    checked = 0
    first_new = {}
    for p, off, m in marks:
        emitted = [c.body["input"]["offset"] for copies in out_b.copies.values() for c in copies
                   if c.partition == p and boundary[p] <= c.offset <= off]
        top = max(emitted, default=-1)
        assert m["watermark"] <= top + 1, (
            f"b's new run advertised watermark {m['watermark']} on partition {p} (output offset {off}) having "
            f"re-emitted only up to input offset {top} in this run (pre-crash watermark {old_marks.get(p)})")
        first_new.setdefault(p, m["watermark"])
        checked += 1
    assert checked >= s.partitions, f"only {checked} new-run watermarks checked"
    assert_watermarks_follow_outputs(out_b, "b")
    reemitted = sum(1 for copies in out_b.copies.values() if len(copies) > 1)
    assert reemitted > 0, "b's restart re-emitted nothing: the kill landed where there was nothing to recover"

    _inputs, oracle = await oracle_for(s, expected)
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    assert_one_result_each(final, expected, oracle)
    assert await read_all(s.kafka_bootstrap, s.divergences_topic) == []
    print(f"\nclerk, b SIGKILLed at {before_kill} positions: pre-crash watermarks {old_marks}, first new-run "
          f"watermarks {first_new}, {checked} new-run watermarks checked, {reemitted} positions re-emitted; "
          f"{len(final)} results for {events} events; test {time.monotonic() - began:.1f} s")


# --------------------------------------------------------------------------- foreign records


# What another producer may write to the results and divergences topics (one WARNING
# line each when the Clerk seeds; tests/unit/test_clerk_seed.py has every kind).
FOREIGN_KINDS = ("not-json", "json-array", "obj-missing", "tombstone", "wrong-types", "big", "deep",
                 "dup-members", "decided-huge", "range-whole-log")


class ReadableTail(TopicTail):
    """A TopicTail that keeps only what a reader takes for a result (or a divergence
    report: a JSON object with an input position) and the positions of the rest."""

    def __init__(self, bootstrap: str, topic: str, results: bool) -> None:
        super().__init__(bootstrap, topic)
        self.results = results
        self.foreign: set[Position] = set()

    def on_record(self, m) -> None:
        from app.records import UnreadableRecord, check_divergence, check_result, json_object

        try:
            value = json_object(m.value)
            (check_result if self.results else check_divergence)(value)
            if not self.results and value.get("cause") not in ("mismatch", "replay_mismatch"):
                raise UnreadableRecord("no cause")
        except UnreadableRecord:
            self.foreign.add((m.partition, m.offset))
            return
        self.records.append(Rec(m.partition, m.offset, m.timestamp, m.key, value))


async def _reset_group_offsets(s: Settings) -> None:
    """Commit offset 0 on every output partition for the Clerk's (empty) group, so its
    next run reads every copy again."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(s, "test", "consumer", bootstrap_servers=s.kafka_bootstrap, group_id=s.app_id("clerk"),
                                enable_auto_commit=False))
    await consumer.start()
    try:
        tps = [TopicPartition(s.output_topic(i), p) for i in s.instances for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def test_foreign_records_on_results_and_divergences_are_skipped_and_nothing_is_published_twice(
        clerk_settings, spawn) -> None:
    """Spec rules checked (specs/clerk.allium, specs/failure-modes.allium):

    - ForeignRecordOnClerkTopics, ClerkSeedsFromNewestReadableRecords: after the Clerk
      has answered a first run of events (none on partition 3), ten kinds of foreign
      record (not JSON, an array, a tombstone, no `clerk`, 200 KB of nesting, 900 KB,
      states with numbers out of range, ...) are appended to every partition of both
      topics; the Clerk is SIGKILLed and restarted with its group's offsets reset to 0,
      so it reads every copy again. It does not stop: it seeds each partition from the
      newest record it wrote itself (partition 3: from nothing) and publishes none of
      the re-read positions again (ClerkPublishesOnce: exactly one result per position
      over both runs, each the oracle's), and answers a second run on every partition.
    - ClerkReportsUnreadableTailRecord: its log names every foreign record in exactly one
      WARNING line (topic, partition, offset), saying which record the seed comes from;
      no ERROR (ClerkReportsExhaustedLookBack: the look-back never ran out) and no
      traceback.
    """
    from aiokafka import AIOKafkaProducer

    from app.records import partition_for
    from tests.unit.test_clerk_seed import GARBAGE

    s = clerk_settings
    empty = 3  # no event reaches this partition before the restart
    insts = start_instances(spawn, "a,b")
    clerk, port = start_clerk(spawn)
    results = await ReadableTail(s.kafka_bootstrap, s.results_topic, results=True).start()
    divergences = await ReadableTail(s.kafka_bootstrap, s.divergences_topic, results=False).start()
    procs = [*insts.values(), clerk]
    foreign: dict[tuple[str, int], list[int]] = {}
    try:
        await wait_ready(s, insts, clerk)
        first = [r for r in workload.inventory(5150, 600) if partition_for(r.key, s.partitions) != empty]
        before = set(await workload.produce(s.kafka_bootstrap, s.input_topic, first))
        await wait_answered(s, before, results, divergences, procs, 120)
        clerk_ends: dict[int, int] = {}  # results partition -> end offset before the foreign records
        for r in results.records:
            clerk_ends[r.partition] = max(clerk_ends.get(r.partition, 0), r.offset + 1)

        producer = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap, acks="all", max_request_size=2_000_000))
        await producer.start()
        try:
            for p in range(s.partitions):
                for topic in (s.results_topic, s.divergences_topic):
                    for kind in FOREIGN_KINDS:
                        meta = await producer.send_and_wait(topic, GARBAGE[kind], key=b"junk", partition=p)
                        foreign.setdefault((topic, p), []).append(meta.offset)
        finally:
            await producer.stop()

        clerk.kill()
        await wait_for(lambda: _group_is(s, "Empty"), RESTART_DEADLINE_S,
                       "the killed Clerk to leave its group (session timeout)", interval_s=0.5)
        await _reset_group_offsets(s)
        assert set((await committed_offsets(s.kafka_bootstrap, s.app_id("clerk"))).values()) == {0}
        clerk.start()
        await wait_clerk_assigned(s, clerk, RESTART_DEADLINE_S)
        second = list(workload.inventory(5151, 300))
        after = set(await workload.produce(s.kafka_bootstrap, s.input_topic, second))
        assert {p for p, _ in after} == set(range(s.partitions))
        expected = before | after
        await wait_answered(s, expected, results, divergences, procs, 120)
        metrics = clerk_metrics(port)
    finally:
        await results.stop()
        await divergences.stop()
    await stop_all(procs)

    # the restart really read every copy again: each decided position was a candidate
    for i in ("a", "b"):
        assert metrics[f"docket_clerk_copies_total{{instance={i}}}"] >= len(expected), metrics
    _inputs, oracle = await oracle_for(s, expected)
    final = ReadableTail(s.kafka_bootstrap, s.results_topic, results=True)
    for r in await read_topic(s.kafka_bootstrap, s.results_topic):
        final.on_record(r)
    written = {(p, o) for (topic, p), offsets in foreign.items() if topic == s.results_topic for o in offsets}
    assert final.foreign == written
    assert_one_result_each(final.records, expected, oracle)
    reports = ReadableTail(s.kafka_bootstrap, s.divergences_topic, results=False)
    for r in await read_topic(s.kafka_bootstrap, s.divergences_topic):
        reports.on_record(r)
    assert reports.records == [], "clean instances, yet divergence reports"

    log = clerk.log_text(2)
    assert "Traceback" not in log and "[ERROR]" not in log, clerk.log_tail(40)
    for (topic, p), offsets in foreign.items():
        for offset in offsets:
            lines = [line for line in log.splitlines()
                     if f"skipped an unreadable record of {topic} partition {p} at offset {offset} " in line]
            assert len(lines) == 1, (topic, p, offset, lines)
            assert "[WARNING]" in lines[0], lines[0]
            if topic == s.results_topic and p != empty:
                assert f"the newest readable record there is at offset {clerk_ends[p] - 1}." in lines[0], lines[0]
            else:
                assert "no older record there is readable" in lines[0], lines[0]
    assert clerk.starts == 2


async def _group_is(s: Settings, state: str) -> bool:
    return (await group_state(s.kafka_bootstrap, s.app_id("clerk")))[0] == state
