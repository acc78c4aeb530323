"""Live versioning (specs/versioning.allium): activation records switch a partition's
domain version at their offset, for every instance alike, on first processing and on
replay; an instance that does not know the version blocks the partition."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import app.domains  # noqa: F401  registers the built-in domains
from app.domains.inventory_v2 import CAPACITY
from app.records import InputRecord
from app.registry import DomainRegistry, registry, version_number
from app.versions import ACTIVATE_EVENT, ACTIVATION_KEY, Blocked, DomainVersions, activation_record, history_key
from tables.store import MemoryStore
from tests.unit.pipeline_kit import Stream, envelope, run, usher

VERSIONS = registry.versions("inventory")


def body(out) -> dict:
    return orjson.loads(out.body)


def activate(s: Stream, version: str, partition: int, ts: int) -> InputRecord:
    key, value = activation_record(version, partition)
    return s.add(key, value, ts, partition=partition)


def receipts(s: Stream, first: int, n: int, delta: int, ts: int, sku: str = "s1") -> None:
    for i in range(first, first + n):
        s.event(f"r{i}", "stock.adjust", {"warehouse": "w1", "sku": sku, "delta": delta}, ts + i)


def stream_with_activation() -> tuple[Stream, int, int]:
    """Receipts on s1's partition, the activation of inventory/2 on it in the middle,
    more receipts after: the stock passes CAPACITY on both sides of the switch."""
    s = Stream()
    receipts(s, 0, 8, 100, 1_000)
    p = s.records[0].partition
    act = activate(s, "inventory/2", p, 2_000)
    receipts(s, 8, 8, 100, 3_000)
    return s, p, act.offset


# --- the registry and DomainVersions ----------------------------------------------

def test_a_domain_registers_several_versions_and_the_base_is_the_lowest() -> None:
    """RegisterDomainVersion, VersionNamesItsNumber: versions are <name>/<n>; get is the
    base, newest the highest; a malformed version or a different object under a taken
    one is refused."""
    assert sorted(VERSIONS) == [1, 2]
    assert registry.get("inventory").version == "inventory/1"
    assert registry.newest("inventory").version == "inventory/2"
    reg = DomainRegistry()
    bad = type(VERSIONS[1])()
    bad.version = "inventory-2"
    with pytest.raises(ValueError, match="expected inventory/<n>"):
        reg.register(bad)
    reg.register(VERSIONS[2])
    with pytest.raises(ValueError, match="already registered as 'inventory/2'"):
        reg.register(type(VERSIONS[2])())
    assert [version_number("inventory", v) for v in ("inventory/1", "inventory/12", "inventory/0",
                                                     "inventory/01", "inventory/+2", "accounts/2", 2)] == [
        1, 12, None, None, None, None, None]


def test_a_version_limit_holds_a_worker_to_older_logic_but_keeps_the_base() -> None:
    """VersionLimit, BaseIsKnown: DOCKET_DOMAIN_VERSION_LIMIT removes later versions from
    what a worker knows; the base stays the code's lowest; a limit below it is refused."""
    held = DomainVersions(VERSIONS, limit=1)
    assert (held.base, sorted(held.known)) == (1, [1])
    assert sorted(DomainVersions(VERSIONS).known) == [1, 2]
    with pytest.raises(ValueError, match="below the base version 1 of inventory"):
        DomainVersions(VERSIONS, limit=0)


def test_the_version_at_an_offset_is_the_last_activation_below_it() -> None:
    """VersionAtOffset: before any activation the base; an activation at offset o
    judges o+1 on, not o itself."""
    v = DomainVersions(VERSIONS)
    history = [[10, 2], [20, 1]]
    assert [v.at(history, x).version for x in (0, 10, 11, 20, 21, 99)] == [
        "inventory/1", "inventory/1", "inventory/2", "inventory/2", "inventory/1", "inventory/1"]
    assert v.at(None, 5).version == "inventory/1"


# --- the Usher --------------------------------------------------------------------

