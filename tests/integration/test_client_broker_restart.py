"""DocketClient (and so the REST API) across a restart of the broker: every input
partition takes submissions again once the broker is back (spec: integration.allium,
ClientRenewsRefusedProducer)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from app.client import DocketClient, KafkaUnavailable
from app.records import partition_for
from launcher import broker as launcher
from tests.integration.procs import wait_for

pytestmark = pytest.mark.integration

PRODUCE_TIMEOUT_S = 3.0


def payloads_per_partition(client: DocketClient, partitions: int) -> dict[int, dict]:
    """One stock.adjust payload routed to each input partition."""
    out: dict[int, dict] = {}
    for i in itertools.count():
        payload = {"warehouse": "w1", "sku": f"restart-{i}", "delta": 1}
        key = client.domain.affinity_key("stock.adjust", payload).encode("utf-8")
        out.setdefault(partition_for(key, partitions), payload)
        if len(out) == partitions:
            return out


async def test_every_partition_takes_submissions_again_after_a_broker_restart(kafka_broker, docket_settings) -> None:
    """ClientRenewsRefusedProducer: submissions go on at about 100/s over every input
    partition while the broker stops and starts again. Once it is back, each partition
    must acknowledge a submission within the deadline. Before, the broker refused every
    later batch of some partitions with OutOfOrderSequenceNumber (the idempotent
    producer's sequence numbers were past what the restarted broker knew), and the REST
    API answered 503 to every request for them until it was restarted (a fresh-clone
    user check: 4 of 8 partitions, for minutes)."""
    if kafka_broker.settings is None:
        pytest.skip("the session broker is not run by docket's launcher")
    settings = kafka_broker.settings
    client = DocketClient(docket_settings, produce_timeout_ms=int(PRODUCE_TIMEOUT_S * 1000))
    await client.start()
    routes = payloads_per_partition(client, docket_settings.partitions)
    accepted: dict[int, int] = {p: 0 for p in routes}  # acknowledged submissions per partition
    refused: list[str] = []
    serial = itertools.count()

    async def one(p: int) -> None:
        try:
            await client.submit("stock.adjust", routes[p], f"restart-{next(serial)}", timeout=0)
            accepted[p] += 1
        except KafkaUnavailable as exc:
            refused.append(str(exc))

    async def load() -> None:
        tasks = set()
        for n in itertools.count():
            task = asyncio.create_task(one(n % len(routes)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.01)  # pacing the load, not synchronisation

    loader = asyncio.create_task(load())
    try:
        await wait_for(lambda: min(accepted.values()) >= 5, 30, "every partition to take submissions before")
        # in a thread: submissions go on during the broker's controlled shutdown
        await asyncio.to_thread(launcher.stop_broker, settings.broker_dir)
        stopped = time.monotonic()
        # down for longer than the produce timeout: a batch in flight at the stop expires
        await wait_for(lambda: len(refused) >= 20 and time.monotonic() - stopped > 2.5 * PRODUCE_TIMEOUT_S, 60,
                       "submissions refused while the broker is down")
        launcher.start_broker(settings, 90, die_with_parent=True)
        before = dict(accepted)
        await wait_for(lambda: all(accepted[p] > before[p] for p in routes), 90,
                       "every partition to acknowledge a submission after the restart",
                       detail=lambda: (f"acknowledged since: { {p: accepted[p] - before[p] for p in routes} }; "
                                       f"last refusal: {refused[-1] if refused else None}"))
    finally:
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        await client.stop()
