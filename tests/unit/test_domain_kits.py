"""Domain kits (app/domains/kit.py, specs/domain.allium surface DomainKit): the seeded
workloads, the invariant checks over published results, the OpenAPI and banner
examples, and fault injection, for inventory and accounts, without a broker. The
oracle (chaos/replay.py: the instance's own Usher over memory) stands in for the
published results; tests/integration/test_chaos.py runs the same checks on a real
stack."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter

import orjson
import pytest
from click.testing import CliRunner

import app.domains  # noqa: F401  registers the built-in domains
from agents.faults import FaultInjector, FaultSpec, int_field
from agents.usher import Usher
from app import openapi
from app.domains import accounts_kit, inventory_kit
from app.domains.accounts import CLOSE, DEPOSIT, OPEN, TRANSFER, WITHDRAW, account_key
from app.records import InputRecord, partition_for, unseal
from app.registry import DomainRegistry, NoKit, registry
from chaos import workload
from chaos.replay import replay
from chaos.verify import domain_checks, invariants
from tables.ledger import Ledger
from tables.registrar import Registrar
from tables.store import MemoryStore
from tables.warden import Warden

P = 4
TTL = 2_000
INVENTORY = registry.kit("inventory")
ACCOUNTS = registry.kit("accounts")


def as_inputs(records: list[workload.Record], partitions: int = P) -> list[InputRecord]:
    """The records as a broker would store them: partition by the record's own choice,
    murmur2 of the key, or round robin; offsets in order per partition."""
    offsets: Counter = Counter()
    out = []
    for i, r in enumerate(records):
        p = r.partition if r.partition is not None else (
            partition_for(r.key, partitions) if r.key is not None else i % partitions)
        out.append(InputRecord(p, offsets[p], r.timestamp, r.key, r.value))
        offsets[p] += 1
    return out


def published(kit, seed: int, events: int, **options) -> tuple[list[InputRecord], list[dict], list[workload.Record]]:
    """(inputs, the oracle's results in input order, records) of ``kit``'s workload."""
    records = list(workload.records(kit, seed, events, ttl_ms=TTL, partitions=P, **options))
    inputs = as_inputs(records)
    oracle = replay(inputs, kit.domain, P, TTL)
    return inputs, [orjson.loads(oracle.bodies[(r.partition, r.offset)]) for r in inputs], records


def digest_of(records, *, expect_then: dict[bytes, str] | None = None) -> str:
    """sha256 over each record's repr; ``expect_then`` maps a value substring to the
    expected reason such records had when the digest was taken (a reason changed on
    purpose since, not the bytes)."""
    h = hashlib.sha256()
    for r in records:
        for marker, then in (expect_then or {}).items():
            if r.value is not None and marker in r.value:
                r = r._replace(expect=then)
        h.update(repr(tuple(r)).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- workloads


def test_inventory_workload_is_byte_identical_to_before_the_kits() -> None:
    """Moving inventory's generator into its kit kept every record of a seed: this digest
    was computed with chaos/workload.py of commit 52b7536 (before the kits), poison,
    expired repeats and misrouted records included."""
    records = list(workload.inventory(5, 4000, poison_share=0.12, partitions=4, ttl_ms=500))
    huge = str(10**30).encode()  # huge_delta: invalid_payload then, malformed_record since integers
    # beyond 64 bits are refused where the value is parsed (DuplicateMemberIsMalformed)
    assert {r.expect for r in records if r.value is not None and huge in r.value} == {"malformed_record"}
    assert digest_of(records, expect_then={huge: "invalid_payload"}) == (
        "61d5e2e7135e19ccf7145bd7bd65c0137ec4ae053461b093da89a3f45779246e")
    assert digest_of(workload.inventory(7, 10_000)) == (
        "c764841abbd12a5bb6937f79b9ac56f8617a24d97663809fd5afbc6fc3db67d0")


def test_accounts_workload_is_a_function_of_seed_and_count() -> None:
    """AccountsEvaluationIsDeterministic needs reproducible input too: the same seed gives
    the same records byte for byte; another seed another workload; a shorter run is a
    prefix of a longer one."""
    a = list(workload.records(ACCOUNTS, 11, 3000, ttl_ms=TTL, partitions=P, poison_share=0.05))
    assert a == list(workload.records(ACCOUNTS, 11, 3000, ttl_ms=TTL, partitions=P, poison_share=0.05))
    assert a[:1000] == list(workload.records(ACCOUNTS, 11, 1000, ttl_ms=TTL, partitions=P, poison_share=0.05))
    assert a != list(workload.records(ACCOUNTS, 12, 3000, ttl_ms=TTL, partitions=P, poison_share=0.05))
    assert [r.timestamp for r in a] == [workload.BASE_TIMESTAMP_MS + i for i in range(3000)]


def test_accounts_workload_opens_funds_then_mixes_with_integers_only() -> None:
    """AccountsAffinityKeyIsBook: every record's key is its payload's book. Set-up opens
    every account (two currencies per book) and funds it at once, account by account;
    the mix then holds every event name; amounts are ints (never floats or bools)."""
    records = list(workload.records(ACCOUNTS, 3, 2000, books=3, accounts=4))
    events = [orjson.loads(r.value) for r in records]
    assert [e["event_name"] for e in events[:24]] == [OPEN, DEPOSIT] * 12
    assert all(events[i]["payload"]["account"] == events[i + 1]["payload"]["account"] for i in range(0, 24, 2))
    assert {e["payload"]["currency"] for e in events[:24:2]} == set(accounts_kit.CURRENCIES)
    assert {e["event_name"] for e in events[24:]} == {OPEN, CLOSE, DEPOSIT, WITHDRAW, TRANSFER}
    for r, e in zip(records, events):
        assert r.key == e["payload"]["book"].encode()
        assert all(type(v) in (str, int) for v in e["payload"].values()), e
    with pytest.raises(ValueError, match="2 accounts"):
        list(workload.records(ACCOUNTS, 3, 10, accounts=1))
    with pytest.raises(ValueError, match="2 warehouses"):
        list(workload.records(INVENTORY, 3, 10, warehouses=1))


def test_accounts_workload_reaches_every_outcome_through_the_oracle() -> None:
    """Through the instance's own Usher (the oracle), the accounts workload exercises
    AccountOpened, DepositApplied, WithdrawalApplied, AccountTransferApplied,
    AccountClosed, and the rejections WithdrawRejectsInsufficientFunds,
    AccountTransferRejectsInsufficientFunds, AccountTransferRejectsCurrencyMismatch,
    AccountOpenRejectsExisting, AccountCloseRejectsNonZeroBalance, DepositRejectsNotOpen,
    plus duplicates and idempotency_key_reused; its own invariants hold over the results."""
    inputs, results, _ = published(ACCOUNTS, 20_240_607, 4000)
    outcomes = Counter((r["event_name"], r["outcome"]["status"], r["outcome"]["reason"]) for r in results
                       if r["duplicate_of"] is None)
    for name in (OPEN, DEPOSIT, WITHDRAW, TRANSFER, CLOSE):
        assert outcomes[(name, "applied", None)] > 0, (name, outcomes)
    for name, reason in ((WITHDRAW, "insufficient_funds"), (TRANSFER, "insufficient_funds"),
                         (TRANSFER, "currency_mismatch"), (OPEN, "account_exists"),
                         (CLOSE, "balance_not_zero"), (DEPOSIT, "account_not_open"),
                         (DEPOSIT, "idempotency_key_reused")):
        assert outcomes[(name, "rejected", reason)] > 0, (name, reason, outcomes)
    drained = sum(1 for r in results if r["event_name"] == TRANSFER and r["outcome"]["status"] == "applied"
                  and r["duplicate_of"] is None and r["outcome"]["entities"][0]["state"]["balance"] == 0)
    assert drained > 0
    assert sum(r["duplicate_of"] is not None for r in results) > 0
    checks = domain_checks(ACCOUNTS, inputs, results)
    assert list(checks) == list(ACCOUNTS.invariants)
    assert all(c.passed for c in checks.values()), checks


def test_accounts_poison_gets_its_reasons() -> None:
    """UsherRejectsMalformedRecord, UsherRejectsUnknownEvent, UsherRejectsInvalidPayload
    with AccountsRejectsNonObjectPayload, AccountsRejectsBadField, AccountsRejectsUnknownField,
    IdentifierShape, CurrencyShape, AccountsRejectsAmountOutOfRange,
    AccountTransferRejectsSameAccount; UsherRejectsAffinityKeyMismatch and
    UsherRejectsMisroutedRecord: every poison kind of the accounts workload gets the
    reason the kit names, and changes nothing."""
    inputs, results, records = published(ACCOUNTS, 5, 3000, poison_share=0.15)
    kinds = workload.poison_kinds(ACCOUNTS)
    assert list(kinds)[-2:] == ["affinity_key_mismatch", "misrouted"] and "string_amount" in kinds
    bad = [(rec.expect, res["outcome"]) for rec, res in zip(records, results) if rec.expect]
    assert Counter(expect for expect, _ in bad).keys() == set(kinds.values())
    for expect, outcome in bad:
        assert outcome["status"] == "rejected" and outcome["reason"] == expect and not outcome["entities"]


# --------------------------------------------------------------------------- checks


def _doctor(results: list[dict], pick, change) -> list[dict]:
    """A deep copy of ``results`` whose first applied, non-duplicate result with an entity
    for which ``pick(entity)`` holds gets ``change(state)`` in that entity's state (the
    LAST such result, so the doctored state is the entity's latest)."""
    out = orjson.loads(orjson.dumps(results))
    for r in reversed(out):
        if r["outcome"]["status"] == "applied" and r["duplicate_of"] is None:
            for e in r["outcome"]["entities"]:
                if pick(e):
                    change(e["state"])
                    return out
    raise AssertionError("nothing to doctor")


def test_accounts_checks_catch_doctored_results() -> None:
    """The checks fail when a published result is wrong: one balance off by one breaks
    MoneyConservedPerBook (money_conserved); a negative balance breaks NonNegativeBalance;
    a closed account holding money, or published open after it was closed, breaks
    ClosedAccountIsEmpty (closed_accounts_empty). Each failure names the offender."""
    inputs, results, _ = published(ACCOUNTS, 77, 2500)
    assert all(c.passed for c in domain_checks(ACCOUNTS, inputs, results).values())

    def plus_one(s):
        s["balance"] += 1

    off = domain_checks(ACCOUNTS, inputs, _doctor(results, lambda e: e["state"]["balance"] > 0, plus_one))
    assert not off["money_conserved"].passed and "not conserved" in off["money_conserved"].detail
    assert off["no_negative_balance"].passed and off["closed_accounts_empty"].passed

    def negative(s):
        s["balance"] = -5

    neg = domain_checks(ACCOUNTS, inputs, _doctor(results, lambda e: e["state"]["status"] == "open", negative))
    assert not neg["no_negative_balance"].passed and "-5" in neg["no_negative_balance"].detail

    def keep_money(s):
        s["balance"] = 3

    closed = _doctor(results, lambda e: e["state"]["status"] == "closed", keep_money)
    full = domain_checks(ACCOUNTS, inputs, closed)
    assert not full["closed_accounts_empty"].passed and "1 closed states holding money" in full[
        "closed_accounts_empty"].detail

    # published closed, then open again as its latest state (the status transition is terminal)
    key = account_key("b1", "a1")
    was = {"status": "closed", "currency": "EUR", "balance": 0}
    now = {"status": "open", "currency": "EUR", "balance": 0}
    reopened = ACCOUNTS.check([(CLOSE, {"book": "b1", "account": "a1"})], {key: now}, [(key, was), (key, now)])
    assert not reopened["closed_accounts_empty"].passed
    assert f"1 closed accounts not closed in their latest state: {key}" == reopened["closed_accounts_empty"].detail


def test_accounts_check_needs_a_deposit() -> None:
    """Conservation over nothing proves nothing: no applied deposit fails money_conserved."""
    checks = ACCOUNTS.check([], {}, [])
    assert not checks["money_conserved"].passed and checks["no_negative_balance"].passed


def test_inventory_checks_catch_doctored_results() -> None:
    """NonNegativeStock and StockConservedPerSku through inventory's kit: they pass on
    the oracle's results and fail on a quantity off by one or a negative one."""
    inputs, results, _ = published(INVENTORY, 9, 1500)
    assert all(c.passed for c in domain_checks(INVENTORY, inputs, results).values())

    def plus_one(s):
        s["quantity"] += 1

    off = domain_checks(INVENTORY, inputs, _doctor(results, lambda e: True, plus_one))
    assert not off["stock_conserved"].passed and off["no_negative_stock"].passed

    def negative(s):
        s["quantity"] = -1

    neg = domain_checks(INVENTORY, inputs, _doctor(results, lambda e: True, negative))
    assert not neg["no_negative_stock"].passed


def test_invariants_are_the_generic_ones_around_the_domains() -> None:
    assert list(invariants(ACCOUNTS)) == ["one_result_per_event", "no_divergence", "results_match_oracle",
                                          "no_negative_balance", "money_conserved", "closed_accounts_empty",
                                          "tables_equal"]
    assert list(invariants(INVENTORY))[3:5] == ["no_negative_stock", "stock_conserved"]


# --------------------------------------------------------------------------- registry, examples


def test_registry_finds_kits_and_refuses_a_domain_without_one() -> None:
    """RegisterDomainKit: a kit is optional; the registry returns the built-in ones and
    refuses a kit registered for another domain. ToolRefusesDomainWithoutKit: it says
    clearly when a domain has none, and that domain's OpenAPI document has no examples."""
    assert registry.kit("inventory") is inventory_kit.kit and registry.kit("accounts") is accounts_kit.kit
    own = DomainRegistry()

    @dataclasses.dataclass
    class Bare:
        name: str = "bare"
        version: str = "bare/1"
        event_names: frozenset = frozenset()

        def validate(self, *a): ...

        def affinity_key(self, *a): ...

        def entity_keys(self, *a): ...

        def initial_state(self, *a): ...

        def evaluate(self, *a): ...

    own.register(Bare())
    with pytest.raises(NoKit, match="no kit"):
        own.kit("bare")
    with pytest.raises(TypeError, match="another domain"):
        own.register(Bare(name="other", version="other/1"), accounts_kit.kit)
    doc = openapi.document(Bare(), timeout_ms=1000, ttl_ms=1000)
    assert "example" not in doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert all("example" not in p for p in doc["paths"]["/v1/entities/{type}/{id}"]["get"]["parameters"])


@pytest.mark.parametrize("kit", [INVENTORY, ACCOUNTS], ids=["inventory", "accounts"])
def test_the_example_event_applies_on_a_fresh_stack(kit) -> None:
    """The OpenAPI example and the banner's curl (AccountOpened; AdjustApplied): valid,
    and applied from initial states, changing exactly the example entity."""
    name, payload = kit.example_event
    domain = kit.domain
    assert domain.validate(name, payload) is None
    keys = domain.entity_keys(name, payload)
    outcome = domain.evaluate(name, payload, {k: domain.initial_state(k) for k in keys})
    assert outcome.status == "applied" and list(outcome.changes) == [kit.example_entity]


def test_openapi_examples_come_from_the_domains_kit() -> None:
    doc = openapi.document(registry.get("accounts"), timeout_ms=5000, ttl_ms=60_000)
    post = doc["paths"]["/v1/events"]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"] == {
        "event_name": OPEN, "payload": {"book": "book-01", "account": "acct-0001", "currency": "EUR"}}
    get = doc["paths"]["/v1/entities/{type}/{id}"]["get"]
    assert [p["example"] for p in get["parameters"]] == ["account", "book-01:acct-0001"]
    assert "account:{book}:{account}" in get["summary"]
    assert "insufficient_funds" in post["responses"]["409"]["description"]
    inv = openapi.document(registry.get("inventory"), timeout_ms=5000, ttl_ms=60_000)
    assert inv["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["example"][
        "event_name"] == "stock.adjust"


