"""The Usher and Arbiter without a broker: intake rules, batching, the Warden's
verdicts, and replay after simulated crashes (specs/usher.allium,
specs/arbiter.allium, specs/warden.allium, specs/recovery.allium)."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.records import CREATE_TIME, InputRecord, partition_for, unseal
from tables.store import MemoryStore
from tables.warden import clock_key, version_key
from app.domains.inventory import Inventory
from tests.unit.pipeline_kit import PARTITIONS, TTL, Stream, entity_state, envelope, run, usher, workload


def bodies(outputs):
    return [unseal(o.value)[2] for o in outputs]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batch_boundaries_never_change_an_output(seed):
    """UsherBatchesDoNotChangeOutputs, ArbiterProcessesBatchInOffsetOrder: the same
    input in batches of 1, 7, 64 and all at once gives byte-identical outputs and the
    same final state: each record is decided in offset order within its partition and
    sees every effect of the records before it, in its batch or an earlier one."""
    stream = workload(seed, 600)
    results = []
    for size in (1, 7, 64, len(stream.records)):
        store = MemoryStore()
        outs = run(usher(store), stream.records, size)
        results.append(([o.value for o in outs], entity_state(store)))
    assert all(r == results[0] for r in results[1:])


def test_one_output_per_record_on_the_input_partition():
    """ArbiterEmitsOneOutputPerRecord, ProcessedRecordsHaveOutputs,
    OutputOnInputPartition: every record, good or bad, gets exactly one output, in
    batch order, on the partition number of its input."""
    stream = workload(5, 300)
    stream.add(b"s0", b"garbage", 2_000_000)
    outs = run(usher(), stream.records, 50)
    assert len(outs) == len(stream.records)
    for rec, out in zip(stream.records, outs):
        _, _, b = unseal(out.value)
        assert out.partition == rec.partition
        assert b["input"] == {"partition": rec.partition, "offset": rec.offset}


def test_two_instances_agree_byte_for_byte_except_instance():
    """EvaluationIsDeterministic, OutputsAgreeAcrossInstances: two instances fed the
    same stream, in different batches, emit equal digests and equal bodies."""
    stream = workload(9, 500)
    outs_a = run(usher(instance="a"), stream.records, 33)
    outs_b = run(usher(instance="b"), stream.records, 64)
    for oa, ob in zip(outs_a, outs_b):
        ia, da, ba = unseal(oa.value)
        ib, db, bb = unseal(ob.value)
        assert (ia, ib) == ("a", "b")
        assert da == db and ba == bb


def _poison_stream():
    s = Stream()
    good = {"warehouse": "w1", "sku": "s1", "delta": 5}
    good_value = envelope("g1", "stock.adjust", good)
    home = partition_for(b"s1", PARTITIONS)
    cases = [
        (s.add(None, good_value, 1), "malformed_record"),
        (s.add(b"\xff\xfe", good_value, 1, partition=0), "malformed_record"),
        (s.add(b"s1", None, 1), "malformed_record"),
        (s.add(b"s1", b"{not json", 1), "malformed_record"),
        (s.add(b"s1", b"[1,2]", 1), "malformed_record"),
        (s.add(b"s1", orjson.dumps({"event_name": "stock.adjust", "payload": good}), 1), "malformed_record"),
        (s.add(b"s1", orjson.dumps({"idempotency_key": "", "event_name": "stock.adjust", "payload": good}), 1),
         "malformed_record"),
        (s.add(b"s1", orjson.dumps({"idempotency_key": "x" * 129, "event_name": "stock.adjust",
                                    "payload": good}), 1), "malformed_record"),
        (s.add(b"s1", orjson.dumps({"idempotency_key": "p1", "event_name": "stock.adjust"}), 1), "malformed_record"),
        (s.add(b"s1", orjson.dumps({"idempotency_key": "p1", "event_name": "stock.adjust", "payload": good,
                                    "x": 1}), 1), "malformed_record"),
        (s.add(b"s1", b"{" + b'"a":"' + b"x" * 70_000 + b'"}', 1), "malformed_record"),
        (s.add(b"s1", envelope("p2", "stock.teleport", good), 1), "unknown_event"),
        (s.add(b"s1", envelope("p3", "stock.adjust", {**good, "delta": 0}), 1), "zero_delta"),
        (s.add(b"s1", envelope("p4", "stock.adjust", {**good, "delta": 1.5}), 1), "invalid_payload"),
        # an integer beyond 64 bits is refused by name (DuplicateMemberIsMalformed), not read as a float
        (s.add(b"s1", envelope("p5", "stock.adjust", {**good, "delta": 7}).replace(b":7}", b":" + b"9" * 30 + b"}"), 1),
         "malformed_record"),
        (s.add(b"s1", envelope("p6", "stock.adjust", {**good, "sku": "s1 "}), 1), "invalid_identifier"),
        (s.add(b"s1", envelope("p7", "stock.adjust", {**good, "sku": "s2"}), 1), "affinity_key_mismatch"),
        (s.add(b"s1", envelope("p8", "stock.adjust", good), 1, partition=(home + 1) % PARTITIONS), "misrouted"),
    ]
    goods = [s.add(b"s1", good_value, 2), s.add(b"s1", envelope("g2", "stock.adjust", {**good, "delta": -5}), 3)]
    return s, cases, goods


def test_bad_records_become_named_rejections_and_good_ones_still_apply():
    """UsherRejectsMalformedRecord, UsherRejectsUnknownEvent, UsherRejectsInvalidPayload,
    UsherRejectsAffinityKeyMismatch, UsherRejectsMisroutedRecord,
    ArbiterEmitsPreEvaluationRejection, RejectedRecordsCreateNoEvent: each bad record is
    a deterministic rejected output with a named reason, touches no state and writes no
    Warden version; a misrouted one's detail names both partitions, the partitioner
    and librdkafka's partitioner=murmur2_random; UsherAdmitsEvent, AdmittedEventIsCorrectlyRouted: the correctly
    keyed and routed records around them are admitted and apply."""
    s, cases, goods = _poison_stream()
    store = MemoryStore()
    outs = run(usher(store), s.records, 5)
    by_pos = {(o.partition, unseal(o.value)[2]["input"]["offset"]): unseal(o.value)[2] for o in outs}
    for rec, reason in cases:
        out = by_pos[(rec.partition, rec.offset)]
        assert out["outcome"]["status"] == "rejected", reason
        assert out["outcome"]["reason"] == reason, (rec, out["outcome"])
        assert out["outcome"]["detail"]
        if reason == "misrouted":
            home = partition_for(b"s1", PARTITIONS)
            assert out["outcome"]["detail"] == (
                f"the record is on partition {rec.partition}, its key belongs on partition {home} of {PARTITIONS}: "
                f"docket routes by Kafka's default partitioner, murmur2(key) mod {PARTITIONS}, as the Java client "
                "and aiokafka do. Produce with it (librdkafka clients such as confluent-kafka and kcat: "
                "partitioner=murmur2_random; their default, consistent_random, puts keys elsewhere) and leave "
                "the partition to the partitioner")
    assert [by_pos[(g.partition, g.offset)]["outcome"]["status"] for g in goods] == ["applied", "applied"]
    assert entity_state(store) == {"stock:w1:s1": ({"quantity": 0}, 2)}
    # rejected-before-evaluation records left no Warden entries behind
    assert sorted(k for (_, k) in store.data if k.startswith(b"w\x00")) == sorted(
        [version_key("g1", goods[0].offset), version_key("g2", goods[1].offset)])


def test_domain_bug_becomes_an_evaluation_error_not_a_crash():
    """ArbiterContainsDomainFailure: an exception in evaluate is a rejected outcome."""
    class Broken(Inventory):
        def evaluate(self, event_name, payload, states):
            raise ZeroDivisionError("boom")

    u = usher(domain=Broken())
    s = Stream()
    s.event("k1", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 1}, 5)
    (out,) = u.process(s.records, lambda p: 0)
    assert unseal(out.value)[2]["outcome"]["reason"] == "evaluation_error"


# --- Warden --------------------------------------------------------------------


def _adjust(s, ikey, delta, ts, sku="s1"):
    return s.event(ikey, "stock.adjust", {"warehouse": "w1", "sku": sku, "delta": delta}, ts)


def test_duplicate_within_ttl_returns_original_outcome_without_state_change():
    """WardenRecognisesDuplicate, ArbiterAnswersDuplicate,
    DuplicateRequestAnsweredWithOriginal: a repeat within the TTL gets the original
    outcome and duplicate_of; it is not evaluated again and changes no state."""
    s = Stream()
    first = _adjust(s, "k1", 5, 1_000)
    _adjust(s, "k1", 5, 1_000 + TTL - 1)
    store = MemoryStore()
    o1, o2 = bodies(run(usher(store), s.records, 1))
    assert o2["duplicate_of"] == {"partition": first.partition, "offset": first.offset}
    assert o2["outcome"] == o1["outcome"]
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 5}, 1)


def test_duplicate_of_a_rejection_is_the_same_rejection():
    """ArbiterAnswersDuplicate, DuplicateRepeatsOriginalOutcome: a repeated request that
    was rejected by evaluation gets the same rejection back, as a duplicate."""
    s = Stream()
    _adjust(s, "k1", -5, 1_000)
    _adjust(s, "k2", 50, 1_001)
    _adjust(s, "k1", -5, 1_002)
    o1, _, o3 = bodies(run(usher(), s.records, 10))
    assert o1["outcome"]["reason"] == o3["outcome"]["reason"] == "insufficient_stock"
    assert o3["duplicate_of"] is not None


def test_reused_key_with_different_request_is_rejected():
    """WardenRejectsReusedKey, ArbiterRejectsReusedKey: same key, different payload,
    within the TTL: rejected idempotency_key_reused, nothing changes."""
    s = Stream()
    _adjust(s, "k1", 5, 1_000)
    _adjust(s, "k1", 6, 1_001)
    store = MemoryStore()
    _, o2 = bodies(run(usher(store), s.records, 10))
    assert o2["outcome"]["reason"] == "idempotency_key_reused"
    assert o2["duplicate_of"] is None
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 5}, 1)


def test_key_expires_after_ttl_of_stream_time():
    """WardenAdmitsExpiredKey: at ttl of stream time after recording, the key is new again."""
    s = Stream()
    _adjust(s, "k1", 5, 1_000)
    _adjust(s, "k1", 5, 1_000 + TTL)
    store = MemoryStore()
    o1, o2 = bodies(run(usher(store), s.records, 10))
    assert o2["duplicate_of"] is None and o2["outcome"]["status"] == "applied"
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 10}, 2)


def test_expired_entries_are_collected_only_below_the_committed_offset():
    """WardenCollectsExpiredEntries: removal needs an offset below the committed one
    AND expiry at the stream time of the committed offset, so it never changes an
    output."""
    s = Stream()
    for i in range(10):
        _adjust(s, f"k{i}", 1, 1_000 + i)
    late = _adjust(s, "late", 1, 1_000 + TTL + 9)
    store = MemoryStore()
    u = usher(store)
    u.process(s.records, lambda p: 0)
    assert u.warden.size(late.partition) == 11  # nothing committed: nothing collected
    committed = {late.partition: late.offset + 1}
    u.warden.collect(late.partition, lambda p: committed.get(p, 0))
    # k9 (recorded at 1_009) is exactly one TTL behind: expired for every later event
    assert u.warden.size(late.partition) == 1
    assert [k for (_, k) in store.data if k.startswith(b"w\x00")] == [version_key("late", late.offset)]


def test_collection_waits_for_a_clock_checkpoint_below_the_committed_offset():
    """WardenCollectsExpiredEntries, ClockCheckpointAtBatchEnd: the stream time of the
    committed offset is known from the newest clock checkpoint below it; with none (the
    commit falls inside the only batch) nothing is collected."""
    s = Stream()
    first = _adjust(s, "k0", 1, 1_000)
    late = _adjust(s, "late", 1, 1_000 + 2 * TTL)
    u = usher(MemoryStore())
    u.process(s.records, lambda p: 0)  # one batch: one checkpoint, at late.offset
    assert u.warden.collect(first.partition, lambda p: late.offset) == 0
    assert u.warden.collect(first.partition, lambda p: late.offset + 1) == 1


def test_warden_stays_bounded_by_rate_times_ttl():
    """WardenBoundedByRateTimesTtl: with commits keeping up, a long stream keeps only
    about one ttl worth of entries, plus the batch in flight."""
    s = Stream(partitions=PARTITIONS)
    for i in range(4_000):
        _adjust(s, f"k{i}", 1, 1_000 + i * 1_000, sku="s1")  # one event per second of stream time
    store = MemoryStore()
    u = usher(store, ttl=60_000)
    done = {}
    for i in range(0, len(s.records), 100):
        batch = s.records[i:i + 100]
        u.process(batch, lambda p: done.get(p, 0))
        for r in batch:
            done[r.partition] = r.offset + 1
    live = sum(1 for (_, k) in store.data if k.startswith(b"w\x00"))
    assert 60 + 100 <= live <= 60 + 100 + 1  # ttl of entries before the batch, plus the batch


def test_out_of_order_timestamp_cannot_expire_a_key():
    """OutOfOrderTimestampCannotExpireAKey, StreamTimeIsTheGreatestBrokerTimestamp: a
    request whose record carries a timestamp a whole TTL behind its predecessor is
    recorded at the partition's stream time, so its retry a moment later is a
    duplicate, not a second application."""
    s = Stream()
    _adjust(s, "other", 1, 10_000_000)
    _adjust(s, "K", 5, 10_000_000 - TTL)  # stamped a TTL in the past
    _adjust(s, "K", 5, 10_000_001)
    store = MemoryStore()
    _, first, retry = bodies(run(usher(store), s.records, 1))
    assert first["stream_time"] == 10_000_000 and first["outcome"]["status"] == "applied"
    assert retry["duplicate_of"] == first["input"]
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 6}, 2)


@pytest.mark.parametrize("resume_at", [1, 2, 3, 5])
def test_clock_resumes_from_the_newest_checkpoint_below_the_first_record(resume_at):
    """ClockResumesFromCheckpoint, ClockCheckpointAtBatchEnd: a worker that takes a
    partition over at a batch end (a fresh Usher on the same table) gives every later
    record the stream time a worker reading from the start gives it, even when the
    highest timestamp lies before its first record."""
    stamps = [1_000, 9_000, 2_000, 3_000, 9_500, 4_000, 10_000]
    s = Stream()
    for i, ts in enumerate(stamps):
        _adjust(s, f"k{i}", 1, ts)
    whole = [b["stream_time"] for b in bodies(run(usher(MemoryStore()), s.records, 1))]
    assert whole == [1_000, 9_000, 9_000, 9_000, 9_500, 9_500, 10_000]
    store = MemoryStore()
    run(usher(store), s.records[:resume_at], 1)  # one checkpoint per record (batches of one)
    taken_over = usher(store)
    assert [b["stream_time"] for b in bodies(run(taken_over, s.records[resume_at:], 2))] == whole[resume_at:]


def test_a_replay_writes_its_own_clock_checkpoints():
    """ClockCheckpointAtBatchEnd, ClockResumesFromCheckpoint, ClockCheckpointsRestated: a
    replay after a crash writes a checkpoint at each of its batch ends even where the
    crashed run left a later one, and writes the crashed run's later ones again, so when
    the replay's commit is restored from the changelog alone (the crashed run's later
    checkpoint was only in its local files), the clock still resumes right."""
    s = Stream()
    stamps = [1_000 + i for i in range(20)]
    stamps[12] = 50_000  # then the broker's clock steps back
    for i, ts in enumerate(stamps):
        _adjust(s, f"k{i}", 1, ts)
    whole = [b["stream_time"] for b in bodies(run(usher(MemoryStore()), s.records, 1))]
    first = MemoryStore()
    crashed = usher(first)
    run(crashed, s.records[:10], 10)
    flushed = list(first.writes)  # the batch before the commit at 10 reached the changelog
    run(crashed, s.records[10:], 10)  # this one only the local files: checkpoint at 19
    local = MemoryStore.replayed(first.writes)
    local.writes.clear()
    run(usher(local), s.records[10:15], 5)  # the replay, committed at 15
    replayed = [key for _, key, _ in local.writes]
    assert clock_key(14) in replayed
    # the crashed run's checkpoint at 19, which only the local files held, is written
    # again: the changelog holds every checkpoint the table holds
    assert clock_key(19) in replayed
    restored = MemoryStore.replayed(flushed + local.writes)  # another worker, from the changelog
    later = [b["stream_time"] for b in bodies(run(usher(restored), s.records[15:], 5))]
    assert later == whole[15:] == [50_000] * 5


def _scoped(s, ikey, delta, ts, client):
    value = {"idempotency_key": ikey, "event_name": "stock.adjust",
             "payload": {"warehouse": "w1", "sku": "s1", "delta": delta}}
    if client is not None:
        value["client"] = client
    return s.add(b"s1", orjson.dumps(value), ts)


def test_keys_are_scoped_by_client():
    """KeysAreScopedByClient, WardenAdmitsNewKey, WardenRecognisesDuplicate: one key
    used by clients alice and bob and by a Kafka-native producer (no client) is three
    keys: each is applied once; a repeat within one scope is a duplicate of that
    scope's own request; the versions live under distinct table keys."""
    s = Stream()
    a = _scoped(s, "K", 5, 1_000, "alice")
    b = _scoped(s, "K", 7, 1_001, "bob")
    n = _scoped(s, "K", 11, 1_002, None)
    _scoped(s, "K", 5, 1_003, "alice")
    _scoped(s, "K", 7, 1_004, "bob")
    store = MemoryStore()
    outs = bodies(run(usher(store), s.records, 2))
    assert [o["outcome"]["status"] for o in outs[:3]] == ["applied"] * 3
    assert [o["client"] for o in outs] == ["alice", "bob", None, "alice", "bob"]
    assert outs[3]["duplicate_of"] == outs[0]["input"] and outs[4]["duplicate_of"] == outs[1]["input"]
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 23}, 3)
    keys = {k for (_, k) in store.data if k.startswith(b"w\x00")}
    assert keys == {version_key("K", a.offset, "alice"), version_key("K", b.offset, "bob"), version_key("K", n.offset)}


