"""The Clerk's restart seed with records someone else wrote at the end of the results
and divergences topics (specs/clerk.allium, ClerkSeedsFromNewestReadableRecords and
RESOLVED: Unreadable records at the end of results and divergences). No Kafka: the
topics are lists, read the way agents/clerk.py TailReader reads a partition."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.clerk_core import (
    TAIL_LOOKBACK_OFFSETS,
    ClerkCore,
    Publish,
    TailScan,
    examine,
    newest_state,
    published_position,
    scan_tail,
    tail_state,
)
from app.canonical import canonical, digest
from app.records import UnreadableRecord

INPUT_END = 1_000_000  # the input partition's end offset in these tests


def body(offset: int, variant: int = 0) -> bytes:
    return canonical({"input": {"partition": 0, "offset": offset}, "idempotency_key": f"k{offset}", "client": None,
                      "event_name": "stock.adjust", "domain_version": "inventory/1", "duplicate_of": None,
                      "stream_time": 1000 + offset,
                      "outcome": {"status": "applied", "reason": None, "detail": "",
                                  "entities": [{"key": "stock:w:s", "state": {"quantity": offset + variant},
                                                "version": 1}]}})


def copy(core: ClerkCore, instance: str, offset: int, variant: int = 0) -> list:
    b = body(offset, variant)
    return core.on_copy(0, offset, instance, digest(b), b)


@dataclass
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


class Topic:
    """One partition of a topic: its records by offset; a None entry is an offset that
    holds no record a read_committed consumer sees (a transaction marker)."""

    def __init__(self) -> None:
        self.entries: list[Rec | None] = []
        self.asked: list[tuple[int, int]] = []  # the ranges the scan read

    def append(self, value: bytes | None, key: bytes | None = None) -> int:
        self.entries.append(Rec(len(self.entries), key, value))
        return len(self.entries) - 1

    def marker(self) -> None:
        self.entries.append(None)

    async def read(self, lo: int, hi: int):
        self.asked.append((lo, hi))
        for rec in self.entries[lo:hi]:
            if rec is not None:
                yield rec

    def scan(self, results: bool, input_end: int | None = INPUT_END, **bounds) -> TailScan:
        scan = TailScan("t", 0, results=results)
        return asyncio.run(scan_tail(scan, 0, len(self.entries), self.read, input_end, **bounds))


def seed(core: ClerkCore, results: Topic, divergences: Topic, input_end: int | None = INPUT_END) -> list[TailScan]:
    """What TailReader.seed does, on lists."""
    scans = [results.scan(True, input_end), divergences.scan(False, input_end)]
    core.restore(0, newest_state(scans), [o for s in scans for o in s.published])
    return scans


def publish(core: ClerkCore, results: Topic, divergences: Topic, actions: list) -> None:
    for a in actions:
        (results if isinstance(a, Publish) else divergences).append(a.value, getattr(a, "key", None))


def state(seq: int = 5, decided_below: int = 3, ranges=None) -> dict:
    return {"seq": seq, "decided_below": decided_below, "finished_ranges": [[5, 7]] if ranges is None else ranges}


def record(clerk) -> bytes:
    return orjson.dumps({"input": {"partition": 0, "offset": 2}, "clerk": clerk})


# What the acceptance test wrote to both topics (issue: one such record stopped the
# Clerk for good), and states whose numbers are out of range.
GARBAGE = {
    "not-json": b"\xff\xfegarbage{",
    "json-array": b"[1,2,3]",
    "obj-missing": b'{"foo": 1}',
    "tombstone": None,
    "wrong-types": orjson.dumps({"input": {"partition": "x", "offset": -1}, "idempotency_key": 5, "outcome": "no"}),
    "big": b'{"x":"' + b"a" * 900_000 + b'"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "dup-members": b'{"input":{"partition":0,"offset":0},"input":{"partition":1,"offset":1}}',
    "clerk-not-object": record("x"),
    "clerk-null": record(None),
    "seq-missing": record({"decided_below": 3, "finished_ranges": []}),
    "seq-bool": record(state(seq=True)),
    "seq-float": record(state(seq=5.0)),
    "seq-negative": record(state(seq=-1)),
    "seq-huge": record(state(seq=2**63)),
    "decided-string": record(state(decided_below="3")),
    "decided-beyond-input": record(state(decided_below=INPUT_END + 1)),
    "decided-huge": b'{"clerk":{"seq":9,"decided_below":100000000000000000000000,"finished_ranges":[]}}',
    "ranges-not-list": record(state(ranges={"a": 1})),
    "range-not-pair": record(state(ranges=[[5]])),
    "range-empty": record(state(ranges=[[5, 5]])),
    "range-below-watermark": record(state(ranges=[[1, 7]])),
    "range-overlap": record(state(ranges=[[5, 8], [7, 9]])),
    "range-beyond-input": record(state(ranges=[[5, INPUT_END + 1]])),
    "range-whole-log": record(state(ranges=[[5, 2**62]])),
    "range-string": record(state(ranges=[[5, "7"]])),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_record_without_a_readable_clerk_state_is_refused_saying_why(kind):
    """TailRecord (StateOrProblem), ClerkSeedsFromNewestReadableRecords: anything that is
    not a JSON object with a well-formed `clerk` state whose numbers lie within the
    input partition is refused with a reason, never an uncaught error."""
    with pytest.raises(UnreadableRecord) as refused:
        tail_state(GARBAGE[kind], 0, INPUT_END)
    assert str(refused.value)
    rec = examine(7, GARBAGE[kind], 0, True, INPUT_END)
    assert rec.state is None and rec.problem == str(refused.value) and rec.published is None


def test_states_within_the_input_are_readable_up_to_its_end():
    """TailRecord: decided_below and range ends may reach the input partition's end
    offset, never pass it; without the input's end only 2^63 bounds them."""
    assert tail_state(record(state(decided_below=10, ranges=[[12, 20], [20, 21]])), 0, 21)["decided_below"] == 10
    with pytest.raises(UnreadableRecord, match="end offset"):
        tail_state(record(state(decided_below=10, ranges=[[12, 22]])), 0, 21)
    assert tail_state(record(state(ranges=[[5, 2**62]])), 0, None)["finished_ranges"] == [[5, 2**62]]