def test_banner_submits_the_domains_example(monkeypatch) -> None:
    from app.settings import load
    from launcher.stack import banner

    monkeypatch.setenv("DOCKET_DOMAIN", "accounts")
    text = banner(load(), "tok", "generated", "key-1")
    assert "open an account" in text and '"event_name": "account.open"' in text and "stock" not in text


# --------------------------------------------------------------------------- faults


def test_faults_corrupt_the_accounts_balance(caplog) -> None:
    """BitflipCorruptsOutputOnly and StateFaultCorruptsStoredEntity on the accounts domain:
    the corrupted number is the state's integer field (balance), found without a kit."""
    assert int_field({"status": "open", "currency": "EUR", "balance": 3}) == "balance"
    assert int_field({"quantity": 1}) == "quantity" and int_field({"flag": True}) is None
    inputs = as_inputs(list(workload.records(ACCOUNTS, 4, 600)))

    def run(faults: FaultInjector | None):
        store = MemoryStore()
        u = Usher("b", ACCOUNTS.domain, Registrar(Ledger(store), 1000), Warden(store, TTL), P)
        u.faults = faults
        return [unseal(o.value)[2] for o in u.process(sorted(inputs, key=lambda r: (r.partition, r.offset)),
                                                      lambda p: 0)]

    clean = run(None)
    with caplog.at_level(logging.WARNING, logger="docket.faults"):
        flipped = run(FaultInjector(FaultSpec("bitflip", 0.2), "b", seed=3))
    changed = [(a, b) for a, b in zip(clean, flipped) if a != b]
    assert changed
    for a, b in changed:
        diffs = [(x["state"], y["state"]) for x, y in zip(a["outcome"]["entities"], b["outcome"]["entities"]) if x != y]
        assert len(diffs) == 1
        x, y = diffs[0]
        assert {**x, "balance": 0} == {**y, "balance": 0} and bin(x["balance"] ^ y["balance"]).count("1") == 1
    state = run(FaultInjector(FaultSpec("state", 0.05), "b", seed=3))
    assert state != clean  # a later event read a corrupted balance


