"""Deterministic workloads of any domain with a kit, and a Kafka producer for them.

The same kit and seed always give the same records, byte for byte, with the same
timestamps; the randomness here only *generates input* (it never runs inside an
instance). Tests, the chaos harness and the demo share this module:

    records = list(workload.records(registry.kit("accounts"), seed=7, events=10_000))
    positions = await produce(bootstrap, settings.input_topic, records)

A workload is a list of :class:`Record`. One ``random.Random(seed)`` drives it all. The
domain's part is its kit's workload model (app/domains/kit.py: set-up events first,
then events of the kinds of its mix, bookkept so that some drain an entity to exactly
zero and some are bound to be rejected); this module adds, for every domain alike:

- exact repeats of a recent event (same idempotency key and request: duplicates);
- reuses of a recent idempotency key for a different request of the same affinity key
  (rejected as ``idempotency_key_reused``);
- with ``ttl_ms``: repeats of an event recorded more than ``ttl_ms`` of stream time
  earlier, which the Warden has forgotten (evaluated afresh);
- with ``poison_share``: bad records of every kind of :func:`poison_kinds` (the
  generic ones, built by spoiling the model's ``good`` event, and the kit's own).

The truth about outcomes is the oracle, :func:`chaos.replay.replay`, run over the
records as the broker stored them.

Records are routed like any Kafka producer routes them: by the default
partitioner (murmur2 of the key, the domain's affinity key). Only a ``misrouted``
poison record names its partition explicitly, and records without a key go to
``index % partitions``.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import orjson

from app.domains.kit import REPEAT, REUSE, DomainKit, Event
from app.kafka_config import client_kwargs
from app.records import MAX_VALUE_BYTES, partition_for

BASE_TIMESTAMP_MS = 1_700_000_000_000  # fixed stream-time origin: 2023-11-14T22:13:20Z


class Record(NamedTuple):
    """One record to produce. ``partition`` is None (default partitioner) except for
    deliberately misrouted records; ``expect`` is the rejection reason a poison
    record must get (None for well-formed events, whose outcome depends on state)."""

    key: bytes | None
    value: bytes | None
    timestamp: int
    partition: int | None = None
    expect: str | None = None


def envelope(idempotency_key: str, event_name: str, payload: object) -> bytes:
    # Copied to its own size: orjson (3.12 on) returns its whole working buffer, at
    # least 4 KiB, and a caller keeping many events (a benchmark's schedule, the
    # chaos run's plan) would hold 4 KiB for each ~140-byte value.
    return bytes(memoryview(
        orjson.dumps({"idempotency_key": idempotency_key, "event_name": event_name, "payload": payload})))


def encode(kit: DomainKit, ikey: str, event: Event) -> tuple[bytes, bytes]:
    """(key, value) of ``event``: the key is the domain's affinity key, UTF-8."""
    name, payload = event
    return kit.domain.affinity_key(name, payload).encode(), envelope(ikey, name, payload)


# --------------------------------------------------------------------------- poison

# kind -> the rejection reason docket must give it, for every domain. The kinds named
# after the kit's integer field F (string_F ...) follow GENERIC_HEAD; the kit's own
# kinds follow those; GENERIC_TAIL ends the cycle.
GENERIC_HEAD: dict[str, str] = {
    "no_key": "malformed_record",
    "non_utf8_key": "malformed_record",
    "no_value": "malformed_record",
    "not_json": "malformed_record",
    "json_array": "malformed_record",
    "json_scalar": "malformed_record",
    "extra_envelope_field": "malformed_record",
    "missing_idempotency_key": "malformed_record",
    "long_idempotency_key": "malformed_record",
    "numeric_idempotency_key": "malformed_record",
    "empty_event_name": "malformed_record",
    "missing_payload": "malformed_record",
    "oversize_value": "malformed_record",
    "unknown_event": "unknown_event",
    "payload_not_object": "invalid_payload",
    "missing_field": "invalid_payload",
    "unknown_field": "invalid_payload",
}
# "<kind>_<int_field>" -> the reason: a string, float or bool where an integer belongs is
# the domain's invalid_payload; an integer beyond 64 bits is refused where the value is
# parsed, before the domain sees it (usher.allium DuplicateMemberIsMalformed)
INT_FIELD_KINDS = {"string": "invalid_payload", "float": "invalid_payload", "bool": "invalid_payload",
                   "huge": "malformed_record"}
GENERIC_TAIL: dict[str, str] = {
    "affinity_key_mismatch": "affinity_key_mismatch",
    "misrouted": "misrouted",
}


def poison_kinds(kit: DomainKit) -> dict[str, str]:
    """Every poison kind of ``kit``'s workloads -> the rejection reason docket must give
    it, in the order a workload cycles through them."""
    return {**GENERIC_HEAD, **{f"{k}_{kit.int_field}": reason for k, reason in INT_FIELD_KINDS.items()},
            **kit.poison_kinds, **GENERIC_TAIL}