@pytest.mark.parametrize("client", ["", "a b", "x" * 65, 7, ["alice"]])
def test_an_ill_formed_client_is_a_malformed_record(client):
    """UsherRejectsMalformedRecord: the envelope's client, when given, is 1-64
    characters of A-Z a-z 0-9 . _ -; anything else is rejected malformed_record."""
    s = Stream()
    s.add(b"s1", orjson.dumps({"idempotency_key": "k", "event_name": "stock.adjust", "client": client,
                               "payload": {"warehouse": "w1", "sku": "s1", "delta": 1}}), 1_000)
    (out,) = bodies(run(usher(MemoryStore()), s.records, 1))
    assert (out["outcome"]["reason"], out["outcome"]["detail"]) == (
        "malformed_record", "client must be 1-64 characters of A-Z a-z 0-9 . _ -")


def test_a_producer_clocked_record_moves_no_stream_time():
    """ProducerClockCannotExpireAKey, StreamTimeIsTheGreatestBrokerTimestamp: a record
    stamped by its producer (CreateTime: the input topic was switched while running)
    moves no stream time, an hour ahead or not: a retry of K after it is a replay of K,
    and the record itself gets the stream time so far."""
    s = Stream()
    _adjust(s, "K", 4, 10_000_000)
    ahead = s.add(b"s1", envelope("X", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 10}),
                  10_000_000 + 59 * 60_000)
    s.records[-1] = InputRecord(ahead.partition, ahead.offset, ahead.timestamp, ahead.key, ahead.value,
                                CREATE_TIME)
    _adjust(s, "K", 4, 10_000_001)
    store = MemoryStore()
    first, hostile, retry = bodies(run(usher(store), s.records, 1))
    assert hostile["stream_time"] == 10_000_000 and hostile["outcome"]["status"] == "applied"
    assert retry["duplicate_of"] == first["input"] and retry["stream_time"] == 10_000_001
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 14}, 2)


