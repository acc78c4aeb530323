"""The Clerk's decisions without Kafka (specs/clerk.allium)."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.clerk_core import ClerkCore, Publish, Report
from app.canonical import canonical, digest


def body(offset: int, partition: int = 0, variant: int = 0) -> bytes:
    return canonical({"input": {"partition": partition, "offset": offset}, "idempotency_key": f"k{offset}",
                      "event_name": "stock.adjust", "domain_version": "inventory/1", "duplicate_of": None,
                      "stream_time": 1000 + offset,
                      "outcome": {"status": "applied", "reason": None, "detail": "",
                                  "entities": [{"key": "stock:w:s", "state": {"quantity": offset + variant},
                                                "version": 1}]}})


def copy(core, instance, offset, variant=0, partition=0):
    b = body(offset, partition, variant)
    return core.on_copy(partition, offset, instance, digest(b), b, f"k{offset}".encode())


def published(actions):
    return [orjson.loads(a.value) for a in actions if isinstance(a, Publish)]


def reports(actions):
    return [orjson.loads(a.value) for a in actions if isinstance(a, Report)]


def test_two_matching_copies_publish_once():
    """ClerkDecidesOnRequiredCopies: the second matching copy publishes the result."""
    core = ClerkCore(("a", "b"), 2)
    assert copy(core, "a", 0) == []
    (result,) = published(copy(core, "b", 0))
    assert result["instances"] == ["a", "b"]
    assert result["input"] == {"partition": 0, "offset": 0}
    assert result["digest"] == digest(body(0))
    assert result["outcome"]["entities"][0]["state"]["quantity"] == 0
    assert core.decided_below(0) == 1


def test_a_duplicates_result_is_published_without_entity_states():
    """ClerkPublishesAgreedEntityStates: a decided duplicate (duplicate_of set: the Warden
    recognised the key and the outcome is the original's) publishes its result but
    queues no entity state, while the original's decision queued its states. Queued, the
    original's old state would become the entity's last record on the compacted
    entities topic, and an API started later would serve it."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    (original,) = [a for a in copy(core, "b", 0) if isinstance(a, Publish)]
    assert [e[0] for e in original.entities] == ["stock:w:s"]
    replay = orjson.loads(body(7))
    replay["duplicate_of"] = {"partition": 0, "offset": 0}
    replay["outcome"] = orjson.loads(body(0))["outcome"]  # the original outcome, unchanged
    raw = canonical(replay)
    core.on_copy(0, 7, "a", digest(raw), raw, b"k0")
    (dup,) = [a for a in core.on_copy(0, 7, "b", digest(raw), raw, b"k0") if isinstance(a, Publish)]
    assert orjson.loads(dup.value)["duplicate_of"] == {"partition": 0, "offset": 0}
    assert dup.entities == () and dup.entity_records() == []


def test_identical_replayed_copy_is_ignored():
    """ClerkIgnoresIdenticalReplay."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    copy(core, "b", 0)
    assert copy(core, "a", 0) == [] and copy(core, "b", 0) == []
    assert core.counts["decisions"] == 1


def test_different_replayed_copy_is_a_divergence():
    """ClerkReportsReplayMismatch: an instance whose replay differs is non-deterministic."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    copy(core, "b", 0)
    (rep,) = reports(copy(core, "a", 0, variant=7))
    assert rep["cause"] == "replay_mismatch"
    assert rep["decided"] == digest(body(0))
    assert {c["instance"] for c in rep["copies"]} == {"a", "b"}


def test_disagreeing_pair_diverges_and_is_never_published():
    """ClerkReportsDivergence, DivergentPositionNeverPublished."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    actions = copy(core, "b", 0, variant=1)
    assert published(actions) == []
    (rep,) = reports(actions)
    assert rep["decided"] is None and rep["cause"] == "mismatch"
    assert sorted(c["digest"] for c in rep["copies"]) == sorted([digest(body(0)), digest(body(0, variant=1))])
    assert published(copy(core, "b", 0, variant=1)) == []
    assert core.is_final(0, 0)


def test_three_instances_first_two_matching_decide_and_the_odd_one_is_reported():
    """ClerkDecidesOnRequiredCopies with a,b,c and 2 required; the odd copy is reported."""
    core = ClerkCore(("a", "b", "c"), 2)
    assert copy(core, "c", 0, variant=3) == []  # alone: nothing to compare yet
    assert copy(core, "a", 0) == []  # a != c, but b can still agree with either
    actions = copy(core, "b", 0)
    (result,) = published(actions)
    (rep,) = reports(actions)
    assert result["instances"] == ["a", "b"]
    assert rep["decided"] == digest(body(0))
    assert copy(core, "c", 1, variant=3) == []
    copy(core, "a", 1)
    copy(core, "b", 1)


def _versioned(offset: int, quantity: int, version: int) -> bytes:
    return canonical({"input": {"partition": 0, "offset": offset}, "idempotency_key": f"k{offset}",
                      "event_name": "stock.adjust", "domain_version": "inventory/1", "duplicate_of": None,
                      "stream_time": 1000 + offset,
                      "outcome": {"status": "applied", "reason": None, "detail": "",
                                  "entities": [{"key": "stock:w:s", "state": {"quantity": quantity},
                                                "version": version},
                                               {"key": f"stock:w:only{offset}", "state": {"quantity": 1},
                                                "version": 1}]}})


def test_a_decision_out_of_offset_order_queues_no_state_a_later_decision_superseded():
    """ClerkPublishesAgreedEntityStates: with a, b, c and 2 required, offset 0 waits
    (a and b disagree, c is behind) while offset 1, which changed the same entity to
    version 2, is decided. When c's copy decides offset 0, its version-1 state of that
    entity is not queued, or it would be the last record of the key on the compacted
    entities topic; the state of an entity only offset 0 changed still is."""
    core = ClerkCore(("a", "b", "c"), 2)
    good0, bad0, one = _versioned(0, 5, 1), _versioned(0, 6, 1), _versioned(1, 8, 2)
    send(core, "a", 0, good0)
    send(core, "b", 0, bad0)
    send(core, "a", 1, one)
    (first,) = [a for a in send(core, "b", 1, one) if isinstance(a, Publish)]
    assert first.offset == 1 and {e[0]: e[2] for e in first.entities} == {"stock:w:s": 2, "stock:w:only1": 1}
    (late,) = [a for a in send(core, "c", 0, good0) if isinstance(a, Publish)]
    assert late.offset == 0 and orjson.loads(late.value)["outcome"]["entities"][0]["version"] == 1
    assert [e[0] for e in late.entities] == ["stock:w:only0"]


def test_a_decision_in_offset_order_queues_every_state():
    """ClerkPublishesAgreedEntityStates: decided in offset order (c's copy of offset 0
    comes before offset 1 is decided), both decisions queue every entity state."""
    core = ClerkCore(("a", "b", "c"), 2)
    good0, bad0, one = _versioned(0, 5, 1), _versioned(0, 6, 1), _versioned(1, 8, 2)
    send(core, "a", 0, good0)
    send(core, "b", 0, bad0)
    (zero,) = [a for a in send(core, "c", 0, good0) if isinstance(a, Publish)]
    send(core, "a", 1, one)
    (first,) = [a for a in send(core, "b", 1, one) if isinstance(a, Publish)]
    assert [e[0] for e in zero.entities] == ["stock:w:s", "stock:w:only0"]
    assert [e[0] for e in first.entities] == ["stock:w:s", "stock:w:only1"]


def test_late_copy_that_disagrees_after_the_decision_is_reported():
    """ClerkComparesLateCopies: a fault is found even after the result was safe."""
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0)
    assert published(copy(core, "b", 0))
    (rep,) = reports(copy(core, "c", 0, variant=5))
    assert rep["decided"] == digest(body(0)) and rep["cause"] == "mismatch"
    assert copy(core, "c", 1) == []


def test_three_way_disagreement_diverges():
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0, variant=1)
    copy(core, "b", 0, variant=2)
    actions = copy(core, "c", 0, variant=3)
    assert not published(actions) and reports(actions)[0]["decided"] is None


def test_decided_watermark_advances_in_order_and_skips_offsets_without_events():
    """ClerkAdvancesDecidedWatermark: offsets no instance copied, below every
    watermark, are not events (e.g. transaction markers)."""
    core = ClerkCore(("a", "b"), 2)
    for o in (0, 1):
        copy(core, "a", o)
        copy(core, "b", o)
    copy(core, "a", 3)
    copy(core, "b", 3)
    assert core.decided_below(0) == 2  # 2 not seen yet
    core.on_watermark(0, "a", 4)
    assert core.decided_below(0) == 2
    core.on_watermark(0, "b", 4)
    assert core.decided_below(0) == 4


def _feed_two_of_three(core, offsets, *, watermark_every=1):
    """a and b copy and agree on every offset in ``offsets`` and advertise watermarks
    past it; c (down) sends nothing. Returns the last result record's value."""
    last = None
    for i, o in enumerate(offsets):
        copy(core, "a", o)
        last = copy(core, "b", o)[0].value
        if i % watermark_every == watermark_every - 1:
            core.on_watermark(0, "a", o + 1)
            core.on_watermark(0, "b", o + 1)
    return last


@pytest.mark.parametrize("c_advertised", [True, False])
def test_one_of_three_down_holds_at_most_max_lag_finished_positions(c_advertised):
    """ClerkDropsBelowLowestWatermark: with a, b, c and 2 required, c down for good
    (it advertised once, or never since this Clerk started) holds back no more than
    max_lag finished positions; before, every decided position stayed in memory with
    its bodies (5,000 of 5,000 held, about 5 KB each)."""
    core = ClerkCore(("a", "b", "c"), 2, max_lag=100)
    if c_advertised:
        core.on_watermark(0, "c", 0)
    _feed_two_of_three(core, range(5000), watermark_every=10)
    assert core.decided_below(0) == 5000
    assert 100 <= core.pending(0) <= 110, core.pending(0)
    # c comes back: its copy of a forgotten position is late, counted and not compared
    assert copy(core, "c", 10, variant=9) == [] and core.counts["late_copies"] == 1


def _contested_then_two_of_three(core, offsets):
    """a and b disagree at offset 0, then agree on every offset in ``offsets`` (a
    watermark after each; a marker at every other offset, as with a transactional
    producer); c sends nothing. Returns every action and the last result's value."""
    actions = copy(core, "a", 0) + copy(core, "b", 0, variant=1)
    last = None
    for o in offsets:
        actions += copy(core, "a", o)
        out = copy(core, "b", o)
        actions += out
        last = published(out)[-1] if published(out) else last
        actions += core.on_watermark(0, "a", o + 2)
        actions += core.on_watermark(0, "b", o + 2)
    return actions, last


def test_a_disagreeing_pair_with_the_third_instance_down_is_given_up_past_max_lag():
    """ClerkGivesUpUndecidedPosition: with a, b, c and 2 required, a and b disagree at
    offset 0 and c is down for good. Once the settled watermark is more than max_lag
    past it, the position diverges (mismatch, decided null, both copies), and the
    Clerk stays bounded; before, it waited for c for good: the decided watermark stayed
    at 0, the Clerk held all 2,001 later positions, and each result carried 2,000
    finished ranges (23 KB a record after 4,000 offsets, growing with every event)."""
    core = ClerkCore(("a", "b", "c"), 2, max_lag=100)
    actions, last = _contested_then_two_of_three(core, range(1, 4000, 2))
    (gave_up,) = reports(actions)
    assert gave_up["input"] == {"partition": 0, "offset": 0}
    assert gave_up["cause"] == "mismatch" and gave_up["decided"] is None
    assert sorted(c["instance"] for c in gave_up["copies"]) == ["a", "b"]
    assert core.counts["given_up"] == 1 and core.is_final(0, 0)
    assert core.decided_below(0) == 4001
    assert core.pending(0) <= 110, core.pending(0)
    assert last["clerk"]["finished_ranges"] == [[3999, 4000]]
    assert len(orjson.dumps(last)) < 1000


def test_the_pair_is_given_up_only_once_the_settled_watermark_is_max_lag_past_it():
    """ClerkGivesUpUndecidedPosition: within max_lag the position waits, and c's copy
    arriving then still decides it (c is behind, not gone)."""
    core = ClerkCore(("a", "b", "c"), 2, max_lag=100)
    actions, _ = _contested_then_two_of_three(core, range(1, 99, 2))
    assert reports(actions) == [] and not core.is_final(0, 0)  # settled 99
    assert core.on_watermark(0, "a", 100) == [] and core.on_watermark(0, "b", 100) == []  # max_lag past 0, not more
    (result,) = published(copy(core, "c", 0, variant=1))
    assert result["input"]["offset"] == 0 and result["instances"] == ["b", "c"]

    core = ClerkCore(("a", "b", "c"), 2, max_lag=100)
    _contested_then_two_of_three(core, range(1, 99, 2))
    assert core.on_watermark(0, "a", 101) == []  # b's watermark is the settled one: 99
    (gave_up,) = reports(core.on_watermark(0, "b", 101) + core.on_watermark(0, "b", 102))
    assert gave_up["input"]["offset"] == 0 and core.decided_below(0) > 0
    # c comes back later: its copy is late (more than max_lag behind), counted, never published
    assert copy(core, "c", 0, variant=1) == [] and core.counts["late_copies"] == 1


def test_with_every_instance_required_a_disagreement_diverges_at_once_as_before():
    """ClerkReportsDivergence: two of two never waits for a third copy, so nothing is
    given up (the give-up needs more instances than required)."""
    core = ClerkCore(("a", "b"), 2, max_lag=10)
    (rep,) = reports(copy(core, "a", 0) + copy(core, "b", 0, variant=1))
    assert rep["decided"] is None and core.counts["given_up"] == 0


def test_an_instance_within_max_lag_still_has_its_late_copies_compared():
    """ClerkComparesLateCopies: a third instance behind by less than max_lag finds its
    positions held, so a wrong copy of one already decided is reported."""
    core = ClerkCore(("a", "b", "c"), 2, max_lag=100)
    core.on_watermark(0, "c", 0)
    _feed_two_of_three(core, range(90))
    (rep,) = reports(copy(core, "c", 0, variant=9))
    assert rep["cause"] == "mismatch" and rep["decided"] == digest(body(0))


def test_offsets_without_events_are_passed_once_the_required_instances_passed_them():
    """ClerkAdvancesDecidedWatermark: input from a transactional producer has a marker
    at every other offset here. With c down, a and b (as many as a decision needs)
    passing a marker is enough; before, the decided watermark stopped at the first
    marker after c's last watermark, every later one split the finished ranges, and each
    result carried them all (269 KB per record after 20,000 events)."""
    core = ClerkCore(("a", "b", "c"), 2, max_lag=100)
    core.on_watermark(0, "c", 0)
    last = None
    for o in range(0, 4000, 2):
        copy(core, "a", o)
        last = copy(core, "b", o)[0].value
        core.on_watermark(0, "a", o + 2)
        core.on_watermark(0, "b", o + 2)
    state = orjson.loads(last)["clerk"]
    # the record's state is taken as its own decision is made: that one position
    assert core.decided_below(0) == 4000 and state["finished_ranges"] == [[3998, 3999]]
    assert len(last) < 1000


def test_with_every_instance_required_an_offset_without_copies_waits_for_all():
    """ClerkAdvancesDecidedWatermark: with three of three required, one instance past
    an offset without a copy is not enough (as with two of two)."""
    core = ClerkCore(("a", "b", "c"), 3)
    for inst in ("a", "b"):
        copy(core, inst, 0)
        core.on_watermark(0, inst, 2)
    copy(core, "c", 0)
    assert core.decided_below(0) == 1  # c has not passed offset 1
    core.on_watermark(0, "c", 2)
    assert core.decided_below(0) == 2


def test_finished_positions_are_dropped_below_the_lowest_watermark():
    """ClerkDropsBelowLowestWatermark: memory is bounded by events in flight."""
    core = ClerkCore(("a", "b"), 2)
    for o in range(1000):
        copy(core, "a", o)
        copy(core, "b", o)
        if o % 100 == 99:
            core.on_watermark(0, "a", o + 1)
            core.on_watermark(0, "b", o + 1)
    assert core.pending(0) == 0
    assert core.counts["decisions"] == 1000


def test_pending_positions_are_never_dropped():
    """ClerkNeverDropsANeededCopy: a position missing a copy stays, whatever the watermarks."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    core.on_watermark(0, "a", 1)
    core.on_watermark(0, "b", 1)  # b claims progress it has not shown (a gate violation)
    assert core.pending(0) == 1 and not core.is_final(0, 0)
    (result,) = published(copy(core, "b", 0))
    assert result["input"]["offset"] == 0


def test_lagging_instance_is_reported():
    """ClerkReportsLaggingInstance, LaggingInstanceReported: an instance more than
    max_lag behind the most advanced one is reported, and no longer once it is back."""
    core = ClerkCore(("a", "b"), 2, max_lag=10)
    core.on_watermark(0, "a", 100)
    core.on_watermark(0, "b", 95)
    assert core.lagging == set()
    core.on_watermark(0, "a", 200)
    assert core.lagging == {(0, "b")}
    core.on_watermark(0, "b", 199)
    assert core.lagging == set()


def test_seed_restores_decisions_from_the_newest_record():
    """ClerkSeedsFromNewestReadableRecords: a restarted Clerk does not publish a decided position again."""
    core = ClerkCore(("a", "b"), 2)
    last = None
    for o in range(5):
        copy(core, "a", o)
        last = copy(core, "b", o)[0].value
    restarted = ClerkCore(("a", "b"), 2)
    restarted.seed(0, [last])
    for o in range(5):
        assert copy(restarted, "a", o) == [] and copy(restarted, "b", o) == []
    assert published(copy(restarted, "a", 5) + copy(restarted, "b", 5))[0]["input"]["offset"] == 5


def test_seed_picks_the_newest_of_result_and_divergence_records():
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    result = copy(core, "b", 0)[0].value
    copy(core, "a", 1)
    divergence = copy(core, "b", 1, variant=1)[0].value
    restarted = ClerkCore(("a", "b"), 2)
    restarted.seed(0, [result, divergence])
    assert restarted.decided_below(0) == 2
    assert copy(restarted, "a", 1) == [] and copy(restarted, "b", 1, variant=1) == []


# --- exactly once across Clerk crashes ----------------------------------------------


def _instance_topic(instance: str, n: int, rng: random.Random, replay: bool) -> list:
    """An output topic partition: copies in input order, watermarks after them,
    and optionally a replay (the instance restarted and re-emitted a suffix)."""
    out = []
    for o in range(n):
        out.append(("copy", o))
        if rng.random() < 0.2:
            out.append(("wm", o + 1))
        if replay and rng.random() < 0.02 and o > 5:
            back = rng.randint(1, 5)
            out.extend(("copy", r) for r in range(o - back, o + 1))
    out.append(("wm", n))
    return out


def _run_with_crashes(n: int, seed: int, crashes: int, instances=("a", "b"), required=2) -> list[dict]:
    rng = random.Random(seed)
    topics = {i: _instance_topic(i, n, rng, replay=True) for i in instances}
    committed = {i: 0 for i in instances}
    log: list[tuple[str, bytes]] = []  # the results and divergences topics, in order
    for run in range(crashes + 1):
        core = ClerkCore(instances, required)
        last_r = [v for k, v in log if k == "results"][-1:]
        last_d = [v for k, v in log if k == "divergences"][-1:]
        core.seed(0, last_r + last_d)
        pos = dict(committed)
        acked = {i: set() for i in instances}
        held: dict[int, list[tuple[str, int]]] = {}
        budget = rng.randint(10, 4 * n) if run < crashes else None
        steps = 0
        while any(pos[i] < len(topics[i]) for i in instances):
            if budget is not None and steps >= budget:
                break  # crash: nothing else happens in this run
            steps += 1
            inst = rng.choice([i for i in instances if pos[i] < len(topics[i])])
            idx = pos[inst]
            pos[inst] += 1
            kind, value = topics[inst][idx]
            if kind == "wm":
                core.on_watermark(0, inst, value)
                acked[inst].add(idx)
            else:
                for action in copy(core, inst, value):
                    log.append(("results" if isinstance(action, Publish) else "divergences", action.value))
                if core.is_final(0, value):
                    acked[inst].add(idx)
                    for other, j in held.pop(value, []):
                        acked[other].add(j)
                else:
                    held.setdefault(value, []).append((inst, idx))
            if rng.random() < 0.1:  # an offset commit: the contiguous acknowledged prefix
                for i in instances:
                    c = committed[i]
                    while c in acked[i]:
                        c += 1
                    committed[i] = c
    return [orjson.loads(v) for k, v in log if k == "results"]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), crashes=st.integers(0, 4))
def test_exactly_one_result_per_position_across_clerk_crashes(seed, crashes):
    """ClerkPublishesOnce, ClerkAcksOnlyFinalPositions, ClerkSeedsFromNewestReadableRecords,
    ClerkKilled: crash the Clerk anywhere, restart from the committed offsets, and every
    position still has exactly one result."""
    n = 120
    results = _run_with_crashes(n, seed, crashes)
    offsets = sorted(r["input"]["offset"] for r in results)
    assert offsets == list(range(n))


@pytest.mark.parametrize("order", ["ab", "ba", "interleaved"])
def test_decisions_do_not_depend_on_arrival_order(order):
    """ClerkDecisionIndependentOfArrivalOrder."""
    core = ClerkCore(("a", "b"), 2)
    seq = {"ab": [("a", o) for o in range(20)] + [("b", o) for o in range(20)],
           "ba": [("b", o) for o in range(20)] + [("a", o) for o in range(20)],
           "interleaved": [x for o in range(20) for x in (("a", o), ("b", o))]}[order]
    outs = []
    for inst, o in seq:
        outs += published(copy(core, inst, o, variant=1 if (inst, o) == ("b", 7) else 0))
    assert sorted(r["input"]["offset"] for r in outs) == [o for o in range(20) if o != 7]


def test_restored_position_is_never_reopened_after_the_watermark_passes_it():
    """ClerkPublishesOnce, ClerkChecksCopyOfForgottenPosition: with three instances, a
    position restored as finished and then passed by the decided watermark stays
    finished when a lagging instance's copy arrives."""
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0)
    last = copy(core, "b", 0)[0].value
    restarted = ClerkCore(("a", "b", "c"), 2)
    restarted.seed(0, [last])
    for o in (1, 2):
        copy(restarted, "a", o)
        copy(restarted, "b", o)
    assert restarted.decided_below(0) == 3
    assert copy(restarted, "c", 0) == [] and copy(restarted, "a", 0) == []
    assert restarted.is_final(0, 0)