def test_every_state_the_clerk_writes_is_readable():
    """ClerkState (FinishedAboveTheDecidedWatermark), TailRecord: the states of the
    Clerk's own records, also while a position is stuck and later ones finish above it,
    read back exactly as written."""
    core = ClerkCore(("a", "b", "c"), 2)
    out = []
    for o in range(40):
        v = 1 if o in (3, 17) else 0
        out += copy(core, "a", o, variant=v)
        out += copy(core, "b", o, variant=2 * v)  # 3 and 17 stay undecided until c comes
    out += copy(core, "c", 17)
    assert out
    for a in out:
        assert tail_state(a.value, 0, 40) == orjson.loads(a.value)["clerk"]


def test_garbage_after_the_clerks_last_records_is_skipped_and_nothing_is_published_again():
    """ClerkSeedsFromNewestReadableRecords, ClerkPublishesOnce, ForeignRecordOnClerkTopics:
    every kind of garbage appended to both topics after the Clerk's records is skipped
    (each named, newest first); the seed is the Clerk's newest state, so a restart that
    reads every copy again publishes none of them, and goes on with the next."""
    results, divergences = Topic(), Topic()
    core = ClerkCore(("a", "b"), 2)
    for o in range(30):
        publish(core, results, divergences, copy(core, "a", o) + copy(core, "b", o, variant=1 if o == 12 else 0))
    clerk_ends = (len(results.entries), len(divergences.entries))
    for value in GARBAGE.values():
        results.append(value, b"junk")
        divergences.append(value, b"junk")
    restarted = ClerkCore(("a", "b"), 2)
    scans = seed(restarted, results, divergences)
    assert [s.state_offset for s in scans] == [clerk_ends[0] - 1, clerk_ends[1] - 1]
    for s, end in zip(scans, clerk_ends):
        assert [o for o, _ in s.skipped] == list(range(end + len(GARBAGE) - 1, end - 1, -1))
        assert not s.exhausted and s.published == []
    assert all(restarted.is_final(0, o) for o in range(30)) and not restarted.is_final(0, 30)
    again = []
    for o in range(30):
        again += copy(restarted, "a", o) + copy(restarted, "b", o, variant=1 if o == 12 else 0)
    assert [a for a in again if isinstance(a, Publish)] == []
    (new,) = [a for a in copy(restarted, "a", 30) + copy(restarted, "b", 30) if isinstance(a, Publish)]
    assert new.offset == 30


