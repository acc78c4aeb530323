"""`docket demo` without a stack: the workload it sends, how it counts the API's answers,
and its balance check (the integration test runs it against a real stack)."""

from __future__ import annotations

from collections import Counter

from app.demo import (
    ADJUST,
    TRANSFER,
    Demo,
    Request,
    Tally,
    _quantile,
    balance_check,
    requests_for,
    summary_table,
)


def test_requests_are_renamed_per_run_and_deterministic() -> None:
    a = requests_for(seed=3, events=400, warehouses=5, skus=50, run_id="r1")
    b = requests_for(seed=3, events=400, warehouses=5, skus=50, run_id="r1")
    c = requests_for(seed=3, events=400, warehouses=5, skus=50, run_id="r2")
    assert a == b
    assert len(a) == 400
    assert all(r.payload["sku"].startswith("r1.") and r.key.startswith("demo-r1-") for r in a)
    assert [r.payload["delta"] for r in a[:250]] == [r.payload["delta"] for r in c[:250]]
    # receipts first: every warehouse x sku, all positive adjustments
    receipts = a[:250]
    assert {(r.payload["warehouse"], r.payload["sku"]) for r in receipts} == {
        (f"wh-{w:02d}", f"r1.sku-{s:04d}") for w in range(5) for s in range(50)}
    assert all(r.event_name == ADJUST and r.payload["delta"] > 0 for r in receipts)
    assert {r.event_name for r in a[250:]} == {ADJUST, TRANSFER}
    assert all(r.lane == r.payload["sku"] for r in a)
    keys = Counter(r.key for r in a)
    assert any(n > 1 for n in keys.values())  # repeats and reuses of a key are part of the mix


def answer(status: str, entities=(), replay=False, reason=None) -> dict:
    return {"state": "decided", "replay": replay,
            "outcome": {"status": status, "reason": reason, "entities": list(entities)}}


def ent(key: str, quantity: int, version: int) -> dict:
    return {"key": key, "state": {"quantity": quantity}, "version": version}


def test_answers_are_counted_once_per_key() -> None:
    demo = Demo("http://x", "t", 4, 5.0)
    receipt = Request("s1", "k1", ADJUST, {"warehouse": "w1", "sku": "s1", "delta": 7})
    move = Request("s1", "k2", TRANSFER, {"sku": "s1", "from_warehouse": "w1", "to_warehouse": "w2", "quantity": 3})
    too_much = Request("s1", "k3", TRANSFER, {"sku": "s1", "from_warehouse": "w2", "to_warehouse": "w1",
                                               "quantity": 9})
    reuse = Request("s1", "k1", ADJUST, {"warehouse": "w2", "sku": "s1", "delta": 120})
    for req in (receipt, move, too_much, receipt, reuse):
        demo.first_sent.setdefault(req.key, req)
    demo.record(receipt, 200, answer("applied", [ent("stock:w1:s1", 7, 1)]), 0.010)
    demo.record(move, 200, answer("applied", [ent("stock:w1:s1", 4, 2), ent("stock:w2:s1", 3, 1)]), 0.020)
    demo.record(too_much, 409, {**answer("rejected", reason="insufficient_stock"), "error": "insufficient_stock"}, 0.03)
    demo.record(receipt, 200, answer("applied", [ent("stock:w1:s1", 7, 1)], replay=True), 0.005)
    demo.record(reuse, 422, {"error": "idempotency_key_reused"}, 0.002)
    t = demo.tally
    assert (t.applied, t.replays, t.diverged, t.undecided) == (2, 1, 0, 0)
    assert t.rejected == Counter({"insufficient_stock": 1, "idempotency_key_reused": 1})
    assert t.applied_keys == {"k1": receipt, "k2": move}  # the reuse never counts
    assert t.versions == {"stock:w1:s1": 2, "stock:w2:s1": 1}

    entities = {"stock:w1:s1": ent("stock:w1:s1", 4, 2), "stock:w2:s1": ent("stock:w2:s1", 3, 1)}
    ok = balance_check(t, entities, ["s1"])
    assert ok["passed"] and ok["skus_conserved"] == 1 and ok["entities_read"] == 2

    lost = {"stock:w1:s1": ent("stock:w1:s1", 4, 2), "stock:w2:s1": ent("stock:w2:s1", 2, 1)}
    bad = balance_check(t, lost, ["s1"])
    assert not bad["passed"] and bad["mismatches"] == {"s1": (6, 7)}

    negative = {"stock:w1:s1": ent("stock:w1:s1", 8, 2), "stock:w2:s1": ent("stock:w2:s1", -1, 1)}
    assert balance_check(t, negative, ["s1"])["negative"] == ["stock:w2:s1"]
    assert not balance_check(t, negative, ["s1"])["passed"]


def test_a_lost_answer_answered_as_replay_still_counts_the_delta() -> None:
    """The first send's answer was lost; the second send hears "applied, replay": the
    delta was applied once and must be counted once."""
    demo = Demo("http://x", "t", 4, 5.0)
    receipt = Request("s1", "k1", ADJUST, {"warehouse": "w1", "sku": "s1", "delta": 5})
    demo.first_sent[receipt.key] = receipt
    demo.record(receipt, 200, answer("applied", [ent("stock:w1:s1", 5, 1)], replay=True), 0.01)
    assert demo.tally.applied_keys == {"k1": receipt}
    assert balance_check(demo.tally, {"stock:w1:s1": ent("stock:w1:s1", 5, 1)}, ["s1"])["passed"]


def test_nothing_applied_is_not_a_pass() -> None:
    assert not balance_check(Tally(), {}, ["s1"])["passed"]


def test_quantiles_and_table() -> None:
    assert _quantile([], 0.5) is None
    values = [float(i) for i in range(1, 101)]
    assert _quantile(values, 0.5) == 50.0 and _quantile(values, 0.99) == 99.0 and _quantile(values, 1.0) == 100.0
    summary = {"run_id": "r", "events": 3, "seconds": 1.0, "events_per_s": 3.0, "concurrency": 2, "applied": 2,
               "rejected": {"insufficient_stock": 1}, "replays": 0, "divergences": 0, "undecided": 0, "errors": {},
               "resent": 0, "polled": 0, "latency_ms": {"p50": 1.0, "p99": 2.0, "max": 2.0},
               "balance": {"entities_read": 2, "entities_missing": [], "negative": [], "skus": 1,
                           "skus_conserved": 1, "mismatches": {}, "passed": True}}
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "balance check" in text and "passed" in text and "rejected: insufficient_stock" in text