def test_copies_and_watermarks_of_unconfigured_instances_are_refused():
    core = ClerkCore(("a", "b"), 2)
    core.on_watermark(0, "zz", 10)  # ignored: must not break collection
    with pytest.raises(ValueError):
        copy(core, "zz", 0)
    for o in range(3):
        copy(core, "a", o)
        copy(core, "b", o)
    core.on_watermark(0, "a", 3)
    core.on_watermark(0, "b", 3)
    assert core.pending(0) == 0


def test_state_embedded_in_records_stays_small_while_a_position_is_stuck():
    """FinishedAboveTheDecidedWatermark, ClerkSeedsFromNewestReadableRecords (RESOLVED: Ranges, not
    digests): with a and b disagreeing at offset 0 and c absent, 0 stays undecided
    while 20,000 later positions are decided; each record stays small, and a Clerk
    restarted from the last one publishes none of them again."""
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0, variant=1)
    copy(core, "b", 0, variant=2)
    last = None
    for o in range(1, 20_001):
        copy(core, "a", o)
        last = copy(core, "b", o)[0].value
    assert core.decided_below(0) == 0
    assert len(last) < 2_000
    restarted = ClerkCore(("a", "b", "c"), 2)
    restarted.seed(0, [last])
    assert all(copy(restarted, "c", o) == [] for o in range(1, 20_001))
    # 0 was never final, so its copies were never acknowledged and are read again
    assert copy(restarted, "a", 0, variant=1) == []
    assert reports(copy(restarted, "b", 0, variant=2)) == []  # c may still agree with either
    assert published(copy(restarted, "c", 0, variant=1))  # a and c agree on 0 at last


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=80))
def test_finished_ranges_cover_exactly_the_finished_offsets(offsets):
    """FinishedAboveTheDecidedWatermark: the ranges are sorted, disjoint, merged, and
    cover exactly the offsets added, whatever their order."""
    from agents.clerk_core import _add_to_ranges
    ranges: list[list[int]] = []
    for o in offsets:
        _add_to_ranges(ranges, o)
    covered = [o for a, b in ranges for o in range(a, b)]
    assert covered == sorted(set(offsets))
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))