def test_superseded_version_survives_for_replay():
    """WardenVersionsAreWriteOnce: a key used again after expiry gets a new version;
    the old one stays until collected, so a replay between them still finds it."""
    s = Stream()
    a = _adjust(s, "k1", 5, 1_000)
    dup = _adjust(s, "k1", 5, 1_001)
    b = _adjust(s, "k1", 5, 1_000 + TTL + 10)
    store = MemoryStore()
    u = usher(store)
    u.process(s.records, lambda p: 0)
    assert u.warden.lookup(a.partition, "k1", dup.offset).offset == a.offset
    assert u.warden.lookup(b.partition, "k1", b.offset).offset == b.offset
    again = usher(store).process(s.records, lambda p: 0)
    assert unseal(again[1].value)[2]["duplicate_of"] == {"partition": a.partition, "offset": a.offset}


def test_warden_rebuild_restores_the_collection_queue():
    s = Stream()
    for i in range(5):
        _adjust(s, f"k{i}", 1, 1_000 + i)
    store = MemoryStore()
    u = usher(store)
    u.process(s.records, lambda p: 0)
    p = s.records[0].partition
    fresh = usher(store)
    fresh.warden.rebuild(p)
    assert fresh.warden.size(p) == u.warden.size(p) == 5


# --- crash and replay --------------------------------------------------------------


