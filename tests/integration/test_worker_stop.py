"""A worker told to stop after its broker went away (specs/integration.allium
WorkerStopHasADeadline), on a broker of this test's own (the launcher, launcher/broker.py),
so stopping it disturbs no other test; and one told to stop during its group join
(WorkerStopsDuringGroupJoin), on the session's broker.

Without the deadline, Faust's graceful stop retries its last offset commit for as long as
the broker is away: an instance SIGTERMed together with its broker was still stopping 4
minutes later (a `make bench` stack killed with its harness).
"""
# ruff: noqa: F811  (test arguments name the fixtures imported from clerk_kit)

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import signal

import pytest

from agents.stopping import EXIT_STOP_CUT_SHORT
from app.settings import load
from app.topics import create_topics
from launcher import broker as launcher

from chaos import workload
from tests.integration.clerk_kit import clerk_env, clerk_settings, instances, required_copies, spawn  # noqa: F401
from tests.integration.procs import OutputCollector, Worker, thread_stacks, wait_for, worker_env

pytestmark = pytest.mark.integration

READY = "ready: recovery complete"  # agents/instance.py, once the instance serves


LOAD_RATE = 200  # events/s, produced until the broker stops
PROCESSED = 200  # positions each instance has answered before the broker stops


async def _stop_broker_under_load(settings, workers: list[Worker]) -> None:
    """Stop the broker while input flows and each of ``workers`` has answered
    PROCESSED positions: every worker then holds processed input whose offsets are not
    committed yet (Faust commits every 2.8 s), so its graceful stop has a commit to
    make and cannot finish without Kafka. (An idle worker, with nothing to commit,
    sometimes stopped cleanly in a second: the deadline was then never needed.)"""
    from aiokafka import AIOKafkaProducer

    records = list(workload.inventory(11, 60 * LOAD_RATE, ttl_ms=settings.idempotency_ttl_ms))
    # a short request timeout: once the broker is gone, the unsent input fails in
    # seconds and the producer stops
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
                                request_timeout_ms=2000)
    await producer.start()

    async def feed() -> None:
        for r in records:
            await producer.send(settings.input_topic, r.value, key=r.key)
            await asyncio.sleep(1 / LOAD_RATE)

    feeding = asyncio.create_task(feed())
    collectors = [await OutputCollector(settings.kafka_bootstrap, settings.output_topic(w.instance)).start()
                  for w in workers]
    try:
        await wait_for(lambda: all(c.check() or c.positions >= PROCESSED for c in collectors), 60,
                       f"each instance to answer {PROCESSED} positions",
                       detail=lambda: ", ".join(f"{w.instance}: {c.positions}" for w, c in zip(workers, collectors)))
        assert not feeding.done() or feeding.result(), "the input ran out before the broker stopped"
    finally:
        for c in collectors:
            await c.stop()
        await asyncio.to_thread(launcher.stop_broker, settings.broker_dir, timeout=30)
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # its broker is gone: not this test's concern
            await feeding
        with contextlib.suppress(Exception):
            await producer.stop()


