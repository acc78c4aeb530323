"""The accounts domain through the whole stack (instances a and b, the Clerk, the REST
API, on the test suite's broker), driven only through its kit (app/domains/kit.py):
the OpenAPI document's examples, and `docket demo --domain accounts` with its checks
over the API's answers. The inventory equivalents are in test_api.py and test_stack.py."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import app.domains  # noqa: F401  registers the built-in domains
from app import openapi
from app.registry import registry
from tests.integration.stack_kit import Stack, get_json, post_json, running_stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "accounts-token"
KIT = registry.kit("accounts")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("accounts-stack"), TOKEN, domain="accounts",
                       warm_up=openapi.example_event(KIT.domain)) as s:
        yield s


def test_openapi_examples_are_the_accounts_kits_and_answer(stack: Stack) -> None:
    """ExampleEventApplies, through the API: /openapi.json of an accounts stack carries
    the kit's examples; the example event (the warm-up, so this is a replay) answers 200
    applied, and the example entity reads back open with balance 0 (AccountOpened)."""
    status, doc = get_json(stack.url + "/openapi.json")
    assert status == 200
    example = doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert example == openapi.example_event(KIT.domain) and example["event_name"] == "account.open"
    status, body = post_json(stack.url + "/v1/events", example, "warm-up-1", stack.auth)
    assert status == 200 and body["replay"] is True and body["outcome"]["status"] == "applied", body
    kind, ident = [p["example"] for p in doc["paths"]["/v1/entities/{type}/{id}"]["get"]["parameters"]]
    status, ent = get_json(f"{stack.url}/v1/entities/{kind}/{ident}", stack.auth)
    assert status == 200 and ent["key"] == KIT.example_entity, ent
    assert ent["state"] == {"status": "open", "currency": "EUR", "balance": 0} and ent["version"] == 1, ent


def test_demo_on_accounts_passes_its_checks(stack: Stack) -> None:
    """`docket demo --domain accounts`: every event decided, the accounts rejections among
    them, and the kit's checks over the API's answers pass: NonNegativeBalance,
    MoneyConservedPerBook (per book and currency, balances == applied deposits -
    withdrawals), ClosedAccountIsEmpty."""
    docket = Path(sys.executable).with_name("docket")
    out = subprocess.run([str(docket), "demo", "--domain", "accounts", "--url", stack.url, "--token", TOKEN,
                          "--events", "800", "--seed", "3", "--concurrency", "16", "--shape", "books=8"],
                         cwd=ROOT, env={**stack.env, "COLUMNS": "160"}, capture_output=True, text=True,
                         timeout=300, check=False)
    print(out.stdout)
    table = out.stdout
    assert out.returncode == 0, f"demo exit code {out.returncode}\n{out.stdout}\n{out.stderr}\n{stack.logs()}"
    assert re.search(r"balance check\s*│\s*passed", table), table
    assert re.search(r"money_conserved\s*│\s*16 \(book, currency\) totals conserved", table), table
    assert re.search(r"no_negative_balance\s*│\s*\d+ published entity states, none negative", table), table
    assert re.search(r"closed_accounts_empty\s*│\s*[1-9]\d* accounts closed", table), table
    assert "rejected: insufficient_funds" in table and "rejected: currency_mismatch" in table, table
    assert "error:" not in table and "undecided" not in table, table