def test_readable_results_after_a_damaged_state_count_as_published():
    """ClerkSeedsFromNewestReadableRecords (published), ClerkPublishesOnce: when the
    Clerk's own newest records lost their `clerk` state (or it is out of range) but
    still read as results, the seed comes from the older state AND counts the positions
    those results name as final: none is published a second time. A result of another
    partition, or beyond the input's end, counts for nothing."""
    results, divergences = Topic(), Topic()
    core = ClerkCore(("a", "b"), 2)
    for o in range(10):
        publish(core, results, divergences, copy(core, "a", o) + copy(core, "b", o))
    damaged = {}
    for o in (10, 11, 13):  # 12 is still open: its copies come after the restart
        copy(core, "a", o)
        (result,) = copy(core, "b", o)
        value = orjson.loads(result.value)
        value["clerk"] = {"seq": "?"} if o != 13 else {**value["clerk"], "decided_below": INPUT_END + 5}
        damaged[o] = results.append(orjson.dumps(value))
    elsewhere = orjson.loads(body(14))
    elsewhere["input"]["partition"] = 1
    results.append(orjson.dumps(elsewhere))
    results.append(body(INPUT_END))  # a result of a position the input does not have
    restarted = ClerkCore(("a", "b"), 2)
    (scan, _) = seed(restarted, results, divergences)
    assert scan.state_offset == damaged[10] - 1
    assert sorted(scan.published) == [10, 11, 13]
    assert [o for o in range(15) if restarted.is_final(0, o)] == [*range(12), 13]
    again = []
    for o in range(15):
        again += copy(restarted, "a", o) + copy(restarted, "b", o)
    assert sorted(a.offset for a in again if isinstance(a, Publish)) == [12, 14]


def test_a_partition_with_nothing_readable_starts_from_nothing():
    """ClerkSeedsFromNewestReadableRecords: only garbage, back to the partition's start:
    no state, nothing exhausted (nothing was left unread)."""
    results, divergences = Topic(), Topic()
    for value in GARBAGE.values():
        results.append(value)
    core = ClerkCore(("a", "b"), 2)
    scans = seed(core, results, divergences)
    assert scans[0].state is None and len(scans[0].skipped) == len(GARBAGE) and not scans[0].exhausted
    assert scans[1].skipped == [] and not scans[1].exhausted
    assert core.decided_below(0) == 0
    assert [a.offset for a in copy(core, "a", 0) + copy(core, "b", 0) if isinstance(a, Publish)] == [0]


def test_the_look_back_reads_one_record_when_the_last_is_the_clerks_and_skips_markers():
    """ClerkSeedsFromNewestReadableRecords (guidance): normally the last record is the
    Clerk's and one offset is read; transaction markers between records hold offsets
    and yield nothing."""
    t = Topic()
    t.append(record(state(seq=1)))
    t.append(record(state(seq=2)))
    scan = t.scan(False)
    assert scan.state["seq"] == 2 and t.asked == [(1, 2)]
    t.marker()
    t.append(b"junk")
    t.marker()
    t.asked.clear()
    scan = t.scan(False)
    assert scan.state["seq"] == 2 and scan.state_offset == 1 and [o for o, _ in scan.skipped] == [3]
    assert t.asked == [(4, 5), (0, 4)]


