"""A divergence seen through the REST API: instance b flips a bit in every applied output
(``--inject-faults bitflip:1``), so the Clerk can never find two matching copies of an
applied event. The API must answer 502 with the Clerk's report, show the key as
``diverged``, and publish no entity state; rejections carry no quantity, so they still
agree and are answered normally.

Its own stack (instances a and b, the Clerk) and an in-process API on a free port, in a
module of its own so it never runs beside tests/integration/test_api.py's stack.
"""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from app.api import create_app
from app.client import DocketClient

from tests.integration.clerk_kit import (  # noqa: F401  fixtures
    clerk_env,
    clerk_settings,
    instances,
    required_copies,
    spawn,
)

pytestmark = pytest.mark.integration

TOKEN = "div-" + secrets.token_urlsafe(12)


async def test_divergent_event_is_502_and_its_key_reads_diverged(clerk_settings, spawn) -> None:
    """ApiAnswersDiverged (a diverged position is answered 502, never left waiting),
    ApiAnswersWithAgreedOutcome (rejections carry no quantity: both copies agree, 409),
    ApiReportsEventStatus (diverged), ApiReadsAgreedEntity (nothing agreed: 404); the
    Clerk's divergence report reaches the waiting request through the one consumer."""
    a = spawn("a").start()
    b = spawn("b", "--inject-faults", "bitflip:1").start()
    clerk = spawn("clerk", command="clerk").start()
    # generous: the first event waits for both Faust workers and the Clerk to start
    settings = dataclasses.replace(clerk_settings, api_timeout_ms=180_000)
    client = DocketClient(settings)
    await client.start()
    app = create_app(settings, client, tokens=(TOKEN,), connect=False)
    sku = f"div-{secrets.token_hex(3)}"
    try:
        async with TestServer(app) as server, ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async def post(key: str, delta: int):
                resp = await http.post(server.make_url("/v1/events"), headers={"Idempotency-Key": key},
                                       json={"event_name": "stock.adjust",
                                             "payload": {"warehouse": "w1", "sku": sku, "delta": delta}})
                return resp.status, await resp.json()

            status, body = await post(f"{sku}-reject", -5)  # no quantity to corrupt: both copies agree
            assert status == 409, (body, b.log_tail())
            assert body["error"] == "insufficient_stock" and sorted(body["instances"]) == ["a", "b"]

            status, body = await post(f"{sku}-apply", 5)
            assert status == 502, body
            assert body["error"] == "diverged" and body["state"] == "diverged"
            assert "no outcome was published" in body["message"]
            copies = body["divergence"]["copies"]
            assert sorted(c["instance"] for c in copies) == ["a", "b"]
            assert copies[0]["digest"] != copies[1]["digest"]
            assert body["divergence"]["decided"] is None
            assert body["divergence"]["input"] == body["position"]
            assert "FAULT INJECTED kind=bitflip instance=b" in b.log_text()

            resp = await http.get(server.make_url(f"/v1/events/{sku}-apply"))
            st = await resp.json()
            assert resp.status == 200 and st["state"] == "diverged", st
            assert st["divergence"]["copies"] == copies
            resp = await http.get(server.make_url(f"/v1/entities/stock/w1:{sku}"))
            assert resp.status == 404  # a diverged event publishes no state
            for proc in (a, b, clerk):
                proc.assert_alive()
    finally:
        await client.stop()
