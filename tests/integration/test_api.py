"""The REST API against the real stack: a real broker, instances a and b, the Clerk and
`docket api` as processes (tests/integration/procs.py, clerk_kit.py), HTTP over loopback.
Also DocketClient used directly, as a Kafka-native producer would, and schemathesis
against /openapi.json.

One stack per module (starting Faust workers costs seconds each on two cores); tests
isolate themselves by sku and idempotency key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from app.api import create_app
from app.client import DocketClient
from app.records import partition_for
from app.settings import named_token

from tests.integration.procs import wait_for
from tests.integration.stack_kit import API_TIMEOUT_MS, STACK_PARTITIONS, Stack, get_json, post_json, running_stack

pytestmark = pytest.mark.integration

PARTITIONS = STACK_PARTITIONS
TOKEN = "it-" + secrets.token_urlsafe(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("api-stack"), TOKEN, API_TIMEOUT_MS) as s:
        yield s


@pytest.fixture
async def http(stack: Stack):
    async with ClientSession(base_url=stack.url, headers=AUTH) as session:
        yield session


def sku(name: str) -> str:
    return f"{name}-{secrets.token_hex(3)}"


async def submit(http: ClientSession, body: dict, key: str, headers: dict | None = None):
    resp = await http.post("/v1/events", json=body, headers={"Idempotency-Key": key, **(headers or {})})
    return resp.status, resp.headers, await resp.json()


def adjust(warehouse: str, sku_: str, delta: int) -> dict:
    return {"event_name": "stock.adjust", "payload": {"warehouse": warehouse, "sku": sku_, "delta": delta}}


def transfer(sku_: str, src: str, dst: str, quantity: int) -> dict:
    return {"event_name": "stock.transfer",
            "payload": {"sku": sku_, "from_warehouse": src, "to_warehouse": dst, "quantity": quantity}}


# --------------------------------------------------------------------------- happy path


async def test_happy_path_adjust_transfer_reject_and_read_entities(http: ClientSession, stack: Stack) -> None:
    """ApiProducesWithAffinityKey, ApiAnswersWithAgreedOutcome (200 applied, 409 rejected),
    ApiReportsEventStatus, ApiReadsAgreedEntity; inventory AdjustApplied, TransferApplied,
    TransferRejectsInsufficientStock; ResultsShareTheInputPartition."""
    s = sku("happy")
    status, headers, body = await submit(http, adjust("w1", s, 10), f"{s}-receipt")
    assert status == 200, body
    assert headers["Idempotent-Replayed"] == "false"
    assert body["state"] == "decided" and body["replay"] is False
    assert body["outcome"] == {"status": "applied", "reason": None, "detail": "",
                               "entities": [{"key": f"stock:w1:{s}", "state": {"quantity": 10}, "version": 1}]}
    assert sorted(body["instances"]) == ["a", "b"]
    # produced with the affinity key (the sku) through the default partitioner
    assert body["position"]["partition"] == partition_for(s.encode(), PARTITIONS)

    status, _, body = await submit(http, transfer(s, "w1", "w2", 4), f"{s}-move")
    assert status == 200, body
    assert {e["key"]: (e["state"]["quantity"], e["version"]) for e in body["outcome"]["entities"]} == {
        f"stock:w1:{s}": (6, 2), f"stock:w2:{s}": (4, 1)}

    status, _, body = await submit(http, transfer(s, "w2", "w3", 5), f"{s}-too-much")
    assert status == 409, body
    assert body["error"] == "insufficient_stock"
    assert f"stock:w2:{s} holds 4" in body["message"]
    assert body["outcome"]["status"] == "rejected" and body["outcome"]["entities"] == []

    # entity reads after the transfer: the agreed state and version
    resp = await http.get(f"/v1/entities/stock/w1:{s}")
    assert resp.status == 200
    assert await resp.json() == {"key": f"stock:w1:{s}", "state": {"quantity": 6}, "version": 2,
                                 "input": body_position_of(await (await http.get(f"/v1/events/{s}-move")).json())}
    resp = await http.get(f"/v1/entities/stock/w2:{s}")
    assert (await resp.json())["state"] == {"quantity": 4}
    resp = await http.get(f"/v1/entities/stock/w3:{s}")
    assert resp.status == 404  # the rejected transfer changed nothing

    resp = await http.get(f"/v1/events/{s}-too-much")
    assert resp.status == 200
    st = await resp.json()
    assert st["state"] == "decided" and st["outcome"]["reason"] == "insufficient_stock"


def body_position_of(event: dict) -> dict:
    assert event["state"] == "decided", event
    return event["position"]


# --------------------------------------------------------------------------- bad requests


def _bad_requests(s: str) -> list[tuple]:
    """(name, method, path, headers, body or raw bytes, status, error code, text in message)."""
    key = {"Idempotency-Key": f"{s}-bad", "Content-Type": "application/json"}
    return [
        ("no credentials", "POST", "/v1/events", {**key, "Authorization": ""}, adjust("w1", s, 1), 401,
         "unauthorized", "missing credentials"),
        ("basic credentials", "POST", "/v1/events", {**key, "Authorization": "Basic YTpi"}, adjust("w1", s, 1), 401,
         "unauthorized", "must be 'Bearer <token>'"),
        ("wrong token", "POST", "/v1/events", {**key, "Authorization": "Bearer nope"}, adjust("w1", s, 1), 403,
         "forbidden", "not valid for this API"),
        ("text body", "POST", "/v1/events", {**key, "Content-Type": "text/plain"}, b"hello", 415,
         "unsupported_media_type", "got text/plain"),
        ("over 64 KiB", "POST", "/v1/events", key, b'{"event_name": "' + b"x" * 70_000 + b'"}', 413,
         "payload_too_large", "at most 65536"),
        ("broken JSON", "POST", "/v1/events", key, b'{"event_name": ', 400, "invalid_json", "not valid JSON"),
        ("JSON array", "POST", "/v1/events", key, b"[]", 400, "invalid_request", "must be a JSON object"),
        ("missing key", "POST", "/v1/events", {"Content-Type": "application/json"}, adjust("w1", s, 1), 400,
         "invalid_request", "Idempotency-Key header is required"),
        ("oversized key", "POST", "/v1/events", {**key, "Idempotency-Key": "x" * 200}, adjust("w1", s, 1), 400,
         "invalid_request", "200 characters; at most 128"),
        ("key with spaces", "POST", "/v1/events", {**key, "Idempotency-Key": "a b"}, adjust("w1", s, 1), 400,
         "invalid_request", "must be 1-128 characters"),
        ("unknown event", "POST", "/v1/events", key, {"event_name": "stock.burn", "payload": {}}, 400,
         "invalid_request", "inventory has no event 'stock.burn'"),
        ("missing payload field", "POST", "/v1/events", key,
         {"event_name": "stock.adjust", "payload": {"warehouse": "w1", "sku": s}}, 400, "invalid_request",
         "payload.delta: missing field: delta"),
        ("zero delta", "POST", "/v1/events", key, adjust("w1", s, 0), 400, "invalid_request",
         "payload.delta: delta must not be 0"),
        ("string quantity", "POST", "/v1/events", key, transfer(s, "w1", "w2", "3"), 400, "invalid_request",
         "payload.quantity: quantity must be an integer"),
        ("same warehouse", "POST", "/v1/events", key, transfer(s, "w1", "w1", 3), 400, "invalid_request",
         "from_warehouse and to_warehouse must differ"),
        ("bad sku", "POST", "/v1/events", key, adjust("w1", "s/1", 3), 400, "invalid_request",
         "payload.sku: sku must be 1-64 characters"),
        ("extra field", "POST", "/v1/events", key, {**adjust("w1", s, 1), "priority": 1}, 400, "invalid_request",
         "unknown field 'priority'"),
        ("unknown event key", "GET", f"/v1/events/{s}-never", {}, None, 404, "not_found",
         f"no event with idempotency key '{s}-never'"),
        ("unknown entity", "GET", f"/v1/entities/stock/w9:{s}", {}, None, 404, "not_found",
         f"no agreed change of entity 'stock:w9:{s}'"),
        ("bad entity type", "GET", "/v1/entities/st@ck/w1:s1", {}, None, 400, "invalid_request",
         "entity type must be"),
        ("wrong method", "PUT", "/v1/events", key, adjust("w1", s, 1), 405, "method_not_allowed",
         "allowed: POST"),
        ("no such endpoint", "GET", "/v1/stock", {}, None, 404, "not_found", "no such endpoint"),
    ]


async def test_bad_requests_get_the_documented_status_and_error(http: ClientSession, stack: Stack) -> None:
    """ApiRequiresBearerToken, ApiRefusesBadRequests: each refused with its status and a
    message that says what is wrong; none of them reaches Kafka (the input topic gains
    no record)."""
    from chaos.replay import end_offsets

    s = sku("bad")
    before = await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic)
    cases = _bad_requests(s)
    assert len(cases) >= 15
    failures = []
    for name, method, path, headers, body, status, error, text in cases:
        hdrs = dict(headers)
        if hdrs.get("Authorization") == "":
            hdrs.pop("Authorization")
            session = ClientSession(base_url=stack.url)  # no default credentials
        else:
            session = None
        data = body if isinstance(body, bytes) else (None if body is None else orjson.dumps(body))
        async with (session or _Borrowed(http)) as client:
            resp = await client.request(method, path, data=data, headers=hdrs)
            got = await resp.json()
        if resp.status != status or got.get("error") != error or text not in got.get("message", ""):
            failures.append(f"{name}: expected {status} {error} '{text}', got {resp.status} {got}")
    assert not failures, "\n".join(failures)
    after = await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic)
    assert after == before, "a refused request reached the input topic"


class _Borrowed:
    """``async with`` over a session the fixture owns (not closed here)."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def __aenter__(self) -> ClientSession:
        return self.session

    async def __aexit__(self, *exc) -> None:
        return None


