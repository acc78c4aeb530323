"""Spec rules of one instance's pipeline that the broader tests in test_usher.py do not
pin down on their own: the Arbiter's write order, what the domain's evaluate is given,
the Usher's screen -> pre-warm -> evaluate phases, the Warden's verdict table and its
stream time, and invariants over the Ledger and the Warden after a random workload
(specs/arbiter.allium, specs/usher.allium, specs/warden.allium, specs/ledger.allium,
specs/domain.allium). Pure logic: no broker."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.inventory import Inventory
from app.records import partition_for, unseal
from tables.ledger import ENTITY_PREFIX, Ledger
from tables.store import MemoryStore
from tables.warden import WARDEN_PREFIX, Verdict, Warden, WardenEntry, clock_key, version_key
from tests.unit.pipeline_kit import (
    PARTITIONS,
    TTL,
    Stream,
    envelope,
    inventory,
    run,
    usher,
    workload,
)


def body_of(output) -> dict:
    return unseal(output.value)[2]


def adjust(s: Stream, ikey: str, delta: int, ts: int, warehouse: str = "w1", sku: str = "s1"):
    return s.event(ikey, "stock.adjust", {"warehouse": warehouse, "sku": sku, "delta": delta}, ts)


# --------------------------------------------------------------------------- the Arbiter


def test_fresh_event_writes_its_warden_version_then_its_entities() -> None:
    """ArbiterConsultsWarden, ArbiterEvaluatesFreshEvent, WardenRecordsVersion,
    ArbiterAppliesChangedEntities, LedgerWritesEntityRecord: a fresh event's writes, in
    the one ordered log of its partition, are its Warden version (holding the complete
    output body) and then each changed entity, sorted by key, with version = previous
    + 1 (1 for a new one) and stamp = the event's offset."""
    s = Stream()
    first = adjust(s, "k1", 5, 1_000)
    move = s.event("k2", "stock.transfer", {"sku": "s1", "from_warehouse": "w1", "to_warehouse": "w0",
                                            "quantity": 2}, 1_001)
    store = MemoryStore()
    out1, out2 = run(usher(store), s.records, 10)
    p = first.partition
    assert [(part, key) for part, key, _ in store.writes] == [
        (p, version_key("k1", first.offset)), (p, ENTITY_PREFIX + b"stock:w1:s1"),
        (p, version_key("k2", move.offset)), (p, ENTITY_PREFIX + b"stock:w0:s1"), (p, ENTITY_PREFIX + b"stock:w1:s1"),
        (p, clock_key(move.offset)),  # the batch's clock checkpoint comes last (ClockCheckpointAtBatchEnd)
    ]
    # the version holds the complete output body, byte for byte
    assert WardenEntry.decode(store.writes[2][2]).body == out2.body
    assert body_of(out2)["outcome"]["entities"] == [
        {"key": "stock:w0:s1", "state": {"quantity": 2}, "version": 1},
        {"key": "stock:w1:s1", "state": {"quantity": 3}, "version": 2},
    ]
    ledger = Ledger(store)
    assert (ledger.get(p, "stock:w1:s1").version, ledger.get(p, "stock:w1:s1").stamp) == (2, move.offset)
    assert (ledger.get(p, "stock:w0:s1").version, ledger.get(p, "stock:w0:s1").stamp) == (1, move.offset)
    assert body_of(out1)["outcome"]["entities"][0]["version"] == 1


def test_domain_rejection_is_a_fresh_evaluation_with_its_reason_and_no_entity_write() -> None:
    """ArbiterEvaluatesFreshEvent (a rejected outcome keeps the domain's reason and
    detail, gets a Warden version, writes no entity)."""
    s = Stream()
    short = adjust(s, "k1", -3, 1_000)
    store = MemoryStore()
    (out,) = run(usher(store), s.records, 1)
    outcome = body_of(out)["outcome"]
    assert (outcome["status"], outcome["reason"]) == ("rejected", "insufficient_stock")
    assert outcome["detail"] == "stock:w1:s1 holds 0" and outcome["entities"] == []
    assert [key for _, key, _ in store.writes] == [version_key("k1", short.offset), clock_key(short.offset)]


