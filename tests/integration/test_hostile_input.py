"""Hostile producers and clients (issue 12) against the real stack: a real broker,
instances a and b, the Clerk and ``docket api`` as processes (tests/integration/stack_kit.py).

- transactions: aborted, committed and open-then-aborted ones interleaved with plain
  records on one partition; only committed records have any effect, and the pure replay
  of the input agrees with every result;
- producers' clocks: records stamped an hour ahead, at 0, at -1 or in microseconds, and
  an API whose host clock runs ahead, cannot expire an idempotency key: a retry is a
  replay, through this API process or a second one;
- duplicate JSON member names: refused over HTTP (400) and on Kafka (malformed_record);
- an input topic without broker timestamps: the workers, `docket topics create` and the
  API refuse it, saying how to fix it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession
from aiokafka import AIOKafkaProducer

import app.client
from app.client import DocketClient
from app.domains import registry
from app.kafka_config import client_kwargs
from app.records import unseal_batch
from app.settings import Settings, named_token
from chaos.replay import end_offsets, read_topic, replay
from tests.integration.clerk_kit import TopicTail
from tests.integration.procs import wait_for
from tests.integration.stack_kit import Stack, running_stack

pytestmark = pytest.mark.integration

TOKEN = "hostile-" + secrets.token_urlsafe(12)
OTHER = "other-" + secrets.token_urlsafe(12)  # a second token of the older, unnamed form
ALICE = "alice-" + secrets.token_urlsafe(12)
LOG_APPEND_TIME = 1  # Kafka's timestamp type of a record stamped by the broker
HOUR_MS = 3_600_000
DEADLINE_S = 120  # for a result or a view to catch up: generous, two cores shared with the whole stack


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("hostile-stack"), TOKEN,
                       more_tokens=(OTHER, f"alice:{ALICE}")) as s:
        yield s


@pytest.fixture
async def http(stack: Stack):
    async with ClientSession(base_url=stack.url, headers=stack.auth) as session:
        yield session


@pytest.fixture
async def results(stack: Stack):
    tail = await TopicTail(stack.settings.kafka_bootstrap, stack.settings.results_topic).start()
    yield tail
    await tail.stop()


@pytest.fixture
async def plain_producer(stack: Stack):
    # max_request_size a little above the broker's message.max.bytes (1 MiB + 12), so a
    # record the broker takes is never refused by this producer first
    producer = AIOKafkaProducer(**client_kwargs(stack.settings, "test", "producer", bootstrap_servers=stack.settings.kafka_bootstrap, acks="all",
                                enable_idempotence=True, max_request_size=1_100_000))
    await producer.start()
    yield producer
    await producer.stop()


def envelope(ikey: str, sku: str, delta: int, warehouse: str = "wh-01") -> bytes:
    return orjson.dumps({"idempotency_key": ikey, "event_name": "stock.adjust",
                         "payload": {"warehouse": warehouse, "sku": sku, "delta": delta}})


async def quantity(http: ClientSession, warehouse: str, sku: str) -> int | None:
    resp = await http.get(f"/v1/entities/stock/{warehouse}:{sku}")
    return (await resp.json())["state"]["quantity"] if resp.status == 200 else None


async def has_quantity(http: ClientSession, sku: str, want: int, warehouse: str = "wh-01") -> bool:
    return await quantity(http, warehouse, sku) == want


def result_at(tail: TopicTail, position: tuple[int, int]) -> dict | None:
    tail.check()
    for r in tail.records:
        if (r.value["input"]["partition"], r.value["input"]["offset"]) == position:
            return r.value
    return None


# --------------------------------------------------------------------------- transactions


async def test_only_committed_transactions_have_an_effect(stack: Stack, http: ClientSession, results: TopicTail,
                                                          plain_producer: AIOKafkaProducer) -> None:
    """ConsumersReadCommitted, AbortedTransactionHasNoEffect, OpenTransactionIsReadOnceCommitted:
    on one partition, a plain record, an aborted transaction, a committed one, and one held
    open for 30 s and then aborted, with a plain record behind it. Only the plain records
    and the committed transaction are applied (11, then 13), nothing is published or
    copied for the aborted ones, the plain record behind the open transaction waits for
    it to end, and the pure replay of the committed input agrees with every result."""
    s = stack.settings
    sku = f"txn-{secrets.token_hex(3)}"
    key = sku.encode()
    txn = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap, transactional_id=f"hostile-{secrets.token_hex(4)}"))
    await txn.start()
    try:
        p1 = await plain_producer.send_and_wait(s.input_topic, envelope(f"{sku}-p1", sku, 1), key=key)
        await txn.begin_transaction()
        aborted = await txn.send_and_wait(s.input_topic, envelope(f"{sku}-aborted", sku, 100), key=key)
        await txn.abort_transaction()
        async with txn.transaction():
            committed = await txn.send_and_wait(s.input_topic, envelope(f"{sku}-committed", sku, 10), key=key)
        await txn.begin_transaction()
        held = await txn.send_and_wait(s.input_topic, envelope(f"{sku}-open", sku, 1000), key=key)
        opened = time.monotonic()
        p2 = await plain_producer.send_and_wait(s.input_topic, envelope(f"{sku}-p2", sku, 2), key=key)
        assert len({r.partition for r in (p1, aborted, committed, held, p2)}) == 1
        pos = {name: (r.partition, r.offset) for name, r in
               (("p1", p1), ("aborted", aborted), ("committed", committed), ("open", held), ("p2", p2))}

        await wait_for(lambda: result_at(results, pos["committed"]), DEADLINE_S, "the committed transaction's result",
                       detail=stack.logs)
        # the API's entity view follows the results topic with a reader of its own
        await wait_for(lambda: has_quantity(http, sku, 11), DEADLINE_S, "the API to show 11", detail=stack.logs)
        # The scenario: the transaction stays open 30 s. Then the record behind it is still
        # unread by every docket consumer (the last stable offset is held before it).
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - opened)))
        assert result_at(results, pos["p2"]) is None
        assert await quantity(http, "wh-01", sku) == 11
        await txn.abort_transaction()
    finally:
        await txn.stop()

    p2_result = await wait_for(lambda: result_at(results, pos["p2"]), DEADLINE_S,
                               "the record behind the aborted transaction to be decided", detail=stack.logs)
    assert p2_result["outcome"]["status"] == "applied"
    await wait_for(lambda: has_quantity(http, sku, 13), DEADLINE_S, "the API to show 13", detail=stack.logs)
    assert result_at(results, pos["aborted"]) is None and result_at(results, pos["open"]) is None
    for instance in s.instances:
        copies = await read_topic(s.kafka_bootstrap, s.output_topic(instance))
        answered = {(body["input"]["partition"], body["input"]["offset"])
                    for c in copies for body in (orjson.loads(b) for _, b in unseal_batch(c.value)[2])}
        assert pos["aborted"] not in answered and pos["open"] not in answered
        assert {pos["p1"], pos["committed"], pos["p2"]} <= answered

    # the oracle reads the same committed records and agrees with every published result
    partition = p1.partition
    inputs = await read_topic(s.kafka_bootstrap, s.input_topic, [partition])
    assert {r.offset for r in inputs} >= {pos["p1"][1], pos["committed"][1], pos["p2"][1]}
    assert not {r.offset for r in inputs} & {pos["aborted"][1], pos["open"][1]}
    oracle = replay(inputs, registry.versions(s.domain), s.partitions, s.idempotency_ttl_ms)
    published = [r.value for r in results.records if r.value["input"]["partition"] == partition]
    assert published
    for result in published:
        assert result["digest"] == oracle.digests[(partition, result["input"]["offset"])]


# --------------------------------------------------------------------------- producers' clocks


async def test_no_producer_clock_can_expire_an_idempotency_key(stack: Stack, http: ClientSession,
                                                               plain_producer: AIOKafkaProducer) -> None:
    """ProducerClockCannotExpireAKey, BrokerSetsStreamTime, TopicsUseBrokerTime,
    ApiTakesStreamTimeFromAcknowledgement: after a request with key K is applied (+4),
    a valid record for the same sku stamped 59 minutes ahead is applied (+10), and a
    retry of K is a replay with the original outcome (stock 14, never 18); the same
    after records stamped at 0, at -1 and in microseconds (+10 each). Each is stamped
    again by the broker (LogAppendTime), and a second API process answers the retry as
    a replay too."""
    s = stack.settings
    sku = f"clock-{secrets.token_hex(3)}"
    k = f"{sku}-K"
    body = {"event_name": "stock.adjust", "payload": {"warehouse": "wh-01", "sku": sku, "delta": 4}}
    resp = await http.post("/v1/events", json=body, headers={"Idempotency-Key": k})
    first = await resp.json()
    assert resp.status == 200, first
    hostile = {"an-hour-ahead": lambda now: now + 59 * 60_000, "zero": lambda now: 0,
               "minus-one": lambda now: -1, "microseconds": lambda now: now * 1000}
    acks = {}
    for n, (name, stamp) in enumerate(hostile.items(), start=1):
        sent_ms = int(time.time() * 1000)
        acks[name] = await plain_producer.send_and_wait(s.input_topic, envelope(f"{sku}-{name}", sku, 10),
                                                        key=sku.encode(), timestamp_ms=stamp(sent_ms))

        async def applied(want=4 + 10 * n) -> bool:
            return await quantity(http, "wh-01", sku) == want
        await wait_for(applied, DEADLINE_S, f"the {name} record to be applied", detail=stack.logs)
        resp = await http.post("/v1/events", json=body, headers={"Idempotency-Key": k})
        again = await resp.json()
        assert resp.status == 200, (name, again)
        assert again["replay"] is True and resp.headers["Idempotent-Replayed"] == "true", (name, again)
        assert again["duplicate_of"] == first["position"] and again["outcome"] == first["outcome"]
        assert await quantity(http, "wh-01", sku) == 4 + 10 * n, name
        # the broker's clock, not the producer's (a generous minute of slack for a busy box)
        meta = acks[name]
        assert meta.timestamp_type == LOG_APPEND_TIME, name
        assert abs(meta.timestamp - sent_ms) < 60_000, (name, meta.timestamp)
        assert abs(again["stream_time"] - sent_ms) < 10 * 60_000, (name, again["stream_time"])
    inputs = {r.offset: r for r in await read_topic(s.kafka_bootstrap, s.input_topic, [acks["zero"].partition])}
    for name, meta in acks.items():
        assert inputs[meta.offset].timestamp == meta.timestamp, name

    _, url2 = await stack.start_api("api-second")
    async with ClientSession(base_url=url2, headers=stack.auth) as second:
        resp = await second.post("/v1/events", json=body, headers={"Idempotency-Key": k})
        third = await resp.json()
    assert resp.status == 200, third
    assert third["replay"] is True and third["duplicate_of"] == first["position"]
    assert await quantity(http, "wh-01", sku) == 44


async def test_a_topic_switched_to_producer_time_still_decides_nothing(
        stack: Stack, http: ClientSession, plain_producer: AIOKafkaProducer) -> None:
    """ProducerClockCannotExpireAKey, StreamTimeIsTheGreatestBrokerTimestamp: with the
    input topic switched to CreateTime while the stack runs (an operator's mistake the
    workers do not see), a record stamped 59 minutes ahead by its producer moves no
    stream time: a retry of K is still a replay, and the stock 14, never 18."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    s = stack.settings
    sku = f"switch-{secrets.token_hex(3)}"
    k = f"{sku}-K"
    body = {"event_name": "stock.adjust", "payload": {"warehouse": "wh-01", "sku": sku, "delta": 4}}
    resp = await http.post("/v1/events", json=body, headers={"Idempotency-Key": k})
    first = await resp.json()
    assert resp.status == 200, first
    admin = AIOKafkaAdminClient(**client_kwargs(s, "test", "admin", bootstrap_servers=s.kafka_bootstrap))
    await admin.start()

    async def timestamp_type(kind: str) -> None:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, s.input_topic,
                                                  {"message.timestamp.type": kind})])
    try:
        await timestamp_type("CreateTime")
        ahead = int(time.time() * 1000) + 59 * 60_000
        meta = await plain_producer.send_and_wait(s.input_topic, envelope(f"{sku}-ahead", sku, 10),
                                                  key=sku.encode(), timestamp_ms=ahead)
        assert meta.timestamp_type == 0 and meta.timestamp == ahead  # the producer's clock got through

        async def applied() -> bool:
            return await quantity(http, "wh-01", sku) == 14
        await wait_for(applied, DEADLINE_S, "the hour-ahead record to be applied", detail=stack.logs)
        resp = await http.post("/v1/events", json=body, headers={"Idempotency-Key": k})
        again = await resp.json()
        assert resp.status == 200 and again["replay"] is True, again
        assert await quantity(http, "wh-01", sku) == 14
    finally:
        await timestamp_type("LogAppendTime")
        await admin.close()