# --- what a divergence record says ----------------------------------------------------


def body_with(offset: int, *, key="k", event_name="stock.adjust", quantity=0, detail="", stream_time=None,
              partition=0) -> bytes:
    """A copy's canonical body with the fields a divergence record names set freely (a
    corrupted copy may carry any of them)."""
    return canonical({"input": {"partition": partition, "offset": offset}, "idempotency_key": key,
                      "event_name": event_name, "domain_version": "inventory/1", "duplicate_of": None,
                      "stream_time": 1000 + offset if stream_time is None else stream_time,
                      "outcome": {"status": "applied", "reason": None, "detail": detail,
                                  "entities": [{"key": "stock:w:s", "state": {"quantity": quantity},
                                                "version": 1}]}})


def send(core, instance, offset, b: bytes, partition=0):
    return core.on_copy(partition, offset, instance, digest(b), b, None)


def test_divergence_record_names_the_request_and_carries_every_body():
    """ClerkPublishesDivergence, CopyBodyWholeOrCut, DivergenceOnInputPartition: a
    diverged position's record names the key, event name and stream time, and carries
    each copy's body, the very bytes the Clerk digested; the fields older readers use
    (input, cause, copies[].instance/digest, decided, clerk) are unchanged."""
    core = ClerkCore(("a", "b"), 2)
    ba, bb = body_with(3, key="order-7", quantity=10), body_with(3, key="order-7", quantity=11)
    send(core, "a", 3, ba)
    (report,) = send(core, "b", 3, bb)
    assert isinstance(report, Report) and report.partition == 0
    rec = orjson.loads(report.value)
    assert rec["input"] == {"partition": 0, "offset": 3} and rec["cause"] == "mismatch"
    assert rec["decided"] is None and rec["clerk"]["seq"] == 1
    assert (rec["idempotency_key"], rec["event_name"], rec["stream_time"]) == ("order-7", "stock.adjust", 1003)
    assert rec["named_by"] == "a"
    assert [(c["instance"], c["digest"]) for c in rec["copies"]] == [("a", digest(ba)), ("b", digest(bb))]
    for c, raw in zip(rec["copies"], (ba, bb), strict=True):
        assert canonical(c["body"]) == raw  # the digested bytes, byte for byte
        assert digest(canonical(c["body"])) == c["digest"]
        assert c["body_bytes"] == len(raw) and c["body_truncated"] is False and "body_prefix" not in c
        assert "replay" not in c
    assert rec["copies"][1]["body"]["outcome"]["entities"][0]["state"]["quantity"] == 11