def test_evaluate_gets_exactly_the_named_entities() -> None:
    """DomainEvaluatesEvent: evaluate is called with the states of exactly the entities
    entity_keys names: the Ledger's state for one already written, initial_state for
    one never written."""
    calls = []

    class Recording(Inventory):
        def evaluate(self, event_name, payload, states):
            calls.append((self.entity_keys(event_name, payload), {k: dict(v) for k, v in states.items()}))
            return super().evaluate(event_name, payload, states)

    u = usher(domain=Recording())
    s = Stream()
    adjust(s, "k1", 7, 1_000)
    s.event("k2", "stock.transfer", {"sku": "s1", "from_warehouse": "w1", "to_warehouse": "w9", "quantity": 3}, 1_001)
    run(u, s.records, 1)
    (keys1, states1), (keys2, states2) = calls
    assert set(states1) == set(keys1) == {"stock:w1:s1"} and states1["stock:w1:s1"] == {"quantity": 0}
    assert set(states2) == set(keys2) == {"stock:w1:s1", "stock:w9:s1"}
    assert states2 == {"stock:w1:s1": {"quantity": 7}, "stock:w9:s1": {"quantity": 0}}


def test_reused_key_rejection_names_the_version_that_holds_the_key() -> None:
    """ArbiterRejectsReusedKey: detail "key first used at partition <p> offset <o> for a
    different request"; nothing is written."""
    s = Stream()
    first = adjust(s, "k1", 5, 1_000)
    adjust(s, "k1", 6, 1_001)
    store = MemoryStore()
    _, out = run(usher(store), s.records, 10)
    outcome = body_of(out)["outcome"]
    assert outcome["reason"] == "idempotency_key_reused"
    assert outcome["detail"] == (f"key first used at partition {first.partition} offset {first.offset} "
                                 "for a different request")
    # the first event's version and entity, and the batch's clock checkpoint only
    assert [key[:2] for _, key, _ in store.writes] == [b"w\x00", b"e\x00", b"t\x00"]


# --------------------------------------------------------------------------- the Usher


def test_batch_is_screened_then_warmed_then_evaluated() -> None:
    """UsherTakesBatch, WarmedBatchIsFullyScreened, UsherPreWarmsRegistrar,
    RegistrarPreWarmsBatch, UsherHandsBatchToArbiter: every record of the batch is
    screened before any entity is read; then every entity key the admitted events touch
    (and none of a rejected record's) is read once, in one multi-get per partition,
    before the first evaluation; the evaluations then find every entity in memory."""
    log: list[tuple[str, str]] = []

    class Watched(Inventory):
        def validate(self, event_name, payload):
            log.append(("screen", payload.get("sku", "?") if isinstance(payload, dict) else "?"))
            return super().validate(event_name, payload)

        def evaluate(self, event_name, payload, states):
            log.append(("evaluate", ",".join(sorted(states))))
            return super().evaluate(event_name, payload, states)

    class WatchedStore(MemoryStore):
        def get(self, partition, key):
            if key.startswith(ENTITY_PREFIX):
                log.append(("read", key[len(ENTITY_PREFIX):].decode()))
            return super().get(partition, key)

        def get_many(self, partition, keys):
            log.append(("multi-get", ",".join(k[len(ENTITY_PREFIX):].decode() for k in keys)))
            return [super(WatchedStore, self).get(partition, k) for k in keys]

    u = usher(WatchedStore(), domain=Watched())
    s = Stream()
    adjust(s, "k1", 5, 1_000, sku="s1")
    adjust(s, "k2", 0, 1_001, sku="s2")  # rejected zero_delta: its entity is never read
    s.event("k3", "stock.transfer", {"sku": "s3", "from_warehouse": "w1", "to_warehouse": "w2", "quantity": 1}, 1_002)
    adjust(s, "k4", -1, 1_003, sku="s1")
    outs = u.process(s.records, lambda p: 0)
    # the partition's activation history (which domain version judges the batch,
    # specs/versioning.allium) is read once, before the screening: docket's own key
    history = [name for k, name in log if k == "read" and name.startswith("docket:")]
    assert history == [f"docket:versions:{p}" for p in sorted({r.partition for r in s.records})]
    log[:] = [e for e in log if not e[1].startswith("docket:")]
    kinds = [k for k, _ in log]
    assert kinds[:4] == ["screen"] * 4
    assert [name for k, name in log if k == "read"] == []  # no single reads: one multi-get
    reads = [name for k, name in log if k == "multi-get"]
    assert reads == ["stock:w1:s1,stock:w1:s3,stock:w2:s3"]  # each once, none of s2
    assert kinds.index("evaluate") > max(i for i, k in enumerate(kinds) if k == "multi-get")
    assert [body_of(o)["outcome"]["status"] for o in outs] == ["applied", "rejected", "rejected", "applied"]


