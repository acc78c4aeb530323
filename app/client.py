"""DocketClient: submit an event to docket and await the result the instances agreed on,
over Kafka, without HTTP. The REST API (app/api.py) is a thin layer over it; Kafka-native
producers can use it directly:

    from app.client import DocketClient

    async with DocketClient() as client:          # DOCKET_* settings; start() / stop()
        sub = await client.submit("stock.adjust",
                                  {"warehouse": "w1", "sku": "s1", "delta": 10},
                                  idempotency_key="receipt-0001", timeout=5.0)
        print(sub.status, sub.outcome, sub.replay)  # decided {'status': 'applied', ...} False
        print(client.status("receipt-0001").state)  # decided
        print(client.entity("stock:w1:s1"))         # {'key': ..., 'state': {'quantity': 10}, 'version': 1, ...}

One process holds one producer and ONE consumer of the results and divergences topics
(every partition assigned, no consumer group), however many submissions are in flight:

- the producer writes with ``acks=all`` (idempotent), the record key being the domain's
  affinity key and the partition Kafka's default (murmur2 of the key), exactly like any
  Kafka-native producer of docket's input;
- a submission waits on a future keyed by its input position (partition, offset), taken
  from the produce acknowledgement; a result read before the acknowledgement arrives is
  buffered until it does;
- at start the consumer seeks to the results published within the idempotency TTL
  (``offsets_for_times``), so keys submitted recently, by this process or another, are
  known; after that it follows the end of the topics;
- an index idempotency key -> owning position, fingerprint of the request, latest result
  or divergence, kept for DOCKET_IDEMPOTENCY_TTL_MS, answers :meth:`DocketClient.status`
  and refuses a key reused for a different request before anything is produced;
- an entity view (entity key -> agreed state and version) is loaded at start from the
  Clerk's compacted ``<prefix>.entities`` topic (one record per entity once compacted:
  the start costs the number of entities, not the length of the results history) and
  kept current from the results it reads.

A record of those topics that is not what the Clerk writes there is skipped on its own,
with one warning naming topic, partition and offset: it never stops the start, nor the
records behind it.

The pipeline stays the authority: a repeated key is always produced again, and the
instances' Warden answers it with the original outcome (``duplicate_of`` set, reported as
``replay``) or rejects it as ``idempotency_key_reused``. The index only adds what the
Warden cannot see: a key reused for a request that routes to another partition (each
partition's Warden knows only its own keys), and reuse detected before producing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from app.batching import Outbox
from app.canonical import NotCanonical, canonical, digest
from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.records import (
    FINISHING_CAUSES,
    MAX_EVENT_NAME,
    MAX_IDEMPOTENCY_KEY,
    MAX_VALUE_BYTES,
    UnreadableRecord,
    check_divergence,
    check_finishing_report,
    check_report,
    check_result,
    entity_record,
    json_object,
    partition_for,
    unreadable_reason,
)
from app.settings import ConfigError, Settings, client_name_problem, load
from app.status import check_status
from app.stop_bound import StopEnd, stop_within

log = logging.getLogger("docket.client")

# Fewest seconds between two renewals of the input producer (DocketClient._renew_producer):
# while a broker restarts, every request could otherwise start one.
RENEW_INTERVAL_S = 1.0

Position = tuple[int, int]
# (client, idempotency key): the index's key; client None is the Kafka-native key space
ScopedKey = tuple[str | None, str]

# How far back the results consumer starts, at least: the entity view is loaded from the
# entities topic first and the results published since (the Clerk writes a result, then
# its entity records) must be read too, whatever the idempotency TTL.
MIN_LOOKBACK_MS = 60_000
# Divergence reports kept while produces await their acknowledgement, by position (a
# report names its request's key only as one copy says it, and reports written before
# reports named it carry none; a fault storm must not grow memory without bound).
EARLY_DIVERGENCES = 1024


class ClientError(Exception):
    """Base of the errors :class:`DocketClient` raises; ``str()`` says what is wrong."""


@dataclass(frozen=True)
class FieldError:
    field: str  # "event_name", "payload", "payload.delta", "idempotency_key"
    reason: str  # machine-readable, e.g. "invalid_payload", "zero_delta"
    message: str

    def as_dict(self) -> dict:
        return {"field": self.field, "reason": self.reason, "message": self.message}


class ValidationError(ClientError):
    """The request is invalid; nothing was produced. ``errors`` lists each problem with
    the field at fault."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))

    @property
    def reason(self) -> str:
        return self.errors[0].reason

    @property
    def field(self) -> str:
        return self.errors[0].field

    @property
    def message(self) -> str:
        return self.errors[0].message


class KeyReused(ClientError):
    """The idempotency key was used within the TTL for a different request; nothing was
    produced. ``position`` is where the key was first used, when known."""

    reason = "idempotency_key_reused"

    def __init__(self, idempotency_key: str, position: Position | None, why: str) -> None:
        self.idempotency_key = idempotency_key
        self.position = position
        where = "" if position is None else f" (input partition {position[0]} offset {position[1]})"
        super().__init__(f"idempotency key {idempotency_key!r} was already used{where} for a different "
                         f"request {why}; use a new key for a new request")


class KafkaUnavailable(ClientError):
    """Kafka could not take the event. ``accepted`` is False when the event was certainly
    not written (nothing was sent), None when Kafka did not acknowledge it in time: then
    the outcome is unknown (a broker that hangs rather than refuses writes it and applies
    it; a fresh-clone user check saw 81 of 81 such events applied). A retry with the same
    idempotency key within the idempotency TTL is safe either way: a record that did land
    answers it as a duplicate; a new key, or a retry after the TTL, may apply it twice."""

    def __init__(self, message: str, accepted: bool | None = False) -> None:
        self.accepted = accepted
        super().__init__(message)


class TopicsMissing(ClientError):
    """docket's topics do not exist, have another partition count, or the input topic
    lacks broker timestamps (LogAppendTime); the message says how to fix it."""


class ClientNotStarted(ClientError, RuntimeError):
    """:meth:`DocketClient.submit` on a client whose :meth:`~DocketClient.start` was
    never called (use ``async with DocketClient() as client``), or after its
    :meth:`~DocketClient.stop`: a mistake in the calling code, which waiting for Kafka
    cannot fix (it was reported as KafkaUnavailable, "send it again once Kafka is
    back")."""


