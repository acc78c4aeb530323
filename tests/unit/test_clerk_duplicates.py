"""The Clerk's judgement of duplicates whose original diverged or is undecided
(specs/clerk.allium ClerkHoldsDuplicateOfUndecidedOriginal, ClerkSettlesHeldDuplicate,
ClerkWithholdsDuplicateOfDivergedOriginal, ClerkRemembersDivergedPositions)."""

from __future__ import annotations

import orjson

from agents.clerk_core import DIVERGED_REMEMBERED, ClerkCore, Publish, Report
from app.canonical import canonical, digest
from app.records import FINISHING_CAUSES
from tests.unit.test_clerk_core import body, copy, published, reports


def dup_body(offset: int, original: int, partition: int = 0, variant: int = 0) -> bytes:
    """A duplicate's copy body: the original's outcome, duplicate_of naming it."""
    rec = orjson.loads(body(offset, partition))
    rec["idempotency_key"] = f"k{original}"
    rec["duplicate_of"] = {"partition": partition, "offset": original}
    rec["outcome"] = orjson.loads(body(original, partition, variant))["outcome"]
    return canonical(rec)


def dup(core, instance, offset, original, variant=0, partition=0):
    raw = dup_body(offset, original, partition, variant)
    return core.on_copy(partition, offset, instance, digest(raw), raw, f"k{original}".encode())


def test_a_duplicate_of_a_diverged_original_is_reported_never_published():
    """ClerkWithholdsDuplicateOfDivergedOriginal: offset 0 diverged (a fault in b's
    output only); its repeat at offset 5 gets agreeing copies (both instances stored
    the same outcome), yet nothing is published: one original_diverged report, and
    the position is final so its copies can be acknowledged."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    (diverged,) = reports(copy(core, "b", 0, variant=1))
    assert diverged["cause"] == "mismatch" and diverged["decided"] is None
    for o in range(1, 5):
        copy(core, "a", o)
        copy(core, "b", o)
    assert dup(core, "a", 5, 0) == []
    actions = dup(core, "b", 5, 0)
    assert published(actions) == []
    (report,) = reports(actions)
    assert report["cause"] == "original_diverged" and report["decided"] is None
    assert report["input"] == {"partition": 0, "offset": 5}
    assert report["idempotency_key"] == "k0"
    assert {c["digest"] for c in report["copies"]} == {digest(dup_body(5, 0))}
    assert core.is_final(0, 5) and core.decided_below(0) == 6
    assert "original_diverged" in FINISHING_CAUSES


def test_a_duplicate_of_a_forgotten_diverged_original_is_still_withheld():
    """ClerkRemembersDivergedPositions: the diverged original has been dropped (every
    instance's watermark passed it) when its duplicate arrives, much later."""
    core = ClerkCore(("a", "b"), 2, max_lag=10)
    copy(core, "a", 0)
    copy(core, "b", 0, variant=1)
    for o in range(1, 200):
        copy(core, "a", o)
        copy(core, "b", o)
    for inst in ("a", "b"):
        core.on_watermark(0, inst, 200)
    assert 0 not in core.partitions[0].positions
    dup(core, "a", 200, 0)
    actions = dup(core, "b", 200, 0)
    assert published(actions) == []
    assert [r["cause"] for r in reports(actions)] == ["original_diverged"]


def test_a_duplicate_of_a_published_original_is_published():
    """ClerkWithholdsDuplicateOfDivergedOriginal applies only to diverged originals: a
    duplicate of a published one, held or forgotten, is published with duplicate_of."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    copy(core, "b", 0)
    for inst in ("a", "b"):
        core.on_watermark(0, inst, 1)
    dup(core, "a", 1, 0)
    (result,) = published(dup(core, "b", 1, 0))
    assert result["duplicate_of"] == {"partition": 0, "offset": 0}


def test_a_duplicate_waits_for_its_undecided_original_and_follows_its_decision():
    """ClerkHoldsDuplicateOfUndecidedOriginal, ClerkFindsHeldDuplicatesOfFinalOriginal,
    ClerkSettlesHeldDuplicate: three instances, two required. Offset 0
    has one copy from a and one that disagrees from b: undecided, c still to come.
    Offset 1 (its duplicate) gets agreeing copies from a and b: held, not final, nothing
    published. c's copy of 0 agrees with a: 0 is published, then 1, in offset order, by
    the item that carried c's copy."""
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0)
    assert reports(copy(core, "b", 0, variant=1)) == []
    dup(core, "a", 1, 0)
    assert dup(core, "b", 1, 0) == []
    assert not core.is_final(0, 1) and core.decided_below(0) == 0
    actions = copy(core, "c", 0)
    results = published(actions)
    assert [r["input"]["offset"] for r in results] == [0, 1]
    assert results[1]["duplicate_of"] == {"partition": 0, "offset": 0}
    assert results[1]["instances"] == ["a", "b"]
    assert [r["input"]["offset"] for r in reports(actions)] == [0]  # b's odd copy of 0
    assert core.is_final(0, 1) and core.decided_below(0) == 2


