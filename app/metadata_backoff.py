"""A pause after a failed metadata update of aiokafka's client, so that a producer with
records for a partition whose leader it does not know does not spin while Kafka is away.

Why: aiokafka's producer (0.14, ``Sender._sender_routine``), holding records for a
partition with no known leader, calls ``client.force_metadata_update()`` and waits for
it, in a loop and with no pause of its own. With the broker gone, each update fails at
once (connection refused), so the loop turned as fast as the CPU allowed until the
records expired: the API used 0.9 of a core for the 10 s of its produce timeout after
`make broker-stop` with requests in flight (py-spy: 60% of its samples in
``AIOKafkaClient._md_synchronizer``), and a fresh-clone user check saw instance a at a
full core for the whole of two 25 s outages. :func:`install` makes a failed update
return only ``retry_backoff_ms`` (aiokafka's setting, 100 ms by default) after it
failed; a successful one returns as before. The wrapped method is listed in
app/private_api.py, whose test checks its shape on the installed aiokafka.
"""

from __future__ import annotations

import asyncio
import functools

_INSTALLED = "_docket_metadata_backoff"


def install() -> None:
    """Wrap ``aiokafka.client.AIOKafkaClient._metadata_update`` (once per process;
    idempotent) so that a failed update (it returns False) sleeps the client's
    ``_retry_backoff`` (seconds, from ``retry_backoff_ms``) before it returns."""
    from aiokafka.client import AIOKafkaClient

    original = AIOKafkaClient._metadata_update
    if getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    async def _metadata_update(self, cluster_metadata, topics):
        updated = await original(self, cluster_metadata, topics)
        if not updated:
            await asyncio.sleep(self._retry_backoff)
        return updated

    setattr(_metadata_update, _INSTALLED, True)
    AIOKafkaClient._metadata_update = _metadata_update
