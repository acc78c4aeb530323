"""Faust consumer settings that Faust does not expose.

- **Fetch wait.** Faust creates its worker consumer with ``fetch_max_wait_ms=1500``
  hard-coded. aiokafka keeps one fetch request in flight per broker, and a partition
  whose records the application is still consuming is left out of it; when that
  partition's records are consumed, new records for it wait until the in-flight long
  poll returns, up to 1.5 s on a quiet topic. That is a 1.5 s stall in the middle of a
  pipeline whose target p99 is 100 ms. We shorten the wait (DOCKET_FETCH_MAX_WAIT_MS):
  an idle consumer then polls more often, which on a local broker costs little.
- **Fetch size.** A fetch returns once ``fetch_min_bytes`` of records are there or its
  wait is over (DOCKET_FETCH_MIN_BYTES, 1 MiB by default; aiokafka's default, and
  Faust's, is 1 byte: return at the first record). Each round of a worker costs about
  the same CPU whatever it carries, so with 1 byte a busy worker took rounds as fast as
  the CPU allowed, a few events each, and the box's two cores were full of round
  overhead from 300 events/s on; waiting for the fetch wait to end gathers what arrives
  meanwhile into one round (specs/integration.allium, FetchWaitsForARound;
  docs/performance.md, "Fetches that wait for a round"). A backlog of 1 MiB or more is
  fetched without waiting.
- **Isolation level.** Faust reads ``read_uncommitted`` unless the app itself runs
  exactly-once. docket reads only committed data everywhere (DESIGN.md invariant 8):
  a record of an aborted transaction must have no effect, and a record of an open
  transaction is read once it commits. Kafka then delivers records only up to the
  last stable offset, and never an aborted one or a transaction marker.
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as _driver

from app.kafka_admin import ISOLATION_LEVEL


_patched: list[tuple[int, int]] = []


def tune_worker_consumer(max_wait_ms: int, min_bytes: int = 1) -> None:
    """Make every Faust worker consumer created from now on wait for ``min_bytes``
    bytes of records (at least 1) but at most ``max_wait_ms`` ms per fetch, and read
    committed records only."""
    if _patched:
        _patched[0] = (max_wait_ms, min_bytes)
        return
    _patched.append((max_wait_ms, min_bytes))
    original = _driver.AIOKafkaConsumerThread._create_worker_consumer

    def create(self, transport):
        consumer = original(self, transport)
        # all three read by aiokafka when the consumer starts and builds its Fetcher
        consumer._fetch_max_wait_ms, consumer._fetch_min_bytes = _patched[0]
        consumer._isolation_level = ISOLATION_LEVEL
        return consumer

    _driver.AIOKafkaConsumerThread._create_worker_consumer = create