def test_the_activation_deciding_an_offset_is_named_with_its_offset() -> None:
    """VersionAtOffset, InstanceAnnouncesJudging: activation_at gives the offset of the
    activation that decides an offset's version (-1 before any), which a "judging"
    status record carries."""
    v = DomainVersions(VERSIONS)
    history = [[5, 2], [9, 1]]
    assert [v.activation_at(history, x) for x in (0, 5, 6, 9, 10)] == [
        (-1, 1), (-1, 1), (5, 2), (5, 2), (9, 1)]
    assert v.activation_at(None, 3) == (-1, 1)


def test_the_blocked_warning_names_the_limit_only_when_the_code_has_the_version() -> None:
    """InstanceBlocksOnUnknownVersion, VersionLimit: the remedy for a version the code
    registers but DOCKET_DOMAIN_VERSION_LIMIT holds back is to raise the limit; for one
    the code lacks, to deploy code that registers it."""
    held = DomainVersions(VERSIONS, limit=1)
    assert "DOCKET_DOMAIN_VERSION_LIMIT=1" in held.remedy("inventory/2")
    assert held.remedy("inventory/3").startswith("upgrade this worker to code that registers inventory/3")
    assert "LIMIT" not in DomainVersions(VERSIONS).remedy("inventory/3")


def test_a_worker_announces_judging_once_per_partition_and_at_each_activation() -> None:
    """InstanceAnnouncesJudging, InstanceAnnouncesAppliedActivation: after its first
    unblocked batch of a partition a worker names the version judging it (so a "blocked"
    status of an earlier run is replaced), after an activation the activation, and
    nothing for a blocked partition; later batches announce nothing new."""
    s, p, at = stream_with_activation()
    store = MemoryStore()
    u = usher(store, domain=VERSIONS)
    before = [r for r in s.records if r.offset < 3]
    u.process(before, lambda _p: 0)
    assert u.statuses(p, 3) == [(p, -1, "inventory/1")]
    u.process([r for r in s.records if 3 <= r.offset < 5], lambda _p: 0)
    assert u.statuses(p, 5) == []
    u.process([r for r in s.records if 5 <= r.offset <= at + 1], lambda _p: 0)
    assert u.statuses(p, at + 2) == [(p, at, "inventory/2")]
    restarted = usher(store, domain=VERSIONS)  # a new run on the same tables
    restarted.process([r for r in s.records if r.offset > at + 1], lambda _p: 0)
    assert restarted.statuses(p, s.records[-1].offset + 1) == [(p, at, "inventory/2")]
    downgraded = usher(store, domain=DomainVersions(VERSIONS, limit=1))
    downgraded.process([r for r in s.records if r.offset > at], lambda _p: 0)
    assert downgraded.blocked and downgraded.statuses(p, at + 1) == []


def test_an_activation_switches_its_partition_from_the_next_record() -> None:
    """ActivationSwitchesPartition, OutputNamesVersion: the activation record's output is
    applied and names the new version; records before it are judged by inventory/1 (no
    capacity), after it by inventory/2 (receipts over CAPACITY rejected over_capacity)."""
    s, p, at = stream_with_activation()
    outs = run(usher(domain=VERSIONS), s.records, 64)
    by_offset = {o.offset: body(o) for o in outs if o.partition == p}
    assert len(outs) == len(s.records)
    act = by_offset[at]
    assert (act["event_name"], act["outcome"]["status"], act["domain_version"]) == (
        ACTIVATE_EVENT, "applied", "inventory/2")
    before = [by_offset[o] for o in range(at)]
    after = [by_offset[o] for o in range(at + 1, at + 9)]
    assert {b["domain_version"] for b in before} == {"inventory/1"}
    assert all(b["outcome"]["status"] == "applied" for b in before)  # 800 units: v1 has no capacity
    assert {b["domain_version"] for b in after} == {"inventory/2"}
    statuses = [b["outcome"].get("reason") for b in after]
    assert statuses == ["over_capacity"] * 8, statuses  # the stock already holds 800 > CAPACITY - 100
    assert 800 + 100 > CAPACITY


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(min_value=1, max_value=20))
def test_batch_boundaries_never_move_the_switch(batch: int) -> None:
    """ActivationSwitchesPartition, VersionIsAFunctionOfTheInput: the same outputs
    whatever the batch size (an activation cuts a batch into runs; each run is judged
    by one version)."""
    s, _p, _at = stream_with_activation()
    reference = [o.body for o in run(usher(domain=VERSIONS), s.records, 1000)]
    assert [o.body for o in run(usher(domain=VERSIONS), s.records, batch)] == reference