async def test_an_api_clock_running_ahead_decides_nothing(stack: Stack, http: ClientSession,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ApiTakesStreamTimeFromAcknowledgement, ProducerClockCannotExpireAKey: a client
    (API replica) whose host clock runs 20 minutes ahead submits K; the event's stream
    time is the broker's, and a retry of K through the regular API is a replay."""
    sku = f"fast-{secrets.token_hex(3)}"
    k = f"{sku}-K"
    real = app.client._wall_ms
    monkeypatch.setattr(app.client, "_wall_ms", lambda: real() + 20 * 60_000)
    async with DocketClient(stack.settings) as fast:
        # as the API would for the stack's own token, so the retry below is the same client's
        sub = await fast.submit("stock.adjust", {"warehouse": "wh-01", "sku": sku, "delta": 3}, k, timeout=60,
                                client=named_token(TOKEN)[0])
    assert sub.status == "decided", sub
    assert abs(sub.result["stream_time"] - real()) < 5 * 60_000, sub.result["stream_time"]
    resp = await http.post("/v1/events", json={"event_name": "stock.adjust", "payload": {
        "warehouse": "wh-01", "sku": sku, "delta": 3}}, headers={"Idempotency-Key": k})
    body = await resp.json()
    assert resp.status == 200 and body["replay"] is True, body
    assert body["duplicate_of"] == {"partition": sub.position[0], "offset": sub.position[1]}
    # the fast client's event reaches this API's view through the results topic
    await wait_for(lambda: has_quantity(http, sku, 3), DEADLINE_S, "the API to show 3", detail=stack.logs)


# --------------------------------------------------------------------------- duplicate members


async def test_duplicate_member_names_are_refused_over_http_and_on_kafka(
        stack: Stack, http: ClientSession, results: TopicTail, plain_producer: AIOKafkaProducer) -> None:
    """DuplicateMemberIsInvalidJson, DuplicateMemberIsMalformed: a body naming a member
    twice (in the payload, or event_name twice) is 400 invalid_json naming the member and
    nothing is produced; the same bytes on the input topic (delta, event_name or
    idempotency_key twice) are each rejected malformed_record naming the member."""
    s = stack.settings
    sku = f"dup-{secrets.token_hex(3)}"
    bodies = {
        "delta": b'{"event_name":"stock.adjust","payload":{"warehouse":"wh-01","sku":"%s","delta":-5,"delta":5}}',
        "event_name": b'{"event_name":"stock.adjust","event_name":"stock.transfer",'
                      b'"payload":{"warehouse":"wh-01","sku":"%s","delta":5}}',
    }
    before = await end_offsets(s.kafka_bootstrap, s.input_topic)
    for member, raw in bodies.items():
        resp = await http.post("/v1/events", data=raw % sku.encode(),
                               headers={"Idempotency-Key": f"{sku}-{member}", "Content-Type": "application/json"})
        answer = await resp.json()
        assert resp.status == 400, answer
        assert answer["error"] == "invalid_json" and repr(member) in answer["message"], answer
        assert answer["errors"][0]["field"] == member and answer["errors"][0]["reason"] == "duplicate_member"
    assert await end_offsets(s.kafka_bootstrap, s.input_topic) == before

    values = {
        "delta": b'{"idempotency_key":"%s-d","event_name":"stock.adjust",'
                 b'"payload":{"warehouse":"wh-01","sku":"%s","delta":-5,"delta":5}}',
        "event_name": b'{"idempotency_key":"%s-e","event_name":"stock.transfer","event_name":"stock.adjust",'
                      b'"payload":{"warehouse":"wh-01","sku":"%s","delta":5}}',
        "idempotency_key": b'{"idempotency_key":"%s-i","idempotency_key":"%s-j","event_name":"stock.adjust",'
                           b'"payload":{"warehouse":"wh-01","sku":"%s","delta":5}}',
    }
    sent = {}
    for member, raw in values.items():
        value = raw % ((sku.encode(),) * raw.count(b"%s"))
        meta = await plain_producer.send_and_wait(s.input_topic, value, key=sku.encode())
        sent[member] = (meta.partition, meta.offset)
    for member, position in sent.items():
        result = await wait_for(lambda p=position: result_at(results, p), DEADLINE_S, f"the result of duplicate {member}",
                                detail=stack.logs)
        outcome = result["outcome"]
        assert (outcome["status"], outcome["reason"]) == ("rejected", "malformed_record"), result
        assert f"member {member!r} appears twice" in outcome["detail"], outcome
    assert await quantity(http, "wh-01", sku) is None


# --------------------------------------------------------------------------- oversized input


async def test_a_huge_record_key_is_rejected_and_stops_nothing(stack: Stack, http: ClientSession,
                                                               results: TopicTail,
                                                               plain_producer: AIOKafkaProducer) -> None:
    """BadInputNeverStopsTheWorker, UsherRejectsMalformedRecord: a record with a key of
    1,000,000 bytes (as large as the broker takes, on the partition the key routes to)
    is rejected malformed_record, both instances keep running, and a valid record
    behind it on the same partition is applied (a key that size once made an output
    too large to produce, and crashed both instances' workers: no record docket writes
    carries an input record's key)."""
    from app.records import MAX_KEY_BYTES, partition_for

    s = stack.settings
    key = b"\x01" * 1_000_000
    p = partition_for(key, s.partitions)
    bad = await plain_producer.send_and_wait(s.input_topic, envelope("huge-key", "huge", 5), key=key, partition=p)
    sku = next(f"behind-{i}" for i in range(1000) if partition_for(f"behind-{i}".encode(), s.partitions) == p)
    good = await plain_producer.send_and_wait(s.input_topic, envelope(f"{sku}-1", sku, 5), key=sku.encode())
    assert good.partition == p
    rejected = await wait_for(lambda: result_at(results, (p, bad.offset)), DEADLINE_S, "the huge key's result",
                              detail=stack.logs)
    assert (rejected["outcome"]["reason"], rejected["outcome"]["detail"]) == (
        "malformed_record", f"record key exceeds {MAX_KEY_BYTES} bytes")
    applied = await wait_for(lambda: result_at(results, (p, good.offset)), DEADLINE_S, "the record behind it",
                             detail=stack.logs)
    assert applied["outcome"]["status"] == "applied"
    stack.a.assert_alive()
    stack.b.assert_alive()


# --------------------------------------------------------------------------- key scoping


async def test_two_clients_keys_are_independent(stack: Stack, http: ClientSession) -> None:
    """ApiScopesKeysToItsClient, TokensAreNamed, KeysAreScopedByClient: two clients (two
    tokens of the older form, each named after its hash) use the same Idempotency-Key
    for different requests: each is applied (5 + 7), each client reads back and replays
    its own outcome only. A third client with a named token (alice) and a Kafka-native
    producer (no client) use the key too: two more requests of their own; the results
    name each client."""
    s = stack.settings
    sku = f"scope-{secrets.token_hex(3)}"
    k = f"{sku}-shared"
    clients = (("first", TOKEN, 5), ("other", OTHER, 7), ("alice", ALICE, 11))
    answers = {}
    for name, token, delta in clients:
        async with ClientSession(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}) as who:
            resp = await who.post("/v1/events", json={"event_name": "stock.adjust", "payload": {
                "warehouse": "wh-01", "sku": sku, "delta": delta}}, headers={"Idempotency-Key": k})
            answers[name] = (resp.status, await resp.json())
        assert answers[name][0] == 200 and answers[name][1]["replay"] is False, answers
    assert len({a[1]["position"]["offset"] for a in answers.values()}) == 3
    assert await quantity(http, "wh-01", sku) == 23
    running = {"first": 5, "other": 12, "alice": 23}
    for name, token, delta in clients:
        async with ClientSession(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}) as who:
            resp = await who.get(f"/v1/events/{k}")
            status = await resp.json()
            assert status["position"] == answers[name][1]["position"], (name, status)
            assert status["outcome"]["entities"][0]["state"]["quantity"] == running[name]
            resp = await who.post("/v1/events", json={"event_name": "stock.adjust", "payload": {
                "warehouse": "wh-01", "sku": sku, "delta": delta}}, headers={"Idempotency-Key": k})
            again = await resp.json()
            assert resp.status == 200 and again["replay"] is True, again
            assert again["duplicate_of"] == answers[name][1]["position"]
    async with DocketClient(s) as native:  # a Kafka-native producer: no client, its own key space
        sub = await native.submit("stock.adjust", {"warehouse": "wh-01", "sku": sku, "delta": 1}, k, timeout=60)
    assert sub.status == "decided" and sub.result["outcome"]["status"] == "applied" and not sub.replay
    assert sub.result["client"] is None
    results = {r.value["input"]["offset"]: r.value for r in await read_all_results(s)
               if r.value["idempotency_key"] == k and r.value["duplicate_of"] is None}
    assert sorted(str(v["client"]) for v in results.values()) == sorted(
        ["None", "alice", named_token(TOKEN)[0], named_token(OTHER)[0]])
    assert await quantity(http, "wh-01", sku) == 24


