"""Accounts rules (specs/accounts.allium), evaluated through the pure domain."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domains.accounts import (
    CLOSE,
    DEPOSIT,
    MAX_AMOUNT,
    MAX_BALANCE,
    OPEN,
    TRANSFER,
    WITHDRAW,
    Accounts,
    account_key,
    accounts,
)
from app.registry import DomainRegistry, registry


def opened(currency="EUR", balance=0):
    return {"status": "open", "currency": currency, "balance": balance}


def closed(currency="EUR"):
    return {"status": "closed", "currency": currency, "balance": 0}


NEVER = {"status": "none", "currency": None, "balance": 0}


def open_(book="b1", acct="alice", currency="EUR"):
    return {"book": book, "account": acct, "currency": currency}


def close(book="b1", acct="alice"):
    return {"book": book, "account": acct}


def deposit(book="b1", acct="alice", amount=5):
    return {"book": book, "account": acct, "amount": amount}


def withdraw(book="b1", acct="alice", amount=5):
    return {"book": book, "account": acct, "amount": amount}


def transfer(book="b1", src="alice", dst="bob", amount=3):
    return {"book": book, "from_account": src, "to_account": dst, "amount": amount}


ALICE, BOB = account_key("b1", "alice"), account_key("b1", "bob")


def one(name, payload, state):
    (key,) = accounts.entity_keys(name, payload)
    return accounts.evaluate(name, payload, {key: state})


def two(payload, src, dst):
    return accounts.evaluate(TRANSFER, payload, {account_key(payload["book"], payload["from_account"]): src,
                                                 account_key(payload["book"], payload["to_account"]): dst})


# --- the registry ------------------------------------------------------------------

def test_registry_gets_accounts_by_name() -> None:
    """InstanceResolvesItsDomain, RegisterDomain: importing app.domains registers
    accounts beside inventory, so DOCKET_DOMAIN=accounts resolves to it."""
    import app.domains  # noqa: F401  registers the built-in domains

    assert registry.get("accounts") is accounts
    assert {"accounts", "inventory"} <= set(registry.names())
    assert (accounts.name, accounts.version) == ("accounts", "accounts/1")
    assert accounts.event_names == {OPEN, CLOSE, DEPOSIT, WITHDRAW, TRANSFER}
    fresh = DomainRegistry()
    assert fresh.register(accounts) is accounts
    with pytest.raises(ValueError, match="a different domain named 'accounts'"):
        fresh.register(Accounts())


def test_initial_state_is_a_never_opened_empty_account() -> None:
    assert accounts.initial_state(ALICE) == NEVER
    assert accounts.initial_state(ALICE) is not accounts.initial_state(ALICE)  # a fresh dict each time


# --- evaluation: open and close -------------------------------------------------------

def test_open_creates_an_empty_account_in_its_currency() -> None:
    """AccountOpened: a never-opened account opens with balance 0 in the event's currency."""
    out = one(OPEN, open_(currency="JPY"), NEVER)
    assert out.status == "applied"
    assert out.changes == {ALICE: {"status": "open", "currency": "JPY", "balance": 0}}


@pytest.mark.parametrize("state,said", [(opened(), "is open"), (closed(), "is closed; accounts are never reused")])
def test_open_of_an_existing_or_closed_account_is_rejected(state, said) -> None:
    """AccountOpenRejectsExisting: an open account cannot be opened again, and a closed
    account is never reused (closed is terminal)."""
    out = one(OPEN, open_(), state)
    assert (out.status, out.reason, out.detail) == ("rejected", "account_exists", f"{ALICE} {said}")
    assert not out.changes


def test_close_of_an_empty_open_account() -> None:
    """AccountClosed: an open account with balance 0 closes and keeps its currency."""
    out = one(CLOSE, close(), opened("USD", 0))
    assert out.status == "applied"
    assert out.changes == {ALICE: {"status": "closed", "currency": "USD", "balance": 0}}


@pytest.mark.parametrize("state,said", [(NEVER, "was never opened"), (closed(), "is closed")])
def test_close_of_a_never_opened_or_closed_account_is_rejected(state, said) -> None:
    """AccountCloseRejectsNotOpen."""
    out = one(CLOSE, close(), state)
    assert (out.status, out.reason, out.detail) == ("rejected", "account_not_open", f"{ALICE} {said}")