def test_payload_without_canonical_form_is_rejected_before_the_warden() -> None:
    """UsherRejectsNonCanonicalPayload: a payload the domain's validator lets through
    but that has no canonical form (here a float in a field the validator ignores) is
    rejected invalid_payload, touches no state and writes no Warden version; the next
    event is processed as usual."""

    class Lenient(Inventory):
        def validate(self, event_name, payload):
            rest = {k: v for k, v in payload.items() if k != "note"} if isinstance(payload, dict) else payload
            return super().validate(event_name, rest)

    u = usher(domain=Lenient())
    store = u.registrar.ledger.store
    s = Stream()
    adjust_payload = {"warehouse": "w1", "sku": "s1", "delta": 5}
    s.add(b"s1", envelope("k1", "stock.adjust", {**adjust_payload, "note": 1.5}), 1_000)
    s.add(b"s1", envelope("k2", "stock.adjust", adjust_payload), 1_001)
    bad, good = (body_of(o) for o in u.process(s.records, lambda p: 0))
    assert (bad["outcome"]["status"], bad["outcome"]["reason"]) == ("rejected", "invalid_payload")
    assert bad["idempotency_key"] == "k1" and bad["event_name"] == "stock.adjust"
    assert good["outcome"]["status"] == "applied"
    assert [key for _, key, _ in store.writes if key.startswith(WARDEN_PREFIX)] == [
        version_key("k2", s.records[1].offset)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["w0", "w1", "w2"]), min_size=2, max_size=2),
       st.sampled_from(["s0", "s1", "sku.9"]), st.sampled_from(["s0", "s1", "sku.9"]),
       st.sampled_from(["w0", "w1", "w2"]))
def test_events_sharing_an_entity_share_a_partition(transfer_whs, sku_a, sku_b, adjust_wh) -> None:
    """AdmittedEventIsCorrectlyRouted, EventsSharingAnEntityShareAPartition: an admitted
    event sits on partition_for(its affinity key), and two valid events whose entities
    intersect have the same affinity key, hence the same partition."""
    events = [("stock.transfer", {"sku": sku_a, "from_warehouse": transfer_whs[0], "to_warehouse": transfer_whs[1],
                                  "quantity": 1}),
              ("stock.adjust", {"warehouse": adjust_wh, "sku": sku_b, "delta": 1})]
    valid = [(n, p) for n, p in events if inventory.validate(n, p) is None]
    s = Stream()
    u = usher()
    for name, payload in valid:
        rec = s.add(inventory.affinity_key(name, payload).encode(), envelope("k", name, payload), 1)
        admitted = u.admit(rec, rec.timestamp)
        assert not isinstance(admitted, tuple), admitted
        assert admitted.key == inventory.affinity_key(name, payload)
        assert rec.partition == partition_for(admitted.key.encode(), PARTITIONS)
    for (n1, p1) in valid:
        for (n2, p2) in valid:
            if set(inventory.entity_keys(n1, p1)) & set(inventory.entity_keys(n2, p2)):
                k1, k2 = inventory.affinity_key(n1, p1), inventory.affinity_key(n2, p2)
                assert k1 == k2
                assert partition_for(k1.encode(), PARTITIONS) == partition_for(k2.encode(), PARTITIONS)