async def read_all_results(s: Settings):
    from tests.integration.clerk_kit import read_all

    return await read_all(s.kafka_bootstrap, s.results_topic)


# --------------------------------------------------------------------------- the input topic's timestamps


async def test_an_input_topic_with_producer_timestamps_is_refused(kafka_bootstrap: str, tmp_path: Path) -> None:
    """WorkerRefusesInputWithoutBrokerTime, TopicsRefusedOnInputWithoutBrokerTime,
    TopicsUseBrokerTime: an input topic that exists with CreateTime is refused by `docket
    topics create` (before it creates anything), by a worker's start-up check and by the
    API's client, each naming the fix (LogAppendTime, kafka-configs)."""
    import click
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from agents.plumbing import check_topics
    from app.client import TopicsMissing
    from app.topics import TopicError, create_topics
    from tests.integration.stack_kit import stack_settings

    settings: Settings = stack_settings(kafka_bootstrap, tmp_path)
    admin = AIOKafkaAdminClient(**client_kwargs(None, "test", "admin", bootstrap_servers=kafka_bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.input_topic, settings.partitions, 1,
                                            topic_configs={"message.timestamp.type": "CreateTime"})])
    finally:
        await admin.close()
    advice = "message.timestamp.type=LogAppendTime"
    with pytest.raises(TopicError, match=advice):
        await create_topics(settings)
    from app.topics import list_topics
    assert list(await list_topics(settings)) == [settings.input_topic]  # nothing else was created
    with pytest.raises(click.ClickException, match=f"(?s)CreateTime.*kafka-configs.*{advice}"):
        await check_topics(settings, [settings.input_topic])
    with pytest.raises(TopicsMissing, match=advice):
        await DocketClient(settings).start()