def test_close_with_money_in_it_is_rejected() -> None:
    """AccountCloseRejectsNonZeroBalance: money is never closed away."""
    out = one(CLOSE, close(), opened("EUR", 1))
    assert (out.status, out.reason) == ("rejected", "balance_not_zero")
    assert out.detail == f"{ALICE} holds 1 EUR"


# --- evaluation: deposit and withdraw ---------------------------------------------------

def test_deposit_adds_to_the_balance() -> None:
    """DepositApplied."""
    out = one(DEPOSIT, deposit(amount=5), opened("EUR", 2))
    assert out.status == "applied" and out.changes == {ALICE: opened("EUR", 7)}


@pytest.mark.parametrize("state,said", [(NEVER, "was never opened"), (closed(), "is closed")])
def test_deposit_into_a_never_opened_or_closed_account_is_rejected(state, said) -> None:
    """DepositRejectsNotOpen."""
    out = one(DEPOSIT, deposit(), state)
    assert (out.status, out.reason, out.detail) == ("rejected", "account_not_open", f"{ALICE} {said}")


def test_deposit_to_exactly_the_bound_is_applied_one_more_overflows() -> None:
    """DepositRejectsBalanceOverflow, BalanceWithinBound: no balance exceeds 2^62."""
    out = one(DEPOSIT, deposit(amount=10), opened("EUR", MAX_BALANCE - 10))
    assert out.status == "applied" and out.changes[ALICE]["balance"] == MAX_BALANCE
    out = one(DEPOSIT, deposit(amount=10), opened("EUR", MAX_BALANCE - 9))
    assert (out.status, out.reason, out.detail) == ("rejected", "balance_overflow",
                                                    f"{ALICE} would exceed {MAX_BALANCE}")


def test_withdraw_takes_from_the_balance_down_to_exactly_zero() -> None:
    """WithdrawalApplied: a balance may reach 0 (the account stays open)."""
    out = one(WITHDRAW, withdraw(amount=5), opened("EUR", 5))
    assert out.status == "applied" and out.changes == {ALICE: opened("EUR", 0)}


def test_withdraw_more_than_the_balance_is_rejected() -> None:
    """WithdrawRejectsInsufficientFunds, NonNegativeBalance: no overdraft."""
    out = one(WITHDRAW, withdraw(amount=6), opened("EUR", 5))
    assert (out.status, out.reason, out.detail) == ("rejected", "insufficient_funds", f"{ALICE} holds 5 EUR")
    assert not out.changes


@pytest.mark.parametrize("state,said", [(NEVER, "was never opened"), (closed(), "is closed")])
def test_withdraw_from_a_never_opened_or_closed_account_is_rejected(state, said) -> None:
    """WithdrawRejectsNotOpen."""
    out = one(WITHDRAW, withdraw(), state)
    assert (out.status, out.reason, out.detail) == ("rejected", "account_not_open", f"{ALICE} {said}")


# --- evaluation: transfer -------------------------------------------------------------

def test_transfer_moves_money_between_two_accounts_of_a_book() -> None:
    """AccountTransferApplied: the source loses, the target gains the same amount."""
    out = two(transfer(amount=3), opened("EUR", 3), opened("EUR", 1))
    assert out.status == "applied"
    assert out.changes == {ALICE: opened("EUR", 0), BOB: opened("EUR", 4)}


@pytest.mark.parametrize("src,dst,at_fault,said", [
    (NEVER, opened(), ALICE, "was never opened"),
    (closed(), opened(), ALICE, "is closed"),
    (opened(balance=9), NEVER, BOB, "was never opened"),
    (opened(balance=9), closed(), BOB, "is closed"),
    (NEVER, closed(), ALICE, "was never opened"),  # the source is checked first
])
def test_transfer_touching_an_account_that_is_not_open_is_rejected(src, dst, at_fault, said) -> None:
    """AccountTransferRejectsNotOpen: the detail names the first account (source, then
    target) that is never-opened or closed."""
    out = two(transfer(), src, dst)
    assert (out.status, out.reason, out.detail) == ("rejected", "account_not_open", f"{at_fault} {said}")


def test_transfer_between_currencies_is_rejected() -> None:
    """AccountTransferRejectsCurrencyMismatch: no exchange, even with funds."""
    out = two(transfer(), opened("EUR", 9), opened("USD", 0))
    assert (out.status, out.reason) == ("rejected", "currency_mismatch")
    assert out.detail == f"{ALICE} holds EUR, {BOB} holds USD"