def test_divergence_body_over_the_limit_is_cut_and_marked():
    """CopyBodyWholeOrCut (RESOLVED: Bodies cut at 16 KiB): a body of exactly
    DIVERGENCE_BODY_LIMIT bytes is kept whole; one byte more and it is cut: body null,
    body_truncated, body_prefix = its first DIVERGENCE_PREFIX_BYTES bytes (a UTF-8
    character cut in two dropped), digest and size kept. Even a prefix made of
    characters JSON must escape keeps the copy within the limit."""
    from agents.clerk_core import DIVERGENCE_BODY_LIMIT, DIVERGENCE_PREFIX_BYTES, body_report

    base = len(body_with(0, detail=""))
    exact = body_with(0, detail="x" * (DIVERGENCE_BODY_LIMIT - base))
    assert len(exact) == DIVERGENCE_BODY_LIMIT
    whole = body_report(exact)
    assert whole["body_truncated"] is False and orjson.dumps(whole["body"]) == exact

    # "é" is two bytes in UTF-8: place one across the prefix boundary
    head = body_with(0).index(b'"detail":"') + len(b'"detail":"')  # bytes before the detail's text
    long = body_with(0, detail="y" * (DIVERGENCE_PREFIX_BYTES - head - 1) + "é" * 10_000)
    assert long[DIVERGENCE_PREFIX_BYTES - 2:DIVERGENCE_PREFIX_BYTES + 1] == "yé".encode()
    cut = body_report(long)
    assert cut["body"] is None and cut["body_truncated"] is True and cut["body_bytes"] == len(long)
    assert cut["body_prefix"].encode() == long[:DIVERGENCE_PREFIX_BYTES - 1]  # the split "é" is dropped

    core = ClerkCore(("a", "b"), 2)
    quotes = body_with(0, detail='"\\' * 20_000)  # every character escaped twice once embedded
    send(core, "a", 0, quotes)
    (report,) = send(core, "b", 0, body_with(0, detail="z"))
    rec = orjson.loads(report.value)
    ca, cb = rec["copies"]
    assert ca["body"] is None and ca["body_truncated"] is True and ca["digest"] == digest(quotes)
    assert quotes.decode().startswith(ca["body_prefix"]) and len(ca["body_prefix"].encode()) <= DIVERGENCE_PREFIX_BYTES
    assert len(orjson.dumps(ca)) <= DIVERGENCE_BODY_LIMIT + 300
    assert cb["body_truncated"] is False and cb["body"]["outcome"]["detail"] == "z"
    assert rec["idempotency_key"] == "k"  # named from the whole body the Clerk holds