# --------------------------------------------------------------------------- garbage on the topics the API reads


def _result(key: str, client: str, partition: int, offset: int, entity: str, quantity: int) -> bytes:
    """A result record as the Clerk writes it (the fields DocketClient reads)."""
    return orjson.dumps({
        "idempotency_key": key, "client": client, "input": {"partition": partition, "offset": offset},
        "event_name": "stock.adjust", "duplicate_of": None, "domain_version": "inventory/1",
        "stream_time": int(time.time() * 1000), "digest": "d" * 64, "instances": ["a", "b"],
        "outcome": {"status": "applied", "reason": None, "detail": "",
                    "entities": [{"key": entity, "state": {"quantity": quantity}, "version": 2}]}})


GARBAGE = {  # a record docket never writes: (key, value)
    "not JSON": (b"junk", b"\xff\xfegarbage{"),
    "a JSON list": (b"junk", b"[1,2,3]"),
    "an object without key": (b"junk", b'{"foo": 1}'),
    "wrong types": (b"junk", orjson.dumps({"key": 5, "input": {"partition": "x", "offset": -1},
                                           "idempotency_key": 5, "outcome": "no", "version": "1"})),
    "a tombstone whose key is not UTF-8": (b"\xff\xfe", None),  # (aiokafka sends no record without both)
    "900 KB": (b"junk", b'{"x":"' + b"a" * 900_000 + b'"}'),
    "nested 100,000 deep": (b"junk", b"[" * 100_000 + b"]" * 100_000),
    "a member twice": (b"junk", b'{"input":{"partition":0,"offset":0},"input":{"partition":1,"offset":1}}'),
}


