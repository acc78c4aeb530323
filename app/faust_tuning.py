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
- **Idle fetches.** A consumer whose last fetch found no records is idle: its next
  fetch returns at the first record (1 byte) and waits for it up to
  DOCKET_FETCH_IDLE_WAIT_MS (500 ms, Kafka's own fetch.max.wait.ms default) rather than
  a round's 20 ms (:class:`FetchPacer`, FetchWaitsForTheFirstRecordWhenIdle). An idle
  stack then asks the broker 2 times a second per consumer instead of 50, and an event
  that finds its worker idle is fetched at once instead of at the end of the round.
  aiokafka keeps one fetch in flight per broker, and a partition left out of it waits
  for its answer. A partition is left out while records of it are buffered, unread:
  so while any were fetched less than the idle wait ago, or a partition awaits an
  offset, fetches stay rounds. Records buffered longer are not being read (an
  instance's consumer holds its table's changelog partitions, whose records Faust
  reads only in a recovery), or their reader is that far behind already. A paused
  partition is left out of every fetch; one resumed while an idle fetch is in flight
  (at the end of a recovery) waits for that fetch's answer: at most
  DOCKET_FETCH_IDLE_WAIT_MS, once per rebalance.
- **Isolation level.** Faust reads ``read_uncommitted`` unless the app itself runs
  exactly-once. docket reads only committed data everywhere (DESIGN.md invariant 8):
  a record of an aborted transaction must have no effect, and a record of an open
  transaction is read once it commits. Kafka then delivers records only up to the
  last stable offset, and never an aborted one or a transaction marker.
"""

from __future__ import annotations

import time

from faust.transport.drivers import aiokafka as _driver

from app.kafka_admin import ISOLATION_LEVEL


class FetchPacer:
    """Whether a worker consumer's next fetch is a round or an idle fetch.

    A round waits for DOCKET_FETCH_MIN_BYTES or DOCKET_FETCH_MAX_WAIT_MS, whichever
    comes first (FetchWaitsForARound); an idle fetch waits for the first record (1
    byte) or ``idle_wait_ms`` (FetchWaitsForTheFirstRecordWhenIdle). The consumer is
    idle when the last fetch answered by every broker it fetches from found no
    records, no records fetched less than ``idle_wait_ms`` ago are still buffered, and
    no assigned partition awaits an offset: then the fetches leave out no partition
    that is being read. Before any answer it fetches rounds. ``idle_wait_ms`` 0 means
    rounds only. Pure bookkeeping: no clock, no I/O (the caller says what is buffered)."""

    __slots__ = ("idle_wait_ms", "_empty")

    def __init__(self, idle_wait_ms: int) -> None:
        if idle_wait_ms < 0:
            raise ValueError(f"idle_wait_ms must be 0 or more, got {idle_wait_ms}")
        self.idle_wait_ms = idle_wait_ms
        self._empty: dict[int, bool] = {}  # broker (node id) -> its last fetch found no records

    def answered(self, node_id: int, had_records: bool) -> None:
        """A fetch sent to broker ``node_id`` ended (answered, failed or cancelled);
        ``had_records`` when it buffered at least one record."""
        self._empty[node_id] = not had_records

    def forget(self) -> None:
        """The assignment changed: fetch rounds until every broker has answered again."""
        self._empty.clear()

    def idle(self, buffered: bool, every_position_known: bool) -> bool:
        """Whether the fetches about to be sent wait for the first record;
        ``buffered``: records fetched less than ``idle_wait_ms`` ago are unread."""
        return (self.idle_wait_ms > 0 and not buffered and every_position_known
                and bool(self._empty) and all(self._empty.values()))


def _every_position_known(assignment) -> bool:
    state = assignment.state_value
    return all(state(tp).has_valid_position for tp in assignment.tps)


def _buffered_since(records, since: float) -> bool:
    # aiokafka's FetchResult/FetchError stamp _created with time.monotonic()
    return any(result._created > since for result in records.values())


def pace(fetcher, pacer: FetchPacer) -> None:
    """Make aiokafka's ``fetcher`` (one consumer's) send idle fetches when ``pacer``
    says the consumer is idle: the fetch requests it builds wait for 1 byte and
    ``pacer.idle_wait_ms`` instead of its own min bytes and wait. Wraps the two
    methods of that one object its fetch routine calls (the class is untouched:
    other consumers of the process, the API's, keep aiokafka's behaviour)."""
    build = fetcher._get_actions_per_node
    fetch = fetcher._proc_fetch_request
    seen = [None]  # the assignment the pacer's answers are about

    def actions(assignment):
        if assignment is not seen[0]:
            seen[0] = assignment
            pacer.forget()
        out = build(assignment)
        requests = out[0]
        if requests and pacer.idle(_buffered_since(fetcher._records, time.monotonic() - pacer.idle_wait_ms / 1000),
                                   _every_position_known(assignment)):
            for _node_id, request in requests:
                request._max_wait_ms, request._min_bytes = pacer.idle_wait_ms, 1
        return out

    async def fetch_and_note(assignment, node_id, request):
        had = False
        try:
            had = await fetch(assignment, node_id, request)
            return had
        finally:
            if assignment is seen[0]:
                pacer.answered(node_id, bool(had))

    fetcher._get_actions_per_node = actions
    fetcher._proc_fetch_request = fetch_and_note


_patched: list[tuple[int, int, int]] = []


def tune_worker_consumer(max_wait_ms: int, min_bytes: int = 1, idle_wait_ms: int = 0) -> None:
    """Make every Faust worker consumer created from now on wait for ``min_bytes``
    bytes of records (at least 1) but at most ``max_wait_ms`` ms per fetch, read
    committed records only, and, when ``idle_wait_ms`` > 0, fetch with 1 byte and
    ``idle_wait_ms`` while it is idle (:class:`FetchPacer`)."""
    if _patched:
        _patched[0] = (max_wait_ms, min_bytes, idle_wait_ms)
        return
    _patched.append((max_wait_ms, min_bytes, idle_wait_ms))
    original = _driver.AIOKafkaConsumerThread._create_worker_consumer

    def create(self, transport):
        consumer = original(self, transport)
        max_wait, least, idle_wait = _patched[0]
        # all three read by aiokafka when the consumer starts and builds its Fetcher
        consumer._fetch_max_wait_ms, consumer._fetch_min_bytes = max_wait, least
        consumer._isolation_level = ISOLATION_LEVEL
        if idle_wait > 0:
            start = consumer.start

            async def start_paced():
                await start()
                pace(consumer._fetcher, FetchPacer(idle_wait))  # built by start()

            consumer.start = start_paced
        return consumer

    _driver.AIOKafkaConsumerThread._create_worker_consumer = create