def test_transfer_more_than_the_source_holds_is_rejected() -> None:
    """AccountTransferRejectsInsufficientFunds."""
    out = two(transfer(amount=4), opened("EUR", 3), opened("EUR", 0))
    assert (out.status, out.reason, out.detail) == ("rejected", "insufficient_funds", f"{ALICE} holds 3 EUR")


def test_transfer_that_would_overflow_the_target_is_rejected_after_sufficiency() -> None:
    """AccountTransferRejectsBalanceOverflow: checked after sufficiency; a target
    exactly at the bound is applied."""
    out = two(transfer(amount=5), opened("EUR", 5), opened("EUR", MAX_BALANCE - 4))
    assert (out.status, out.reason, out.detail) == ("rejected", "balance_overflow",
                                                    f"{BOB} would exceed {MAX_BALANCE}")
    out = two(transfer(amount=5), opened("EUR", 4), opened("EUR", MAX_BALANCE))
    assert out.reason == "insufficient_funds"
    out = two(transfer(amount=5), opened("EUR", 5), opened("EUR", MAX_BALANCE - 5))
    assert out.status == "applied" and out.changes[BOB]["balance"] == MAX_BALANCE


# --- validation -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "name,payload,reason,field",
    [
        (OPEN, [], "invalid_payload", None),
        (OPEN, "b1", "invalid_payload", None),
        (OPEN, None, "invalid_payload", None),
        (OPEN, {**open_(), "balance": 0}, "invalid_payload", "balance"),
        (OPEN, {"book": "b1", "account": "alice"}, "invalid_payload", "currency"),
        (OPEN, {"account": "alice", "currency": "EUR"}, "invalid_payload", "book"),
        (OPEN, open_(book=7), "invalid_payload", "book"),
        (OPEN, open_(currency=978), "invalid_payload", "currency"),
        (OPEN, open_(book=""), "invalid_identifier", "book"),
        (OPEN, open_(acct="x" * 65), "invalid_identifier", "account"),
        (OPEN, open_(acct="a:b"), "invalid_identifier", "account"),
        (OPEN, open_(acct="é"), "invalid_identifier", "account"),
        (OPEN, open_(currency="eur"), "invalid_currency", "currency"),
        (OPEN, open_(currency="EURO"), "invalid_currency", "currency"),
        (OPEN, open_(currency="EU"), "invalid_currency", "currency"),
        (OPEN, open_(currency="E1R"), "invalid_currency", "currency"),
        (OPEN, open_(currency="ÉUR"), "invalid_currency", "currency"),
        (OPEN, open_(currency="EUR\n"), "invalid_currency", "currency"),
        (OPEN, open_(book="a b", currency="eur"), "invalid_identifier", "book"),  # first field first
        (CLOSE, {**close(), "amount": 1}, "invalid_payload", "amount"),
        (CLOSE, {"book": "b1"}, "invalid_payload", "account"),
        (DEPOSIT, deposit(amount=1.5), "invalid_payload", "amount"),
        (DEPOSIT, deposit(amount=True), "invalid_payload", "amount"),
        (DEPOSIT, deposit(amount="5"), "invalid_payload", "amount"),
        (DEPOSIT, deposit(amount=0), "amount_out_of_range", "amount"),
        (DEPOSIT, deposit(amount=-1), "amount_out_of_range", "amount"),
        (DEPOSIT, deposit(amount=MAX_AMOUNT + 1), "amount_out_of_range", "amount"),
        (DEPOSIT, {**deposit(), "currency": "EUR"}, "invalid_payload", "currency"),
        (WITHDRAW, withdraw(amount=0), "amount_out_of_range", "amount"),
        (WITHDRAW, withdraw(amount=False), "invalid_payload", "amount"),
        (WITHDRAW, withdraw(acct="a/b"), "invalid_identifier", "account"),
        (TRANSFER, transfer(amount=0), "amount_out_of_range", "amount"),
        (TRANSFER, transfer(amount=MAX_AMOUNT + 1), "amount_out_of_range", "amount"),
        (TRANSFER, transfer(src="alice", dst="alice"), "same_account", "to_account"),
        (TRANSFER, transfer(src="alice", dst="alice", amount=0), "amount_out_of_range", "amount"),
        (TRANSFER, {"book": "b1"}, "invalid_payload", "from_account"),
        (TRANSFER, {**transfer(), "account": "x"}, "invalid_payload", "account"),
        (TRANSFER, transfer(dst=""), "invalid_identifier", "to_account"),
    ],
)
def test_payload_validation_names_the_reason(name, payload, reason, field) -> None:
    """Every unusable payload gets a named reason (and the field at fault), by the first
    failing check: AccountsRejectsNonObjectPayload, AccountsRejectsUnknownField,
    AccountsRejectsBadField (missing or mistyped: invalid_payload; not an identifier:
    invalid_identifier; not three upper-case letters: invalid_currency, CurrencyShape),
    AccountsRejectsAmountOutOfRange, AccountTransferRejectsSameAccount."""
    rejection = accounts.validate(name, payload)
    assert rejection is not None and rejection.reason == reason
    assert rejection.field == field
    assert rejection.detail