# --------------------------------------------------------------------------- the Warden


def _version(offset: int, recorded_at: int, fingerprint: str = "f") -> WardenEntry:
    return WardenEntry(0, offset, recorded_at, fingerprint, b"{}")


@pytest.mark.parametrize(("version", "offset", "stream_time", "fingerprint", "verdict"), [
    (None, 5, 1_000, "f", Verdict.FRESH),  # WardenAdmitsNewKey
    (_version(5, 900), 5, 1_000, "f", Verdict.REPLAY),  # WardenRecognisesReplay: its own version
    (_version(5, 900), 5, 900 + TTL * 9, "other", Verdict.REPLAY),  # ... whatever the time or the request
    (_version(2, 1_000), 5, 1_000 + TTL, "other", Verdict.FRESH),  # WardenAdmitsExpiredKey: T - recorded_at >= ttl
    (_version(2, 1_000), 5, 1_000 + TTL - 1, "f", Verdict.DUPLICATE),  # WardenRecognisesDuplicate
    (_version(2, 1_000), 5, 1_000 + TTL - 1, "other", Verdict.REUSED),  # WardenRejectsReusedKey
])
def test_verdict_table(version, offset, stream_time, fingerprint, verdict) -> None:
    """WardenAdmitsNewKey, WardenRecognisesReplay, WardenAdmitsExpiredKey,
    WardenRecognisesDuplicate, WardenRejectsReusedKey: the verdict is a pure function of
    the current version, the event's offset, stream time and fingerprint, with
    mutually exclusive cases in the spec's order."""
    assert Warden(MemoryStore(), TTL).judge(version, offset, stream_time, fingerprint) is verdict


def test_lookup_returns_the_version_a_verdict_needs() -> None:
    """VerdictCarriesWhatItNeeds: a duplicate or a replay is judged against a version
    that carries the original position and the complete stored output; the current
    version is the newest at or before the event's offset."""
    s = Stream()
    first = adjust(s, "k1", 5, 1_000)
    dup = adjust(s, "k1", 5, 1_001)
    store = MemoryStore()
    out1, _ = run(usher(store), s.records, 10)
    warden = Warden(store, TTL)
    assert warden.lookup(first.partition, "k1", first.offset - 1) is None
    for offset in (first.offset, dup.offset):
        version = warden.lookup(first.partition, "k1", offset)
        assert (version.partition, version.offset) == (first.partition, first.offset)
        assert version.body == out1.body


def test_stream_time_never_goes_back() -> None:
    """WardenObservesStreamTime, StreamTimeIsTheGreatestBrokerTimestamp: an
    out-of-order (older) record does not pull the partition's stream time back: its
    stream time is the newest so far, it is recorded at that time, and with everything
    committed only the version expired at that stream time is collected."""
    s = Stream()
    old = adjust(s, "k1", 1, 1_000)
    newer = adjust(s, "k2", 1, 1_000 + 2 * TTL + 1)
    behind = adjust(s, "k3", 1, 5)  # a timestamp far behind its predecessor
    store = MemoryStore()
    u = usher(store)
    p = old.partition
    outs = {unseal(o.value)[2]["input"]["offset"]: unseal(o.value)[2] for o in u.process(s.records, lambda part: 0)}
    assert outs[behind.offset]["stream_time"] == outs[newer.offset]["stream_time"] == newer.timestamp
    assert u.warden.lookup(p, "k3", behind.offset).recorded_at == newer.timestamp
    u.warden.collect(p, lambda part: len(s.records))  # everything committed
    remaining = sorted(key for (part, key) in store.data if part == p and key.startswith(WARDEN_PREFIX))
    assert remaining == [version_key("k2", newer.offset), version_key("k3", behind.offset)]