def test_a_replay_across_the_activation_gives_identical_outputs() -> None:
    """ReplayAcrossActivation: a worker restarting on the same tables from a committed
    offset before the activation (its history already holds it) re-emits every output
    byte for byte: records before the activation are still judged by inventory/1."""
    s, p, at = stream_with_activation()
    store = MemoryStore()
    first = {(o.partition, o.offset): o.body for o in run(usher(store, domain=VERSIONS), s.records, 5)}
    restarted = usher(store, domain=VERSIONS)  # fresh caches, same tables
    again = run(restarted, [r for r in s.records if r.partition == p and r.offset >= at - 3], 4)
    assert again and all(first[(o.partition, o.offset)] == o.body for o in again)
    history = restarted.registrar.get(p, history_key(p)).state["activations"]
    assert history == [[at, 2]]  # recorded once, not again on the replay


def test_an_instance_without_the_version_blocks_the_partition_and_resumes_identically() -> None:
    """InstanceBlocksOnUnknownVersion, BlockedInstanceResumesAfterUpgrade,
    BlockedInstanceEmitsNoCopyPastActivation, EveryInstanceJudgesAPositionWithOneVersion,
    InstancesRunDifferentDomainCode: an instance held to inventory/1 outputs the records
    before the activation, nothing from it on (later batches of that partition too),
    while other partitions go on, and what it outputs is byte for byte what an upgraded
    instance outputs; restarted with inventory/2 on the same tables from before the
    activation, it outputs exactly what an upgraded instance did."""
    s, p, at = stream_with_activation()
    other = next(sku for sku in ("s2", "s3", "s4", "s5", "s6") if
                 Stream().event("x", "stock.adjust", {"warehouse": "w1", "sku": sku, "delta": 1}, 0).partition != p)
    receipts(s, 100, 3, 5, 4_000, sku=other)
    upgraded = {(o.partition, o.offset): o.body for o in run(usher(domain=VERSIONS), s.records, 1000)}

    store = MemoryStore()
    old = usher(store, domain=DomainVersions(VERSIONS, limit=1))
    outs = run(old, s.records, 6)
    assert old.blocked == {p: Blocked(p, at, "inventory/2")}
    mine = sorted(o.offset for o in outs if o.partition == p)
    assert mine == list(range(at))  # nothing from the activation on
    assert all(upgraded[(o.partition, o.offset)] == o.body for o in outs)  # nothing wrong either
    assert sum(1 for o in outs if o.partition != p) == 3  # the other partition went on
    assert run(old, [r for r in s.records if r.partition == p], 50) == []  # still blocked

    new = usher(store, domain=VERSIONS)  # the upgraded worker, on the same tables
    resumed = run(new, [r for r in s.records if r.partition == p and r.offset >= at - 2], 3)
    assert [o.offset for o in resumed] == list(range(at - 2, at + 9))
    assert all(upgraded[(p, o.offset)] == o.body for o in resumed)