def _poison(kit: DomainKit, model: Any, kind: str, ikey: str, subject: str,
            partitions: int | None) -> tuple[bytes | None, bytes | None, int | None]:
    name, good = model.good(subject)
    f = kit.int_field
    k = kit.domain.affinity_key(name, good).encode()
    if kind == "no_key":
        return None, envelope(ikey, name, good), None
    if kind == "non_utf8_key":
        return b"\xff\xfe" + k, envelope(ikey, name, good), None
    if kind == "no_value":
        return k, None, None
    if kind == "not_json":
        return k, b"{not json", None
    if kind == "json_array":
        return k, orjson.dumps([ikey, name, good]), None
    if kind == "json_scalar":
        return k, b"42", None
    if kind == "extra_envelope_field":
        return k, orjson.dumps({"idempotency_key": ikey, "event_name": name, "payload": good, "x": 1}), None
    if kind == "missing_idempotency_key":
        return k, orjson.dumps({"event_name": name, "payload": good}), None
    if kind == "long_idempotency_key":
        return k, envelope("k" * 129, name, good), None
    if kind == "numeric_idempotency_key":
        return k, orjson.dumps({"idempotency_key": 12345, "event_name": name, "payload": good}), None
    if kind == "empty_event_name":
        return k, envelope(ikey, "", good), None
    if kind == "missing_payload":
        return k, orjson.dumps({"idempotency_key": ikey, "event_name": name}), None
    if kind == "oversize_value":
        filler = "x" * (MAX_VALUE_BYTES + 1)
        return k, envelope(ikey, name, {**good, "pad": filler}), None
    if kind == "unknown_event":  # the domain's prefix, a verb it does not have
        return k, envelope(ikey, name.split(".")[0] + ".teleport", good), None
    if kind == "payload_not_object":
        return k, envelope(ikey, name, [1, 2, 3]), None
    if kind == "missing_field":
        return k, envelope(ikey, name, {n: v for n, v in good.items() if n != f}), None
    if kind == "unknown_field":
        return k, envelope(ikey, name, {**good, "colour": "red"}), None
    if kind == f"string_{f}":
        return k, envelope(ikey, name, {**good, f: "5"}), None
    if kind == f"float_{f}":
        return k, envelope(ikey, name, {**good, f: 5.0}), None
    if kind == f"bool_{f}":
        return k, envelope(ikey, name, {**good, f: True}), None
    if kind == f"huge_{f}":  # beyond 64 bits, which the parser would read as a float
        value = envelope(ikey, name, {**good, f: 1}).replace(f'"{f}":1'.encode(), f'"{f}":'.encode() + str(10**30).encode())
        return k, value, None
    if kind in kit.poison_kinds:
        return k, envelope(ikey, *model.poison(kind, subject)), None
    if kind == "affinity_key_mismatch":
        return k + b"-other", envelope(ikey, name, good), None
    if kind == "misrouted":
        if partitions is None or partitions < 2:
            raise ValueError("a misrouted record needs partitions >= 2")
        return k, envelope(ikey, name, good), (partition_for(k, partitions) + 1) % partitions
    raise ValueError(f"unknown poison kind {kind!r}")


def poison(kit: DomainKit, model: Any, kind: str, idempotency_key: str, subject: str, timestamp: int,
           partitions: int | None = None) -> Record:
    """One bad record of ``kind`` (a key of :func:`poison_kinds`) for ``subject``'s
    affinity group, spoiling ``model``'s good event. ValueError for an unknown kind,
    or ``misrouted`` without partitions >= 2."""
    key, value, partition = _poison(kit, model, kind, idempotency_key, subject, partitions)
    return Record(key, value, timestamp, partition, poison_kinds(kit)[kind])


# --------------------------------------------------------------------------- the workload

