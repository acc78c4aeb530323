"""A Kafka-native repeat of a request that diverged, on the real stack: instances a and b
and the Clerk as processes, b with the live fault switch (``--faults-file``). With b
flipping a bit in every output, a request diverges; with faults off again, its repeat (the
same envelope, produced again) gets two agreeing copies: both Wardens answer it as a
duplicate with the outcome each stored, and b's state was never corrupted. The Clerk must
withhold it (cause original_diverged), never publish it: specs/clerk.allium
ClerkWithholdsDuplicateOfDivergedOriginal. Its own stack, in a module of its own.
"""

from __future__ import annotations

import secrets

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.kafka_config import client_kwargs
from tests.integration.clerk_kit import (  # noqa: F401  fixtures
    TopicTail,
    clerk_env,
    clerk_settings,
    instances,
    required_copies,
    spawn,
)
from tests.integration.procs import wait_for

pytestmark = pytest.mark.integration

DEADLINE_S = 180  # the first event waits for both Faust workers and the Clerk to start


def envelope(ikey: str, sku: str, delta: int) -> bytes:
    return orjson.dumps({"idempotency_key": ikey, "event_name": "stock.adjust",
                         "payload": {"warehouse": "w1", "sku": sku, "delta": delta}})


def at(tail: TopicTail, position: tuple[int, int]) -> list[dict]:
    tail.check()
    return [r.value for r in tail.records
            if (r.value["input"]["partition"], r.value["input"]["offset"]) == position]


@pytest.mark.parametrize("clerk_restarted", [False, True], ids=["same-clerk", "clerk-restarted"])
async def test_a_kafka_native_repeat_of_a_diverged_request_is_withheld(clerk_settings, spawn, tmp_path,
                                                                     clerk_restarted) -> None:
    """ClerkWithholdsDuplicateOfDivergedOriginal, ClerkRemembersDivergedPositions: the
    original diverges (mismatch, nothing published); a fresh event after faults are off
    is published (b agrees again); the repeat's copies agree and name the original as
    duplicate_of, yet the Clerk reports it original_diverged and publishes nothing for
    it. On the old Clerk the repeat was published: 200 'applied' for a request that
    diverged. ClerkSeedsDivergedPositions (clerk-restarted): the Clerk that saw the
    original diverge is SIGKILLed and a new one started before the repeat; it knows the
    divergence from the report it reads back at its seed."""
    s = clerk_settings
    switch = tmp_path / "b.faults"
    switch.write_text("bitflip:1")
    a = spawn("a").start()
    b = spawn("b", "--faults-file", str(switch)).start()
    clerk = spawn("clerk", command="clerk").start()
    producer = AIOKafkaProducer(**client_kwargs(s, "test", "producer", bootstrap_servers=s.kafka_bootstrap,
                                                acks="all", enable_idempotence=True))
    await producer.start()
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    reports = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    sku = f"dup-{secrets.token_hex(3)}"
    key = sku.encode()  # the affinity key: the sku
    logs = lambda: f"b: {b.log_tail()}\nclerk: {clerk.log_tail()}"  # noqa: E731
    try:
        meta = await producer.send_and_wait(s.input_topic, envelope(f"{sku}-once", sku, 5), key=key)
        original = (meta.partition, meta.offset)
        (report,) = await wait_for(lambda: at(reports, original), DEADLINE_S, "the original's divergence",
                                   detail=logs)
        assert report["cause"] == "mismatch" and report["decided"] is None, report
        assert "FAULT INJECTED kind=bitflip instance=b" in b.log_text()

        switch.write_text("off")
        # faults are read before each batch: once a fresh event agrees, b's outputs are clean
        meta = await producer.send_and_wait(s.input_topic, envelope(f"{sku}-fresh", sku, 1), key=key)
        fresh = (meta.partition, meta.offset)
        (published,) = await wait_for(lambda: at(results, fresh), DEADLINE_S, "the fresh event's result",
                                      detail=logs)
        assert published["outcome"]["status"] == "applied" and published["duplicate_of"] is None
        if clerk_restarted:
            clerk.kill()
            clerk.start()

        meta = await producer.send_and_wait(s.input_topic, envelope(f"{sku}-once", sku, 5), key=key)
        repeat = (meta.partition, meta.offset)
        (withheld,) = await wait_for(lambda: at(reports, repeat), DEADLINE_S, "the repeat's report", detail=logs)
        assert withheld["cause"] == "original_diverged" and withheld["decided"] is None, withheld
        assert withheld["idempotency_key"] == f"{sku}-once"
        digests = {c["digest"] for c in withheld["copies"]}
        assert len(digests) == 1 and sorted(c["instance"] for c in withheld["copies"]) == ["a", "b"]
        body = withheld["copies"][0]["body"]
        assert body["duplicate_of"] == {"partition": original[0], "offset": original[1]}
        # the Clerk has moved past the repeat (its decided watermark is in every later
        # record): a later event's result proves the repeat's absence is final
        meta = await producer.send_and_wait(s.input_topic, envelope(f"{sku}-after", sku, 1), key=key)
        await wait_for(lambda: at(results, (meta.partition, meta.offset)), DEADLINE_S, "a later result",
                       detail=logs)
        assert at(results, repeat) == [] and at(results, original) == []
        for proc in (a, b, clerk):
            proc.assert_alive()
    finally:
        await reports.stop()
        await results.stop()
        await producer.stop()


async def test_a_repeat_whose_copies_diverge_is_answered_with_its_agreed_original(clerk_settings, spawn,
                                                                                tmp_path) -> None:
    """ClientAnswersDivergedRepeatWithAgreedOriginal: a request agreed and applied while
    b was sound; b then flips a bit in every output, so the repeat's copies disagree and
    the Clerk reports it (mismatch). The client that sent both answers the repeat with
    the original's result (decided, applied, replay, the original's position), not
    "diverged, no outcome was published" for a request that was applied."""
    import dataclasses

    from app.client import DocketClient

    s = dataclasses.replace(clerk_settings, api_timeout_ms=DEADLINE_S * 1000)
    switch = tmp_path / "b.faults"
    switch.write_text("off")
    procs = [spawn("a").start(), spawn("b", "--faults-file", str(switch)).start(),
             spawn("clerk", command="clerk").start()]
    client = DocketClient(s)
    await client.start()
    sku = f"rep-{secrets.token_hex(3)}"
    payload = {"warehouse": "w1", "sku": sku, "delta": 7}
    try:
        await client.wait_caught_up(60)
        first = await client.submit("stock.adjust", payload, f"{sku}-once")
        assert (first.status, first.outcome["status"], first.replay) == ("decided", "applied", False), first
        switch.write_text("bitflip:1")
        # faults are read before each batch: once a fresh event diverges, b corrupts every output
        probe = await client.submit("stock.adjust", {**payload, "delta": 1}, f"{sku}-probe")
        assert probe.status == "diverged", (probe, procs[1].log_tail())
        again = await client.submit("stock.adjust", payload, f"{sku}-once")
        assert (again.status, again.position, again.replay) == ("decided", first.position, True), again
        assert again.outcome == first.outcome
        assert again.divergence is not None and again.divergence["cause"] == "mismatch"
        repeat = (again.divergence["input"]["partition"], again.divergence["input"]["offset"])
        assert repeat != first.position and repeat[0] == first.position[0]
        assert client.status(f"{sku}-once").state == "decided"
        for proc in procs:
            proc.assert_alive()
    finally:
        await client.stop()