def _crashed_run(stream, batch_size, rng, commit_every, crash_batch, model):
    """Run the stream, committing every ``commit_every`` batches, crash after
    ``crash_batch`` batches, recover the store under ``model``, restart from the
    committed offsets and finish. Returns (outputs after restart, final store)."""
    records = stream.records
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    store = MemoryStore()
    u = usher(store)
    committed: dict[int, int] = {}
    commit_write_index = 0
    for index, batch in enumerate(batches[:crash_batch]):
        if index % commit_every == 0:
            # an offset commit covers every earlier batch: the producer was flushed first
            for done in batches[:index]:
                for r in done:
                    committed[r.partition] = max(committed.get(r.partition, 0), r.offset + 1)
            commit_write_index = len(store.writes)
        u.process(batch, lambda p: committed.get(p, 0))
    crash_index = len(store.writes)
    writes = store.writes
    if model == "prefix":
        # restored from the changelog alone (another worker, or a lost data dir): an
        # ordered prefix of the log, at least up to the commit
        cut = rng.randint(commit_write_index, crash_index)
        recovered = MemoryStore.replayed(writes[:cut])
    else:
        # restarted on its own data dir: local RocksDB holds every write, then Faust
        # re-applies the changelog from the persisted offset: a contiguous segment of
        # the log, after the commit, that reached the broker
        start = rng.randint(commit_write_index, crash_index)
        end = rng.randint(start, crash_index)
        recovered = MemoryStore.replayed(writes[:crash_index] + writes[start:end])
    recovered.writes.clear()
    # restart: cold caches, replay from the committed offsets, then the rest
    restarted = usher(recovered)
    todo = [r for r in records if r.offset >= committed.get(r.partition, 0)]
    outs = run(restarted, todo, batch_size, committed=lambda p: committed.get(p, 0))
    return outs, recovered


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.sampled_from([1, 3, 16]),
       commit_every=st.integers(1, 4), model=st.sampled_from(["prefix", "local_plus_tail"]),
       ttl_jumps=st.booleans(), jitter_ms=st.sampled_from([0, 60_000]))