@pytest.mark.parametrize("payload, reason", [
    ({"version": "inventory/x"}, "invalid_activation"),
    ({"version": "inventory/9999999999"}, "invalid_activation"),  # past the bound the detail names
    ({"version": "accounts/2"}, "invalid_activation"),
    ({"version": 2}, "invalid_activation"),
    ({"version": "inventory/2", "at": 5}, "invalid_activation"),
    ("inventory/2", "invalid_activation"),
])
def test_a_malformed_activation_is_rejected_alike_and_switches_nothing(payload, reason) -> None:
    """ActivationMustNameAVersion, EveryInstanceJudgesAPositionWithOneVersion: an
    activation record naming no version of this domain is rejected invalid_activation
    by every instance, whatever versions it knows (held to inventory/1 or not), and the
    partition keeps its version."""
    s = Stream()
    rec = s.add(ACTIVATION_KEY, envelope("act", ACTIVATE_EVENT, payload), 1_000, partition=1)
    s.event("n1", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 1}, 1_001)
    outs = [run(usher(domain=DomainVersions(VERSIONS, limit=limit)), s.records, 10) for limit in (1, None)]
    assert [o.body for o in outs[0]] == [o.body for o in outs[1]]
    first = body(outs[0][0])
    assert (first["input"]["offset"], first["outcome"]["reason"]) == (rec.offset, reason)
    # the detail says the bound: "n >= 1" was met by the 23-digit n it refused (the ninth trial)
    assert first["outcome"]["detail"] == ("version must be inventory/<n>, n from 1 to 999999999 without sign or "
                                          "leading zero (this pipeline runs inventory)") or payload in (
        "inventory/2", {"version": 2}, {"version": "inventory/2", "at": 5})
    assert {body(o)["domain_version"] for o in outs[0]} == {"inventory/1"}


def test_the_activation_key_is_reserved() -> None:
    """ActivationKeyReserved: a record keyed docket:activate that is not an activation
    is rejected reserved_key; a malformed one malformed_record; neither switches."""
    s = Stream()
    s.add(ACTIVATION_KEY, envelope("x", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 1}), 1, partition=0)
    s.add(ACTIVATION_KEY, b"not json", 2, partition=0)
    outs = run(usher(domain=VERSIONS), s.records, 10)
    assert [body(o)["outcome"]["reason"] for o in outs] == ["reserved_key", "malformed_record"]


def test_an_unknown_version_of_a_blocked_instance_moves_no_stream_time() -> None:
    """InstanceBlocksOnUnknownVersion: the blocked activation moves nothing, not even
    the partition's stream time (the upgraded process must see the same clock)."""
    s = Stream()
    act = activate(s, "inventory/2", 0, 50_000)
    old = usher(domain=DomainVersions(VERSIONS, limit=1))
    assert run(old, s.records, 10) == []
    assert old.warden._clock.get(act.partition) is None


def test_the_history_stays_in_offset_order_without_repeats() -> None:
    """HistoryInOffsetOrder: two activations on one partition (inventory/2, then back to
    inventory/1) are recorded in offset order; replaying both records adds nothing; each
    later record is judged by the version of its offset."""
    s = Stream()
    p = 2
    first = activate(s, "inventory/2", p, 1_000)
    second = activate(s, "inventory/1", p, 2_000)
    store = MemoryStore()
    u = usher(store, domain=VERSIONS)
    run(u, s.records, 1)
    run(usher(store, domain=VERSIONS), s.records, 2)  # a replay of both
    history = u.registrar.ledger.get(p, history_key(p)).state["activations"]
    assert history == [[first.offset, 2], [second.offset, 1]]
    v = DomainVersions(VERSIONS)
    assert [v.at(history, x).version for x in (first.offset, second.offset, second.offset + 1)] == [
        "inventory/1", "inventory/2", "inventory/1"]


def test_a_downgraded_worker_blocks_where_its_tables_name_a_version_it_lacks() -> None:
    """InstanceBlocksOnUnknownVersion, DowngradedInstanceBlocks: a worker whose restored
    tables say inventory/2 judges
    a partition from some offset on, but whose code (here: its limit) lacks inventory/2,
    blocks that partition at the first record it cannot judge (never raises, never
    judges with another version); records before the activation still get outputs."""
    s, p, at = stream_with_activation()
    store = MemoryStore()
    run(usher(store, domain=VERSIONS), s.records, 100)
    downgraded = usher(store, domain=DomainVersions(VERSIONS, limit=1))
    outs = run(downgraded, [r for r in s.records if r.partition == p and r.offset > at], 3)
    assert outs == [] and downgraded.blocked == {p: Blocked(p, at + 1, "inventory/2", "history")}
    again = usher(store, domain=DomainVersions(VERSIONS, limit=1))
    before = run(again, [r for r in s.records if r.partition == p and r.offset < at], 3)
    assert [o.offset for o in before] == list(range(at)) and again.blocked == {}


