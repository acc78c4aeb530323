"""Inventory rules (specs/inventory.allium), evaluated through the pure domain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.inventory import ADJUST, MAX_MAGNITUDE, MAX_QUANTITY, TRANSFER, inventory, stock_key


def states_for(name, payload, **quantities):
    keys = inventory.entity_keys(name, payload)
    return {k: {"quantity": quantities.get(k.split(":")[1], 0)} for k in keys}


def adjust(wh="w1", sku="s1", delta=5):
    return {"warehouse": wh, "sku": sku, "delta": delta}


def transfer(sku="s1", src="w1", dst="w2", qty=3):
    return {"sku": sku, "from_warehouse": src, "to_warehouse": dst, "quantity": qty}


def test_adjust_applies_delta():
    """AdjustApplied: the warehouse's quantity moves by delta."""
    out = inventory.evaluate(ADJUST, adjust(delta=5), states_for(ADJUST, adjust(), w1=2))
    assert out.status == "applied"
    assert out.changes == {stock_key("w1", "s1"): {"quantity": 7}}


def test_adjust_rejected_when_result_negative():
    """AdjustRejectsInsufficientStock: stock never goes below zero."""
    out = inventory.evaluate(ADJUST, adjust(delta=-3), states_for(ADJUST, adjust(), w1=2))
    assert (out.status, out.reason) == ("rejected", "insufficient_stock")
    assert not out.changes


def test_adjust_to_exactly_zero_is_applied():
    out = inventory.evaluate(ADJUST, adjust(delta=-2), states_for(ADJUST, adjust(), w1=2))
    assert out.changes == {stock_key("w1", "s1"): {"quantity": 0}}


def test_transfer_moves_stock_between_warehouses():
    """TransferApplied: source loses, target gains the same quantity."""
    p = transfer(qty=3)
    out = inventory.evaluate(TRANSFER, p, states_for(TRANSFER, p, w1=3, w2=1))
    assert out.status == "applied"
    assert out.changes == {stock_key("w1", "s1"): {"quantity": 0}, stock_key("w2", "s1"): {"quantity": 4}}


def test_transfer_rejected_on_insufficient_stock():
    """TransferRejectsInsufficientStock."""
    p = transfer(qty=4)
    out = inventory.evaluate(TRANSFER, p, states_for(TRANSFER, p, w1=3))
    assert (out.status, out.reason) == ("rejected", "insufficient_stock")


def test_overflow_is_rejected():
    """AdjustRejectsQuantityOverflow: stock never exceeds 2^62 (StockWithinBound)."""
    p = adjust(delta=1)
    out = inventory.evaluate(ADJUST, p, {stock_key("w1", "s1"): {"quantity": MAX_QUANTITY}})
    assert out.reason == "quantity_overflow"


@pytest.mark.parametrize(
    "name,payload,reason",
    [
        (ADJUST, [], "invalid_payload"),
        (ADJUST, {"warehouse": "w1", "sku": "s1"}, "invalid_payload"),
        (ADJUST, {**adjust(), "extra": 1}, "invalid_payload"),
        (ADJUST, adjust(delta=1.5), "invalid_payload"),
        (ADJUST, adjust(delta=True), "invalid_payload"),
        (ADJUST, adjust(delta="5"), "invalid_payload"),
        (ADJUST, adjust(wh=7), "invalid_payload"),
        (ADJUST, adjust(delta=0), "zero_delta"),
        (ADJUST, adjust(delta=MAX_MAGNITUDE + 1), "quantity_out_of_range"),
        (ADJUST, adjust(delta=-MAX_MAGNITUDE - 1), "quantity_out_of_range"),
        (ADJUST, adjust(wh=""), "invalid_identifier"),
        (ADJUST, adjust(wh="x" * 65), "invalid_identifier"),
        (ADJUST, adjust(sku="a b"), "invalid_identifier"),
        (ADJUST, adjust(sku="é"), "invalid_identifier"),
        (TRANSFER, transfer(qty=0), "quantity_out_of_range"),
        (TRANSFER, transfer(qty=-1), "quantity_out_of_range"),
        (TRANSFER, transfer(qty=MAX_MAGNITUDE + 1), "quantity_out_of_range"),
        (TRANSFER, transfer(src="w1", dst="w1"), "same_warehouse"),
        (TRANSFER, {"sku": "s1"}, "invalid_payload"),
    ],
)
def test_payload_validation_names_the_reason(name, payload, reason):
    """Every unusable payload gets a named reason, by the first failing check:
    InventoryRejectsNonObjectPayload, InventoryRejectsUnknownField,
    InventoryRejectsBadField (missing or mistyped: invalid_payload; not an
    identifier: invalid_identifier), AdjustRejectsZeroDelta,
    AdjustRejectsDeltaOutOfRange, TransferRejectsQuantityOutOfRange,
    TransferRejectsSameWarehouse."""
    rejection = inventory.validate(name, payload)
    assert rejection is not None and rejection.reason == reason
    assert rejection.detail


