"""Inventory version 2: version 1 plus a capacity per stock. Spec: specs/inventory.allium
(InventoryV2CapacityLimit) and specs/versioning.allium.

A receipt (an adjustment with a positive delta, or the receiving side of a transfer)
that would leave a stock above CAPACITY units is rejected ``over_capacity``; taking
stock out is never refused for capacity, so a stock above it (received under
version 1) can still be drawn down. It exists to show a live switch of domain logic
(``docket domain activate inventory/2``): an outcome that differs between versions.
"""

from __future__ import annotations

from typing import Any, Mapping

from app.domains.inventory import Inventory
from app.registry import Outcome

CAPACITY = 500  # units per stock (warehouse x sku); the demo workload's stocks reach it


class InventoryV2(Inventory):
    version = "inventory/2"

    def evaluate(self, event_name: str, payload: Mapping[str, Any], states: Mapping[str, dict]) -> Outcome:
        outcome = super().evaluate(event_name, payload, states)
        if outcome.status != "applied":
            return outcome
        for key in sorted(outcome.changes):
            before, after = states[key]["quantity"], outcome.changes[key]["quantity"]
            if after > before and after > CAPACITY:
                return Outcome.rejected("over_capacity", f"{key} would hold {after}, above its capacity {CAPACITY}")
        return outcome


inventory_v2 = InventoryV2()