def test_record_with_five_instances_at_the_limit_stays_far_below_kafkas_record_size():
    """CopyBodyWholeOrCut (RESOLVED: Bodies cut at 16 KiB): five instances plus a
    replayed copy, each body far over the limit, made of characters JSON escapes, and
    all different: the record stays under 100 KiB (Kafka's default limit on a record is
    1 MiB)."""
    from agents.clerk_core import DIVERGENCE_BODY_LIMIT

    def big(i: int) -> bytes:
        return body_with(0, quantity=i, detail='"' * 3 * DIVERGENCE_BODY_LIMIT)

    core = ClerkCore(("a", "b", "c", "d", "e"), 5)
    for i, inst in enumerate("abcde"):
        last = reports(send(core, inst, 0, big(i)))
    (rec,) = last  # the report of the last copy lists all five
    assert len(rec["copies"]) == 5
    (rec,) = reports(send(core, "e", 0, big(99)))  # e's replay differs: six copies
    assert len(rec["copies"]) == 6 and all(c["body_truncated"] for c in rec["copies"])
    assert len(orjson.dumps(rec)) < 100 * 1024


def test_corrupted_copy_cannot_rename_the_request():
    """DivergenceNamedByOneOfItsCopies (RESOLVED: Which copy names the request): the
    key and event name come from one copy, chosen deterministically: the decided copy
    of the lowest instance; else the majority; else the lowest instance id."""
    # decided by a and b; c's corrupted copy says another key and event name
    core = ClerkCore(("a", "b", "c"), 2)
    send(core, "c", 0, body_with(0, key="evil", event_name="stock.transfer", quantity=5))
    send(core, "b", 0, body_with(0, key="good"))
    actions = send(core, "a", 0, body_with(0, key="good"))
    (rec,) = reports(actions)
    assert rec["decided"] is not None and rec["named_by"] == "a"
    assert (rec["idempotency_key"], rec["event_name"]) == ("good", "stock.adjust")

    # two instances, all different: the lowest instance id, whatever the arrival order
    for order in ("ab", "ba"):
        core = ClerkCore(("a", "b"), 2)
        bodies = {"a": body_with(1, key="from-a", quantity=1), "b": body_with(1, key="from-b", quantity=2)}
        out = []
        for inst in order:
            out += reports(send(core, inst, 1, bodies[inst]))
        (rec,) = out
        assert rec["named_by"] == "a" and rec["idempotency_key"] == "from-a"

    # three instances, three required: b and c agree (the majority), a does not
    core = ClerkCore(("a", "b", "c"), 3)
    send(core, "a", 2, body_with(2, key="odd", quantity=9))
    send(core, "b", 2, body_with(2, key="major"))
    (rec,) = reports(send(core, "c", 2, body_with(2, key="major")))
    assert rec["decided"] is None and rec["named_by"] == "b" and rec["idempotency_key"] == "major"

    # a key the envelope would refuse, an event name too long, a stream time of the
    # wrong type: named null (the body still shows them)
    core = ClerkCore(("a", "b"), 2)
    send(core, "a", 3, body_with(3, key="k" * 129, event_name="e" * 257, stream_time="soon"))
    (rec,) = reports(send(core, "b", 3, body_with(3, quantity=1)))
    assert rec["named_by"] == "a"
    assert (rec["idempotency_key"], rec["event_name"], rec["stream_time"]) == (None, None, None)
    assert rec["copies"][0]["body"]["idempotency_key"] == "k" * 129


