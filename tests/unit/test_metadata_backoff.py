"""app/metadata_backoff.py: a failed metadata update of aiokafka's client pauses for
retry_backoff_ms before it returns, so aiokafka's producer, which waits for one update
after another while it holds records for a partition with no known leader, does not
spin a core while Kafka is away (specs/failure-modes.allium BrokerRestarted). Real
aiokafka, no broker: a client that never bootstrapped knows no node, so every update
fails at once."""

from __future__ import annotations

import asyncio

from aiokafka.client import AIOKafkaClient

from app import metadata_backoff


async def _failed_updates(client: AIOKafkaClient, n: int) -> tuple[list[bool], float]:
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = [await client._metadata_update(client.cluster, set()) for _ in range(n)]
    return results, loop.time() - began


def test_a_failed_metadata_update_returns_only_after_retry_backoff_ms() -> None:
    """BrokerRestarted: three failed updates in a row take at least three backoffs (they
    took microseconds each before, and the producer's loop spun on them); the result is
    still False, so aiokafka handles the failure as before."""
    metadata_backoff.install()

    async def run() -> tuple[list[bool], float]:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1", retry_backoff_ms=150)
        try:
            return await _failed_updates(client, 3)
        finally:
            await client.close()

    results, elapsed_s = asyncio.run(run())
    assert results == [False, False, False]
    assert elapsed_s >= 3 * 0.150 * 0.9, elapsed_s  # the loop's clock may round down a little


def test_install_wraps_once() -> None:
    """Installing again (every worker and client start calls it) does not stack pauses."""
    metadata_backoff.install()
    wrapped = AIOKafkaClient._metadata_update
    metadata_backoff.install()
    assert AIOKafkaClient._metadata_update is wrapped
    assert getattr(wrapped, "__wrapped__", None) is not None