def test_a_stop_that_cannot_reach_kafka_is_cut_short(tmp_path) -> None:
    """WorkerStopHasADeadline: with the broker gone while input flowed (so each
    instance has offsets to commit), instance a (DOCKET_STOP_TIMEOUT_MS 3,000) exits
    75 once the deadline passes, and instance b (a deadline of 10 minutes) exits 75 on
    a second SIGTERM; each log says why and what the next start does, and a's says where
    its stop was still waiting."""
    port = launcher.free_port()
    settings = dataclasses.replace(load(), broker_dir=tmp_path / "broker", broker_port=port,
                                   kafka_bootstrap=f"127.0.0.1:{port}", topic_prefix=f"stop{secrets.token_hex(3)}",
                                   partitions=2, data_root=tmp_path / "data", log_level="info")
    launcher.start_broker(settings, 90, die_with_parent=True)
    workers: list[Worker] = []
    try:
        asyncio.run(create_topics(settings))
        for ident, timeout_ms in (("a", "3000"), ("b", "600000")):
            env = worker_env(settings, DOCKET_STOP_TIMEOUT_MS=timeout_ms)
            workers.append(Worker(ident, env, tmp_path / "data" / ident, tmp_path / "logs").start())
        a, b = workers
        for w in workers:
            asyncio.run(wait_for(lambda w=w: READY in w.log_text(), 120, f"instance {w.instance} to be ready",
                                 detail=w.log_tail))

        asyncio.run(_stop_broker_under_load(settings, workers))

        a.proc.send_signal(signal.SIGTERM)
        asyncio.run(wait_for(lambda: not a.alive, 60, "instance a to exit after its stop deadline",
                             detail=a.log_tail))
        assert a.proc.returncode == EXIT_STOP_CUT_SHORT, a.log_tail()
        assert "the graceful stop did not finish within 3,000 ms (DOCKET_STOP_TIMEOUT_MS)" in a.log_text(), \
            a.log_tail()
        # where the stop waited: its own awaits (mode's Service.stop) first, then the other tasks and the threads
        waiting = a.log_text().partition("Still waiting on:")[2]
        assert waiting.startswith("\n  the stop waits in "), a.log_tail()
        assert "\n  thread MainThread: " in waiting and " task" in waiting, a.log_tail()
        print(f"\ninstance a's stop, still waiting on:{waiting[:3000]}")

        b.proc.send_signal(signal.SIGTERM)
        asyncio.run(wait_for(lambda: "Signal received: 15" in b.log_text(), 30, "instance b to begin its stop",
                             detail=b.log_tail))
        assert b.alive, b.log_tail()
        b.proc.send_signal(signal.SIGTERM)
        asyncio.run(wait_for(lambda: not b.alive, 60, "instance b to exit on the second SIGTERM",
                             detail=lambda: b.log_tail() + thread_stacks(b.proc.pid)))
        assert b.proc.returncode == EXIT_STOP_CUT_SHORT, b.log_tail()
        assert "SIGTERM received again while stopping: exiting at once" in b.log_text(), b.log_tail()
        assert "did not finish within" not in b.log_text()
    finally:
        for w in workers:
            w.kill()
        launcher.stop_broker(settings.broker_dir, timeout=15)


async def test_a_clerk_stopped_during_its_group_join_exits_cleanly(clerk_settings, spawn) -> None:
    """WorkerStopsDuringGroupJoin: a Clerk whose predecessor crashed (SIGKILL: its
    member stays in the group for its 45-s session) joins the group, and the broker holds
    its JoinGroup for that member; SIGINT then ends it with 0 and the log line that says
    the join was abandoned, not with 75 at the 30-s stop deadline (what aiokafka's own
    close did: it waited for the join's answer)."""
    env = {"DOCKET_SESSION_TIMEOUT_MS": "45000", "DOCKET_LOG_LEVEL": "info"}
    crashed = spawn("clerk-1", command="clerk")
    crashed.env.update(env)
    crashed.start()
    await wait_for(lambda: "Worker ready" in crashed.log_text(), 120, "the first Clerk to join its group",
                   detail=crashed.log_tail)
    crashed.kill()

    clerk = spawn("clerk-2", command="clerk")
    clerk.env.update(env)
    clerk.start()
    await wait_for(lambda: "(Re-)joining group" in clerk.log_text(), 120, "the second Clerk to join its group",
                   detail=clerk.log_tail)
    assert "Worker ready" not in clerk.log_text(), "the join was not held: " + clerk.log_tail()
    clerk.proc.send_signal(signal.SIGINT)
    await wait_for(lambda: not clerk.alive, 40, "the second Clerk to exit after SIGINT", detail=clerk.log_tail)
    log = clerk.log_text()
    assert clerk.proc.returncode == 0, clerk.log_tail()
    assert "group coordination still waited on the broker 2.0 s into the stop" in log, clerk.log_tail()
    assert "did not finish within" not in log
    assert "[ERROR]" not in log, clerk.log_tail()