def test_replay_mismatch_reports_the_replayed_body_and_is_not_named_by_it():
    """ClerkReportsReplayMismatch, ClerkPublishesDivergence: the replayed copy is
    listed with its own body and ``replay: true``; the request is named by the first
    copies, never by the replay."""
    core = ClerkCore(("a", "b"), 2)
    first = body_with(0, key="r1")
    send(core, "a", 0, first)
    send(core, "b", 0, first)
    replayed = body_with(0, key="r1-replayed", quantity=4)
    (rec,) = reports(send(core, "a", 0, replayed))
    assert rec["cause"] == "replay_mismatch" and rec["idempotency_key"] == "r1"
    assert [(c["instance"], c.get("replay", False)) for c in rec["copies"]] == [("a", False), ("b", False),
                                                                                 ("a", True)]
    assert canonical(rec["copies"][2]["body"]) == replayed and rec["copies"][2]["digest"] == digest(replayed)


def test_copies_judged_by_different_versions_are_a_version_mismatch():
    """ClerkNamesVersionMismatch, NoResultFromCopiesOfDifferentVersions
    (specs/versioning.allium): copies that differ and name different domain versions
    are reported with cause version_mismatch; copies that differ under one version stay
    a plain mismatch. Nothing is published either way."""
    core = ClerkCore(("a", "b"), 2)
    v2 = orjson.loads(body(0))
    v2["domain_version"] = "inventory/2"
    v2 = canonical(v2)
    assert core.on_copy(0, 0, "a", digest(body(0)), body(0), b"k0") == []
    actions = core.on_copy(0, 0, "b", digest(v2), v2, b"k0")
    (rep,) = reports(actions)
    assert published(actions) == []
    assert rep["cause"] == "version_mismatch" and rep["decided"] is None
    assert sorted(orjson.loads(orjson.dumps(c["body"]))["domain_version"] for c in rep["copies"]) == [
        "inventory/1", "inventory/2"]
    copy(core, "a", 1)
    (same_version,) = reports(copy(core, "b", 1, variant=1))
    assert same_version["cause"] == "mismatch"


