"""The DomainRegistry (specs/domain.allium) and the inventory rules that
tests/unit/test_inventory.py does not state on their own (specs/inventory.allium)."""

from __future__ import annotations

import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.inventory import (
    ADJUST,
    MAX_MAGNITUDE,
    MAX_QUANTITY,
    TRANSFER,
    Inventory,
    inventory,
    stock_key,
)
from app.registry import DomainRegistry, UnknownDomain


def test_register_refuses_a_different_domain_under_a_taken_name() -> None:
    """RegisterDomain, DomainNamesUnique: a domain joins under its name; registering the
    same object again changes nothing; another domain under that name is refused, and
    so is an object lacking any of the attributes."""
    reg = DomainRegistry()
    first = Inventory()
    assert reg.register(first) is first
    assert reg.register(first) is first
    assert reg.names() == ["inventory"]
    with pytest.raises(ValueError, match="a different domain named 'inventory' is already registered"):
        reg.register(Inventory())
    assert reg.get("inventory") is first

    class Partial:
        name, version, event_names = "partial", "partial/1", frozenset({"x"})

        def validate(self, event_name, payload):
            return None

    with pytest.raises(TypeError, match="lacks affinity_key, entity_keys, initial_state, evaluate"):
        reg.register(Partial())
    assert reg.names() == ["inventory"]


def test_instance_resolves_its_domain_by_name_or_module_attribute(monkeypatch) -> None:
    """InstanceResolvesItsDomain: a registered name, or module:attribute (imported and
    registered on first use); a name that resolves to nothing is an error listing the
    registered names."""
    reg = DomainRegistry()
    reg.register(inventory)
    assert reg.get("inventory") is inventory

    second = Inventory()
    second.name, second.version = "stock2", "stock2/1"
    module = types.ModuleType("docket_test_second_domain")
    module.DOMAIN = second
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert reg.get("docket_test_second_domain:DOMAIN") is second
    assert reg.get("stock2") is second  # registered on first use
    assert reg.names() == ["inventory", "stock2"]

    with pytest.raises(UnknownDomain, match=r"no domain named 'ledgerless' \(registered: inventory, stock2"):
        reg.get("ledgerless")
    with pytest.raises(UnknownDomain, match="cannot load domain 'docket_test_second_domain:NOPE'"):
        reg.get("docket_test_second_domain:NOPE")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["warehouse", "sku", "delta", "from_warehouse", "to_warehouse", "quantity", "x"]),
        children, max_size=5),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([ADJUST, TRANSFER]), json_values)
def test_validation_names_a_reason_for_any_payload_and_is_deterministic(event_name, payload) -> None:
    """DomainValidatesPayload, ValidationIsDeterministic: validate answers ok or one named
    reason with a detail for ANY payload value, never raises, and answers the same for
    the same event name and payload."""
    first = inventory.validate(event_name, payload)
    again = inventory.validate(event_name, payload)
    assert first == again
    if first is not None:
        assert first.reason in {"invalid_payload", "invalid_identifier", "zero_delta", "quantity_out_of_range",
                                "same_warehouse"}
        assert first.detail


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_stock_keys_name_exactly_one_item(warehouse, sku) -> None:
    """OneStockItemPerKey: identifiers never contain ':', so a valid event's key
    "stock:<warehouse>:<sku>" names one (warehouse, sku) only."""
    payload = {"warehouse": warehouse, "sku": sku, "delta": 1}
    if inventory.validate(ADJUST, payload) is None:
        assert ":" not in warehouse and ":" not in sku
        assert stock_key(warehouse, sku).split(":") == ["stock", warehouse, sku]
    if ":" in warehouse or ":" in sku:
        assert inventory.validate(ADJUST, payload).reason == "invalid_identifier"