# --------------------------------------------------------------------------- invariants after a workload


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), batch_size=st.sampled_from([1, 5, 64]), ttl_jumps=st.booleans())
def test_ledger_and_warden_invariants_after_a_workload(seed, batch_size, ttl_jumps) -> None:
    """After a random workload (repeats, reused keys, expiries, drains to zero):

    - ProcessedRecordsHaveOutputs, OneVerdictPerEvent: one output per record.
    - OutputFollowsItsEntityWrites: every entity change of a fresh output is in the
      Ledger with a stamp at or above the output's offset.
    - EntityRecordVersionPositive, EntityRecordStampIsAnOffset, OneEntityRecordPerKey:
      every entity record has version >= 1 and a stamp that is an input offset of its
      partition, one record per key.
    - EntryStoresItsOwnOutput, EntryLivesInItsEventPartition, EntryHoldsAFreshOutput,
      EntriesComeOnlyFromFreshEvaluations: every Warden version (none collected here)
      is stored in its event's partition, holds that event's own output, which is no
      duplicate, and comes from a fresh evaluation (not a pre-evaluation rejection, a
      duplicate or a reused key); and every fresh evaluation has its version.
    """
    stream = workload(seed, 200, ttl_jumps=ttl_jumps)
    store = MemoryStore()
    outs = run(usher(store), stream.records, batch_size)
    assert len(outs) == len(stream.records)
    bodies = {(b["input"]["partition"], b["input"]["offset"]): b for b in map(body_of, outs)}
    assert len(bodies) == len(stream.records)
    ends = {}
    for r in stream.records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    ledger = Ledger(store)
    seen_keys = set()
    for p in range(PARTITIONS):
        for key, rec in ledger.entities(p):
            assert key not in seen_keys
            seen_keys.add(key)
            assert rec.version >= 1
            assert 0 <= rec.stamp < ends[p]
    for (p, o), b in bodies.items():
        if b["duplicate_of"] is None:
            for change in b["outcome"]["entities"]:
                rec = ledger.get(p, change["key"])
                assert rec is not None and rec.stamp >= o, (p, o, change)
    versions = {}
    for (p, key), raw in store.data.items():
        if key.startswith(WARDEN_PREFIX):
            entry = WardenEntry.decode(raw)
            assert entry.partition == p
            body = orjson.loads(entry.body)
            assert body["input"] == {"partition": entry.partition, "offset": entry.offset}
            assert body["duplicate_of"] is None
            assert bodies[(entry.partition, entry.offset)] == body
            versions[(entry.partition, entry.offset)] = body
    pre_evaluation = {"malformed_record", "unknown_event", "invalid_payload", "invalid_identifier", "zero_delta",
                      "quantity_out_of_range", "same_warehouse", "affinity_key_mismatch", "misrouted",
                      "idempotency_key_reused"}
    fresh = {pos for pos, b in bodies.items()
             if b["duplicate_of"] is None and b["outcome"]["reason"] not in pre_evaluation}
    assert set(versions) == fresh


def test_rejection_before_the_warden_writes_no_version() -> None:
    """EntriesComeOnlyFromFreshEvaluations: a record rejected before evaluation that
    carries a live key (an affinity key mismatch, on the key's own partition) neither
    writes a version nor disturbs the key's: a later repeat is still the original's
    duplicate."""
    s = Stream()
    first = adjust(s, "k1", 5, 1_000)
    s.add(b"s1", envelope("k1", "stock.adjust", {"warehouse": "w1", "sku": "s2", "delta": 5}), 1_001)
    adjust(s, "k1", 5, 1_002)
    store = MemoryStore()
    _, o2, o3 = (body_of(o) for o in run(usher(store), s.records, 10))
    assert s.records[1].partition == first.partition
    assert o2["outcome"]["reason"] == "affinity_key_mismatch"
    assert o3["duplicate_of"] == {"partition": first.partition, "offset": first.offset}
    assert sorted(key for (_, key) in store.data if key.startswith(WARDEN_PREFIX)) == [
        version_key("k1", first.offset)]