def test_the_look_back_stops_at_its_offset_bound_and_says_so():
    """ClerkSeedsFromNewestReadableRecords, ClerkReportsExhaustedLookBack (RESOLVED: the
    bound): with more than TAIL_LOOKBACK_OFFSETS foreign records after the Clerk's last
    one, no offset below the bound is read and the scan is exhausted; at exactly the
    bound the Clerk's record is still found."""
    for foreign, found in ((TAIL_LOOKBACK_OFFSETS, False), (TAIL_LOOKBACK_OFFSETS - 1, True)):
        t = Topic()
        for _ in range(5):
            t.append(record(state(seq=1)))
        for _ in range(foreign):
            t.append(b"not json")
        scan = t.scan(False)
        assert (scan.state is not None) == found and scan.exhausted == (not found)
        assert min(lo for lo, _ in t.asked) == len(t.entries) - TAIL_LOOKBACK_OFFSETS
        assert len(scan.skipped) == foreign


def test_the_look_back_stops_at_its_byte_bound():
    """ClerkSeedsFromNewestReadableRecords, ClerkReportsExhaustedLookBack: the bytes of
    keys and values read count too; past the bound nothing more is read, and the newest
    readable state among what was read is still taken (an older state is never worse
    than none), with the scan marked exhausted."""
    t = Topic()
    t.append(record(state(seq=1)))
    for _ in range(20):
        t.append(b"x" * 1000, b"k" * 24)
    scan = t.scan(False, max_bytes=10_000)
    # 1 range of 1 record, then 8, then as many as the 784 bytes left allow: 1
    assert t.asked == [(20, 21), (12, 20), (11, 12)]
    assert scan.state is None and scan.exhausted and len(scan.skipped) == 10
    t2 = Topic()
    t2.append(record(state(seq=1)))
    t2.append(b"x" * 100)
    for _ in range(7):
        t2.append(record(state(seq=2)) + b" " * 1000)
    t2.append(b"y" * 100)
    # ranges [9, 10), then [1, 9): the bytes run out inside the second range, at 4
    scan = t2.scan(False, max_bytes=3_000)
    assert t2.asked == [(9, 10), (1, 9)]
    assert scan.state is not None and scan.state["seq"] == 2 and scan.state_offset == 4 and scan.exhausted