def test_unknown_event_name_is_answered_not_raised() -> None:
    """AccountsRejectsUnknownEvent: validate answers unknown_event for a name outside
    event_names (the Usher checks first, but validate never raises)."""
    rejection = accounts.validate("stock.adjust", {"warehouse": "w", "sku": "s", "delta": 1})
    assert rejection is not None and rejection.reason == "unknown_event" and rejection.detail


def test_valid_payloads_pass_at_the_bounds() -> None:
    """AccountOpenPayloadAccepted, AccountClosePayloadAccepted,
    AccountDepositPayloadAccepted, AccountWithdrawPayloadAccepted,
    AccountTransferPayloadAccepted, DepositAmountInRange, WithdrawAmountInRange,
    TransferAmountInRange, TransferBetweenDistinctAccounts: exactly amounts in
    1..MAX_AMOUNT, identifiers of 1..64 allowed characters, three-letter currencies and
    two distinct accounts are accepted."""
    assert accounts.validate(OPEN, open_(book="B.1_-x" + "y" * 58, acct="a", currency="XAU")) is None
    assert accounts.validate(CLOSE, close()) is None
    for amount in (1, MAX_AMOUNT):
        assert accounts.validate(DEPOSIT, deposit(amount=amount)) is None
        assert accounts.validate(WITHDRAW, withdraw(amount=amount)) is None
        assert accounts.validate(TRANSFER, transfer(amount=amount)) is None
    for amount in (0, MAX_AMOUNT + 1):
        for name, payload in ((DEPOSIT, deposit(amount=amount)), (WITHDRAW, withdraw(amount=amount)),
                              (TRANSFER, transfer(amount=amount))):
            assert accounts.validate(name, payload).reason == "amount_out_of_range"


def test_affinity_key_is_the_book_for_every_event() -> None:
    """AccountsAffinityKeyIsBook, AccountEntitiesShareAffinity, EntityKeysSortedAndUnique:
    every event is routed by its book, every entity it names is an account of that book,
    and entity_keys are sorted and unique."""
    events = [(OPEN, open_(book="bk")), (CLOSE, close(book="bk")), (DEPOSIT, deposit(book="bk")),
              (WITHDRAW, withdraw(book="bk")), (TRANSFER, transfer(book="bk", src="zed", dst="amy"))]
    for name, payload in events:
        assert accounts.affinity_key(name, payload) == "bk"
        keys = accounts.entity_keys(name, payload)
        assert all(k.split(":")[:2] == ["account", "bk"] for k in keys)
        assert list(keys) == sorted(set(keys))
    assert accounts.entity_keys(TRANSFER, transfer(book="bk", src="zed", dst="amy")) == (
        "account:bk:amy", "account:bk:zed")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_account_keys_name_exactly_one_account(book, acct) -> None:
    """OneAccountPerKey, IdentifierShape: identifiers never contain ':', so a valid event's key
    "account:<book>:<account>" names one (book, account) only."""
    payload = {"book": book, "account": acct, "amount": 1}
    if accounts.validate(DEPOSIT, payload) is None:
        assert account_key(book, acct).split(":") == ["account", book, acct]
    if ":" in book or ":" in acct:
        assert accounts.validate(DEPOSIT, payload).reason == "invalid_identifier"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=70) | st.sampled_from(["EUR", "eur", "alice", "b1", "A:B"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["book", "account", "currency", "amount", "from_account", "to_account", "x"]),
        children, max_size=6),
    max_leaves=12,
)