def records(
    kit: DomainKit,
    seed: int,
    events: int,
    *,
    scope: str = "",
    base_ms: int = BASE_TIMESTAMP_MS,
    step_ms: int = 1,
    repeat_window: int = 200,
    ttl_ms: int | None = None,
    expired_repeat_share: float = 0.02,
    poison_share: float = 0.0,
    partitions: int | None = None,
    mix: dict[str, float] | None = None,
    **shape: int,
) -> Iterator[Record]:
    """``events`` records of ``kit``'s domain, a pure function of the arguments.

    Timestamps are ``base_ms + i * step_ms`` (ms): the plan. docket's input topic is
    LogAppendTime, so the broker stamps each record when it is appended; the plan holds
    when the records are produced at ``1000 / step_ms`` events per second. Idempotency
    keys are ``ik-<seed>-<i:06d>``. Repeats and reuses pick from the last
    ``repeat_window`` distinct events, so they are duplicates as long as
    ``repeat_window * step_ms`` < the Warden's TTL. With ``ttl_ms`` set, a share
    ``expired_repeat_share`` of events repeat one recorded more than ``ttl_ms`` earlier.
    ``poison_share`` > 0 mixes in bad records of every kind (round robin);
    ``partitions`` is needed for the ``misrouted`` kind (skipped without it).
    ``scope`` and ``shape`` go to the kit's model (ValueError for a shape it cannot
    use); ``mix`` replaces the model's weights.
    """
    rng = random.Random(seed)
    model = kit.model(rng, scope=scope, **shape)
    weights = mix or model.mix
    kinds, cum = list(weights), []
    total = 0.0
    for k in kinds:
        total += weights[k]
        cum.append(total)
    poison_cycle = [k for k in poison_kinds(kit) if k != "misrouted" or (partitions or 0) >= 2]
    recent: deque[tuple[str, bytes, bytes]] = deque(maxlen=repeat_window)  # (ikey, key, value)
    history: list[tuple[int, bytes, bytes]] = []  # (timestamp, key, value) of fresh events, in order
    expired_cursor = 0
    n_poison = 0
    in_setup = True

    for i in range(events):
        t = base_ms + i * step_ms
        ikey = f"ik-{seed}-{i:06d}"
        event = model.setup(i) if in_setup else None
        if event is None:
            in_setup = False
        else:
            key, value = encode(kit, ikey, event)
            recent.append((ikey, key, value))
            history.append((t, key, value))
            yield Record(key, value, t)
            continue
        if poison_share and rng.random() < poison_share:
            kind = poison_cycle[n_poison % len(poison_cycle)]
            n_poison += 1
            yield poison(kit, model, kind, ikey, model.subject(), t, partitions)
            continue
        # Now and then, the oldest fresh event recorded more than ttl_ms ago that was
        # not repeated yet: forgotten by the Warden, so evaluated afresh.
        if (ttl_ms is not None and rng.random() < expired_repeat_share
                and expired_cursor < len(history) and history[expired_cursor][0] < t - ttl_ms):
            _, key, value = history[expired_cursor]
            expired_cursor += 1
            yield Record(key, value, t)
            continue
        kind = kinds[min(bisect.bisect_right(cum, rng.random() * total), len(kinds) - 1)]
        subject = model.subject()
        if kind in (REPEAT, REUSE) and recent:
            old_ikey, key, value = recent[rng.randrange(len(recent))]
            if kind == REPEAT:
                yield Record(key, value, t)
                continue
            # Same idempotency key, a different request with the same affinity key (so the
            # same partition: the Warden's entries are per partition).
            key, value = encode(kit, old_ikey, model.reuse(key.decode()))
            yield Record(key, value, t)
            continue
        key, value = encode(kit, ikey, model.event(kind, subject))
        recent.append((ikey, key, value))
        history.append((t, key, value))
        yield Record(key, value, t)


def inventory(seed: int, events: int, **options: Any) -> Iterator[Record]:
    """:func:`records` of the inventory domain (the benchmarks' and older tests' name)."""
    from app.domains.inventory_kit import kit

    return records(kit, seed, events, **options)


# --------------------------------------------------------------------------- producing

Progress = Callable[[int], None | Awaitable[None]]


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[Record],
    *,
    progress: Progress | None = None,
    rate: float | None = None,
    chunk: int = 1000,
) -> list[tuple[int, int]]:
    """Produce ``records`` in order (acks=all, idempotent producer, so per-partition
    order is the iteration order even across retries) and return each record's
    (partition, offset). Keyed records without an explicit partition go where
    Kafka's default partitioner (murmur2) puts them; keyless ones to
    ``index % partitions``. ``rate`` (records/s) paces sending on a fixed schedule;
    ``progress(sent)`` is called after every acknowledged chunk."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_kwargs(None, "workload", "producer", bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024))
    await producer.start()
    positions: list[tuple[int, int]] = []
    try:
        partitions = sorted(await producer.partitions_for(topic))
        pending: list[asyncio.Future] = []
        began = time.monotonic()

        async def drain() -> None:
            for meta in await asyncio.gather(*pending):
                positions.append((meta.partition, meta.offset))
            pending.clear()
            if progress is not None:
                result = progress(len(positions))
                if asyncio.iscoroutine(result):
                    await result

        for i, rec in enumerate(records):
            if rate:
                delay = began + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing a fixed arrival schedule
            partition = rec.partition
            if partition is None and rec.key is None:
                partition = partitions[i % len(partitions)]
            pending.append(await producer.send(topic, rec.value, rec.key, partition, rec.timestamp))
            if len(pending) >= chunk:
                await drain()
        await drain()
    finally:
        await producer.stop()
    return positions


def produced_to(records: Sequence[Record], positions: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Record]:
    """(partition, offset) -> the record produced there."""
    return dict(zip(positions, records, strict=True))
