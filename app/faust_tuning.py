"""Faust consumer settings that Faust does not expose.

- **Fetch wait.** Faust creates its worker consumer with ``fetch_max_wait_ms=1500``
  hard-coded. aiokafka keeps one fetch request in flight per broker, and a partition
  whose records the application is still consuming is left out of it; when that
  partition's records are consumed, new records for it wait until the in-flight long
  poll returns, up to 1.5 s on a quiet topic. That is a 1.5 s stall in the middle of a
  pipeline whose target p99 is 100 ms. We shorten the wait (DOCKET_FETCH_MAX_WAIT_MS):
  an idle consumer then polls more often, which on a local broker costs little.
- **Isolation level.** Faust reads ``read_uncommitted`` unless the app itself runs
  exactly-once. docket reads only committed data everywhere (DESIGN.md invariant 8):
  a record of an aborted transaction must have no effect, and a record of an open
  transaction is read once it commits. Kafka then delivers records only up to the
  last stable offset, and never an aborted one or a transaction marker.
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as _driver

from app.kafka_admin import ISOLATION_LEVEL


_patched: list[int] = []


def tune_worker_consumer(max_wait_ms: int) -> None:
    """Make every Faust worker consumer created from now on wait at most
    ``max_wait_ms`` per fetch and read committed records only."""
    if _patched:
        _patched[0] = max_wait_ms
        return
    _patched.append(max_wait_ms)
    original = _driver.AIOKafkaConsumerThread._create_worker_consumer

    def create(self, transport):
        consumer = original(self, transport)
        # both read by aiokafka when the consumer starts and builds its Fetcher
        consumer._fetch_max_wait_ms = _patched[0]
        consumer._isolation_level = ISOLATION_LEVEL
        return consumer

    _driver.AIOKafkaConsumerThread._create_worker_consumer = create