def test_a_held_duplicate_is_withheld_when_its_original_diverges():
    """ClerkSettlesHeldDuplicate for an original that diverged:
    the third copy of 0 disagrees with both: 0 diverges, and the duplicate held for it
    is reported original_diverged right after, never published."""
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0)
    copy(core, "b", 0, variant=1)
    dup(core, "a", 1, 0)
    dup(core, "b", 1, 0)
    actions = copy(core, "c", 0, variant=2)
    assert published(actions) == []
    assert [(r["input"]["offset"], r["cause"]) for r in reports(actions)] == [(0, "mismatch"),
                                                                           (1, "original_diverged")]
    assert core.decided_below(0) == 2


def test_a_held_duplicate_is_settled_when_its_original_is_given_up():
    """ClerkGivesUpUndecidedPosition then ClerkHoldsDuplicateOfUndecidedOriginal: c is
    down for good, so the undecided original is given up past max_lag; the duplicate
    held for it is withheld with it, not given up on its own."""
    core = ClerkCore(("a", "b", "c"), 2, max_lag=5)
    copy(core, "a", 0)
    copy(core, "b", 0, variant=1)
    dup(core, "a", 1, 0)
    dup(core, "b", 1, 0)
    for o in range(2, 10):
        copy(core, "a", o)
        copy(core, "b", o)
    core.on_watermark(0, "a", 10)
    actions = core.on_watermark(0, "b", 10)
    assert [(r["input"]["offset"], r["cause"]) for r in reports(actions)] == [(0, "mismatch"),
                                                                           (1, "original_diverged")]
    assert published(actions) == []
    assert core.decided_below(0) == 10


def test_a_disagreeing_copy_of_a_held_duplicate_is_reported_with_its_decision():
    """ClerkHoldsDuplicateOfUndecidedOriginal, ClerkSettlesHeldDuplicate: a third copy of the held duplicate that
    disagrees is compared when the duplicate is decided, as any decision's odd copy."""
    core = ClerkCore(("a", "b", "c"), 2)
    copy(core, "a", 0)
    copy(core, "b", 0, variant=1)
    dup(core, "a", 1, 0)
    dup(core, "b", 1, 0)
    assert dup(core, "c", 1, 0, variant=3) == []
    actions = copy(core, "c", 0)
    assert [r["input"]["offset"] for r in published(actions)] == [0, 1]
    assert [r["input"]["offset"] for r in reports(actions)] == [0, 1]


def test_diverged_positions_are_forgotten_past_the_ttl_and_the_bound():
    """ClerkRemembersDivergedPositions: entries older than the idempotency TTL (stream
    time) go, since no duplicate can name them, and never more than
    DIVERGED_REMEMBERED are kept."""
    core = ClerkCore(("a", "b"), 2, ttl_ms=50)
    for o in range(0, 200, 2):  # stream time 1000 + offset: every even offset diverges
        copy(core, "a", o)
        copy(core, "b", o, variant=1)
        copy(core, "a", o + 1)
        copy(core, "b", o + 1)
    for inst in ("a", "b"):
        core.on_watermark(0, inst, 200)
    assert 0 not in core.partitions[0].positions  # forgotten: only the memory knows it
    kept = core.partitions[0].diverged
    assert sorted(kept) == list(range(150, 200, 2))  # 1000 + 198 - 50 < 1000 + o
    assert DIVERGED_REMEMBERED >= 10_000
    # a duplicate naming a position forgotten past the TTL is not one a Warden makes;
    # judged as before, it is published
    dup(core, "a", 200, 0)
    assert [r["input"]["offset"] for r in published(dup(core, "b", 200, 0))] == [200]


def test_diverged_positions_beyond_the_bound_forget_the_oldest(monkeypatch):
    """ClerkRemembersDivergedPositions: at most DIVERGED_REMEMBERED per partition, the
    oldest forgotten first, both as positions diverge and when a restart restores them
    (ClerkSeedsDivergedPositions)."""
    import agents.clerk_core as clerk_core

    monkeypatch.setattr(clerk_core, "DIVERGED_REMEMBERED", 3)
    core = ClerkCore(("a", "b"), 2)  # the default TTL: only the bound forgets
    for o in range(0, 10, 2):
        copy(core, "a", o)
        copy(core, "b", o, variant=1)
        copy(core, "a", o + 1)
        copy(core, "b", o + 1)
    assert list(core.partitions[0].diverged) == [4, 6, 8]
    core.restore(1, None, diverged=[(o, 1000 + o) for o in range(5)])
    assert list(core.partitions[1].diverged) == [2, 3, 4]