def test_replay_after_crash_is_idempotent(seed, batch_size, commit_every, model, ttl_jumps, jitter_ms):
    """NoEventAppliedTwice, ReemittedOutputsAreIdentical, ReplayReemitsOriginalOutput,
    WardenEntryBeforeEntities, WardenRecognisesReplay, ReplayRewritesEventWrites,
    ReplayRewritesEntities, ResumeAtCommittedOffset: whatever the crash left (a
    changelog prefix, or the local store with a tail segment of the changelog
    re-applied over it), replaying from the committed offsets applies no event twice,
    re-emits byte-identical outputs and ends in the uncrashed state.

    The cut falls anywhere in the ordered log between the last commit and the crash,
    so it lands before an event's Warden version (CrashBeforeWardenWrite), between the
    version and its entity writes or among them (CrashBetweenWardenAndEntityWrites),
    after the writes of an event whose batch's outputs were not emitted yet
    (CrashAfterEntityWritesBeforeOutput), or after outputs already emitted but not
    committed, which are emitted again (CrashAfterOutputBeforeCommit)."""
    rng = random.Random(seed)
    stream = workload(seed, 160, ttl_jumps=ttl_jumps, jitter_ms=jitter_ms)
    clean_store = MemoryStore()
    clean = {(o.partition, unseal(o.value)[2]["input"]["offset"]): o.value
             for o in run(usher(clean_store), stream.records, batch_size)}
    n_batches = -(-len(stream.records) // batch_size)
    crash_batch = rng.randint(1, n_batches)
    outs, recovered = _crashed_run(stream, batch_size, rng, commit_every, crash_batch, model)
    for o in outs:
        pos = (o.partition, unseal(o.value)[2]["input"]["offset"])
        assert o.value == clean[pos], pos
    assert entity_state(recovered) == entity_state(clean_store)


def _committing_run(u, batches, commit_every, committed):
    """Process ``batches`` with ``u``, committing every ``commit_every`` batches (an
    offset commit covers every earlier batch: the producer was flushed first) into
    ``committed``; returns (outputs, the store's write count at the last commit)."""
    outs, commit_index = [], 0
    for index, batch in enumerate(batches):
        if index % commit_every == 0:
            for r in (r for done in batches[:index] for r in done):
                committed[r.partition] = max(committed.get(r.partition, 0), r.offset + 1)
            commit_index = len(u.registrar.ledger.store.writes)
        outs.extend(u.process(batch, lambda p: committed.get(p, 0)))
    return outs, commit_index


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.sampled_from([1, 3, 16]),
       commit_every=st.integers(1, 4), local=st.booleans(), ttl_jumps=st.booleans())