# --------------------------------------------------------------------------- the chaos command


def test_chaos_and_demo_refuse_a_domain_without_a_kit() -> None:
    """ToolRefusesDomainWithoutKit, DemoRefusesAWorkloadItCannotJudge: `docket chaos --domain` and `docket demo --domain`
    stop with a usage error before starting anything."""
    from app.demo import demo
    from chaos.cli import chaos

    out = CliRunner().invoke(chaos, ["--domain", "nosuch", "--scenario", "kill-a"])
    assert out.exit_code == 2 and "no domain named 'nosuch'" in out.output
    out = CliRunner().invoke(demo, ["--domain", "nosuch", "--token", "t"])
    assert out.exit_code == 2 and "no domain named 'nosuch'" in out.output
    out = CliRunner().invoke(demo, ["--domain", "accounts", "--shape", "accounts=1", "--token", "t"])
    assert out.exit_code == 2 and "2 accounts per book" in out.output
    out = CliRunner().invoke(demo, ["--domain", "accounts", "--shape", "skus=2", "--token", "t"])
    assert out.exit_code == 2 and "accounts has no shape skus (its shapes: books=20, accounts=6)" in out.output
    out = CliRunner().invoke(demo, ["--domain", "accounts", "--events", "1", "--token", "t"])
    assert out.exit_code == 2 and "needs at least 2 events" in out.output
    # shapes multiplying past what the demo can hold (the twelfth fresh-user trial: skus=10^20 hung,
    # skus=5000000 ran out of memory)
    for shape in ("skus=" + "9" * 20, "skus=200001"):
        out = CliRunner().invoke(demo, ["--domain", "inventory", "--shape", shape, "--token", "t"])
        assert out.exit_code == 2 and "entities; the demo holds each in memory, at most 1,000,000" in out.output, \
            out.output
    out = CliRunner().invoke(demo, ["--domain", "inventory", "--shape", "skus=\u0663", "--token", "t"])
    assert out.exit_code == 2 and "is not NAME=N" in out.output, out.output


def test_the_smallest_accounts_workload_funds_an_account_so_its_checks_prove_something() -> None:
    """MoneyConservedPerBook: the accounts workload opens and funds account by account,
    so its first two events already apply a deposit (a user's 120-event demo opened 120
    accounts, applied no deposit and failed money_conserved)."""
    from chaos.workload import records

    first = [orjson.loads(r.value)["event_name"] for r in records(ACCOUNTS, 1, ACCOUNTS.min_events,
                                                                  **ACCOUNTS.demo_shape)]
    assert first == ["account.open", "account.deposit"]


def test_chaos_summary_has_the_domains_columns() -> None:
    from chaos.cli import summary_rows

    ok = {"passed": True, "detail": ""}
    entry = {"name": "kill-a", "events": 10, "input_records": 10, "kill_count": 1, "recover_s": [1.0],
             "max_clerk_lag": 3, "passed": True, "invariants": {n: ok for n in invariants(ACCOUNTS)}}
    head, rows = summary_rows({"options": {"domain": "accounts"}, "scenarios": [entry]})
    assert "balance >= 0" in head and "closed = 0" in head and "stock >= 0" not in head
    assert rows[0][-1] == "pass"