def test_a_duplicate_naming_another_partition_or_a_later_offset_is_judged_as_before():
    """ClerkWithholdsDuplicateOfDivergedOriginal names an EARLIER position of the SAME
    partition (core/DuplicateRefersToEarlierEvent); agreeing copies that name anything
    else are published as agreed, as every agreed body is."""
    core = ClerkCore(("a", "b"), 2)
    copy(core, "a", 0)
    copy(core, "b", 0, variant=1)
    raw = orjson.loads(dup_body(1, 0))
    raw["duplicate_of"] = {"partition": 3, "offset": 0}
    raw = canonical(raw)
    core.on_copy(0, 1, "a", digest(raw), raw, b"k0")
    assert [r["input"]["offset"] for r in published(core.on_copy(0, 1, "b", digest(raw), raw, b"k0"))] == [1]


def test_with_one_copy_required_a_duplicate_of_a_decided_original_is_published():
    """ClerkWithholdsDuplicateOfDivergedOriginal with required_copies 1: the first copy
    decides, so an original is always published; its duplicate is published on its
    first copy too, and the second, agreeing, changes nothing."""
    core = ClerkCore(("a", "b"), 1)
    (first,) = published(copy(core, "a", 0))
    (second,) = [a for a in dup(core, "a", 1, 0) if isinstance(a, Publish)]
    assert orjson.loads(second.value)["duplicate_of"] == {"partition": 0, "offset": 0}
    assert not any(isinstance(a, Report) for a in dup(core, "b", 1, 0))


# ---- across a restart: the divergence reports read back -----------------------------


def _restart(reports: list[bytes], ttl_ms: int = 300_000, **bounds) -> tuple[ClerkCore, list]:
    """A Clerk restarted on a divergences partition holding ``reports`` (the results
    topic empty): what TailReader.seed does, on lists."""
    import asyncio

    from agents.clerk_core import read_diverged
    from tests.unit.test_clerk_seed import Topic

    topic = Topic()
    for raw in reports:
        topic.append(raw)
    diverged = asyncio.run(read_diverged(0, len(topic.entries), topic.read, 0, ttl_ms, **bounds))
    core = ClerkCore(("a", "b"), 2, ttl_ms=ttl_ms)
    core.restore(0, None, (), diverged)
    return core, topic.asked


def _diverged_reports(core: ClerkCore, offsets) -> list[bytes]:
    out = []
    for o in offsets:
        copy(core, "a", o)
        out += [a.value for a in copy(core, "b", o, variant=1) if isinstance(a, Report)]
    return out


def test_a_restarted_clerk_withholds_a_duplicate_of_a_position_diverged_before():
    """ClerkSeedsDivergedPositions: the Clerk that saw offset 0 diverge is gone; the
    next one reads the partition's newest divergence reports back at its seed and
    withholds the repeat of 0 all the same (before, it published it)."""
    core, _ = _restart(_diverged_reports(ClerkCore(("a", "b"), 2), [0]))
    assert list(core.partitions[0].diverged) == [0]
    dup(core, "a", 9, 0)
    actions = dup(core, "b", 9, 0)
    assert published(actions) == []
    assert [r["cause"] for r in reports(actions)] == ["original_diverged"]


def test_the_read_back_takes_only_reports_that_finish_a_position():
    """ClerkSeedsDivergedPositions: a late copy's report (decided set), a replay
    mismatch and a record someone else wrote are not diverged positions; withheld
    duplicates' reports are (original_diverged); the order is the reports'."""
    first = ClerkCore(("a", "b", "c"), 2)
    written = []
    copy(first, "a", 0)
    copy(first, "b", 0)
    written += [a.value for a in copy(first, "c", 0, variant=1) if isinstance(a, Report)]  # decided: late
    copy(first, "a", 1)
    written += [a.value for a in copy(first, "a", 1, variant=5) if isinstance(a, Report)]  # replay mismatch
    copy(first, "a", 2)
    copy(first, "b", 2, variant=1)
    written += [a.value for a in copy(first, "c", 2, variant=2) if isinstance(a, Report)]  # diverged
    dup(first, "a", 3, 2)
    written += [a.value for a in dup(first, "b", 3, 2) if isinstance(a, Report)]  # withheld
    assert len(written) == 4
    written.append(b"not json")
    written.append(orjson.dumps({"input": {"partition": 1, "offset": 7}, "cause": "mismatch", "decided": None}))
    core, _ = _restart(written)
    assert list(core.partitions[0].diverged) == [2, 3]


