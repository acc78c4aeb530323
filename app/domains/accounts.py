"""Accounts: double-entry money in integer minor units. Spec: specs/accounts.allium.

Entity ``account:<book>:<account>`` with state
``{"status": "none" | "open" | "closed", "currency": "<AAA>" | None, "balance": int}``.
An account is opened once in one currency, receives deposits and transfers, pays
withdrawals and transfers (never below 0), and is closed only when empty. A closed
account is never reused: opening it again is rejected ``account_exists``.

The affinity key is the ledger *book*: a transfer moves money between two accounts of
one book, so both live on the event's partition. Money enters and leaves the books only
through ``account.deposit`` and ``account.withdraw``; so per currency, the sum of all
balances equals the applied deposits minus the applied withdrawals.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from app.registry import Outcome, Rejection

MAX_AMOUNT = 1_000_000_000_000  # largest deposit, withdrawal or transfer, in minor units
MAX_BALANCE = 2**62  # balance ceiling: far beyond any real balance, far below int64
_IDENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")

OPEN = "account.open"
CLOSE = "account.close"
DEPOSIT = "account.deposit"
WITHDRAW = "account.withdraw"
TRANSFER = "account.transfer"

CURRENCY = "currency"  # field kind: a str of three upper-case letters A-Z

# Per event, its fields in checking order (a literal: fixed order, deterministic errors).
_FIELDS: dict[str, dict[str, Any]] = {
    OPEN: {"book": str, "account": str, "currency": CURRENCY},
    CLOSE: {"book": str, "account": str},
    DEPOSIT: {"book": str, "account": str, "amount": int},
    WITHDRAW: {"book": str, "account": str, "amount": int},
    TRANSFER: {"book": str, "from_account": str, "to_account": str, "amount": int},
}

NONE, OPENED, CLOSED = "none", "open", "closed"


def account_key(book: str, account: str) -> str:
    return f"account:{book}:{account}"


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass and must not pass


def _state(status: str, currency: str | None, balance: int) -> dict:
    return {"status": status, "currency": currency, "balance": balance}


def _not_open(key: str, state: Mapping[str, Any]) -> Outcome:
    said = "is closed" if state["status"] == CLOSED else "was never opened"
    return Outcome.rejected("account_not_open", f"{key} {said}")


class Accounts:
    name = "accounts"
    version = "accounts/1"
    event_names = frozenset(_FIELDS)

    def validate(self, event_name: str, payload: Any) -> Rejection | None:
        fields = _FIELDS.get(event_name)
        if fields is None:  # the Usher checks event_names first; answer anyway, never raise
            return Rejection("unknown_event", f"{self.name} has no event {event_name!r}")
        if not isinstance(payload, dict):
            return Rejection("invalid_payload", "payload must be a JSON object")
        unknown = sorted(set(payload) - set(fields))
        if unknown:
            return Rejection("invalid_payload", f"unknown field(s): {', '.join(unknown)}", unknown[0])
        for name, kind in fields.items():
            if name not in payload:
                return Rejection("invalid_payload", f"missing field: {name}", name)
            value = payload[name]
            if kind is int:
                if not _is_int(value):
                    return Rejection("invalid_payload", f"{name} must be an integer", name)
                continue
            if not isinstance(value, str):
                return Rejection("invalid_payload", f"{name} must be a string", name)
            if kind is CURRENCY:
                if not _CURRENCY.fullmatch(value):
                    return Rejection("invalid_currency", f"{name} must be three upper-case letters A-Z", name)
            elif not _IDENT.fullmatch(value):
                return Rejection("invalid_identifier", f"{name} must be 1-64 characters of A-Z a-z 0-9 . _ -", name)
        if "amount" in fields and not 1 <= payload["amount"] <= MAX_AMOUNT:
            return Rejection("amount_out_of_range", f"amount must be between 1 and {MAX_AMOUNT}", "amount")
        if event_name == TRANSFER and payload["from_account"] == payload["to_account"]:
            return Rejection("same_account", "from_account and to_account must differ", "to_account")
        return None

    def payload_schema(self, event_name: str) -> dict:
        """JSON Schema of a valid payload (for the REST API's OpenAPI document). It says
        what :meth:`validate` checks, except that the two accounts of a transfer must
        differ, which JSON Schema cannot express."""
        kinds = {
            str: {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            CURRENCY: {"type": "string", "pattern": "^[A-Z]{3}$"},
            int: {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT},
        }
        fields = _FIELDS[event_name]
        return {"type": "object", "additionalProperties": False, "required": list(fields),
                "properties": {name: dict(kinds[kind]) for name, kind in fields.items()}}

    def affinity_key(self, event_name: str, payload: Mapping[str, Any]) -> str:
        return payload["book"]

    def entity_keys(self, event_name: str, payload: Mapping[str, Any]) -> tuple[str, ...]:
        book = payload["book"]
        if event_name == TRANSFER:
            return tuple(sorted((account_key(book, payload["from_account"]),
                                 account_key(book, payload["to_account"]))))
        return (account_key(book, payload["account"]),)

    def initial_state(self, entity_key: str) -> dict:
        return _state(NONE, None, 0)

    def evaluate(self, event_name: str, payload: Mapping[str, Any], states: Mapping[str, dict]) -> Outcome:
        book = payload["book"]
        if event_name == TRANSFER:
            return self._transfer(payload, states)
        key = account_key(book, payload["account"])
        state = states[key]
        status, currency, balance = state["status"], state["currency"], state["balance"]
        if event_name == OPEN:
            if status == OPENED:
                return Outcome.rejected("account_exists", f"{key} is open")
            if status == CLOSED:
                return Outcome.rejected("account_exists", f"{key} is closed; accounts are never reused")
            return Outcome.applied({key: _state(OPENED, payload["currency"], 0)})
        if status != OPENED:
            return _not_open(key, state)
        if event_name == CLOSE:
            if balance != 0:
                return Outcome.rejected("balance_not_zero", f"{key} holds {balance} {currency}")
            return Outcome.applied({key: _state(CLOSED, currency, 0)})
        amount = payload["amount"]
        if event_name == DEPOSIT:
            if balance + amount > MAX_BALANCE:
                return Outcome.rejected("balance_overflow", f"{key} would exceed {MAX_BALANCE}")
            return Outcome.applied({key: _state(OPENED, currency, balance + amount)})
        # WITHDRAW
        if balance < amount:
            return Outcome.rejected("insufficient_funds", f"{key} holds {balance} {currency}")
        return Outcome.applied({key: _state(OPENED, currency, balance - amount)})

    def _transfer(self, payload: Mapping[str, Any], states: Mapping[str, dict]) -> Outcome:
        book = payload["book"]
        source = account_key(book, payload["from_account"])
        target = account_key(book, payload["to_account"])
        amount = payload["amount"]
        src, dst = states[source], states[target]
        if src["status"] != OPENED:
            return _not_open(source, src)
        if dst["status"] != OPENED:
            return _not_open(target, dst)
        if src["currency"] != dst["currency"]:
            return Outcome.rejected("currency_mismatch",
                                    f"{source} holds {src['currency']}, {target} holds {dst['currency']}")
        if src["balance"] < amount:
            return Outcome.rejected("insufficient_funds", f"{source} holds {src['balance']} {src['currency']}")
        if dst["balance"] + amount > MAX_BALANCE:
            return Outcome.rejected("balance_overflow", f"{target} would exceed {MAX_BALANCE}")
        return Outcome.applied({
            source: _state(OPENED, src["currency"], src["balance"] - amount),
            target: _state(OPENED, dst["currency"], dst["balance"] + amount),
        })


accounts = Accounts()