def test_a_worker_presumed_dead_writing_after_its_successor_changes_no_output(seed, batch_size, commit_every,
                                                                              local, ttl_jumps):
    """specs/recovery.allium point 6, RestoreKeepsNewestEntityRecord: worker A is
    frozen after some batches, with only part of its writes in the changelog; B
    restores that and replays from A's commit and goes on (committing; A's commits fail
    from then on); A wakes and its remaining writes land among B's, in up to two
    stretches anywhere. Then the partition is restored once more, either by a fresh
    worker from the whole log or by A on its own data directory: its local store, then
    the log from its persisted offset, which PersistedOffsetOverContiguousWrites keeps
    no later than where its own writes stopped being contiguous (this models that rule's
    effect; tests/unit/test_ledger_restore.py tests the rule). Replayed from B's commit
    to the end, every output of the last run is the uncrashed run's, byte for byte, and
    so are the final entities."""
    rng = random.Random(seed)
    stream = workload(seed, 160, ttl_jumps=ttl_jumps)
    records = stream.records
    clean_store = MemoryStore()
    clean = {(o.partition, o.offset): o.value for o in run(usher(clean_store), records, batch_size)}
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    committed: dict[int, int] = {}
    a = usher(MemoryStore())
    _, a_commit_index = _committing_run(a, batches[:rng.randint(1, len(batches))], commit_every, committed)
    a_writes = list(a.registrar.ledger.store.writes)
    logged = rng.randint(a_commit_index, len(a_writes))  # A's writes that reached the log before it froze

    b_store = MemoryStore.replayed(a_writes[:logged])
    b_store.writes.clear()
    b = usher(b_store)
    todo = [r for r in records if r.offset >= committed.get(r.partition, 0)]
    b_batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    b_outs, _ = _committing_run(b, b_batches[:rng.randint(0, len(b_batches))], commit_every, committed)
    for o in b_outs:  # B stops gracefully: its last commit covers all it did
        committed[o.partition] = max(committed.get(o.partition, 0), o.offset + 1)
    b_writes, late = b_store.writes, a_writes[logged:]
    at = sorted(rng.randint(0, len(b_writes)) for _ in range(2))
    split = rng.randint(0, len(late))
    log = (a_writes[:logged] + b_writes[:at[0]] + late[:split] + b_writes[at[0]:at[1]] + late[split:]
           + b_writes[at[1]:])

    if local:
        recovered = MemoryStore.replayed(a_writes + log[rng.randint(a_commit_index, logged):])
    else:
        recovered = MemoryStore.replayed(log)
    recovered.writes.clear()
    rest = [r for r in records if r.offset >= committed.get(r.partition, 0)]
    last_outs = run(usher(recovered), rest, batch_size, committed=lambda p: committed.get(p, 0))
    for o in b_outs + last_outs:
        assert o.value == clean[(o.partition, o.offset)], (o.partition, o.offset)
    assert entity_state(recovered) == entity_state(clean_store)