async def _raw_request(url: str, request: bytes) -> tuple[int, bytes, bytes]:
    """``request`` written byte for byte on a socket; (status, head, body) of the
    answer, read until the server closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)  # until the server closes
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b"\r\n", 1)[0].split()[1]), head, payload


async def _raw_post(url: str, key_lines: list[str], body: dict,
                    auth_lines: tuple[str, ...] = (f"Bearer {TOKEN}",)) -> tuple[int, dict]:
    """POST /v1/events written byte for byte on a socket, with one ``Idempotency-Key:``
    header line per item of ``key_lines`` and one ``Authorization:`` line per item of
    ``auth_lines`` (so two items are two fields on the wire, not a client library's idea
    of them); returns (status, JSON body)."""
    host = url.removeprefix("http://")
    data = orjson.dumps(body)
    head = ["POST /v1/events HTTP/1.1", f"Host: {host}", *(f"Authorization: {a}" for a in auth_lines),
            "Content-Type: application/json", *(f"Idempotency-Key: {k}" for k in key_lines),
            f"Content-Length: {len(data)}", "Connection: close"]
    status, _, payload = await _raw_request(url, ("\r\n".join(head) + "\r\n\r\n").encode() + data)
    return status, orjson.loads(payload)


async def test_two_idempotency_key_lines_are_400_and_nothing_is_produced(http: ClientSession, stack: Stack) -> None:
    """ApiRefusesAmbiguousIdempotencyKey through `docket api` and the real pipeline: a
    request with two ``Idempotency-Key`` header lines (the reported case, answered 200
    under the first key before the fix), the list a proxy merges them into, and a key
    with parameters are each 400 naming the header with their own reason; none reaches
    the input topic, and neither key becomes known. The same raw request with one line
    is answered 200, so the refusals are the header's doing, not the raw request's."""
    from chaos.replay import end_offsets

    s = sku("hdr")
    before = await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic)
    cases = [([f"{s}-a", f"{s}-b"], "repeated_header"), ([f"{s}-a, {s}-b"], "list_not_allowed"),
             ([f'"{s}-a", "{s}-b"'], "list_not_allowed"), ([f"{s}-a;x=1"], "parameters_not_allowed"),
             ([f'"{s}-a";x=1'], "parameters_not_allowed")]
    for lines, reason in cases:
        status, body = await _raw_post(stack.url, lines, adjust("w1", s, 2))
        assert status == 400, (lines, body)
        assert body["error"] == "invalid_request" and "Idempotency-Key" in body["message"], body
        assert [(e["field"], e["reason"]) for e in body["errors"]] == [("Idempotency-Key", reason)], body
    assert await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic) == before
    for key in (f"{s}-a", f"{s}-b"):
        resp = await http.get(f"/v1/events/{key}")
        assert resp.status == 404, await resp.json()
    status, body = await _raw_post(stack.url, [f'"{s}-a"'], adjust("w1", s, 2))  # one line: an sf-string key
    assert status == 200 and body["idempotency_key"] == f"{s}-a", body
    assert body["outcome"]["entities"][0]["state"] == {"quantity": 2}


async def test_two_authorization_lines_are_401_and_nothing_is_produced(http: ClientSession, stack: Stack) -> None:
    """ApiRequiresBearerToken through `docket api`: two ``Authorization`` header lines,
    a valid token then an unknown one (the reported case, answered 200 as the first
    before the fix) or the valid token twice, are 401 naming the header; nothing reaches
    the input topic and the key stays unknown."""
    from chaos.replay import end_offsets

    s = sku("auth2")
    before = await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic)
    for second in ("Bearer not-a-token", f"Bearer {TOKEN}"):
        status, body = await _raw_post(stack.url, [f"{s}-k"], adjust("w1", s, 2), (f"Bearer {TOKEN}", second))
        assert status == 401, (second, body)
        assert body["error"] == "unauthorized" and "Authorization" in body["message"], body
        assert [(e["field"], e["reason"]) for e in body["errors"]] == [("Authorization", "repeated_header")], body
        assert TOKEN not in str(body)
    assert await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic) == before
    resp = await http.get(f"/v1/events/{s}-k")
    assert resp.status == 404, await resp.json()


async def test_malformed_http_is_400_and_one_warning_line_in_the_api_log(stack: Stack) -> None:
    """ApiRefusesMalformedHttp through `docket api`: requests aiohttp's parser refuses,
    sent without credentials (two Content-Type fields, a NUL in a header, an obs-fold
    line, a header over 8190 bytes) or with the API's valid token followed by a NUL, are
    each answered 400 and leave one WARNING line in the API's log, and no ERROR or
    traceback (before: `ERROR aiohttp.server: Error handling request` and the traceback,
    per request); the token is in neither the answer nor the log (before, both quoted
    the whole header line). ApiClientDisconnectIsNoError: then 20 POSTs with `Expect:
    100-continue` whose client closes the connection after the headers leave no ERROR
    and no traceback either, and the API still serves."""
    import socket

    host = stack.url.removeprefix("http://").encode()
    head = b"Host: " + host + b"\r\nConnection: close\r\n"
    requests = [
        b"POST /v1/events HTTP/1.1\r\n" + head + b"Content-Type: application/json\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"GET /v1/events/k HTTP/1.1\r\n" + head + b"X-Note: a\x00b\r\n\r\n",
        b"GET /v1/events/k HTTP/1.1\r\n" + head + b"X-Note: a\r\n folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n" + head + b"X-Note: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/events/k HTTP/1.1\r\n" + head + f"Authorization: Bearer {TOKEN}\x00\r\n\r\n".encode(),
    ]
    marker = "refused a malformed HTTP request from 127.0.0.1 (the client's fault)"
    before = stack.api.log_text().count(marker)
    for request in requests:
        status, _, body = await _raw_request(stack.url, request)
        assert status == 400, request[:80]
        assert TOKEN.encode() not in body, body
    await wait_for(lambda: stack.api.log_text().count(marker) == before + len(requests), 30,
                   f"{len(requests)} more warnings in the API's log", detail=stack.api.log_tail)
    log = stack.api.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    for said in ("Duplicate 'Content-Type' header found", "Invalid header value char",
                 "Unexpected whitespace after header value", "Got more than 8190 bytes",
                 "Invalid header value char (header field 'Authorization'; its value is not shown)"):
        assert f"[WARNING] aiohttp.server: {marker}: {said}" in log, log[-3000:]
    assert TOKEN not in log

    stack.api.assert_alive()

    # a second API process at log level info: its access log line per request says when
    # each of them has been handled
    api, url = await stack.start_api("api-info", DOCKET_LOG_LEVEL="info")
    port = int(url.rsplit(":", 1)[1])
    expect = (b"POST /v1/events HTTP/1.1\r\n" + head + f"Authorization: Bearer {TOKEN}\r\n".encode()
              + b"Content-Type: application/json\r\nIdempotency-Key: gone-1\r\nExpect: 100-continue\r\n"
              b"Content-Length: 90\r\n\r\n")
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(expect)

    def handled() -> list[str]:
        return [line for line in api.log_text().splitlines() if '"POST /v1/events HTTP/1.1"' in line]
    await wait_for(lambda: len(handled()) >= 20, 60, "20 POSTs in the access log", detail=api.log_tail)
    log = api.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    gone = [line for line in log.splitlines() if "closed the connection before its request was answered" in line]
    assert len(gone) <= 20 and all(" [INFO] aiohttp.server: " in line for line in gone), gone
    assert {line.split('"POST /v1/events HTTP/1.1" ', 1)[1].split()[0] for line in handled()} <= {"499", "400"}
    api.assert_alive()


# --------------------------------------------------------------------------- idempotency


async def test_repeated_key_returns_the_original_outcome_as_a_replay(http: ClientSession) -> None:
    """ApiReplaysRepeatedKey, WardenRecognisesDuplicate, DuplicateRepeatsOriginalOutcome,
    DuplicateRequestAnsweredWithOriginal: the repeat is produced again and the instances
    answer it with the original outcome; stock changes once."""
    s = sku("replay")
    first_status, _, first = await submit(http, adjust("w1", s, 7), f"{s}-k")
    assert first_status == 200, first
    again_status, headers, again = await submit(http, adjust("w1", s, 7), f"{s}-k")
    assert again_status == 200, again
    assert headers["Idempotent-Replayed"] == "true"
    assert again["replay"] is True
    assert again["duplicate_of"] == first["position"]
    assert again["position"] != first["position"]  # a record of its own, answered as a duplicate
    assert again["outcome"] == first["outcome"]
    ent = await (await http.get(f"/v1/entities/stock/w1:{s}")).json()
    assert (ent["state"], ent["version"]) == ({"quantity": 7}, 1)  # applied once
    # a rejection is replayed as the same rejection
    status, _, rej = await submit(http, adjust("w1", s, -100), f"{s}-neg")
    assert status == 409, rej
    status, headers, rej2 = await submit(http, adjust("w1", s, -100), f"{s}-neg")
    assert status == 409 and rej2["replay"] is True and headers["Idempotent-Replayed"] == "true"
    assert rej2["outcome"] == rej["outcome"]


async def test_reused_key_with_a_different_request_is_422(http: ClientSession, stack: Stack) -> None:
    """ApiRefusesKeyReusedAcrossPartitions (422 before Kafka, for another body or another
    partition), ApiAnswersWithAgreedOutcome (the Warden's idempotency_key_reused mapped
    to 422 when the key is known only from the results topic), WardenRejectsReusedKey."""
    from chaos.replay import end_offsets

    s = sku("reuse")
    status, _, first = await submit(http, adjust("w1", s, 3), f"{s}-k")
    assert status == 200, first
    before = await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic)
    # same key, other body: this API process knows the key's request, so Kafka never sees it
    status, _, body = await submit(http, adjust("w1", s, 4), f"{s}-k")
    assert status == 422, body
    assert body["error"] == "idempotency_key_reused"
    assert "was already used" in body["message"] and "for a different request" in body["message"]
    assert body["errors"][0]["field"] == "Idempotency-Key"
    # same key, an event for another sku (another partition, whose Warden cannot know it)
    other = next(f"{s}-{i}" for i in range(100)
                 if partition_for(f"{s}-{i}".encode(), PARTITIONS) != first["position"]["partition"])
    status, _, body = await submit(http, adjust("w1", other, 3), f"{s}-k")
    assert status == 422 and "routes to another partition" in body["message"], body
    assert await end_offsets(stack.settings.kafka_bootstrap, stack.settings.input_topic) == before

    # another API process knows the key only from the results topic (not the request's
    # fingerprint): it produces, and the Warden's verdict comes back as 422
    settings = dataclasses.replace(stack.settings, api_timeout_ms=API_TIMEOUT_MS)
    client = DocketClient(settings)
    await client.start()
    app = create_app(settings, client, tokens=(TOKEN,), connect=False)
    try:
        await client.wait_caught_up(60)
        # the key is the API client's (its token's name scopes it), not a Kafka-native one
        assert client.status(f"{s}-k").state == "unknown"
        assert client.status(f"{s}-k", named_token(TOKEN)[0]).state == "decided"
        async with TestServer(app) as server, ClientSession(headers=AUTH) as other_http:
            resp = await other_http.post(server.make_url("/v1/events"), json=adjust("w1", s, 4),
                                         headers={"Idempotency-Key": f"{s}-k"})
            body = await resp.json()
            assert resp.status == 422, body
            assert body["state"] == "decided" and body["outcome"]["reason"] == "idempotency_key_reused"
            assert f"partition {first['position']['partition']} offset {first['position']['offset']}" in body["message"]
    finally:
        await client.stop()
    ent = await (await http.get(f"/v1/entities/stock/w1:{s}")).json()
    assert ent["state"] == {"quantity": 3}


# --------------------------------------------------------------------------- timeout


async def test_timeout_gives_202_then_polling_finds_the_decision(http: ClientSession, stack: Stack) -> None:
    """ApiAnswersPendingAfterTimeout, ApiReportsEventStatus (pending -> decided): with the
    Clerk stopped nothing can be decided; the request is accepted (202 + Location) and is
    decided once the Clerk is back."""
    await stack.clerk.stop(60)
    s = sku("slow")
    try:
        status, headers, body = await submit(http, adjust("w1", s, 2), f"{s}-k", {"Prefer": "wait=1"})
        assert status == 202, body
        assert headers["Location"] == f"/v1/events/{s}-k"
        assert headers["Preference-Applied"] == "wait=1"
        assert body["state"] == "pending" and "the event was accepted" in body["message"]
        resp = await http.get(headers["Location"])
        assert resp.status == 200 and (await resp.json())["state"] == "pending"
    finally:
        stack.clerk.start()

    async def decided():
        resp = await http.get(f"/v1/events/{s}-k")
        body = await resp.json()
        return body if body.get("state") == "decided" else None

    body = await wait_for(decided, 120, f"{s}-k to be decided after the Clerk restarted",
                          detail=stack.clerk.log_tail)
    assert body["outcome"]["status"] == "applied"
    assert body["outcome"]["entities"][0]["state"] == {"quantity": 2}
    status, _, again = await submit(http, adjust("w1", s, 2), f"{s}-k")
    assert status == 200 and again["replay"] is True


# --------------------------------------------------------------------------- the Python client


async def test_python_client_without_http(stack: Stack) -> None:
    """DocketClient as a Kafka-native producer uses it: submit, replay, status, entity;
    a client started later loads entity states from the compacted entities topic
    (ClerkPublishesAgreedEntityStates, ApiEntityViewFromCompactedTopic: before the
    results consumer starts, without replaying results)."""
    s = sku("native")
    async with DocketClient(stack.settings) as client:
        sub = await client.submit("stock.adjust", {"warehouse": "w1", "sku": s, "delta": 12}, f"{s}-1", timeout=60)
        assert sub.status == "decided" and sub.outcome["status"] == "applied" and not sub.replay
        sub2 = await client.submit("stock.transfer", {"sku": s, "from_warehouse": "w1", "to_warehouse": "w2",
                                                      "quantity": 5}, f"{s}-2", timeout=60)
        assert sub2.outcome["status"] == "applied"
        again = await client.submit("stock.adjust", {"warehouse": "w1", "sku": s, "delta": 12}, f"{s}-1", timeout=60)
        assert again.replay and again.result["duplicate_of"] == {"partition": sub.position[0],
                                                                 "offset": sub.position[1]}
        assert client.status(f"{s}-1").state == "decided"
        assert client.entity(f"stock:w1:{s}")["state"] == {"quantity": 7}

    async def later_client_sees_it() -> bool:
        # the Clerk writes entity records just after the result: wait until they are there
        from chaos.replay import read_topic

        recs = await read_topic(stack.settings.kafka_bootstrap, stack.settings.entities_topic)
        return sum(1 for r in recs if r.key in (f"stock:w1:{s}".encode(), f"stock:w2:{s}".encode())) >= 3

    await wait_for(later_client_sees_it, 30, "the Clerk's entity records for the transfer")
    later = DocketClient(stack.settings)
    await later.start()
    try:
        # loaded from the entities topic before the results consumer even started
        assert later.entities_loaded >= 3
        assert later.entity(f"stock:w1:{s}")["state"] == {"quantity": 7}
        assert later.entity(f"stock:w1:{s}")["version"] == 2
        assert later.entity(f"stock:w2:{s}")["state"] == {"quantity": 5}
    finally:
        await later.stop()


# --------------------------------------------------------------------------- probes and metrics


async def test_readiness_and_metrics_after_traffic(http: ClientSession, stack: Stack) -> None:
    """ApiReadiness; /metrics counts requests by status and the server-side wait."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = await http.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "checks": {"kafka_connected": True, "results_caught_up": True},
                                 "domain": "inventory"}
    s = sku("metrics")
    status, _, _ = await submit(http, adjust("w1", s, 1), f"{s}-k")
    assert status == 200
    text = await (await http.get("/metrics")).text()
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for fam in text_string_to_metric_families(text) for x in fam.samples}
    assert samples[("docket_api_requests_total", (("method", "POST"), ("route", "/v1/events"),
                                                  ("status", "200")))] >= 1
    assert samples[("docket_api_result_wait_seconds_count", ())] >= 1
    assert samples[("docket_api_submissions_total", (("result", "applied"),))] >= 1
    assert samples[("docket_api_ready", ())] == 1


