"""The accounts domain's kit (app/domains/kit.py): its workload model, its invariant
checks over published results, and its examples. Spec: specs/accounts.allium.

Workload: ``books`` x ``accounts`` accounts are opened first (account ``j`` of a book in
:data:`CURRENCIES` ``[j % 2]``, so each book holds accounts of two currencies), then each
gets a deposit of 1-10,000 minor units, then a mix (weights in :data:`MIX`) of

- transfers that move an account's *whole* balance to another account of its book and
  currency, leaving exactly zero (applied twice: ``insufficient_funds``; lost: money is
  not conserved), partial transfers, transfers of more than the source holds
  (``insufficient_funds``) and transfers between currencies (``currency_mismatch``);
- deposits, withdrawals, withdrawals of more than the balance;
- closing an empty account (applied: the account is closed for good), closing one that
  holds money (``balance_not_zero``), opening new accounts, opening an existing one
  (``account_exists``) and deposits into a closed account (``account_not_open``);

plus the driver's repeats and key reuses (chaos/workload.py). The model bookkeeps each
account's status and balance to choose amounts (it treats repeats and reuses as no-ops);
it only shapes the mix. Amounts are integers of a currency's minor unit.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.domains.accounts import (
    CLOSE,
    CLOSED,
    DEPOSIT,
    MAX_AMOUNT,
    OPEN,
    TRANSFER,
    WITHDRAW,
    Accounts,
    account_key,
    accounts,
)
from app.domains.kit import REPEAT, REUSE, Check, Event, first

CURRENCIES = ("EUR", "USD")
MAX_DEPOSIT = 10_000  # set-up and mix deposits are 1..MAX_DEPOSIT minor units

# Share of each kind of event after set-up (normalised by the driver).
MIX: dict[str, float] = {
    "transfer_drain": 0.18,
    "transfer_partial": 0.16,
    "transfer_excess": 0.04,
    "transfer_cross_currency": 0.03,
    "deposit": 0.17,
    "withdraw": 0.11,
    "withdraw_excess": 0.04,
    "close_empty": 0.04,
    "close_funded": 0.02,
    "open_new": 0.04,
    "open_existing": 0.01,
    "deposit_closed": 0.02,
    REPEAT: 0.06,
    REUSE: 0.02,
}


def book_name(i: int) -> str:
    return f"book-{i:02d}"


def account_name(i: int) -> str:
    return f"acct-{i:04d}"


def open_(book: str, account: str, currency: str) -> Event:
    return OPEN, {"book": book, "account": account, "currency": currency}


def close(book: str, account: str) -> Event:
    return CLOSE, {"book": book, "account": account}


def deposit(book: str, account: str, amount: int) -> Event:
    return DEPOSIT, {"book": book, "account": account, "amount": amount}


def withdraw(book: str, account: str, amount: int) -> Event:
    return WITHDRAW, {"book": book, "account": account, "amount": amount}


def transfer(book: str, source: str, target: str, amount: int) -> Event:
    return TRANSFER, {"book": book, "from_account": source, "to_account": target, "amount": amount}


@dataclass
class _Account:
    """The model's idea of one account (not the truth: that is the oracle's)."""

    name: str
    currency: str
    closed: bool = False
    balance: int = 0


class AccountsModel:
    """``books`` books of ``accounts`` accounts each, book names ``<scope>book-00`` ...,
    account names ``acct-0000`` ... ValueError for fewer than 2 accounts per book (a
    transfer needs two) or no book."""

    mix = MIX

    def __init__(self, rng: random.Random, *, scope: str = "", books: int = 8, accounts: int = 6) -> None:
        if books < 1:
            raise ValueError("a workload needs at least 1 book")
        if accounts < 2:
            raise ValueError("transfers need at least 2 accounts per book")
        self.rng = rng
        self.per_book = accounts
        self.books = [scope + book_name(i) for i in range(books)]
        self.accts: dict[str, list[_Account]] = {
            b: [_Account(account_name(j), CURRENCIES[j % len(CURRENCIES)]) for j in range(accounts)]
            for b in self.books}

    def setup(self, i: int) -> Event | None:
        """Each account opened and at once given a deposit of 1-MAX_DEPOSIT, account by
        account, so that even a workload of two events applies a deposit (the money
        check proves nothing without one)."""
        n = len(self.books) * self.per_book
        if i >= 2 * n:
            return None
        j = i // 2
        book = self.books[j // self.per_book]
        acct = self.accts[book][j % self.per_book]
        if i % 2 == 0:
            return open_(book, acct.name, acct.currency)
        amount = self.rng.randint(1, MAX_DEPOSIT)
        acct.balance += amount
        return deposit(book, acct.name, amount)

    def subject(self) -> str:
        return self.rng.choice(self.books)

    def reuse(self, subject: str) -> Event:
        # every other deposit is 1..MAX_DEPOSIT: this one is never the original request
        acct = self.rng.choice(self.accts[subject])
        return deposit(subject, acct.name, self.rng.randint(MAX_DEPOSIT + 1, 2 * MAX_DEPOSIT))

    def _peers(self, book: str, src: _Account, same_currency: bool) -> list[_Account]:
        return [a for a in self.accts[book]
                if a is not src and not a.closed and (a.currency == src.currency) == same_currency]

    def event(self, kind: str, book: str) -> Event:
        rng = self.rng
        accts = self.accts[book]
        live = [a for a in accts if not a.closed]
        funded = [a for a in live if a.balance > 0]
        if kind in ("transfer_drain", "transfer_partial") and funded:
            src = rng.choice(funded)
            peers = self._peers(book, src, same_currency=True)
            if peers:
                dst = rng.choice(peers)
                amount = src.balance if kind == "transfer_drain" else rng.randint(1, src.balance)
                src.balance -= amount
                dst.balance += amount
                return transfer(book, src.name, dst.name, amount)
        if kind in ("transfer_excess", "transfer_cross_currency") and live:
            src = rng.choice(live)
            peers = self._peers(book, src, same_currency=kind == "transfer_excess")
            if peers:
                dst = rng.choice(peers)
                amount = src.balance + rng.randint(1, 500) if kind == "transfer_excess" else rng.randint(1, 100)
                return transfer(book, src.name, dst.name, amount)
        if kind == "withdraw" and funded:
            acct = rng.choice(funded)
            amount = rng.randint(1, acct.balance)
            acct.balance -= amount
            return withdraw(book, acct.name, amount)
        if kind == "withdraw_excess" and live:
            acct = rng.choice(live)
            return withdraw(book, acct.name, acct.balance + rng.randint(1, 500))
        if kind == "close_empty":
            empty = [a for a in live if a.balance == 0]
            if empty:
                acct = rng.choice(empty)
                acct.closed = True
                return close(book, acct.name)
        if kind == "close_funded" and funded:
            return close(book, rng.choice(funded).name)
        if kind == "open_existing":
            acct = rng.choice(accts)
            return open_(book, acct.name, acct.currency)
        if kind == "deposit_closed":
            closed = [a for a in accts if a.closed]
            if closed:
                return deposit(book, rng.choice(closed).name, rng.randint(1, MAX_DEPOSIT))
        if kind == "open_new" or len(live) < 2:
            acct = _Account(account_name(len(accts)), rng.choice(CURRENCIES))
            accts.append(acct)
            return open_(book, acct.name, acct.currency)
        # deposit, or a kind the book's state does not allow
        acct = rng.choice(live)
        amount = rng.randint(1, MAX_DEPOSIT)
        acct.balance += amount
        return deposit(book, acct.name, amount)

    def good(self, subject: str) -> Event:
        return deposit(subject, account_name(0), 5)

    def poison(self, kind: str, subject: str) -> Event:
        name, good = self.good(subject)
        if kind == "bad_identifier":
            return name, {**good, "account": "acct 00/ü"}
        if kind == "zero_amount":
            return name, {**good, "amount": 0}
        if kind == "amount_out_of_range":
            return name, {**good, "amount": MAX_AMOUNT + 1}
        if kind == "transfer_same_account":
            return transfer(subject, account_name(0), account_name(0), 1)
        if kind == "bad_currency":
            return open_(subject, account_name(0), "eur")
        raise ValueError(f"unknown accounts poison kind {kind!r}")


class AccountsKit:
    domain: Accounts = accounts
    invariants = {"no_negative_balance": "balance >= 0", "money_conserved": "conserved",
                  "closed_accounts_empty": "closed = 0"}
    poison_kinds = {
        "bad_identifier": "invalid_identifier",
        "zero_amount": "amount_out_of_range",
        "amount_out_of_range": "amount_out_of_range",
        "transfer_same_account": "same_account",
        "bad_currency": "invalid_currency",
    }
    int_field = "amount"
    demo_shape = {"books": 20, "accounts": 6}
    min_events = 2
    example_event: Event = open_("book-01", "acct-0001", "EUR")
    example_entity = account_key("book-01", "acct-0001")
    example_summary = "open an account (EUR, balance 0)"
    entity_pattern = "account:{book}:{account}"
    example_rejection = "insufficient_funds"

    def model(self, rng: random.Random, *, scope: str = "", **shape: int) -> AccountsModel:
        return AccountsModel(rng, scope=scope, **shape)

    def check(self, applied: Sequence[Event], final: Mapping[str, Mapping[str, Any]],
              seen: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Check]:
        """``no_negative_balance`` (NonNegativeBalance): no published balance is negative.
        ``money_conserved`` (MoneyConservedPerBook, so MoneyConservedPerCurrency): per
        book and currency, the latest balances sum to the applied deposits minus the
        applied withdrawals (a deposit's currency is its account's); it fails when no
        deposit was applied (it would prove nothing). ``closed_accounts_empty``
        (ClosedAccountIsEmpty, the status transition closed is terminal): every
        published closed state holds 0, and an account ever published closed is closed
        in its latest state."""
        seen = list(seen)
        states = [*seen, *final.items()]
        bad = sorted({(key, state["balance"]) for key, state in states if state["balance"] < 0})
        negative = (Check(False, f"{len(bad)} negative balances published: {first(bad)}") if bad else
                    Check(True, f"{len(seen)} published entity states, none negative"))

        expected: Counter = Counter()
        deposits = 0
        for name, payload in applied:
            if name in (DEPOSIT, WITHDRAW):
                key = account_key(payload["book"], payload["account"])
                currency = (final.get(key) or {}).get("currency")
                expected[(payload["book"], currency)] += payload["amount"] if name == DEPOSIT else -payload["amount"]
                deposits += name == DEPOSIT
        totals: Counter = Counter()
        for key, state in final.items():
            if state["currency"] is not None:
                totals[(key.split(":")[1], state["currency"])] += state["balance"]
        wrong = {bc: (totals[bc], expected[bc]) for bc in sorted(set(totals) | set(expected), key=str)
                 if totals[bc] != expected[bc]}
        if not deposits:
            conserved = Check(False, "no deposit was applied: conservation proves nothing")
        elif wrong:
            conserved = Check(False, f"{len(wrong)} (book, currency) totals not conserved "
                                     f"(sum of balances, deposits - withdrawals): {first(wrong.items())}")
        else:
            currencies = sorted({c for _, c in totals})
            conserved = Check(True, f"{len(totals)} (book, currency) totals conserved ({', '.join(currencies)}): "
                                    "balances == deposits - withdrawals")

        closed_keys = sorted({key for key, state in states if state["status"] == CLOSED})
        not_empty = sorted({(key, state["balance"]) for key, state in states
                            if state["status"] == CLOSED and state["balance"]})
        reopened = [key for key in closed_keys if final.get(key, {}).get("status") != CLOSED]
        if not_empty or reopened:
            closed_ok = Check(False, "; ".join(
                ([f"{len(not_empty)} closed states holding money: {first(not_empty)}"] if not_empty else [])
                + ([f"{len(reopened)} closed accounts not closed in their latest state: {first(reopened)}"]
                   if reopened else [])))
        else:
            closed_ok = Check(True, f"{len(closed_keys)} accounts closed, each at 0 and still closed")
        return {"no_negative_balance": negative, "money_conserved": conserved, "closed_accounts_empty": closed_ok}


kit = AccountsKit()