def test_replay_of_fully_applied_batch_reemits_from_warden():
    """ReplayReemitsOriginalOutput, RecordDeliveredAgain, WardenRecognisesReplay: a
    batch delivered again whose writes all survived is not evaluated again: its
    outputs come from the Warden entries, and no event is applied twice."""
    s = Stream()
    _adjust(s, "k1", 5, 1)
    _adjust(s, "k2", -5, 2)
    store = MemoryStore()
    first = run(usher(store), s.records, 10)
    again = run(usher(store), s.records, 10)
    assert [o.value for o in first] == [o.value for o in again]
    assert entity_state(store)["stock:w1:s1"] == ({"quantity": 0}, 2)


def test_a_fresh_event_reading_an_entity_stamped_at_or_after_it_is_reported_once(caplog):
    """ArbiterReportsLedgerAheadOfEvent: with the Warden versions of two events gone
    while the Ledger keeps their effects (a state the write order rules out), a new
    worker judges them as new and reads the entity stamped with the later one: one
    ERROR for the partition, naming the offset, the entity and the stamp. A replay of
    an intact store reports nothing."""
    s = Stream()
    _adjust(s, "k1", 5, 1)
    second = _adjust(s, "k2", -2, 2)
    third = _adjust(s, "k3", 1, 3)
    store = MemoryStore()
    run(usher(store), s.records, 10)
    with caplog.at_level("ERROR", logger="docket.arbiter"):
        run(usher(store), s.records, 10)
    assert not caplog.records
    for rec in (second, third):
        store.delete(rec.partition, version_key(f"k{rec.offset + 1}", rec.offset))
    with caplog.at_level("ERROR", logger="docket.arbiter"):
        run(usher(store), s.records, 10)
    (report,) = caplog.records
    text = report.getMessage()
    assert f"partition {second.partition} offset {second.offset} " in text
    assert f"'stock:w1:s1' carries stamp {third.offset}," in text