def test_both_events_are_routed_by_sku() -> None:
    """InventoryAffinityKeyIsSku, InventoryEntitiesShareAffinity: an adjustment's and a
    transfer's affinity key is the sku, which every entity they touch ends with."""
    adjust = {"warehouse": "w1", "sku": "sku-1", "delta": 3}
    transfer = {"sku": "sku-1", "from_warehouse": "w1", "to_warehouse": "w2", "quantity": 1}
    for name, payload in ((ADJUST, adjust), (TRANSFER, transfer)):
        assert inventory.affinity_key(name, payload) == "sku-1"
        assert all(key.rsplit(":", 1)[1] == "sku-1" for key in inventory.entity_keys(name, payload))


def test_accepted_payloads_are_within_their_bounds() -> None:
    """AdjustPayloadAccepted, TransferPayloadAccepted, AdjustDeltaInRange,
    TransferQuantityInRange, TransferBetweenDistinctWarehouses: exactly the payloads
    with a non-zero delta within +-max_magnitude, or a quantity in 1..max_magnitude
    between two distinct warehouses, are accepted."""
    for delta in (-MAX_MAGNITUDE, -1, 1, MAX_MAGNITUDE):
        assert inventory.validate(ADJUST, {"warehouse": "w", "sku": "s", "delta": delta}) is None
    for delta in (-MAX_MAGNITUDE - 1, 0, MAX_MAGNITUDE + 1):
        assert inventory.validate(ADJUST, {"warehouse": "w", "sku": "s", "delta": delta}) is not None
    for qty in (1, MAX_MAGNITUDE):
        assert inventory.validate(TRANSFER, {"sku": "s", "from_warehouse": "a", "to_warehouse": "b",
                                             "quantity": qty}) is None
    for qty in (0, MAX_MAGNITUDE + 1):
        assert inventory.validate(TRANSFER, {"sku": "s", "from_warehouse": "a", "to_warehouse": "b",
                                             "quantity": qty}) is not None
    assert inventory.validate(TRANSFER, {"sku": "s", "from_warehouse": "a", "to_warehouse": "a",
                                         "quantity": 1}).reason == "same_warehouse"


def test_transfer_that_would_overflow_the_target_is_rejected_after_sufficiency() -> None:
    """TransferRejectsQuantityOverflow, StockWithinBound: a transfer that would take the
    target beyond 2^62 is rejected quantity_overflow; one that is also short at the
    source is insufficient_stock (sufficiency is checked first). A target exactly at
    the bound is applied."""
    p = {"sku": "s", "from_warehouse": "a", "to_warehouse": "b", "quantity": 5}
    src, dst = stock_key("a", "s"), stock_key("b", "s")
    out = inventory.evaluate(TRANSFER, p, {src: {"quantity": 5}, dst: {"quantity": MAX_QUANTITY - 4}})
    assert (out.status, out.reason) == ("rejected", "quantity_overflow") and not out.changes
    out = inventory.evaluate(TRANSFER, p, {src: {"quantity": 4}, dst: {"quantity": MAX_QUANTITY}})
    assert (out.status, out.reason) == ("rejected", "insufficient_stock")
    out = inventory.evaluate(TRANSFER, p, {src: {"quantity": 5}, dst: {"quantity": MAX_QUANTITY - 5}})
    assert out.status == "applied" and out.changes[dst] == {"quantity": MAX_QUANTITY}


def test_adjust_to_exactly_the_bound_is_applied_one_more_overflows() -> None:
    """AdjustRejectsQuantityOverflow, StockWithinBound."""
    key = stock_key("w", "s")
    p = {"warehouse": "w", "sku": "s", "delta": 10}
    out = inventory.evaluate(ADJUST, p, {key: {"quantity": MAX_QUANTITY - 10}})
    assert out.status == "applied" and out.changes[key] == {"quantity": MAX_QUANTITY}
    out = inventory.evaluate(ADJUST, p, {key: {"quantity": MAX_QUANTITY - 9}})
    assert (out.status, out.reason) == ("rejected", "quantity_overflow")