# --------------------------------------------------------------------------- schemathesis


SCHEMATHESIS_EXAMPLES = 25


def test_schemathesis_finds_no_server_error_and_no_schema_violation(stack: Stack, tmp_path: Path) -> None:
    """Property-based requests generated from /openapi.json (valid and invalid), a bounded
    number per operation: no 5xx, and every response's status, content type, headers and
    body conform to the document."""
    from app import openapi
    from app.domains.inventory import inventory

    # the document's examples exist (the domain's kit), so the examples phase reaches 200
    # answers of every operation (the POST example is then a replay)
    status, body = post_json(stack.url + "/v1/events", openapi.example_event(inventory), openapi.EXAMPLE_KEY, AUTH)
    assert status == 200, body
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe), "--no-color", "run", f"{stack.url}/openapi.json",
           "--header", f"Authorization: Bearer {TOKEN}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_headers_conformance,response_schema_conformance,negative_data_rejection",
           "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--seed", "20261122", "--workers", "1",
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
           "--generation-database", "none", "--generation-with-security-parameters", "false",
           "--report", "junit", "--report-dir", str(tmp_path)]
    began = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, check=False, cwd=tmp_path,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})  # its crash cache stays in tmp_path
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"schemathesis failed (exit {proc.returncode}):\n{out[-12000:]}"
    import re

    counts = re.search(r"Test cases:\s*\n?\s*(\d+) generated, (\d+) passed", out)
    assert counts, out[-3000:]
    generated, passed = int(counts[1]), int(counts[2])
    assert generated == passed and passed >= 100, out[-3000:]
    assert "Tested: 6" in out, out[-3000:]  # every operation of the document
    print(f"schemathesis: {time.monotonic() - began:.1f} s\n{out[-1500:]}")