# --- inventory/2 ----------------------------------------------------------------------

def _v2(event_name: str, payload: dict, quantities: dict[str, int]):
    return VERSIONS[2].evaluate(event_name, payload, {k: {"quantity": q} for k, q in quantities.items()})


def test_inventory_v2_refuses_receipts_over_capacity_but_never_a_draw_down() -> None:
    """InventoryV2CapacityLimit: a receipt that would leave a stock above CAPACITY is
    rejected over_capacity (an adjustment, or the receiving side of a transfer); up to
    CAPACITY is applied; drawing down a stock above CAPACITY (received under
    inventory/1) is never refused for capacity, nor is a transfer out of it."""
    w1, w2 = "stock:w1:s1", "stock:w2:s1"
    adjust = {"warehouse": "w1", "sku": "s1"}
    assert _v2("stock.adjust", {**adjust, "delta": 10}, {w1: CAPACITY - 10}).changes == {w1: {"quantity": CAPACITY}}
    over = _v2("stock.adjust", {**adjust, "delta": 11}, {w1: CAPACITY - 10})
    assert (over.status, over.reason) == ("rejected", "over_capacity")
    assert _v2("stock.adjust", {**adjust, "delta": -1}, {w1: CAPACITY + 300}).changes == {w1: {"quantity": CAPACITY + 299}}
    transfer = {"sku": "s1", "from_warehouse": "w1", "to_warehouse": "w2", "quantity": 50}
    out_of_full = _v2("stock.transfer", transfer, {w1: CAPACITY + 300, w2: 0})
    assert out_of_full.changes == {w1: {"quantity": CAPACITY + 250}, w2: {"quantity": 50}}
    into_full = _v2("stock.transfer", transfer, {w1: 100, w2: CAPACITY - 49})
    assert (into_full.status, into_full.reason) == ("rejected", "over_capacity")
    v1 = VERSIONS[1].evaluate("stock.transfer", transfer, {w1: {"quantity": 100}, w2: {"quantity": CAPACITY - 49}})
    assert v1.status == "applied"  # the rule is inventory/2's alone