def test_a_lagging_instance_is_logged_after_the_grace_then_once_a_minute_then_when_back():
    """ClerkReportsLaggingInstance: one line once an instance has lagged for grace_s
    (naming its partitions), none at every second's check after it, one again after
    remind_s, one when it is back; before, one line per lagging partition every second."""
    from agents.clerk import LagLog

    lag = LagLog(max_lag=100, remind_s=60.0, grace_s=10.0)
    down = {(p, "c") for p in range(8)}
    assert all(lag.lines(down, float(t)) == [] for t in range(0, 10))
    (first,) = lag.lines(down, 10.0)
    assert first.startswith("instance c is more than 100 offsets behind") and "[0, 1, 2, 3, 4, 5, 6, 7]" in first
    assert all(lag.lines(down, float(t)) == [] for t in range(11, 70))
    (again,) = lag.lines(down, 70.0)
    assert again.startswith("instance c is still more than 100 offsets behind")
    assert lag.lines(down | {(3, "b")}, 71.0) == []
    assert lag.lines(down | {(3, "b")}, 81.0) == [
        "instance b is more than 100 offsets behind the most advanced instance on partitions [3]: is it running? "
        "(said again every 60 s while it lags)"]
    assert lag.lines({(3, "b")}, 82.0) == ["instance c is back within 100 offsets on every partition"]
    assert lag.lines(set(), 83.0) == ["instance b is back within 100 offsets on every partition"]
    assert lag.lines(set(), 84.0) == []


