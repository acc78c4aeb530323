"""Inventory: stock of each sku in each warehouse. Spec: specs/inventory.allium.

Entity ``stock:<warehouse>:<sku>`` with state ``{"quantity": int}``, never negative.
The affinity key is the sku, so both sides of a transfer live on one partition.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from app.registry import Outcome, Rejection

MAX_MAGNITUDE = 1_000_000_000  # largest |delta| or transfer quantity
MAX_QUANTITY = 2**62  # stock ceiling: far beyond any real stock, far below int64
_IDENT = re.compile(r"[A-Za-z0-9._-]{1,64}")

ADJUST = "stock.adjust"
TRANSFER = "stock.transfer"

_FIELDS = {
    ADJUST: {"warehouse": str, "sku": str, "delta": int},
    TRANSFER: {"sku": str, "from_warehouse": str, "to_warehouse": str, "quantity": int},
}


def stock_key(warehouse: str, sku: str) -> str:
    return f"stock:{warehouse}:{sku}"


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass and must not pass


class Inventory:
    name = "inventory"
    version = "inventory/1"
    event_names = frozenset(_FIELDS)

    def validate(self, event_name: str, payload: Any) -> Rejection | None:
        fields = _FIELDS[event_name]
        if not isinstance(payload, dict):
            return Rejection("invalid_payload", "payload must be a JSON object")
        unknown = sorted(set(payload) - set(fields))
        if unknown:
            return Rejection("invalid_payload", f"unknown field(s): {', '.join(unknown)}", unknown[0])
        for name, kind in fields.items():  # dict order is the literal's: fixed, so errors are deterministic
            if name not in payload:
                return Rejection("invalid_payload", f"missing field: {name}", name)
            value = payload[name]
            if kind is int and not _is_int(value):
                return Rejection("invalid_payload", f"{name} must be an integer", name)
            if kind is str:
                if not isinstance(value, str):
                    return Rejection("invalid_payload", f"{name} must be a string", name)
                if not _IDENT.fullmatch(value):
                    return Rejection("invalid_identifier", f"{name} must be 1-64 characters of A-Z a-z 0-9 . _ -", name)
        if event_name == ADJUST:
            delta = payload["delta"]
            if delta == 0:
                return Rejection("zero_delta", "delta must not be 0", "delta")
            if abs(delta) > MAX_MAGNITUDE:
                return Rejection("quantity_out_of_range", f"|delta| must be at most {MAX_MAGNITUDE}", "delta")
        else:
            quantity = payload["quantity"]
            if not 1 <= quantity <= MAX_MAGNITUDE:
                return Rejection("quantity_out_of_range", f"quantity must be between 1 and {MAX_MAGNITUDE}", "quantity")
            if payload["from_warehouse"] == payload["to_warehouse"]:
                return Rejection("same_warehouse", "from_warehouse and to_warehouse must differ", "to_warehouse")
        return None

    def payload_schema(self, event_name: str) -> dict:
        """JSON Schema of a valid payload (for the REST API's OpenAPI document). It says
        what :meth:`validate` checks, except that the two warehouses of a transfer must
        differ, which JSON Schema cannot express."""
        ident = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
        if event_name == ADJUST:
            props = {"warehouse": ident, "sku": ident,
                     "delta": {"type": "integer", "minimum": -MAX_MAGNITUDE, "maximum": MAX_MAGNITUDE,
                               "not": {"enum": [0]}}}
        else:
            props = {"sku": ident, "from_warehouse": ident, "to_warehouse": ident,
                     "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_MAGNITUDE}}
        return {"type": "object", "additionalProperties": False, "required": list(_FIELDS[event_name]),
                "properties": props}

    def affinity_key(self, event_name: str, payload: Mapping[str, Any]) -> str:
        return payload["sku"]

    def entity_keys(self, event_name: str, payload: Mapping[str, Any]) -> tuple[str, ...]:
        sku = payload["sku"]
        if event_name == ADJUST:
            return (stock_key(payload["warehouse"], sku),)
        return tuple(sorted((stock_key(payload["from_warehouse"], sku), stock_key(payload["to_warehouse"], sku))))

    def initial_state(self, entity_key: str) -> dict:
        return {"quantity": 0}

    def evaluate(self, event_name: str, payload: Mapping[str, Any], states: Mapping[str, dict]) -> Outcome:
        sku = payload["sku"]
        if event_name == ADJUST:
            key = stock_key(payload["warehouse"], sku)
            new = states[key]["quantity"] + payload["delta"]
            if new < 0:
                return Outcome.rejected("insufficient_stock", f"{key} holds {states[key]['quantity']}")
            if new > MAX_QUANTITY:
                return Outcome.rejected("quantity_overflow", f"{key} would exceed {MAX_QUANTITY}")
            return Outcome.applied({key: {"quantity": new}})
        source = stock_key(payload["from_warehouse"], sku)
        target = stock_key(payload["to_warehouse"], sku)
        quantity = payload["quantity"]
        have = states[source]["quantity"]
        if have < quantity:
            return Outcome.rejected("insufficient_stock", f"{source} holds {have}")
        if states[target]["quantity"] + quantity > MAX_QUANTITY:
            return Outcome.rejected("quantity_overflow", f"{target} would exceed {MAX_QUANTITY}")
        return Outcome.applied({
            source: {"quantity": have - quantity},
            target: {"quantity": states[target]["quantity"] + quantity},
        })


inventory = Inventory()
