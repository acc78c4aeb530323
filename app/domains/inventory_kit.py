"""The inventory domain's kit (app/domains/kit.py): its workload model, its invariant
checks over published results, and its examples. Spec: specs/inventory.allium.

Workload: receipts (positive ``stock.adjust``) for every warehouse x sku first, then a
mix (weights in :data:`MIX`) of

- transfers that move a warehouse's *whole* stock of a sku, leaving exactly zero, so a
  transfer applied twice is rejected with ``insufficient_stock`` and one that is lost
  breaks conservation;
- partial transfers, and transfers of more than the source holds (rejected);
- positive and negative adjustments, some larger than the stock (rejected);

plus the driver's repeats and key reuses (chaos/workload.py). The model tracks stock
to choose quantities (it treats repeats and reuses as no-ops); it only shapes the mix.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.domains.inventory import ADJUST, MAX_MAGNITUDE, TRANSFER, Inventory, inventory, stock_key
from app.domains.kit import REPEAT, REUSE, Check, Event, first

# Share of each kind of event after the receipts (normalised by the driver).
MIX: dict[str, float] = {
    "transfer_drain": 0.24,
    "transfer_partial": 0.18,
    "transfer_excess": 0.05,
    "adjust_in": 0.18,
    "adjust_out": 0.12,
    "adjust_excess": 0.05,
    REPEAT: 0.06,
    REUSE: 0.02,
}


def warehouse_name(i: int) -> str:
    return f"wh-{i:02d}"


def sku_name(i: int) -> str:
    return f"sku-{i:04d}"


def adjust(warehouse: str, sku: str, delta: int) -> Event:
    return ADJUST, {"warehouse": warehouse, "sku": sku, "delta": delta}


def transfer(sku: str, source: str, target: str, quantity: int) -> Event:
    return TRANSFER, {"sku": sku, "from_warehouse": source, "to_warehouse": target, "quantity": quantity}


class InventoryModel:
    """``warehouses`` (>= 2) x ``skus`` stock items; sku names ``<scope>sku-0000`` ...,
    warehouses ``wh-00`` ... ValueError for fewer than 2 warehouses."""

    mix = MIX

    def __init__(self, rng: random.Random, *, scope: str = "", warehouses: int = 4, skus: int = 32) -> None:
        if warehouses < 2:
            raise ValueError("transfers need at least 2 warehouses")
        if skus < 1:
            raise ValueError("a workload needs at least 1 sku")
        self.rng = rng
        self.whs = [warehouse_name(i) for i in range(warehouses)]
        self.sks = [scope + sku_name(i) for i in range(skus)]
        self.stock = {(w, s): 0 for w in self.whs for s in self.sks}

    def setup(self, i: int) -> Event | None:
        """Receipts: every warehouse x sku gets stock first (1-100 each)."""
        if i >= len(self.whs) * len(self.sks):
            return None
        w, s = self.whs[i % len(self.whs)], self.sks[i // len(self.whs)]
        delta = self.rng.randint(1, 100)
        self.stock[(w, s)] += delta
        return adjust(w, s, delta)

    def subject(self) -> str:
        return self.rng.choice(self.sks)

    def reuse(self, subject: str) -> Event:
        # receipts and adjustments in are 1-100: 101-150 is never the original request
        return adjust(self.rng.choice(self.whs), subject, self.rng.randint(101, 150))

    def event(self, kind: str, s: str) -> Event:
        rng, stock, whs = self.rng, self.stock, self.whs
        held = [w for w in whs if stock[(w, s)] > 0]
        if kind == "transfer_drain" and held:
            src = rng.choice(held)
            dst = rng.choice([w for w in whs if w != src])
            q = stock[(src, s)]
            stock[(src, s)] = 0
            stock[(dst, s)] += q
            return transfer(s, src, dst, q)
        if kind == "transfer_partial" and held:
            src = rng.choice(held)
            dst = rng.choice([w for w in whs if w != src])
            q = rng.randint(1, stock[(src, s)])
            stock[(src, s)] -= q
            stock[(dst, s)] += q
            return transfer(s, src, dst, q)
        if kind == "transfer_excess":
            src, dst = rng.sample(whs, 2)
            return transfer(s, src, dst, stock[(src, s)] + rng.randint(1, 20))
        if kind == "adjust_out" and held:
            w = rng.choice(held)
            d = rng.randint(1, stock[(w, s)])
            stock[(w, s)] -= d
            return adjust(w, s, -d)
        if kind == "adjust_excess":
            w = rng.choice(whs)
            return adjust(w, s, -(stock[(w, s)] + rng.randint(1, 20)))
        # adjust_in, or a kind that needs stock where there is none
        w = rng.choice(whs)
        d = rng.randint(1, 100)
        stock[(w, s)] += d
        return adjust(w, s, d)

    def good(self, subject: str) -> Event:
        return adjust(self.whs[0], subject, 5)

    def poison(self, kind: str, subject: str) -> Event:
        name, good = self.good(subject)
        if kind == "bad_identifier":
            return name, {**good, "warehouse": "wh 00/ü"}
        if kind == "zero_delta":
            return name, {**good, "delta": 0}
        if kind == "delta_out_of_range":
            return name, {**good, "delta": -(MAX_MAGNITUDE + 1)}
        if kind == "transfer_zero_quantity":
            return transfer(subject, self.whs[0], self.whs[1], 0)
        if kind == "transfer_same_warehouse":
            return transfer(subject, self.whs[1], self.whs[1], 1)
        raise ValueError(f"unknown inventory poison kind {kind!r}")


class InventoryKit:
    domain: Inventory = inventory
    invariants = {"no_negative_stock": "stock >= 0", "stock_conserved": "conserved"}
    poison_kinds = {
        "bad_identifier": "invalid_identifier",
        "zero_delta": "zero_delta",
        "delta_out_of_range": "quantity_out_of_range",
        "transfer_zero_quantity": "quantity_out_of_range",
        "transfer_same_warehouse": "same_warehouse",
    }
    int_field = "delta"
    demo_shape = {"warehouses": 5, "skus": 50}
    min_events = 1
    example_event: Event = adjust("wh-01", "sku-0001", 10)
    example_entity = stock_key("wh-01", "sku-0001")
    example_summary = "submit a stock movement (a receipt of 10)"
    entity_pattern = "stock:{warehouse}:{sku}"
    example_rejection = "insufficient_stock"

    def model(self, rng: random.Random, *, scope: str = "", **shape: int) -> InventoryModel:
        return InventoryModel(rng, scope=scope, **shape)

    def check(self, applied: Sequence[Event], final: Mapping[str, Mapping[str, Any]],
              seen: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Check]:
        """``no_negative_stock`` (NonNegativeStock): no published quantity is negative.
        ``stock_conserved`` (StockConservedPerSku): per sku, the latest quantities summed
        across warehouses equal the sum of the applied adjustments' deltas; it fails when
        nothing was applied (it would prove nothing)."""
        seen = list(seen)
        bad = sorted({(key, state["quantity"]) for key, state in [*seen, *final.items()] if state["quantity"] < 0})
        negative = (Check(False, f"{len(bad)} negative stock levels published: {first(bad)}") if bad else
                    Check(True, f"{len(seen)} published entity states, none negative"))
        expected: Counter = Counter()
        for name, payload in applied:
            if name == ADJUST:
                expected[payload["sku"]] += payload["delta"]
        totals: Counter = Counter()
        for key, state in final.items():
            totals[key.split(":")[2]] += state["quantity"]
        wrong = {s: (totals[s], expected[s]) for s in sorted(set(totals) | set(expected)) if totals[s] != expected[s]}
        if not expected:
            conserved = Check(False, "no adjustment was applied: conservation proves nothing")
        elif wrong:
            conserved = Check(False, f"{len(wrong)} skus not conserved (total, sum of applied deltas): "
                                     f"{first(wrong.items())}")
        else:
            conserved = Check(True, f"{len(totals)} skus conserved (total across warehouses == applied deltas)")
        return {"no_negative_stock": negative, "stock_conserved": conserved}


kit = InventoryKit()