async def test_garbage_on_the_topics_the_api_reads_never_keeps_it_from_starting(kafka_bootstrap: str,
                                                                                tmp_path: Path) -> None:
    """ApiSkipsUnreadableRecords, ApiEntityViewFromCompactedTopic, ApiReadiness: records
    docket never writes (not JSON, a JSON list, an object without "key", wrong types, a
    tombstone whose key is not UTF-8, 900 KB, nesting 100,000 deep, a member twice) on every
    partition of <prefix>.entities, <prefix>.results and <prefix>.divergences, between
    good records, before `docket api` starts. It becomes ready; its log names each bad
    record (topic, partition, offset) in exactly one WARNING line, and has no ERROR,
    no traceback and no 'not connected to Kafka'; the good entity records before and
    after the garbage are in its view, a good result behind the garbage is indexed and
    moves the view, and a submission is accepted (202, no instances run here), not 503.
    Before, such a record on the entities topic kept every API that started afterwards
    from ever becoming ready, each submission 503, and the log blamed Kafka."""
    from agents.clerk_core import entity_record
    from launcher.broker import free_port
    from app.topics import create_topics
    from tests.integration.procs import worker_env
    from tests.integration.stack_kit import ApiProc, get_json, stack_settings

    s = stack_settings(kafka_bootstrap, tmp_path)
    await create_topics(s)
    client = named_token(TOKEN)[0]
    sent: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> what the garbage is
    producer = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap, acks="all", max_request_size=2_000_000))
    await producer.start()
    try:
        for p in range(s.partitions):
            before = entity_record(f"stock:wh-01:before-{p}", {"quantity": 10 + p}, 1, {"partition": p, "offset": 0})
            await producer.send_and_wait(s.entities_topic, before[1], key=before[0], partition=p)
            for topic in (s.entities_topic, s.results_topic, s.divergences_topic):
                for what, (key, value) in GARBAGE.items():
                    meta = await producer.send_and_wait(topic, value, key=key, partition=p)
                    sent[(topic, p, meta.offset)] = what
            after = entity_record(f"stock:wh-01:after-{p}", {"quantity": 20 + p}, 1, {"partition": p, "offset": 1})
            await producer.send_and_wait(s.entities_topic, after[1], key=after[0], partition=p)
            await producer.send_and_wait(s.results_topic, _result(f"behind-{p}", client, p, 7, f"stock:wh-01:after-{p}",
                                                                  30 + p), key=f"behind-{p}".encode(), partition=p)
    finally:
        await producer.stop()

    port = free_port()
    api = ApiProc(worker_env(s, DOCKET_API_TOKENS=TOKEN, DOCKET_API_PORT=str(port)), tmp_path / "logs",
                  "api-garbage")
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    api.start()
    try:
        await wait_for(lambda: get_json(url + "/readyz")[0] == 200, DEADLINE_S, "the API to be ready",
                       detail=lambda: api.log_text()[-3000:])
        for p in range(s.partitions):
            status, body = get_json(f"{url}/v1/entities/stock/wh-01:before-{p}", auth)
            assert (status, body.get("state")) == (200, {"quantity": 10 + p}), (p, body)
            status, body = get_json(f"{url}/v1/entities/stock/wh-01:after-{p}", auth)
            assert (status, body.get("state"), body.get("version")) == (200, {"quantity": 30 + p}, 2), (p, body)
            status, body = get_json(f"{url}/v1/events/behind-{p}", auth)
            assert (status, body.get("state"), body.get("position")) == (
                200, "decided", {"partition": p, "offset": 7}), (p, body)
        async with ClientSession(base_url=url, headers=auth) as http:
            resp = await http.post("/v1/events", json={"event_name": "stock.adjust", "payload": {
                "warehouse": "wh-01", "sku": "after-garbage", "delta": 1}},
                headers={"Idempotency-Key": "after-garbage-1", "Prefer": "respond-async"})
            answer = await resp.json()
        assert resp.status == 202 and answer["state"] == "pending", answer
    finally:
        api.kill()
    log = api.log_text()
    lines = log.splitlines()
    for (topic, p, offset), what in sent.items():
        said = [line for line in lines
                if f"skipped an unreadable record of {topic} partition {p} at offset {offset}: " in line]
        assert len(said) == 1, (topic, p, offset, what, said)
        assert " [WARNING] docket.client: " in said[0] and len(said[0]) < 500, said[0]
    assert len([line for line in lines if "skipped an unreadable record" in line]) == len(sent)
    assert "[ERROR]" not in log and "Traceback" not in log and "not connected to Kafka" not in log, log[-3000:]