def test_registrar_eviction_does_not_change_results():
    """RegistrarIsACacheOnly: a tiny cache gives the same outputs as a large one."""
    stream = workload(11, 400)
    small = run(usher(capacity=1), stream.records, 16)
    large = run(usher(capacity=10_000), stream.records, 16)
    assert [o.value for o in small] == [o.value for o in large]


def test_input_record_value_is_not_mutated_by_processing():
    rec = InputRecord(0, 0, 1, b"s1", envelope("k", "stock.adjust", {"warehouse": "w", "sku": "s1", "delta": 1}))
    before = rec.value
    usher().process([rec], lambda p: 0)
    assert rec.value == before


def test_misrouted_detail_is_a_bounded_function_of_the_partitions() -> None:
    """UsherRejectsMisroutedRecord: the detail depends on (home, partition, partition
    count) alone, names the fix (partitioner=murmur2_random for librdkafka) and stays
    at most 400 characters whatever the numbers, far below the outcome's 1,024-character
    detail limit."""
    from app.records import misrouted_detail

    assert misrouted_detail(3, 5, 8) == misrouted_detail(3, 5, 8) != misrouted_detail(5, 3, 8)
    detail = misrouted_detail(3, 5, 8)
    assert "partition 5" in detail and "partition 3 of 8" in detail and "murmur2(key) mod 8" in detail
    assert "partitioner=murmur2_random" in detail
    assert len(misrouted_detail(2**31 - 2, 2**31 - 1, 2**31 - 1)) <= 400  # partition numbers are int32
