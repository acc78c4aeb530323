"""Invariants of the Clerk's decisions (specs/clerk.allium) checked after every step of
random runs of ClerkCore, with acknowledgements kept the way agents/clerk.py keeps them;
and the Clerk's side of every instance being killed at once
(specs/failure-modes.allium). No Kafka."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.clerk_core import ClerkCore, Publish, Report
from app.canonical import canonical, digest


def body(partition: int, offset: int, variant: int = 0) -> bytes:
    return canonical({"input": {"partition": partition, "offset": offset}, "idempotency_key": f"key-{partition}-{offset}",
                      "event_name": "stock.transfer", "domain_version": "inventory/1", "duplicate_of": None,
                      "stream_time": 1_000 + offset,
                      "outcome": {"status": "applied", "reason": None, "detail": "",
                                  "entities": [{"key": "stock:w1:s1", "state": {"quantity": offset + variant},
                                                "version": offset + 1},
                                               {"key": "stock:w2:s1", "state": {"quantity": 3}, "version": 1}]}})


def instance_streams(rng: random.Random, instances, partitions: int, n: int, faulty: float) -> dict:
    """Per (instance, partition): copies in input order (a faulty one now and then, an
    identical or a differing replay of a few earlier copies now and then), watermarks
    after the copies they cover, and a final watermark."""
    streams = {}
    for inst in instances:
        for p in range(partitions):
            out, variants = [], {}
            for o in range(n):
                variants[o] = 1 if rng.random() < faulty else 0
                out.append(("copy", p, o, variants[o]))
                if rng.random() < 0.2:
                    out.append(("wm", p, o + 1, 0))
                if rng.random() < 0.03 and o > 3:
                    back = rng.randint(1, 3)
                    for r in range(o - back, o + 1):  # a replay after a crash: the same copies again
                        out.append(("copy", p, r, variants[r] if rng.random() < 0.9 else 2))
            out.append(("wm", p, n, 0))
            streams[(inst, p)] = out
    return streams


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 1_000_000), three=st.booleans(), faulty=st.sampled_from([0.0, 0.05, 0.3]))
def test_clerk_invariants_hold_after_every_step(seed, three, faulty) -> None:
    """After every copy and watermark of a random interleaving (two or three instances,
    two required, faulty copies and replays included):

    - DroppedTrailsDecided: dropped_below <= decided_below.
    - DecidedWatermarkCoversOnlyFinalPositions: every position held below the decided
      watermark is final.
    - OneGroupPerPosition, OneCopyPerInstancePerPosition: one group per offset, and a
      group holds at most one copy per instance (a replay is compared, not stored).
    - ResultOnInputPartition, ResultKeyedByIdempotencyKey, ResultNamesRequiredInstances,
      AgreedEntityOnInputPartition, DivergenceOnInputPartition: each result is for its
      own partition, keyed by its idempotency key, names exactly required_copies
      instances, and its entity records carry its input; each report is for its own
      partition.
    - AcknowledgedCopiesAreFinal, ClerkAcksOnlyFinalPositions: acknowledging a copy
      when its position is final (and every copy held for it then), as the agent does,
      never acknowledges a copy whose position is not final, now or later.
    - ClerkPublishesOnce: at most one result per position.
    """
    rng = random.Random(seed)
    instances = ("a", "b", "c") if three else ("a", "b")
    partitions, n = 2, 40
    core = ClerkCore(instances, 2)
    streams = instance_streams(rng, instances, partitions, n, faulty)
    cursor = {k: 0 for k in streams}
    acked: set[tuple[int, int]] = set()
    results: dict[tuple[int, int], dict] = {}
    while any(cursor[k] < len(v) for k, v in streams.items()):
        key = rng.choice([k for k, v in streams.items() if cursor[k] < len(v)])
        kind, p, o, variant = streams[key][cursor[key]]
        cursor[key] += 1
        inst = key[0]
        if kind == "wm":
            core.on_watermark(p, inst, o)
        else:
            b = body(p, o, variant)
            for action in core.on_copy(p, o, inst, digest(b), b, f"key-{p}-{o}".encode()):
                if isinstance(action, Publish):
                    rec = orjson.loads(action.value)
                    pos = (rec["input"]["partition"], rec["input"]["offset"])
                    assert action.partition == pos[0] == p
                    assert action.key == rec["idempotency_key"].encode()
                    assert len(rec["instances"]) == core.required
                    assert len(set(rec["instances"])) == len(rec["instances"])
                    assert pos not in results
                    results[pos] = rec
                    for ent_key, ent_value in action.entity_records():
                        ent = orjson.loads(ent_value)
                        assert ent["input"] == rec["input"] and ent["key"].encode() == ent_key
                else:
                    assert isinstance(action, Report)
                    assert action.partition == orjson.loads(action.value)["input"]["partition"] == p
            if core.is_final(p, o):  # the agent acks this copy and every copy held for (p, o)
                acked.add((p, o))
        for q in range(partitions):
            st_ = core.partitions.get(q)
            if st_ is None:
                continue
            assert st_.dropped_below <= st_.decided_below
            for off, pos in st_.positions.items():
                assert len(pos.copies) <= len(instances)
                if off < st_.decided_below:
                    assert pos.final, (q, off)
            assert len(set(st_.order)) == len(st_.order)
            assert set(st_.positions) <= set(st_.order)
        for (q, off) in acked:
            assert core.is_final(q, off), (q, off)
    if faulty == 0:  # clean copies, replays identical or not: every position decided, nothing held
        assert sorted(results) == [(q, o) for q in range(partitions) for o in range(n)]


def test_every_instance_killed_at_once_changes_no_result() -> None:
    """BothInstancesKilled (the Clerk's side; each instance's own recovery is
    test_usher.py's crash test): a and b are killed at the same moment and restart
    from their committed offsets, re-emitting byte-identical copies and advertising
    lower watermarks than before. The Clerk holds every position still missing a copy
    (ClerkNeverDropsANeededCopy, ClerkHoldsCopy), ignores the identical replays
    (ClerkIgnoresIdenticalReplay), reports nothing, and publishes exactly one result
    per position; once both advertise the end again, nothing is held."""
    core = ClerkCore(("a", "b"), 2)
    n, p = 60, 0
    results: list[int] = []

    def send(inst: str, offsets) -> None:
        for o in offsets:
            b = body(p, o)
            for action in core.on_copy(p, o, inst, digest(b), b, None):
                assert isinstance(action, Publish), orjson.loads(action.value)
                results.append(orjson.loads(action.value)["input"]["offset"])

    send("a", range(40))
    core.on_watermark(p, "a", 40)
    send("b", range(25))
    core.on_watermark(p, "b", 25)
    # both killed now: a had committed 30, b had committed 20; they restart and replay
    core.on_watermark(p, "a", 30)  # lower than before: the restarted run's first watermark
    core.on_watermark(p, "b", 20)
    assert core.pending(p) > 0 and not core.is_final(p, 30)  # 25..39: a's copy only, held
    send("b", range(20, 45))
    send("a", range(30, 60))
    send("b", range(45, 60))
    core.on_watermark(p, "a", n)
    core.on_watermark(p, "b", n)
    assert sorted(results) == list(range(n))
    assert core.counts["divergences"] == 0 and core.counts["replayed_copies"] > 0
    assert core.pending(p) == 0