def test_valid_payloads_pass():
    """AdjustPayloadAccepted, TransferPayloadAccepted (at the bounds)."""
    assert inventory.validate(ADJUST, adjust(delta=-MAX_MAGNITUDE)) is None
    assert inventory.validate(TRANSFER, transfer(qty=MAX_MAGNITUDE)) is None


def test_affinity_key_is_sku_for_both_entities():
    """InventoryAffinityKeyIsSku, InventoryEntitiesShareAffinity: both sides of a
    transfer share the event's affinity key, the sku."""
    p = transfer(sku="sku-9")
    assert inventory.affinity_key(TRANSFER, p) == "sku-9"
    assert all(k.endswith(":sku-9") for k in inventory.entity_keys(TRANSFER, p))
    assert list(inventory.entity_keys(TRANSFER, p)) == sorted(inventory.entity_keys(TRANSFER, p))


# --- properties -------------------------------------------------------------------

WAREHOUSES = ["w0", "w1", "w2"]
SKUS = ["s0", "s1"]

events = st.one_of(
    st.builds(lambda w, s, d: (ADJUST, adjust(w, s, d)), st.sampled_from(WAREHOUSES), st.sampled_from(SKUS),
              st.integers(-20, 20).filter(lambda d: d != 0)),
    st.builds(lambda s, a, b, q: (TRANSFER, transfer(s, a, b, q)), st.sampled_from(SKUS),
              st.sampled_from(WAREHOUSES), st.sampled_from(WAREHOUSES), st.integers(1, 25)),
)


def run(sequence):
    state: dict[str, dict] = {}
    applied_deltas = {s: 0 for s in SKUS}
    for name, payload in sequence:
        if inventory.validate(name, payload) is not None:
            continue
        keys = inventory.entity_keys(name, payload)
        out = inventory.evaluate(name, payload, {k: state.get(k, inventory.initial_state(k)) for k in keys})
        if out.status == "applied":
            state.update(out.changes)
            if name == ADJUST:
                applied_deltas[payload["sku"]] += payload["delta"]
    return state, applied_deltas


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=80))
def test_no_sequence_drives_stock_negative(sequence):
    """NonNegativeStock (invariant): whatever the event sequence, no quantity is negative."""
    state, _ = run(sequence)
    assert all(s["quantity"] >= 0 for s in state.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=80))
def test_per_sku_totals_equal_applied_adjustments(sequence):
    """StockConservedPerSku (invariant): transfers conserve; totals move only by applied adjustments."""
    state, applied = run(sequence)
    for sku in SKUS:
        total = sum(s["quantity"] for k, s in state.items() if k.endswith(f":{sku}"))
        assert total == applied[sku]


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=60))
def test_evaluation_is_deterministic(sequence):
    """InventoryEvaluationIsDeterministic, EvaluationIsDeterministic: evaluating the same
    sequence twice gives the same result, whatever order the states mapping happens to
    be built in."""
    first, _ = run(sequence)
    second, _ = run(list(sequence))
    assert first == second
    for name, payload in sequence:
        if inventory.validate(name, payload) is None:
            keys = inventory.entity_keys(name, payload)
            forward = {k: {"quantity": 10} for k in keys}
            backward = {k: {"quantity": 10} for k in reversed(keys)}
            assert inventory.evaluate(name, payload, forward) == inventory.evaluate(name, payload, backward)