class TopicsDisagree(TopicsMissing, ConfigError):
    """The topics exist but do not fit the settings, which waiting cannot change: the
    input topic has another partition count than DOCKET_PARTITIONS, or the instances'
    status records say the topics serve another domain than DOCKET_DOMAIN
    (TopicsServeOneDomain). A ConfigError: the API stops with exit status 2 instead of
    retrying (and answering 503 "Kafka is unreachable") for ever."""


@dataclass(frozen=True)
class Submission:
    """What :meth:`DocketClient.submit` found.

    ``status``: ``decided`` (``result`` is the Clerk's result record), ``pending`` (not
    decided within the timeout: ask :meth:`DocketClient.status` later) or ``diverged``
    (the instances disagreed; ``divergence`` is the Clerk's report; nothing is published).
    ``position`` is the input position of this submission's record; ``replay`` is True
    when the pipeline answered it as a repeat of an earlier request with the same key
    (``result["duplicate_of"]`` is that request's position), or when it repeats a
    request that diverged (``repeated``: answered from the index with that request's
    divergence and position, nothing produced), or when it repeats a request that was
    agreed and its own copies diverged (``repeated``: answered with that request's
    result and position; ``divergence`` is the repeat's report)."""

    idempotency_key: str
    status: str
    position: Position
    result: dict | None = None
    divergence: dict | None = None
    waited_s: float = 0.0  # acknowledged -> decided (or gave up)
    repeated: bool = False

    @property
    def replay(self) -> bool:
        return self.repeated or (self.result is not None and self.result.get("duplicate_of") is not None)

    @property
    def outcome(self) -> dict | None:
        return None if self.result is None else self.result["outcome"]


@dataclass(frozen=True)
class KeyStatus:
    """What this client knows of an idempotency key: ``state`` is ``pending``,
    ``decided``, ``diverged`` or ``unknown`` (never seen, or older than the TTL)."""

    idempotency_key: str
    state: str
    position: Position | None = None  # of the request that owns the key
    result: dict | None = None
    divergence: dict | None = None

    @property
    def replay(self) -> bool:
        return self.result is not None and self.result.get("duplicate_of") is not None


@dataclass(slots=True)
class _Entry:
    home: int  # the partition the key's requests route to
    fingerprint: str | None  # of the owning request; None when only its result was seen
    recorded_at: int  # stream time (ms) of the owning request
    position: Position | None  # of the owning request; None until its produce is acknowledged
    result: bytes | None = None  # latest result for the key (JSON, without the Clerk's state)
    divergence: bytes | None = None


def fingerprint(event_name: str, payload: Any) -> str:
    """The Warden's fingerprint of a request (agents/usher.py): same bytes, same value."""
    return digest(canonical([event_name, payload]))


def key_problem(idempotency_key: Any) -> str | None:
    """Why ``idempotency_key`` cannot be used, or None. The envelope's rule
    (app/records.py): a non-empty string of at most MAX_IDEMPOTENCY_KEY characters,
    which UTF-8 can encode (a Python str can hold a lone surrogate; it raised orjson's
    TypeError from submit: the ninth fresh-user trial)."""
    if not isinstance(idempotency_key, str) or not idempotency_key:
        return "must be a non-empty string"
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        return f"must be at most {MAX_IDEMPOTENCY_KEY} characters (got {len(idempotency_key)})"
    try:
        idempotency_key.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8, so no record can carry it
        return (f"must be text that UTF-8 can encode (character {exc.start} is U+{ord(idempotency_key[exc.start]):04X}, "
                "half of a surrogate pair alone)")
    return None


def _owns(early: tuple[str, dict, bytes]) -> bool:
    """A result that makes its request the owner of its key: evaluated afresh."""
    kind, rec, _ = early
    if kind != "result" or rec.get("duplicate_of") is not None:
        return False
    return not (rec["outcome"]["status"] == "rejected" and rec["outcome"]["reason"] == "idempotency_key_reused")


def _exact(data: bytes) -> bytes:
    """A copy of exactly ``len(data)`` bytes: orjson's output keeps its whole write buffer
    (4 KiB and more) allocated, and the index keeps results for a TTL."""
    return bytes(memoryview(data))


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _kafka_connected(kafka_client) -> bool:
    # aiokafka has no public "connected" flag; a consumer that is fetching keeps a live
    # connection to the leaders it reads from, and loses it as soon as a broker goes away.
    conns = getattr(kafka_client, "_conns", None)
    if conns is None:
        return True
    return any(conn.connected() for conn in conns.values())