# --------------------------------------------------------------------------- a fresh stack's start


async def test_a_client_on_topics_just_created_logs_no_kafka_error(kafka_bootstrap: str, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """ApiServesWithoutKafka, ApiReadiness: on a fresh stack the API's client starts
    right after `docket topics create`, while the new partitions' leaders are still
    taking over. It waits until every partition of its topics has a leader that answers
    before its consumer takes any partition and before it produces, so aiokafka logs
    nothing at WARNING or above (before, each start logged 'ERROR
    aiokafka.consumer.fetcher: Failed fetch offsets from 1: [Error 6]
    NotLeaderForPartitionError' for a partition of <prefix>.entities), and it becomes
    ready and takes an event. Three fresh sets of topics, each created just before."""
    import logging

    from app.topics import create_topics
    from tests.integration.stack_kit import stack_settings

    caplog.set_level(logging.WARNING)
    for attempt in range(3):
        settings = dataclasses.replace(stack_settings(kafka_bootstrap, tmp_path / str(attempt)), partitions=8)
        await create_topics(settings)
        async with DocketClient(settings) as client:
            await client.wait_caught_up(60)
            assert client.ready
            sub = await client.submit("stock.adjust", {"warehouse": "w1", "sku": "fresh", "delta": 1},
                                      f"fresh-{attempt}", timeout=0)
            assert sub.status == "pending" and sub.position[1] == 0, sub  # accepted; no instances run here
    noise = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
             if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING]
    assert not noise, "\n".join(noise)