REASONS = {"invalid_payload", "invalid_identifier", "invalid_currency", "amount_out_of_range", "same_account"}


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(accounts.event_names)), json_values)
def test_validation_names_a_reason_for_any_payload_and_is_deterministic(event_name, payload) -> None:
    """DomainValidatesPayload, ValidationIsDeterministic, ValidationNamesAReason (for
    accounts): validate answers ok or one named reason with a detail for ANY payload
    value, never raises, and answers the same for the same event name and payload."""
    first = accounts.validate(event_name, payload)
    assert first == accounts.validate(event_name, payload)
    if first is not None:
        assert first.reason in REASONS and first.detail


_ident_text = st.text(alphabet="ab:Z9_ é", min_size=0, max_size=4)
_fuzzy = st.one_of(_ident_text, st.sampled_from(["EUR", "eur", "EURO"]), st.integers(-2, 3),
                   st.sampled_from([MAX_AMOUNT, MAX_AMOUNT + 1, True, None, 1.0]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(accounts.event_names)), st.dictionaries(
    st.sampled_from(["book", "account", "currency", "amount", "from_account", "to_account", "x"]), _fuzzy))
def test_payload_schema_accepts_what_validate_accepts(event_name, payload) -> None:
    """The JSON Schema that payload_schema gives the OpenAPI document accepts exactly what
    validate accepts, except that a transfer's two accounts must differ, and that a
    number with a zero fraction (1.0) is an integer to JSON Schema (2020-12, section
    6.1.1) while validate refuses it: JSON Schema cannot say either."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = accounts.payload_schema(event_name)
    schema_ok = jsonschema.Draft202012Validator(schema).is_valid(payload)
    rejection = accounts.validate(event_name, payload)
    whole_float = any(type(v) is float and v.is_integer() for v in payload.values())
    if rejection is not None and rejection.reason == "same_account":
        assert schema_ok
    elif rejection is not None and whole_float:
        pass  # the schema may accept 1.0 for an integer: validate is the stricter of the two
    else:
        assert schema_ok == (rejection is None), (payload, rejection)


def test_openapi_document_describes_the_accounts_events() -> None:
    """The REST API's document builds for accounts from the domain alone: one payload
    schema per event name."""
    from app.openapi import document

    doc = document(accounts, timeout_ms=1000, ttl_ms=60000)
    variants = {v["title"]: v["properties"]["payload"]
                for v in doc["components"]["schemas"]["EventRequest"]["oneOf"]}
    assert set(variants) == set(accounts.event_names)
    assert variants[TRANSFER]["required"] == ["book", "from_account", "to_account", "amount"]
    assert variants[OPEN]["properties"]["currency"]["pattern"] == "^[A-Z]{3}$"
    assert variants[DEPOSIT]["properties"]["amount"] == {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT}


# --- properties -----------------------------------------------------------------------

BOOKS = ["b0", "b1"]
NAMES = ["a0", "a1", "a2"]
CURRENCIES = ["EUR", "USD"]
_book, _acct = st.sampled_from(BOOKS), st.sampled_from(NAMES)
# amounts include out-of-range ones (validate must stop them); deposits tend to be larger
# than what leaves, so that withdrawals and transfers often find the funds
_amount, _in = st.integers(-1, 12), st.integers(-1, 60)
_currency = st.sampled_from(["EUR", "EUR", "EUR", "USD"])  # mostly one: transfers need equal currencies
_open = st.builds(lambda b, a, c: (OPEN, open_(b, a, c)), _book, _acct, _currency)

_deposit = st.builds(lambda b, a, n: (DEPOSIT, deposit(b, a, n)), _book, _acct, _in)
_transfer = st.builds(lambda b, s, d, n: (TRANSFER, transfer(b, s, d, n)), _book, _acct, _acct, _amount)

_any_event = st.one_of(
    _open,
    st.builds(lambda b, a: (CLOSE, close(b, a)), _book, _acct),
    _deposit,
    _deposit,
    st.builds(lambda b, a, n: (WITHDRAW, withdraw(b, a, n)), _book, _acct, _amount),
    _transfer,
    _transfer,
    _transfer,  # deposits twice, transfers thrice: a transfer needs two open, funded accounts of one currency
)
# most accounts are opened and funded early, so that later events mostly meet open
# accounts with money rather than being rejected account_not_open
events = st.tuples(st.lists(_open, min_size=4, max_size=12), st.lists(_deposit, max_size=6),
                   st.lists(_any_event, min_size=10, max_size=80)).map(lambda parts: parts[0] + parts[1] + parts[2])


def run(sequence, check_step=None):
    """Applies the sequence as the framework would (validate, entity_keys, states of exactly
    those keys with initial_state for the never-written, evaluate, store the changes);
    returns the states and, per (book, currency), applied deposits minus withdrawals."""
    state: dict[str, dict] = {}
    net: dict[tuple[str, str], int] = {}
    for name, payload in sequence:
        if accounts.validate(name, payload) is not None:
            continue
        keys = accounts.entity_keys(name, payload)
        states = {k: state.get(k, accounts.initial_state(k)) for k in keys}
        out = accounts.evaluate(name, payload, states)
        if check_step is not None:
            check_step(name, payload, states, out)
        if out.status == "applied":
            assert set(out.changes) <= set(keys)
            before = {k: state.get(k) for k in keys}
            state.update(out.changes)
            if name in (DEPOSIT, WITHDRAW):
                (key,) = keys
                currency = state[key]["currency"]
                sign = 1 if name == DEPOSIT else -1
                net[(payload["book"], currency)] = net.get((payload["book"], currency), 0) + sign * payload["amount"]
            for k in keys:  # closed accounts stay closed (closed is terminal)
                if before[k] is not None and before[k]["status"] == "closed":
                    assert k not in out.changes
        else:
            assert out.status == "rejected" and out.reason and not out.changes
    return state, net


@settings(max_examples=300, deadline=None)
@given(events)
def test_no_sequence_overdraws_an_account(sequence) -> None:
    """NonNegativeBalance, BalanceWithinBound (invariants): whatever the event sequence,
    no balance is negative or above the bound."""
    state, _ = run(sequence)
    assert all(0 <= s["balance"] <= MAX_BALANCE for s in state.values())
    assert all(type(s["balance"]) is int for s in state.values())  # DomainUsesIntegersOnly


@settings(max_examples=300, deadline=None)
@given(events)
def test_money_is_conserved_per_currency_and_per_book(sequence) -> None:
    """MoneyConservedPerCurrency, MoneyConservedPerBook (invariants): per currency (and
    per book and currency), the sum of balances equals the applied deposits minus the
    applied withdrawals; transfers, openings and closings move none in or out."""
    state, net = run(sequence)
    for currency in CURRENCIES:
        total = sum(s["balance"] for s in state.values() if s["currency"] == currency)
        assert total == sum(v for (_, c), v in net.items() if c == currency)
        for book in BOOKS:
            in_book = sum(s["balance"] for k, s in state.items()
                          if s["currency"] == currency and k.split(":")[1] == book)
            assert in_book == net.get((book, currency), 0)


@settings(max_examples=300, deadline=None)
@given(events)
def test_closed_accounts_stay_closed_and_empty(sequence) -> None:
    """ClosedAccountIsEmpty (invariant), AccountOpenRejectsExisting: once closed, an
    account is never changed again (no event reopens or funds it) and holds 0; every
    stored account is open or closed with a currency."""
    closed_keys: set[str] = set()

    def step(name, payload, states, out):
        for key in closed_keys & set(states):
            assert states[key] == {"status": "closed", "currency": states[key]["currency"], "balance": 0}
            assert key not in out.changes
        closed_keys.update(k for k, new in out.changes.items() if new["status"] == "closed")

    state, _ = run(sequence, step)
    for key, s in state.items():
        assert s["status"] in ("open", "closed") and s["currency"] in CURRENCIES
        if s["status"] == "closed":
            assert s["balance"] == 0


@settings(max_examples=200, deadline=None)
@given(events)
def test_evaluation_is_pure_and_deterministic(sequence) -> None:
    """AccountsEvaluationIsDeterministic, EvaluationIsDeterministic, EvaluationIsPure,
    OutcomeChangesOnlyNamedEntities: the same event and states give the same outcome
    (whatever order the states mapping is built in), evaluate never mutates its
    arguments, and an applied outcome changes only the entities entity_keys names."""
    def step(name, payload, states, out):
        payload_before, states_before = copy.deepcopy(payload), copy.deepcopy(states)
        again = accounts.evaluate(name, payload, states)
        backward = accounts.evaluate(name, copy.deepcopy(payload), dict(reversed(list(states.items()))))
        assert again == out == backward
        assert (payload, states) == (payload_before, states_before)
        assert set(out.changes) <= set(accounts.entity_keys(name, payload))
        for new in out.changes.values():  # fresh dicts, never the caller's
            assert all(new is not s for s in states.values())

    first, _ = run(sequence, step)
    second, _ = run(list(sequence))
    assert first == second