class HeldStore(MemoryStore):
    """A store that holds a batch's writes apart until ``flush`` (as tables/faust_store.py
    does): reads see them, ``scan_stored`` does not."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[tuple[int, bytes], bytes | None] = {}

    def get(self, partition, key):
        if (partition, key) in self.pending:
            return self.pending[(partition, key)]
        return super().get(partition, key)

    def get_many(self, partition, keys):
        return [self.get(partition, k) for k in keys]

    def put(self, partition, key, value):
        self.pending[(partition, key)] = value

    def delete(self, partition, key):
        self.pending[(partition, key)] = None

    def scan(self, partition, prefix):
        merged = {k: v for (p, k), v in self.data.items() if p == partition and k.startswith(prefix)}
        merged.update({k: v for (p, k), v in self.pending.items() if p == partition and k.startswith(prefix)})
        for k in sorted(merged):
            if merged[k] is not None:
                yield k, merged[k]

    def scan_stored(self, partition, prefix):
        return super().scan(partition, prefix)

    def flush(self) -> None:
        for (p, k), v in self.pending.items():
            MemoryStore.delete(self, p, k) if v is None else MemoryStore.put(self, p, k, v)
        self.pending.clear()


def test_a_repeat_after_an_activation_in_the_same_batch_is_a_duplicate() -> None:
    """ActivationSwitchesPartition, UsherTakesBatch: an event, the
    activation, and the same request again, in ONE batch over a store that holds the
    batch's writes apart until it flushes: the repeat is a duplicate of the first (the
    Warden still finds the version recorded before the activation), exactly as when
    each record is its own batch. (A chaos run found the repeat applied twice by a
    restarted instance catching up in big batches.)"""
    s = Stream()
    first = s.event("same", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 7}, 1_000)
    activate(s, "inventory/2", first.partition, 1_001)
    s.event("same", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 7}, 1_002)
    store = HeldStore()
    together = usher(store, domain=VERSIONS).process(s.records, lambda p: 0)
    store.flush()
    repeat = body(together[2])
    assert repeat["duplicate_of"] == {"partition": first.partition, "offset": first.offset}, repeat
    apart = run(usher(domain=VERSIONS), s.records, 1)
    assert [o.body for o in together] == [o.body for o in apart]


def test_a_duplicate_across_activations_names_the_version_that_judged_the_original() -> None:
    """ArbiterAnswersDuplicate, OutputNamesVersion: a receipt rejected over_capacity by
    inventory/2, then inventory/1 activated, then the same request again: the repeat
    answers the original outcome and names inventory/2, which judged it (a user saw
    "rejected by inventory/1: over_capacity", a rule inventory/1 does not have)."""
    s = Stream()
    p = s.event("fill", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": CAPACITY}, 1_000).partition
    activate(s, "inventory/2", p, 1_001)
    over = s.event("over", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 1}, 1_002)
    activate(s, "inventory/1", p, 1_003)
    s.event("over", "stock.adjust", {"warehouse": "w1", "sku": "s1", "delta": 1}, 1_004)
    outs = {o.offset: body(o) for o in run(usher(domain=VERSIONS), s.records, 2)}
    original, repeat = outs[over.offset], outs[over.offset + 2]
    assert original["outcome"]["reason"] == "over_capacity" and original["domain_version"] == "inventory/2"
    assert repeat["duplicate_of"] == {"partition": p, "offset": over.offset}
    assert (repeat["outcome"], repeat["domain_version"]) == (original["outcome"], "inventory/2")


# --- docket domain activate --------------------------------------------------------

def test_activate_refuses_a_version_this_code_does_not_register_unless_forced(monkeypatch) -> None:
    """OperatorActivatesVersion: `docket domain activate` refuses, before touching
    Kafka, a version its code does not register (an activation cannot be taken back)
    and a version of another domain (naming DOCKET_DOMAIN); with --force it goes on to
    Kafka (here none answers, which it reports)."""
    from click.testing import CliRunner

    from app.domain_cli import domain

    monkeypatch.setenv("DOCKET_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    out = CliRunner().invoke(domain, ["activate", "inventory/3"])
    assert out.exit_code == 1 and "does not register inventory/3" in out.output and "--force" in out.output
    out = CliRunner().invoke(domain, ["activate", "accounts/2"])
    assert out.exit_code == 2 and "DOCKET_DOMAIN=inventory" in out.output
    listed = CliRunner().invoke(domain, ["--help"]).output
    assert all(line in listed for line in ("Switch every partition to VERSION.", "Show the version per partition.",
                                           "List the versions this code registers.")), listed
    out = CliRunner().invoke(domain, ["activate", "inventory/3", "--force", "--timeout", "2"])
    assert out.exit_code == 1 and "warning: --force" in out.output and "127.0.0.1:1" in out.output, out.output


def test_status_records_name_the_domain_their_topics_serve(monkeypatch) -> None:
    """TopicsServeOneDomain, PartitionStatus: status records are read as instances write
    them (anything else is left out); their versions name the topics' domain, and a
    DOCKET_DOMAIN other than that is a conflict whose message names both and the ways out."""
    from app.settings import load
    from app.status import domain_conflict, domains_of, parse_status
    from app.versions import status_record

    judging = parse_status(*status_record("a", 0, "judging", -1, "inventory/1", ["inventory/1", "inventory/2"]))
    blocked = parse_status(*status_record("b", 1, "blocked", 9, "inventory/2", ["inventory/1"], "raise it"))
    assert judging["state"] == "judging" and blocked["remedy"] == "raise it"
    assert [parse_status(k, v) for k, v in ((None, b"{}"), (b"a:0", None), (b"a:0", b"not json"),
                                            (b"a:0", b'{"state": "asleep"}'))] == [None] * 4
    assert domains_of([judging, blocked]) == {"inventory"}
    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    assert domain_conflict(load(), [judging, blocked]) is None
    assert domain_conflict(load(), []) is None
    monkeypatch.setenv("DOCKET_DOMAIN", "accounts")
    problem = domain_conflict(load(), [judging])
    assert "belong to the inventory domain" in problem and "set DOCKET_DOMAIN=inventory" in problem


def test_a_status_record_not_as_an_instance_writes_it_says_what_is_wrong() -> None:
    """PartitionStatus: the API's client and the CLI's readers take a status record
    through one check (app/status.py check_status), which says why it refuses one;
    parse_status is that check with the refusal as None."""
    from app.records import UnreadableRecord
    from app.status import check_status, parse_status
    from app.versions import status_record

    key, value = status_record("a", 4, "judging", 7, "inventory/1", ["inventory/1"])
    assert check_status(value, 4) == parse_status(key, value, 4) and check_status(value)["offset"] == 7
    refused = {b"\xff": "not UTF-8", b"[1]": "not a JSON object but list",
               b'{"state": "asleep"}': "not {instance, partition, state: blocked or judging, offset, version}"}
    for raw, reason in refused.items():
        with pytest.raises(UnreadableRecord, match=re.escape(reason)):
            check_status(raw)
        assert parse_status(b"a:0", raw) is None
    with pytest.raises(UnreadableRecord, match="names input partition 4 but lies on status partition 5"):
        check_status(value, 5)


def test_a_stray_instances_record_of_another_domain_is_no_conflict(monkeypatch) -> None:
    """StatusOfOtherInstancesIgnored, TopicsServeOneDomain: one record of an instance
    outside DOCKET_INSTANCES naming accounts/1, beside a's and b's inventory records,
    made the inventory API exit 2 and the instances refuse to start (the tenth
    fresh-user trial). Only the deployment's records name the topics' domain."""
    from app.settings import load
    from app.status import domain_conflict, of_instances, parse_status
    from app.versions import status_record

    a = parse_status(*status_record("a", 0, "judging", -1, "inventory/2", ["inventory/1", "inventory/2"]))
    b = parse_status(*status_record("b", 0, "judging", -1, "inventory/2", ["inventory/1", "inventory/2"]))
    junk = parse_status(*status_record("junk", 5, "judging", 5, "accounts/1", ["accounts/1"]))
    c = parse_status(*status_record("c", 1, "blocked", 3, "inventory/2", ["inventory/1"]))
    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    assert of_instances([a, junk, c, b], ("a", "b")) == ([a, b], ["c", "junk"])
    assert domain_conflict(load(), [a, junk, b]) is None
    monkeypatch.setenv("DOCKET_INSTANCES", "a,b,junk")  # now junk is one of them, and its record counts
    assert "belong to the accounts domain" in domain_conflict(load(), [a, junk, b])


def test_domain_status_names_the_partitions_without_a_status(monkeypatch) -> None:
    """TopicsServeOneDomain (`docket domain status`): every status record, then the
    partitions no instance has processed a record of, which have none (they were left
    out, where the README promised a row per partition; a fresh-clone user check)."""
    from click.testing import CliRunner

    from app import domain_cli
    from app.status import parse_status
    from app.versions import status_record

    monkeypatch.setenv("DOCKET_PARTITIONS", "4")
    monkeypatch.setenv("DOCKET_DOMAIN", "inventory")
    records = [parse_status(*status_record(i, p, "judging", -1, "inventory/1", ["inventory/1"]))
               for p in (0, 2) for i in ("a", "b")]
    monkeypatch.setattr(domain_cli, "_statuses", lambda settings, timeout_s: records)
    out = CliRunner().invoke(domain_cli.domain, ["status"])
    assert out.exit_code == 0, out.output
    assert out.output.count(" judging ") == 4
    assert "no status record yet for partition(s) 1, 3: no instance has processed a record of them" in out.output
    records[:] = [parse_status(*status_record("a", p, "judging", -1, "inventory/1", ["inventory/1"]))
                  for p in range(4)]
    assert "no status record yet" not in CliRunner().invoke(domain_cli.domain, ["status"]).output