def test_a_lag_shorter_than_the_grace_is_never_named():
    """ClerkReportsLaggingInstance: a restarted Clerk that reads a's copy records before
    b has advertised sees b behind by the whole topic for a moment; neither a warning
    nor a "back" line, and a later lag starts its grace anew."""
    from agents.clerk import LagLog

    lag = LagLog(max_lag=100, remind_s=60.0, grace_s=10.0)
    assert lag.lines({(0, "b"), (1, "b")}, 0.0) == []
    assert lag.lines({(0, "b")}, 5.0) == []
    assert lag.lines(set(), 6.0) == []
    assert lag.lines({(0, "b")}, 20.0) == []
    assert lag.lines({(0, "b")}, 29.0) == []
    assert lag.lines({(0, "b")}, 30.0)[0].startswith("instance b is more than 100 offsets behind")


def test_freeze_watch_counts_gaps_between_runs_not_before_the_first():
    """ClerkSaysWhenItWasFrozen: a gap longer than the session timeout between two runs
    of the timer is reported; the first run has no previous one, however late it comes
    (Faust starts timers once the first assignment's recovery completes)."""
    from agents.clerk import FreezeWatch

    watch = FreezeWatch(limit_s=10.0)
    assert watch.tick(1_000.0) is None  # first run, long after the worker was built
    assert watch.tick(1_001.0) is None
    assert watch.tick(1_011.0) is None  # exactly the limit: not longer than it
    assert watch.tick(1_021.5) == 10.5
    assert watch.tick(1_022.5) is None