def test_each_skipped_record_is_one_warning_and_an_exhausted_look_back_an_error(caplog):
    """ClerkReportsUnreadableTailRecord: one WARNING per skipped record naming topic,
    partition, offset, why, the record the seed comes from and what to do; past
    tail_skipped_logged one line for the rest. ClerkReportsExhaustedLookBack: an ERROR.
    A scan that skipped nothing logs nothing."""
    from agents.clerk import SKIPPED_LOGGED, report

    t = Topic()
    t.append(record(state(seq=1)))
    t.append(b"\x00not json")
    t.append(None)
    with caplog.at_level(logging.WARNING, logger="docket.clerk"):
        report(t.scan(True))
    lines = [r for r in caplog.records if r.name == "docket.clerk"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    assert "t partition 0 at offset 2" in lines[0].getMessage() and "tombstone" in lines[0].getMessage()
    assert "t partition 0 at offset 1" in lines[1].getMessage() and "not JSON" in lines[1].getMessage()
    for r in lines:
        assert "newest readable record there is at offset 0" in r.getMessage()
        assert "only the Clerk may write to t" in r.getMessage() and r.getMessage().isprintable()

    caplog.clear()
    flood = Topic()
    for _ in range(TAIL_LOOKBACK_OFFSETS + 1):
        flood.append(b"[]")
    with caplog.at_level(logging.WARNING, logger="docket.clerk"):
        report(flood.scan(False))
    lines = [r for r in caplog.records if r.name == "docket.clerk"]
    assert [r.levelno for r in lines] == [logging.WARNING] * (SKIPPED_LOGGED + 1) + [logging.ERROR]
    assert f"skipped {TAIL_LOOKBACK_OFFSETS - SKIPPED_LOGGED} more" in lines[SKIPPED_LOGGED].getMessage()
    assert "published a second time" in lines[-1].getMessage()

    caplog.clear()
    clean = Topic()
    clean.append(record(state(seq=1)))
    with caplog.at_level(logging.DEBUG, logger="docket.clerk"):
        report(clean.scan(True))
    assert [r for r in caplog.records if r.name == "docket.clerk"] == []


def test_published_position_is_what_the_api_takes_for_a_result():
    """TailRecord (published): a results record counts as the result of its input
    offset exactly when it reads as a result (check_result) of this partition."""
    assert published_position(body(4), 0, INPUT_END) == 4
    for bad in (body(4)[:-1], orjson.dumps({"input": {"partition": 0, "offset": 4}}), body(INPUT_END)):
        with pytest.raises(UnreadableRecord):
            published_position(bad, 0, INPUT_END)
    with pytest.raises(UnreadableRecord, match="partition"):
        published_position(body(4), 1, INPUT_END)


# --- exactly once across Clerk crashes, with garbage on both topics -----------------


def _run(n: int, seed_: int, crashes: int) -> tuple[list[dict], int]:
    """The Clerk over two instances' copy streams (each with replays), crashed
    ``crashes`` times at random points and restarted from its committed offsets, while
    a foreign producer writes garbage to the results and divergences topics now and
    then. Returns the results (readable ones) and the number of garbage records."""
    rng = random.Random(seed_)
    instances = ("a", "b")
    streams = {}
    for inst in instances:
        out = []
        for o in range(n):
            out.append(("copy", o))
            if rng.random() < 0.2:
                out.append(("wm", o + 1))
            if rng.random() < 0.02 and o > 5:
                out.extend(("copy", r) for r in range(o - rng.randint(1, 5), o + 1))
        out.append(("wm", n))
        streams[inst] = out
    committed = {i: 0 for i in instances}
    results, divergences = Topic(), Topic()
    garbage = 0
    kinds = sorted(GARBAGE)
    for run in range(crashes + 1):
        core = ClerkCore(instances, 2)
        seed(core, results, divergences, input_end=n)
        pos = dict(committed)
        acked = {i: set() for i in instances}
        held: dict[int, list[tuple[str, int]]] = {}
        budget = rng.randint(10, 4 * n) if run < crashes else None
        steps = 0
        while any(pos[i] < len(streams[i]) for i in instances):
            if budget is not None and steps >= budget:
                break
            steps += 1
            if rng.random() < 0.03:
                garbage += 1
                (results if rng.random() < 0.5 else divergences).append(GARBAGE[rng.choice(kinds)])
            inst = rng.choice([i for i in instances if pos[i] < len(streams[i])])
            idx = pos[inst]
            pos[inst] += 1
            kind, value = streams[inst][idx]
            if kind == "wm":
                core.on_watermark(0, inst, value)
                acked[inst].add(idx)
                continue
            actions = copy(core, inst, value)
            for a in actions:
                assert tail_state(a.value, 0, n) == orjson.loads(a.value)["clerk"]  # readable after a restart
            publish(core, results, divergences, actions)
            if core.is_final(0, value):
                acked[inst].add(idx)
                for other, j in held.pop(value, []):
                    acked[other].add(j)
            else:
                held.setdefault(value, []).append((inst, idx))
            if rng.random() < 0.1:
                for i in instances:
                    c = committed[i]
                    while c in acked[i]:
                        c += 1
                    committed[i] = c
        # the garbage that landed last is what the next seed meets first
        for _ in range(rng.randint(0, 12)):
            garbage += 1
            (results if rng.random() < 0.5 else divergences).append(GARBAGE[rng.choice(kinds)])
    offsets = []
    for rec in results.entries:
        try:  # what a reader of the topic takes for a result
            offsets.append(published_position(rec.value, 0, n))
        except UnreadableRecord:
            continue
    return offsets, garbage


@settings(max_examples=40, deadline=None)
@given(seed_=st.integers(0, 100_000), crashes=st.integers(1, 4))
def test_exactly_one_result_per_position_across_crashes_with_garbage_on_both_topics(seed_, crashes):
    """ClerkPublishesOnce, ClerkSeedsFromNewestReadableRecords, ClerkKilled,
    ForeignRecordOnClerkTopics: crash the Clerk anywhere while garbage lands on both
    topics (also right before each restart); every position still has exactly one
    result, and every record the Clerk wrote is readable by the seed."""
    n = 120
    offsets, garbage = _run(n, seed_, crashes)
    assert sorted(offsets) == list(range(n)), f"{garbage} garbage records"