def test_the_read_back_takes_no_report_without_a_clerk_state_that_finishes_its_position():
    """ClerkSeedsDivergedPositions: a report counts only with a readable Clerk state in
    which its own position is finished, as every report the Clerk writes has. The
    twelfth fresh-user trial wrote a report-shaped record naming offset 5 (no Clerk
    state) before offset 5 existed; the request decided there was published, and after
    a restart its retry, a duplicate of 5, was withheld as original_diverged (502)."""
    genuine = _diverged_reports(ClerkCore(("a", "b"), 2), [2])
    stray = orjson.loads(genuine[0])
    stray["input"]["offset"] = 5
    no_state = {k: v for k, v in stray.items() if k != "clerk"}
    unfinished = {**stray, "clerk": {"seq": 1, "decided_below": 3, "finished_ranges": [[4, 5]]}}
    garbled = {**stray, "clerk": {"seq": 1, "decided_below": "six", "finished_ranges": []}}
    written = [*genuine, *(orjson.dumps(r) for r in (no_state, unfinished, garbled))]
    core, _ = _restart(written)
    assert list(core.partitions[0].diverged) == [2]
    for o in range(3, 6):  # the request the stray reports named is decided at 5
        copy(core, "a", o)
        copy(core, "b", o)
    dup(core, "a", 9, 5)
    assert [r["input"]["offset"] for r in published(dup(core, "b", 9, 5))] == [9]
    # past the input's end no state is readable (ClerkSeedsFromNewestReadableRecords)
    import asyncio

    from agents.clerk_core import read_diverged
    from tests.unit.test_clerk_seed import Topic

    topic = Topic()
    topic.append(genuine[0])
    assert asyncio.run(read_diverged(0, 1, topic.read, 0, 300_000, input_end=3)) == [(2, orjson.loads(genuine[0])["stream_time"])]
    assert asyncio.run(read_diverged(0, 1, topic.read, 0, 300_000, input_end=2)) == []


def test_the_read_back_stops_one_ttl_of_stream_time_behind_the_newest_report():
    """ClerkSeedsDivergedPositions, ClerkRemembersDivergedPositions: stream time is
    1000 + offset; with a TTL of 50 ms only reports within 50 ms of the newest are kept,
    and the read-back stops at the first range that reaches past them (the ranges grow
    8 times from the end: 8, then 64 offsets)."""
    reports = _diverged_reports(ClerkCore(("a", "b"), 2), range(0, 400, 2))
    core, asked = _restart(reports, ttl_ms=50)
    assert list(core.partitions[0].diverged) == list(range(350, 400, 2))
    assert asked == [(192, 200), (128, 192)]


def test_the_read_back_stops_at_the_look_back_bound():
    """ClerkSeedsDivergedPositions: at most max_offsets reports back (the seed's
    look-back bound): older diverged positions are not known."""
    reports = _diverged_reports(ClerkCore(("a", "b"), 2), range(0, 100, 2))
    core, asked = _restart(reports, max_offsets=20)
    assert list(core.partitions[0].diverged) == list(range(60, 100, 2))
    assert min(lo for lo, _ in asked) == 30


def test_a_clerk_deciding_on_one_copy_warns_at_start(monkeypatch, caplog, tmp_path):
    """ClerkWarnsOfSingleCopyDecisions: DOCKET_REQUIRED_COPIES=1 publishes each copy
    alone; the Clerk says so once at start, naming the setting (the twelfth fresh-user
    trial's bit-flipped results were published without a word). 2 says nothing."""
    import asyncio
    import logging

    from agents import clerk as clerk_mod
    from app.settings import load

    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", "1")
    asyncio.set_event_loop(asyncio.new_event_loop())
    with caplog.at_level(logging.WARNING, logger="docket.clerk"):
        clerk_mod.build(load(), tmp_path / "one", None)
    said = [r.getMessage() for r in caplog.records if r.name == "docket.clerk"]
    assert len(said) == 1 and said[0].startswith("DOCKET_REQUIRED_COPIES=1: the first copy of each event, from any "
                                                 "of a, b, is published without another"), said
    caplog.clear()
    monkeypatch.setenv("DOCKET_REQUIRED_COPIES", "2")
    with caplog.at_level(logging.WARNING, logger="docket.clerk"):
        clerk_mod.build(load(), tmp_path / "two", None)
    assert not [r for r in caplog.records if r.name == "docket.clerk"]