async def stop_consumer(consumer) -> None:
    """``await consumer.stop()`` of an AIOKafkaConsumer, without the CancelledError that
    aiokafka (0.14.0) lets out of it when the broker is away: Fetcher.close cancels each
    pending fetch task and awaits it unguarded (``x.cancel(); await x``), and a fetch
    waiting out its retry back-off then raises CancelledError into the caller, which was
    not cancelled (aio-libs/aiokafka#647, open). That error made `docket api` exit 1 with
    a traceback when stopped while Kafka was gone. What that error skips of the close
    (the fetch tasks after it, the client's connections) dies with the process, as the
    client is only stopped on its way out; the consumer is marked closed first either
    way. A CancelledError of the calling task itself (it is being cancelled) is raised
    as usual."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.info("the Kafka consumer stopped without finishing its pending fetches (is Kafka reachable?)")


async def stop_producer(producer, flush_timeout_s: float) -> bool:
    """``await producer.stop()`` of an AIOKafkaProducer, its flush bounded by
    ``flush_timeout_s`` (seconds). Returns True when every record it held was
    delivered or failed, False when the flush was cut short: then its sender task is
    cancelled, which ends aiokafka's stop without them, and its connections are closed.

    Why: aiokafka's stop flushes every record it holds, and an idempotent producer
    retries them for as long as Kafka is away: `docket api` SIGTERMed after its broker
    died under load was still stopping when `make run` killed it 35 s later (a
    fresh-clone user check, 2 of 2; specs/integration.allium ClientStopHasADeadline).
    Nothing is lost by cutting it short: a record Kafka never acknowledged was never
    answered as accepted. Relies on aiokafka 0.14's ``producer._sender.sender_task``
    (app/private_api.py)."""
    def cut() -> None:
        task = producer._sender.sender_task  # noqa: SLF001  aiokafka has no stop without the flush
        if task is not None:
            task.cancel()

    return await stop_within(producer.stop(), flush_timeout_s, cut) is StopEnd.IN_TIME


class DocketClient:
    """See the module docstring. Not thread-safe: use it from one event loop."""

    def __init__(self, settings: Settings | None = None, *, domain=None,
                 produce_timeout_ms: int = 10_000, start_timeout_s: float = 30.0) -> None:
        from app.domains import registry

        self.settings = settings or load()
        self.domain = domain or registry.newest(self.settings.domain)
        self.ttl_ms = self.settings.idempotency_ttl_ms
        self.produce_timeout_ms = produce_timeout_ms
        self.start_timeout_s = start_timeout_s
        self._producer = None
        self._outbox = None
        self._renewing = asyncio.Lock()
        self._renewed_at = float("-inf")  # monotonic s of the last producer renewal
        self._consumer = None
        self._task: asyncio.Task | None = None
        self._started = False
        self._start_called = False  # start() called at least once (ClientNotStarted)
        self._stopped = False  # stop() called since the last start()
        self._start_failed = False  # a start() raised (the API's retries: Kafka unreachable)
        self._caught_up = asyncio.Event()
        self._catch_up_to: dict = {}  # TopicPartition -> end offset at start
        # submissions waiting for a result, by input position
        self._waiters: dict[Position, asyncio.Future] = {}
        # idempotency key -> produces not yet acknowledged, and the results for that key
        # read meanwhile (one of them may answer such a produce); divergence reports
        # read while anything is unacknowledged are kept by position (EARLY_DIVERGENCES)
        self._unacked: collections.Counter = collections.Counter()
        self._early: dict[ScopedKey, dict[Position, tuple[str, dict, bytes]]] = {}
        self._early_divergences: collections.OrderedDict = collections.OrderedDict()
        # this process's acknowledged submissions not yet decided:
        # position -> ((client, key), recorded_at, fingerprint)
        self._mine: dict[Position, tuple[ScopedKey, int, str]] = {}
        self._mine_order: collections.deque = collections.deque()  # (recorded_at, position)
        self._index: dict[ScopedKey, _Entry] = {}
        self._index_order: collections.deque = collections.deque()  # (recorded_at, key)
        self._entities: dict[str, dict] = {}
        # "<instance>:<partition>" -> the latest status record of the status topic
        self._statuses: dict[str, dict] = {}
        self.entities_loaded = 0  # records read from the entities topic at start
        self.results_read = 0
        self.divergences_read = 0
        self.records_skipped = 0  # unreadable records of the entities, results and divergences topics
        self.last_error: str | None = None
        # the newest broker timestamp seen (ms): produce acknowledgements (LogAppendTime
        # of the input topic) and results' stream_time
        self._broker_ms = 0

    def _clock_ms(self) -> int:
        """The index's clock (ms): the newest broker timestamp seen, or this host's
        clock where that is ahead (an idle client sees no broker time). A host clock
        running ahead only makes the index forget a key sooner than the Warden does,
        which hands the decision to the Warden; it never keeps a key alive longer."""
        wall = _wall_ms()
        return wall if wall > self._broker_ms else self._broker_ms

    def _saw(self, broker_ms: int) -> None:
        if broker_ms > self._broker_ms:
            self._broker_ms = broker_ms

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "DocketClient":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def started(self) -> bool:
        return self._started

    @property
    def caught_up(self) -> bool:
        """The results consumer has read everything published before the client started."""
        return self._caught_up.is_set()

    @property
    def connected(self) -> bool:
        return self._started and self._consumer is not None and _kafka_connected(self._consumer._client)  # noqa: SLF001

    @property
    def ready(self) -> bool:
        return self.connected and self.caught_up

    async def wait_caught_up(self, timeout: float) -> None:
        await asyncio.wait_for(self._caught_up.wait(), timeout)

    async def _check_domain(self) -> None:
        """Raise TopicsDisagree when the instances' status records say the topics serve
        another domain than DOCKET_DOMAIN: this client would judge requests by the wrong
        domain's rules (a fresh-clone user check saw an accounts API on inventory
        topics answer every account.open 409 unknown_event, and `docket demo` pick the
        API's domain). A status topic that cannot be read within 10 s is logged and
        the check skipped, as the instances do (agents/instance.py
        check_topics_domain)."""
        from aiokafka.errors import KafkaError

        from app.status import domain_conflict, read_statuses

        try:
            statuses = await read_statuses(self.settings, min(self.start_timeout_s, 10.0))
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("could not read %s to check which domain its topics serve (%s); starting without that "
                        "check", self.settings.status_topic, exc or type(exc).__name__)
            return
        conflict = domain_conflict(self.settings, statuses)
        if conflict is not None:
            raise TopicsDisagree(conflict)

    def _check_open(self) -> None:
        """Raise ClientNotStarted before start() was first called, or after stop(). A
        client whose start is still being attempted (the API's, connecting in the
        background) is open: its submissions get KafkaUnavailable."""
        if self._started:
            return
        if not self._start_called:
            raise ClientNotStarted("this DocketClient was never started: use `async with DocketClient() as "
                                   "client:` or `await client.start()` first")
        if self._stopped:
            raise ClientNotStarted("this DocketClient was stopped: start it again (`await client.start()`) or "
                                   "use a new one")

    async def _await_catch_up(self, timeout: float | None) -> None:
        """Wait, up to the submission's timeout, until the results and divergences
        published before the client started are read (ClientJudgesReuseOnlyCaughtUp):
        until then its index lacks the keys other processes used within the TTL, and a
        key of another process's request on another affinity key went on to be applied
        twice (the Wardens judge per partition; a fresh-clone user check, 5 of 5 right
        after start). Raises KafkaUnavailable (not accepted) when the timeout passes."""
        limit = self.settings.api_timeout_ms / 1000 if timeout is None else timeout
        try:
            await asyncio.wait_for(self._caught_up.wait(), max(limit, 0.0))
        except TimeoutError:
            left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(self._catch_up_to)[:4])
            raise KafkaUnavailable(
                "this client is still reading the results published within the idempotency TTL before it started "
                f"(left: {left or 'none'}), which it needs to judge a reused key: nothing was sent. Send it again "
                "in a moment: it cannot be applied twice", accepted=False) from None

    async def start(self) -> None:
        """Connect, check the topics, load the entity view and start following results.
        Returns before the results of the TTL published before it are read
        (``caught_up``; submit waits for them). Raises KafkaUnavailable (no broker at
        DOCKET_KAFKA_BOOTSTRAP), TopicsMissing, or TopicsDisagree (a TopicsMissing and a
        ConfigError: another partition count than DOCKET_PARTITIONS, or topics of another
        domain)."""
        self._start_called, self._stopped = True, False
        if self._started:
            return
        try:
            await self._start()
        except BaseException:
            self._start_failed = True  # later submissions say Kafka is unreachable, not "connecting"
            raise

    async def _start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from app import metadata_backoff
        from app.kafka_admin import KafkaUnreachable, connect_admin, quiet
        from app.logs import thin_kafka_client_logs
        from app.topics import broker_time_problem, partition_count_problem, partition_counts, timestamp_types

        metadata_backoff.install()
        thin_kafka_client_logs()  # before the first connection attempt can complain

        s = self.settings
        try:
            admin = await connect_admin(s.kafka_bootstrap, min(self.start_timeout_s, 10.0), s, "api")
        except KafkaUnreachable as exc:
            raise KafkaUnavailable(f"{exc}: is the broker running (`docket broker start`)?") from None
        try:
            topics = [s.input_topic, s.results_topic, s.divergences_topic, s.entities_topic, s.status_topic]
            counts = await partition_counts(admin, topics)
            input_time = (await timestamp_types(admin, [s.input_topic])).get(s.input_topic)
        finally:
            await admin.close()
        problem = s.input_topic in counts and broker_time_problem(s.input_topic, input_time)
        if problem:
            raise TopicsMissing(problem)
        missing = [t for t in topics if t not in counts]
        if missing:
            raise TopicsMissing(f"topic(s) {', '.join(missing)} do not exist on {s.kafka_bootstrap}; "
                                "run `docket topics create`")
        problem = partition_count_problem(s, counts[s.input_topic])
        if problem:
            raise TopicsDisagree(problem)
        await self._check_domain()

        producer = self._new_producer()
        # fetch_max_wait_ms: see app/faust_tuning.py; aiokafka's 500 ms default would
        # delay results behind an idle partition's long poll
        consumer = AIOKafkaConsumer(**client_kwargs(s, "api", "consumer", bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                    isolation_level=ISOLATION_LEVEL, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=s.fetch_max_wait_ms))
        try:
            with quiet():
                await producer.start()
                await consumer.start()
            await self._await_leaders(consumer, [TopicPartition(t, p) for t in topics for p in range(counts[t])])
            # How far back to read results at start is the one reading of this host's
            # clock that is not capped by broker time: a clock off by X shifts the window
            # by X, and a key the index misses is still judged by the Warden.
            t0 = _wall_ms()
            await self._load_entities(consumer, [TopicPartition(s.entities_topic, p)
                                                 for p in range(counts[s.entities_topic])])
            tps = [TopicPartition(s.results_topic, p) for p in range(counts[s.results_topic])]
            tps += [TopicPartition(s.divergences_topic, p) for p in range(counts[s.divergences_topic])]
            statuses = [TopicPartition(s.status_topic, p) for p in range(counts[s.status_topic])]
            consumer.assign(tps + statuses)
            since = t0 - max(self.ttl_ms, MIN_LOOKBACK_MS)
            found = await consumer.offsets_for_times({tp: since for tp in tps})
            ends = await consumer.end_offsets(tps + statuses)
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
            await consumer.seek_to_beginning(*statuses)  # compacted: the latest per key is all there is
            self._catch_up_to = ends
        except BaseException:
            await consumer.stop()
            await producer.stop()
            raise
        self._producer, self._consumer = producer, consumer
        self._outbox = Outbox(producer, s.input_topic)
        self._started = True
        self._task = asyncio.create_task(self._follow(), name="docket results consumer")

    def _new_producer(self):
        """The idempotent producer of input records (not started)."""
        from aiokafka import AIOKafkaProducer

        s = self.settings
        return AIOKafkaProducer(**client_kwargs(s, "api", "producer", bootstrap_servers=s.kafka_bootstrap, acks="all",
                                                enable_idempotence=True, request_timeout_ms=self.produce_timeout_ms,
                                                linger_ms=0, max_batch_size=512 * 1024))

    async def _renew_producer(self, failed: Outbox, exc: BaseException) -> None:
        """Replace the producer behind ``failed`` after the broker refused a record
        batch of it (``exc``). An idempotent producer whose sequence numbers the broker
        no longer follows (OutOfOrderSequenceNumber after a broker restart) has every
        later batch of those partitions refused: a fresh-clone user check saw the API
        answer 503 to every request for 4 of 8 partitions for minutes after a broker
        restart, until the API was restarted. Once per failed producer, however many
        requests saw its refusals, and at most one attempt every RENEW_INTERVAL_S."""
        async with self._renewing:
            if self._outbox is not failed or not self._started:
                return  # renewed already, or stopping
            wait = self._renewed_at + RENEW_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            from app.kafka_admin import quiet

            self._renewed_at = time.monotonic()  # attempts too: a producer that cannot start
            producer = self._new_producer()
            try:
                with quiet():
                    await producer.start()
            except Exception as start_exc:  # noqa: BLE001  the next refusal tries again
                await producer.stop()
                log.warning("Kafka refused a record batch (%s: %s) and a new producer could not start (%s: %s); "
                            "trying again at the next refusal", type(exc).__name__, exc,
                            type(start_exc).__name__, start_exc)
                return
            if self._outbox is not failed or not self._started:  # stopped meanwhile
                await producer.stop()
                return
            old, self._producer = self._producer, producer
            self._outbox = Outbox(producer, self.settings.input_topic)
            log.warning("Kafka refused a record batch (%s: %s): submitting through a new producer from now on",
                        type(exc).__name__, exc)
        try:
            await stop_producer(old, self.produce_timeout_ms / 1000)
        except Exception:  # noqa: BLE001  the old producer's state is what failed
            pass

    async def stop(self) -> None:
        """Stop following results and close the Kafka clients; waiting submissions are
        cancelled. The producer's flush takes at most the produce timeout
        (:func:`stop_producer`). A later submit() raises ClientNotStarted."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        if self._consumer is not None:
            await stop_consumer(self._consumer)
            self._consumer = None
        if self._producer is not None:
            if not await stop_producer(self._producer, self.produce_timeout_ms / 1000):
                log.warning("stopped with records Kafka had not acknowledged after a flush of %d ms (is Kafka "
                            "reachable?): none of them had been answered as accepted", self.produce_timeout_ms)
            self._producer = None
        self._started = False

    async def _await_leaders(self, consumer, tps) -> None:
        """Wait, up to start_timeout_s, until the leader of every partition in ``tps``
        answers: one ListOffsets request per partition, which aiokafka retries quietly
        (at DEBUG) while a partition has no leader yet or its leader is still taking
        over (topics just created). Called before the consumer is assigned anything and
        before anything is produced: an assigned consumer resets its positions in the
        background, and aiokafka logs each NotLeaderForPartitionError of that at ERROR,
        as the producer logs a refused produce at WARNING. Raises KafkaUnavailable when
        the deadline passes."""
        from aiokafka.errors import KafkaTimeoutError

        try:
            await asyncio.wait_for(consumer.end_offsets(tps), self.start_timeout_s)
        except (TimeoutError, KafkaTimeoutError):
            names = ", ".join(sorted({tp.topic for tp in tps}))
            raise KafkaUnavailable(f"the partitions of {names} had no leader answering within "
                                   f"{self.start_timeout_s:.0f} s") from None

    async def _load_entities(self, consumer, tps) -> None:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        if todo:  # (without partitions, aiokafka would seek every assigned one)
            await consumer.seek_to_beginning(*todo)
        deadline = time.monotonic() + self.start_timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"could not read {self.settings.entities_topic} to its end within "
                                       f"{self.start_timeout_s:.0f} s")
            batches = await consumer.getmany(*todo, timeout_ms=200, max_records=10_000)
            for tp, msgs in batches.items():
                for m in msgs:
                    try:
                        self.on_entity_record(m.key, m.value)
                    except Exception as exc:  # noqa: BLE001  one bad record must not stop the start
                        self._skipped(tp.topic, tp.partition, m.offset, exc)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)

    # ------------------------------------------------------------------ submitting

    def check(self, event_name: Any, payload: Any, idempotency_key: Any) -> list[FieldError]:
        """Every problem with a request, without producing anything: the envelope's
        rules, then the domain's validation (one problem per field at most)."""
        errors = []
        problem = key_problem(idempotency_key)
        if problem:
            errors.append(FieldError("idempotency_key", "invalid_idempotency_key", f"idempotency key {problem}"))
        return errors + self.check_event(event_name, payload)

    def check_event(self, event_name: Any, payload: Any) -> list[FieldError]:
        """The problems with an event name and payload (the domain's validation)."""
        errors = []
        if not isinstance(event_name, str) or not event_name:
            errors.append(FieldError("event_name", "invalid_event_name", "event_name must be a non-empty string"))
        elif len(event_name) > MAX_EVENT_NAME:
            # as the Usher reads the envelope (app/records.py decode); and not echoed whole
            errors.append(FieldError("event_name", "invalid_event_name",
                                     f"event_name exceeds {MAX_EVENT_NAME} characters ({len(event_name):,})"))
        elif event_name not in self.domain.event_names:
            names = ", ".join(sorted(self.domain.event_names))
            errors.append(FieldError("event_name", "unknown_event",
                                     f"{self.domain.name} has no event {event_name!r} (known: {names})"))
        else:
            rejection = self.domain.validate(event_name, payload)
            if rejection is not None:
                where = "payload" if rejection.field is None else f"payload.{rejection.field}"
                errors.append(FieldError(where, rejection.reason, rejection.detail or rejection.reason))
        return errors

    def _prepare(self, event_name: str, payload: Any, idempotency_key: str,
                 client: str | None) -> tuple[bytes, int, str, bytes]:
        errors = self.check(event_name, payload, idempotency_key)
        problem = None if client is None else client_name_problem(client)
        if problem:
            # the Usher would reject the record (malformed_record): refuse it unsent
            errors.insert(0, FieldError("client", "invalid_client", f"client {problem}"))
        if errors:
            raise ValidationError(errors)
        try:
            fp = fingerprint(event_name, payload)
        except NotCanonical as exc:
            raise ValidationError([FieldError("payload", "invalid_payload", str(exc))]) from None
        key = self.domain.affinity_key(event_name, payload).encode("utf-8")
        envelope = {"idempotency_key": idempotency_key, "event_name": event_name, "payload": payload}
        if client is not None:
            envelope["client"] = client
        value = orjson.dumps(envelope)
        if len(value) > MAX_VALUE_BYTES:
            raise ValidationError([FieldError("payload", "too_large",
                                              f"the event is {len(value)} bytes encoded; at most {MAX_VALUE_BYTES}")])
        return key, partition_for(key, self.settings.partitions), fp, value

    def _check_reuse(self, skey: ScopedKey, home: int, fp: str, now: int) -> None:
        entry = self._live(skey, now)
        if entry is None:
            return
        if entry.home != home:
            raise KeyReused(skey[1], entry.position, "that routes to another partition (another affinity key)")
        if entry.fingerprint is not None and entry.fingerprint != fp:
            raise KeyReused(skey[1], entry.position, "(another event name or payload)")

    async def submit(self, event_name: str, payload: Any, idempotency_key: str,
                     timeout: float | None = None, *, client: str | None = None) -> Submission:
        """Validate, produce, and wait up to ``timeout`` seconds (default
        DOCKET_API_TIMEOUT_MS) for the agreed result. ``client`` scopes the key: the
        same key of two clients names two requests (the API passes its client's
        name; None is the key space of Kafka-native producers).

        Raises ValueError for a negative ``timeout`` (or one that is not a number),
        ValidationError or KeyReused (nothing produced), KafkaUnavailable (not
        accepted, or not acknowledged in time), ClientNotStarted (start() never called,
        or stop() since). Returns a Submission whose status is
        decided, pending (timeout; the event was accepted) or diverged. A repeat of a
        request that diverged is answered with its divergence, and nothing is produced
        (ClientAnswersRepeatOfDivergedRequest)."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout >= 0):
            # a negative one was taken as 0: the event produced, and "pending" at once
            raise ValueError(f"timeout must be a number of seconds, 0 or more, or None; got {timeout!r}")
        key, home, fp, value = self._prepare(event_name, payload, idempotency_key, client)
        skey = (client, idempotency_key)
        if self.connected and not self._caught_up.is_set():
            await self._await_catch_up(timeout)
        now = self._clock_ms()
        self._check_reuse(skey, home, fp, now)
        known = self._live(skey, now)
        if known is not None and known.divergence is not None and known.fingerprint in (fp, None):
            # Produced again, the Wardens would answer it as a duplicate with the outcome
            # each stored, and publish it when those agree (a fault in one output, not
            # in the state): 200 "applied" for a request whose status stays diverged.
            # A key known from the report alone (another process submitted it, or this
            # one restarted) has no fingerprint to compare: its request diverged all the
            # same, and a different one under its key would be refused (422) anyway.
            return Submission(idempotency_key, "diverged", known.position,
                              divergence=orjson.loads(known.divergence), repeated=True)
        if not self.connected:
            self._check_open()  # never started, or stopped: the caller's doing, not Kafka's
            if not self._started and not self._start_failed:  # its first start still under way
                what = f"not connected to Kafka at {self.settings.kafka_bootstrap} yet (connecting)"
            else:
                what = f"Kafka at {self.settings.kafka_bootstrap} is unreachable"
            raise KafkaUnavailable(
                f"{what}: nothing was sent" + (f" ({self.last_error})" if self.last_error else "")
                + ". Send it again once Kafka is back: it cannot be applied twice", accepted=False)
        if self._live(skey, now) is None:
            # provisional owner, so a concurrent request with the same key and another
            # body is refused before it is produced
            self._remember(skey, _Entry(home, fp, now, None))
        self._unacked[skey] += 1
        outbox = self._outbox
        try:
            try:
                # no timestamp: the input topic is LogAppendTime, the broker stamps it;
                # concurrent submissions go out as one record batch per partition
                meta = await asyncio.wait_for(outbox.send(home, key, value), self.produce_timeout_ms / 1000)
            except Exception as exc:  # noqa: BLE001  any produce failure means: not acknowledged
                from aiokafka.errors import KafkaTimeoutError

                entry = self._index.get(skey)
                if entry is not None and entry.position is None and entry.recorded_at == now:
                    del self._index[skey]
                detail = f"{type(exc).__name__}{f': {exc}' if str(exc) else ''}"
                if isinstance(exc, (TimeoutError, KafkaTimeoutError)):
                    what = f"Kafka did not acknowledge the event within {self.produce_timeout_ms:,} ms ({detail})"
                else:
                    await self._renew_producer(outbox, exc)
                    what = f"Kafka refused the event ({detail})"
                raise KafkaUnavailable(
                    f"{what}, so it may have been accepted and applied. Retry with the "
                    f"same idempotency key within {self.ttl_ms:,} ms (DOCKET_IDEMPOTENCY_TTL_MS) of this "
                    "request: a retry is never applied twice and answers with the outcome; a new key, or a "
                    "retry after that, may apply the event twice", accepted=None) from None
            pos = (meta.partition, meta.offset)
            stamped = meta.timestamp  # the broker's LogAppendTime: the request's stream time
            self._saw(stamped)
            fut = asyncio.get_running_loop().create_future()
            self._waiters[pos] = fut
            self._mine[pos] = (skey, stamped, fp)
            self._mine_order.append((stamped, pos))
            entry = self._index.get(skey)
            if entry is not None and entry.position is None and entry.fingerprint == fp:
                entry.position = pos
                entry.recorded_at = stamped
                self._index_order.append((stamped, skey))
            early = self._early.get(skey, {}).pop(pos, None) or self._early_divergences.pop(pos, None)
            if early is not None:  # read before the acknowledgement: the position is final
                self._resolve(pos, *early)
                self._mine.pop(pos, None)
                entry = self._index.get(skey)
                if entry is not None and entry.position == pos:
                    if early[0] == "divergence":
                        entry.divergence = early[2]
                    elif entry.fingerprint is None and _owns(early):
                        entry.fingerprint = fp
        finally:
            self._unacked[skey] -= 1
            if self._unacked[skey] <= 0:
                del self._unacked[skey]
                self._early.pop(skey, None)
                if not self._unacked:
                    self._early_divergences.clear()
        acked = time.monotonic()
        limit = self.settings.api_timeout_ms / 1000 if timeout is None else timeout
        try:
            kind, record = await asyncio.wait_for(fut, max(limit, 0.0))
        except TimeoutError:
            return Submission(idempotency_key, "pending", pos, waited_s=time.monotonic() - acked)
        finally:
            if self._waiters.get(pos) is fut:
                del self._waiters[pos]
        waited = time.monotonic() - acked
        if kind == "result":
            return Submission(idempotency_key, "decided", pos, result=record, waited_s=waited)
        return self._diverged_answer(idempotency_key, skey, fp, pos, record, waited)

    def _diverged_answer(self, idempotency_key: str, skey: ScopedKey, fp: str, pos: Position, divergence: dict,
                         waited_s: float) -> Submission:
        """The Submission for this submission's position ``pos`` diverging. When it
        repeats a request this client knows was agreed and published (the same key and
        fingerprint, owned by another position with a result), that request's result
        answers it: decided, replay, the original's position, the repeat's report as
        ``divergence`` (ClientAnswersDivergedRepeatWithAgreedOriginal). The repeat's
        copies disagreed (a faulty instance), but its request's outcome was agreed
        before; "diverged, no outcome was published" told a client whose first answer
        was lost that its applied request was not (a user check), inviting it to send
        it again under a new key. Otherwise: diverged at ``pos``."""
        entry = self._live(skey, self._clock_ms())
        if (entry is not None and entry.position not in (None, pos) and entry.fingerprint == fp
                and entry.divergence is None and entry.result is not None):
            return Submission(idempotency_key, "decided", entry.position, result=orjson.loads(entry.result),
                              divergence=divergence, waited_s=waited_s, repeated=True)
        return Submission(idempotency_key, "diverged", pos, divergence=divergence, waited_s=waited_s)

    # ------------------------------------------------------------------ reading

    def status(self, idempotency_key: str, client: str | None = None) -> KeyStatus:
        """What this client knows of ``idempotency_key`` in ``client``'s key space
        (from what it has read: "unknown" from a client not started). Raises
        ValidationError for a key no request can carry (the envelope's rule, 1-128
        characters), or a client name no request can carry (as :meth:`submit` does),
        which "unknown" would pass off as merely unseen."""
        problem = key_problem(idempotency_key)
        if problem:
            raise ValidationError([FieldError("idempotency_key", "invalid_idempotency_key",
                                              f"idempotency key {problem}")])
        named = None if client is None else client_name_problem(client)
        if named:
            raise ValidationError([FieldError("client", "invalid_client", f"client {named}")])
        entry = self._live((client, idempotency_key), self._clock_ms())
        if entry is None:
            return KeyStatus(idempotency_key, "unknown")
        if entry.divergence is not None:
            return KeyStatus(idempotency_key, "diverged", entry.position, divergence=orjson.loads(entry.divergence))
        if entry.result is not None:
            return KeyStatus(idempotency_key, "decided", entry.position, result=orjson.loads(entry.result))
        return KeyStatus(idempotency_key, "pending", entry.position)

    def entity(self, key: str) -> dict | None:
        """The latest agreed state of an entity: {key, state, version, input} or None."""
        ent = self._entities.get(key)
        return None if ent is None else dict(ent)

    @property
    def entity_count(self) -> int:
        return len(self._entities)

    @property
    def index_size(self) -> int:
        return len(self._index)

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    # ------------------------------------------------------------------ following

    async def _follow(self) -> None:
        s = self.settings
        consumer = self._consumer
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for tp, msgs in batches.items():
                    self.on_batch(tp.topic, tp.partition, msgs)
                if not self._caught_up.is_set():
                    for tp, end in list(self._catch_up_to.items()):
                        if await consumer.position(tp) >= end:
                            del self._catch_up_to[tp]
                    if not self._catch_up_to:
                        self._caught_up.set()
                self._sweep(self._clock_ms())
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  keep following; readiness shows the trouble
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reading %s and %s failed: %s", s.results_topic, s.divergences_topic, self.last_error)
                await asyncio.sleep(0.5)  # back-off before the next fetch, not a synchronisation

    def on_batch(self, topic: str, partition: int, records) -> None:
        """The records of one fetched batch of ``topic`` (the results or the divergences
        topic) and ``partition``, in order (aiokafka ConsumerRecords: ``offset``,
        ``value``). A record this client cannot read (not JSON, or not the shape the
        Clerk writes there) is skipped on its own, with a warning naming the topic,
        partition and offset, and the rest of the batch is still handled; so is a record
        whose handling fails in any other way."""
        if topic == self.settings.status_topic:
            for m in records:
                try:
                    self.on_status(m.key, m.value, partition)
                except Exception as exc:  # noqa: BLE001  one bad record must not cost the batch
                    self._skipped(topic, partition, m.offset, exc)
            return
        results = topic == self.settings.results_topic
        for m in records:
            try:
                if results:
                    self.on_result(m.value)
                else:
                    self.on_divergence(m.value, partition)
            except Exception as exc:  # noqa: BLE001  one bad record must not cost the batch
                self._skipped(topic, partition, m.offset, exc)

    def _skipped(self, topic: str, partition: int, offset: int, exc: Exception) -> None:
        self.records_skipped += 1
        log.warning("skipped an unreadable record of %s partition %d at offset %d: %s", topic, partition, offset,
                    unreadable_reason(exc))

    def on_status(self, key: bytes | None, raw: bytes | None, partition: int | None = None) -> None:
        """One record of the status topic (an instance's state for one input
        partition, app/versions.py status_record): the latest per key is kept; a
        tombstone drops the key. Raises UnreadableRecord, before any effect, for a
        record that is not a status record as an instance writes it, on the status
        partition of the input partition it names (``partition``, when given)."""
        if key is None:
            raise UnreadableRecord("a status record needs a key")
        name = key.decode("utf-8", errors="replace")
        if raw is None:
            self._statuses.pop(name, None)
            return
        self._statuses[name] = check_status(raw, partition)

    @property
    def blocked_partitions(self) -> list[dict]:
        """The (instance, partition) pairs of DOCKET_INSTANCES' instances whose latest
        status is "blocked": each {instance, partition, offset, version, judges_with},
        sorted by partition then instance. Another instance's records are kept but not
        listed (app/status.py of_instances): nothing of this deployment replaces them."""
        from app.status import of_instances

        ours, _others = of_instances(list(self._statuses.values()), self.settings.instances)
        out = [{k: v for k, v in rec.items() if k != "state"} for rec in ours if rec["state"] == "blocked"]
        return sorted(out, key=lambda r: (r["partition"], r["instance"]))

    def on_entity_record(self, key: bytes | None, raw: bytes | None) -> None:
        """One record of the compacted entities topic, read at start (public for tests:
        it is the whole effect of such a record on this client). Raises UnreadableRecord,
        before any effect, for a record that is not an entity state as the Clerk writes
        it, nor a tombstone with a key (:func:`entity_record`)."""
        self.entities_loaded += 1
        name, rec = entity_record(key, raw)
        if rec is None:
            self._entities.pop(name, None)
        else:
            self._put_entity(name, rec["state"], rec["version"], rec.get("input"))

    def on_result(self, raw: bytes) -> None:
        """One record of the results topic (public for tests: it is the whole effect of
        a result on this client). Raises UnreadableRecord, before any effect, for a
        record that is not a result as the Clerk writes it."""
        self.results_read += 1
        rec = json_object(raw)
        check_result(rec)
        rec.pop("clerk", None)
        compact = _exact(orjson.dumps(rec))
        pos = (rec["input"]["partition"], rec["input"]["offset"])
        self._saw(rec["stream_time"])
        outcome = rec["outcome"]
        # entities and index first: a submitter woken below reads its own writes
        if outcome["status"] == "applied" and rec.get("duplicate_of") is None:
            for ent in outcome["entities"]:
                self._put_entity(ent["key"], ent["state"], ent["version"], rec["input"])
        ikey = rec.get("idempotency_key")
        if ikey is not None:
            self._index_result((rec.get("client"), ikey), pos, rec, compact)
        self._mine.pop(pos, None)
        self._deliver(pos, "result", rec, compact)

    def on_divergence(self, raw: bytes, partition: int | None = None) -> None:
        """One record of the divergences topic. Only a ``mismatch``, ``version_mismatch``
        or ``original_diverged`` (a duplicate of a diverged request) with no decision
        finishes a position (it will never be published); a copy that disagrees with a
        decision already made is reported too, but the decision stands, and a
        ``replay_mismatch`` changes nothing either.

        A finishing report is indexed by the idempotency key it names (records written
        before reports named their request carry none: only this process's own
        submissions are then recognised, by position): the key's live owner at the
        report's position becomes ``diverged``; a key with no live entry gets one, owned
        by that position, so any API process answers it ``diverged`` (reports read at
        start within the lookback included); a key owned by ANOTHER position (the
        diverged request repeated or reused an owned key) keeps its owner's state.
        Raises UnreadableRecord, before any effect, for a record that is not a report
        (its cause not one of DIVERGENCE_CAUSES, its decision neither null nor a
        digest) or a finishing report that is not one as the Clerk writes it: with the
        fields it reads, on the divergences partition of its input partition (``partition``,
        when given), with a Clerk state that counts its position finished (as
        ClerkSeedsDivergedPositions asks), and for a position whose result this client
        has not read (the Clerk never both publishes and finishes a position). A
        report-shaped record without a Clerk state turned a request decided and answered
        200 into "diverged", 502 to every retry (the thirteenth fresh-user trial)."""
        self.divergences_read += 1
        rec = json_object(raw)
        check_report(rec)
        if rec["cause"] not in FINISHING_CAUSES or rec.get("decided") is not None:
            return
        check_divergence(rec)
        check_finishing_report(rec, partition)
        pos = (rec["input"]["partition"], rec["input"]["offset"])
        mine = self._mine.get(pos)
        skey = (rec.get("client"), rec.get("idempotency_key"))
        if mine is not None and skey != mine[0]:
            skey = mine[0]  # this process knows what it sent; the report's key came from one copy
        owner = self._index.get(skey)
        if owner is not None and owner.position == pos and owner.result is not None:
            raise UnreadableRecord(f"the result of input {pos[0]}@{pos[1]} was published: no report finishes it")
        self._mine.pop(pos, None)
        rec.pop("clerk", None)
        compact = _exact(orjson.dumps(rec))
        if isinstance(skey[1], str):
            self._index_divergence(skey, pos, rec, compact, mine)
        self._deliver(pos, "divergence", rec, compact)

    def _index_divergence(self, ikey: ScopedKey, pos: Position, rec: dict, compact: bytes,
                          mine: tuple[ScopedKey, int, str] | None) -> None:
        now = self._clock_ms()
        entry = self._live(ikey, now)
        if entry is None:
            if mine is not None:
                recorded_at = mine[1]
            elif isinstance(rec.get("stream_time"), int):
                recorded_at = rec["stream_time"]
            else:
                recorded_at = now  # an older report names no time: keep it one TTL from now
            self._remember(ikey, _Entry(pos[0], None if mine is None else mine[2], recorded_at, pos,
                                        divergence=compact))
        elif entry.position == pos:
            entry.divergence = compact

    def _deliver(self, pos: Position, kind: str, rec: dict, compact: bytes) -> None:
        if pos in self._waiters:
            self._resolve(pos, kind, rec, compact)
        elif kind == "result":
            skey = (rec.get("client"), rec.get("idempotency_key"))
            if skey in self._unacked:
                self._early.setdefault(skey, {})[pos] = (kind, rec, compact)
        elif self._unacked:
            self._early_divergences[pos] = (kind, rec, compact)
            if len(self._early_divergences) > EARLY_DIVERGENCES:
                self._early_divergences.popitem(last=False)

    def _resolve(self, pos: Position, kind: str, rec: dict, compact: bytes) -> None:
        fut = self._waiters.pop(pos, None)
        if fut is not None and not fut.done():
            fut.set_result((kind, rec))

    def _index_result(self, ikey: ScopedKey, pos: Position, rec: dict, compact: bytes) -> None:
        now = self._clock_ms()
        entry = self._live(ikey, now)
        outcome = rec["outcome"]
        if outcome["status"] == "rejected" and outcome["reason"] == "idempotency_key_reused":
            # this use was refused; the key still belongs to an earlier request
            if entry is None or entry.position == pos:
                self._remember(ikey, _Entry(pos[0], None, rec["stream_time"], pos, compact))
            return
        dup = rec.get("duplicate_of")
        if dup is not None:
            if entry is None:
                # the original is older than what this client read: its stream time is
                # unknown, the repeat's is an upper bound (the key lives a little longer here)
                self._remember(ikey, _Entry(pos[0], None, rec["stream_time"],
                                            (dup["partition"], dup["offset"]), compact))
            elif entry.result is None:
                entry.result = compact
            return
        if entry is not None and entry.position == pos:
            entry.result = compact
            # a published position is decided, whatever a report said of it: the Clerk
            # never both publishes and finishes one, so a report read first was not the
            # Clerk's (the fourteenth fresh-user trial: read before the result at an API
            # start, a forged one left the key "diverged" in 6 starts of 8)
            entry.divergence = None
            return
        # a new owner: evaluated afresh (first use, or the previous use has expired in
        # the Warden's stream time); its fingerprint is known if this process sent it
        mine = self._mine.get(pos)
        self._remember(ikey, _Entry(pos[0], None if mine is None else mine[2], rec["stream_time"], pos, compact))

    def _remember(self, ikey: ScopedKey, entry: _Entry) -> None:
        self._index[ikey] = entry
        self._index_order.append((entry.recorded_at, ikey))

    def _live(self, ikey: ScopedKey, now: int) -> _Entry | None:
        entry = self._index.get(ikey)
        if entry is None:
            return None
        if now - entry.recorded_at >= self.ttl_ms:
            del self._index[ikey]
            return None
        return entry

    def _sweep(self, now: int) -> None:
        """Forget keys older than the TTL, and this process's undecided submissions too
        (their keys expire with them)."""
        order = self._index_order
        while order and now - order[0][0] >= self.ttl_ms:
            recorded_at, ikey = order.popleft()
            entry = self._index.get(ikey)
            if entry is not None and entry.recorded_at == recorded_at:
                del self._index[ikey]
        mine = self._mine_order
        while mine and (mine[0][1] not in self._mine or now - mine[0][0] >= self.ttl_ms):
            self._mine.pop(mine.popleft()[1], None)

    def _put_entity(self, key: str, state: dict, version: int, at: dict | None) -> None:
        current = self._entities.get(key)
        if current is None or version > current["version"]:
            self._entities[key] = {"key": key, "state": state, "version": version, "input": at}
