"""A divergence seen through the REST API: instance b flips a bit in every applied output
(``--inject-faults bitflip:1``), so the Clerk can never find two matching copies of an
applied event. The API must answer 502 with the Clerk's report, show the key as
``diverged``, and publish no entity state; rejections carry no quantity, so they still
agree and are answered normally. The report on the divergences topic names the request
and carries both bodies; a second API started after the divergence answers the key
``diverged`` too; ``docket divergences --json`` lists it with the flipped quantity.

Its own stack (instances a and b, the Clerk) and an in-process API on a free port, in a
module of its own so it never runs beside tests/integration/test_api.py's stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from app.api import create_app
from app.canonical import canonical, digest
from app.client import DocketClient

from tests.integration.clerk_kit import (  # noqa: F401  fixtures
    clerk_env,
    clerk_settings,
    instances,
    read_all,
    required_copies,
    spawn,
)
from tests.integration.procs import worker_env

pytestmark = pytest.mark.integration

TOKEN = "div-" + secrets.token_urlsafe(12)


async def test_divergent_event_is_502_and_its_key_reads_diverged(clerk_settings, spawn) -> None:
    """ApiAnswersDiverged (a diverged position is answered 502, never left waiting),
    ApiAnswersWithAgreedOutcome (rejections carry no quantity: both copies agree, 409),
    ApiReportsEventStatus (diverged), ApiReadsAgreedEntity (nothing agreed: 404); the
    Clerk's divergence report reaches the waiting request through the one consumer.
    ClerkPublishesDivergence (the record names the key and event name and carries both
    bodies), ApiIndexesDivergenceByKey (a second API, started after the divergence,
    answers the key diverged from the report it reads at start), OperatorListsDivergences
    (`docket divergences --json` shows the flipped quantity)."""
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

            flipped = await _check_divergence_record(settings, f"{sku}-apply", body["position"])
            await _check_second_api_answers_diverged(settings, http, sku, flipped)
            await _check_docket_divergences_lists_it(settings, f"{sku}-apply", flipped)
            for proc in (a, b, clerk):
                proc.assert_alive()
    finally:
        await client.stop()


async def _check_divergence_record(settings, key: str, position: dict) -> int:
    """The record on the divergences topic: key, event name, named by a (the lowest id:
    the copies all differ), both bodies, each the bytes its digest covers; b's quantity
    is a's with one bit flipped. Returns b's quantity."""
    records = [r.value for r in await read_all(settings.kafka_bootstrap, settings.divergences_topic)
               if r.value["input"] == position]
    assert records, f"no divergence record for {position} on {settings.divergences_topic}"
    rec = records[0]
    assert (rec["idempotency_key"], rec["event_name"], rec["named_by"]) == (key, "stock.adjust", "a")
    assert rec["cause"] == "mismatch" and rec["decided"] is None and isinstance(rec["stream_time"], int)
    copies = {c["instance"]: c for c in rec["copies"]}
    assert sorted(copies) == ["a", "b"]
    for c in copies.values():
        assert c["body_truncated"] is False and digest(canonical(c["body"])) == c["digest"]
        assert c["body"]["idempotency_key"] == key and c["body"]["input"] == position
    qa = copies["a"]["body"]["outcome"]["entities"][0]["state"]["quantity"]
    qb = copies["b"]["body"]["outcome"]["entities"][0]["state"]["quantity"]
    assert qa == 5 and bin(qa ^ qb).count("1") == 1, (qa, qb)
    return qb


async def _check_second_api_answers_diverged(settings, http: ClientSession, sku: str, flipped: int) -> None:
    """Another API process, started after the divergence, knows the key only from the
    report it reads within the lookback."""
    second = DocketClient(settings)
    await second.start()
    try:
        await second.wait_caught_up(60)
        app = create_app(settings, second, tokens=(TOKEN,), connect=False)
        async with TestServer(app) as server:
            resp = await http.get(server.make_url(f"/v1/events/{sku}-apply"))
            st = await resp.json()
            assert resp.status == 200 and st["state"] == "diverged", st
            assert st["divergence"]["idempotency_key"] == f"{sku}-apply"
            quantities = sorted(c["body"]["outcome"]["entities"][0]["state"]["quantity"]
                                for c in st["divergence"]["copies"])
            assert quantities == sorted([5, flipped])
            resp = await http.get(server.make_url(f"/v1/events/{sku}-reject"))
            st = await resp.json()
            assert resp.status == 200 and st["state"] == "decided", st
    finally:
        await second.stop()


async def _check_docket_divergences_lists_it(settings, key: str, flipped: int) -> None:
    """`docket divergences --json`, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from app.cli import main; main()", "divergences", "--json", "--since", "1h",
        cwd=Path(__file__).resolve().parents[2], env=worker_env(settings),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")
    listed = [r for r in json.loads(out) if r.get("idempotency_key") == key]
    assert listed, out.decode(errors="replace")[:2000]
    assert listed[0]["diff"] == [{"path": "outcome.entities[0].state.quantity",
                                  "values": {"a": "5", "b": str(flipped)}}]
