"""Deterministic inventory workloads, and a Kafka producer for them.

The same seed always gives the same records, byte for byte, with the same
timestamps; the randomness here only *generates input* (it never runs inside an
instance). Tests, the chaos harness and the demo share this module:

    records = list(inventory(seed=7, events=10_000))
    positions = await produce(bootstrap, settings.input_topic, records)

A workload is a list of :class:`Record`. It starts with receipts (positive
``stock.adjust``) for every warehouse x sku, then mixes (weights in :data:`MIX`):

- transfers that move a warehouse's *whole* stock of a sku, leaving exactly zero,
  so a transfer applied twice is rejected with ``insufficient_stock`` and one
  that is lost breaks conservation;
- partial transfers, and transfers of more than the source holds (rejected);
- positive and negative adjustments, some larger than the stock (rejected);
- exact repeats of a recent event (same idempotency key and request: duplicates);
- reuses of a recent idempotency key for a different request (rejected as
  ``idempotency_key_reused``);
- with ``ttl_ms``: repeats of an event recorded more than ``ttl_ms`` of stream time
  earlier, which the Warden has forgotten (evaluated afresh);
- with ``poison_share``: bad records of every kind in :data:`POISON_KINDS`.

The generator tracks stock with a simple model to choose quantities (it treats
repeats and reuses as no-ops); the model only shapes the mix. The truth about
outcomes is the oracle, :func:`app.replay.replay`, run over the records as the
broker stored them.

Records are routed like any Kafka producer routes them: by the default
partitioner (murmur2 of the key). Only a ``misrouted`` poison record names its
partition explicitly, and records without a key go to ``index % partitions``.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

import orjson

from app.records import MAX_VALUE_BYTES, partition_for

BASE_TIMESTAMP_MS = 1_700_000_000_000  # fixed stream-time origin: 2023-11-14T22:13:20Z
ADJUST = "stock.adjust"
TRANSFER = "stock.transfer"


class Record(NamedTuple):
    """One record to produce. ``partition`` is None (default partitioner) except for
    deliberately misrouted records; ``expect`` is the rejection reason a poison
    record must get (None for well-formed events, whose outcome depends on state)."""

    key: bytes | None
    value: bytes | None
    timestamp: int
    partition: int | None = None
    expect: str | None = None


# Share of each kind of event after the receipts (they are normalised).
MIX: dict[str, float] = {
    "transfer_drain": 0.24,
    "transfer_partial": 0.18,
    "transfer_excess": 0.05,
    "adjust_in": 0.18,
    "adjust_out": 0.12,
    "adjust_excess": 0.05,
    "repeat": 0.06,
    "reuse": 0.02,
}


def warehouse_name(i: int) -> str:
    return f"wh-{i:02d}"


def sku_name(i: int) -> str:
    return f"sku-{i:04d}"


def envelope(idempotency_key: str, event_name: str, payload: object) -> bytes:
    # Copied to its own size: orjson (3.12 on) returns its whole working buffer, at
    # least 4 KiB, and a caller keeping many events (a benchmark's schedule, the
    # chaos run's plan) would hold 4 KiB for each ~140-byte value.
    return bytes(memoryview(
        orjson.dumps({"idempotency_key": idempotency_key, "event_name": event_name, "payload": payload})))


def adjust(ikey: str, warehouse: str, sku: str, delta: int) -> tuple[bytes, bytes]:
    """(key, value) of a ``stock.adjust``."""
    return sku.encode(), envelope(ikey, ADJUST, {"warehouse": warehouse, "sku": sku, "delta": delta})


def transfer(ikey: str, sku: str, source: str, target: str, quantity: int) -> tuple[bytes, bytes]:
    """(key, value) of a ``stock.transfer``."""
    return sku.encode(), envelope(ikey, TRANSFER, {
        "sku": sku, "from_warehouse": source, "to_warehouse": target, "quantity": quantity})


# --------------------------------------------------------------------------- poison

def _poison(kind: str, ikey: str, sku: str, partitions: int | None) -> tuple[bytes | None, bytes | None, int | None]:
    good = {"warehouse": "wh-00", "sku": sku, "delta": 5}
    k = sku.encode()
    if kind == "no_key":
        return None, envelope(ikey, ADJUST, good), None
    if kind == "non_utf8_key":
        return b"\xff\xfe" + k, envelope(ikey, ADJUST, good), None
    if kind == "no_value":
        return k, None, None
    if kind == "not_json":
        return k, b"{not json", None
    if kind == "json_array":
        return k, orjson.dumps([ikey, ADJUST, good]), None
    if kind == "json_scalar":
        return k, b"42", None
    if kind == "extra_envelope_field":
        return k, orjson.dumps({"idempotency_key": ikey, "event_name": ADJUST, "payload": good, "x": 1}), None
    if kind == "missing_idempotency_key":
        return k, orjson.dumps({"event_name": ADJUST, "payload": good}), None
    if kind == "long_idempotency_key":
        return k, envelope("k" * 129, ADJUST, good), None
    if kind == "numeric_idempotency_key":
        return k, orjson.dumps({"idempotency_key": 12345, "event_name": ADJUST, "payload": good}), None
    if kind == "empty_event_name":
        return k, envelope(ikey, "", good), None
    if kind == "missing_payload":
        return k, orjson.dumps({"idempotency_key": ikey, "event_name": ADJUST}), None
    if kind == "oversize_value":
        filler = "x" * (MAX_VALUE_BYTES + 1)
        return k, envelope(ikey, ADJUST, {**good, "pad": filler}), None
    if kind == "unknown_event":
        return k, envelope(ikey, "stock.teleport", good), None
    if kind == "payload_not_object":
        return k, envelope(ikey, ADJUST, [1, 2, 3]), None
    if kind == "missing_field":
        return k, envelope(ikey, ADJUST, {"warehouse": "wh-00", "sku": sku}), None
    if kind == "unknown_field":
        return k, envelope(ikey, ADJUST, {**good, "colour": "red"}), None
    if kind == "string_delta":
        return k, envelope(ikey, ADJUST, {**good, "delta": "5"}), None
    if kind == "float_delta":
        return k, envelope(ikey, ADJUST, {**good, "delta": 5.0}), None
    if kind == "bool_delta":
        return k, envelope(ikey, ADJUST, {**good, "delta": True}), None
    if kind == "huge_delta":  # beyond 64 bits: decodes as a float
        value = envelope(ikey, ADJUST, {**good, "delta": 1}).replace(b'"delta":1', b'"delta":' + str(10**30).encode())
        return k, value, None
    if kind == "bad_identifier":
        return k, envelope(ikey, ADJUST, {**good, "warehouse": "wh 00/ü"}), None
    if kind == "zero_delta":
        return k, envelope(ikey, ADJUST, {**good, "delta": 0}), None
    if kind == "delta_out_of_range":
        return k, envelope(ikey, ADJUST, {**good, "delta": -(10**9 + 1)}), None
    if kind == "transfer_zero_quantity":
        return transfer(ikey, sku, "wh-00", "wh-01", 0) + (None,)
    if kind == "transfer_same_warehouse":
        return transfer(ikey, sku, "wh-01", "wh-01", 1) + (None,)
    if kind == "affinity_key_mismatch":
        return (sku + "-other").encode(), envelope(ikey, ADJUST, good), None
    if kind == "misrouted":
        if partitions is None or partitions < 2:
            raise ValueError("a misrouted record needs partitions >= 2")
        return k, envelope(ikey, ADJUST, good), (partition_for(k, partitions) + 1) % partitions
    raise ValueError(f"unknown poison kind {kind!r}")


# kind -> the rejection reason docket must give it
POISON_KINDS: dict[str, str] = {
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
    "string_delta": "invalid_payload",
    "float_delta": "invalid_payload",
    "bool_delta": "invalid_payload",
    "huge_delta": "invalid_payload",
    "bad_identifier": "invalid_identifier",
    "zero_delta": "zero_delta",
    "delta_out_of_range": "quantity_out_of_range",
    "transfer_zero_quantity": "quantity_out_of_range",
    "transfer_same_warehouse": "same_warehouse",
    "affinity_key_mismatch": "affinity_key_mismatch",
    "misrouted": "misrouted",
}


def poison(kind: str, idempotency_key: str, sku: str, timestamp: int, partitions: int | None = None) -> Record:
    """One bad record of ``kind`` (a key of :data:`POISON_KINDS`)."""
    key, value, partition = _poison(kind, idempotency_key, sku, partitions)
    return Record(key, value, timestamp, partition, POISON_KINDS[kind])


# --------------------------------------------------------------------------- the workload

def inventory(
    seed: int,
    events: int,
    *,
    warehouses: int = 4,
    skus: int = 32,
    base_ms: int = BASE_TIMESTAMP_MS,
    step_ms: int = 1,
    repeat_window: int = 200,
    ttl_ms: int | None = None,
    expired_repeat_share: float = 0.02,
    poison_share: float = 0.0,
    partitions: int | None = None,
    mix: dict[str, float] | None = None,
) -> Iterator[Record]:
    """``events`` records of the inventory domain, a pure function of the arguments.

    Timestamps are ``base_ms + i * step_ms``: the plan. docket's input topic is
    LogAppendTime, so the broker stamps each record when it is appended; the plan holds
    when the records are produced at ``1000 / step_ms`` events per second. Repeats and
    reuses pick from the last ``repeat_window`` distinct events, so they are duplicates
    as long as ``repeat_window * step_ms`` < the Warden's TTL. With ``ttl_ms`` set, a share
    ``expired_repeat_share`` of events repeat one recorded more than ``ttl_ms``
    earlier. ``poison_share`` > 0 mixes in bad records of every kind (round robin);
    ``partitions`` is needed for the ``misrouted`` kind (skipped without it).
    """
    if warehouses < 2:
        raise ValueError("transfers need at least 2 warehouses")
    rng = random.Random(seed)
    whs = [warehouse_name(i) for i in range(warehouses)]
    sks = [sku_name(i) for i in range(skus)]
    stock = {(w, s): 0 for w in whs for s in sks}
    weights = mix or MIX
    kinds, cum = list(weights), []
    total = 0.0
    for k in kinds:
        total += weights[k]
        cum.append(total)
    poison_kinds = [k for k in POISON_KINDS if k != "misrouted" or (partitions or 0) >= 2]
    recent: deque[tuple[str, bytes, bytes]] = deque(maxlen=repeat_window)  # (ikey, key, value)
    history: list[tuple[int, bytes, bytes]] = []  # (timestamp, key, value) of fresh events, in order
    expired_cursor = 0
    n_poison = 0

    def ts(i: int) -> int:
        return base_ms + i * step_ms

    for i in range(events):
        t = ts(i)
        ikey = f"ik-{seed}-{i:06d}"
        if i < warehouses * skus:  # receipts: every warehouse x sku gets stock first
            w, s = whs[i % warehouses], sks[i // warehouses]
            delta = rng.randint(1, 100)
            stock[(w, s)] += delta
            key, value = adjust(ikey, w, s, delta)
            recent.append((ikey, key, value))
            history.append((t, key, value))
            yield Record(key, value, t)
            continue
        if poison_share and rng.random() < poison_share:
            kind = poison_kinds[n_poison % len(poison_kinds)]
            n_poison += 1
            yield poison(kind, ikey, rng.choice(sks), t, partitions)
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
        s = rng.choice(sks)
        if kind in ("repeat", "reuse") and recent:
            old_ikey, key, value = recent[rng.randrange(len(recent))]
            if kind == "repeat":
                yield Record(key, value, t)
                continue
            # Same idempotency key, a different request for the same sku (so the same
            # partition: the Warden's entries are per partition).
            key, value = adjust(old_ikey, rng.choice(whs), key.decode(), rng.randint(101, 150))
            yield Record(key, value, t)
            continue
        held = [w for w in whs if stock[(w, s)] > 0]
        if kind == "transfer_drain" and held:
            src = rng.choice(held)
            dst = rng.choice([w for w in whs if w != src])
            q = stock[(src, s)]
            stock[(src, s)] = 0
            stock[(dst, s)] += q
            key, value = transfer(ikey, s, src, dst, q)
        elif kind == "transfer_partial" and held:
            src = rng.choice(held)
            dst = rng.choice([w for w in whs if w != src])
            q = rng.randint(1, stock[(src, s)])
            stock[(src, s)] -= q
            stock[(dst, s)] += q
            key, value = transfer(ikey, s, src, dst, q)
        elif kind == "transfer_excess":
            src, dst = rng.sample(whs, 2)
            key, value = transfer(ikey, s, src, dst, stock[(src, s)] + rng.randint(1, 20))
        elif kind == "adjust_out" and held:
            w = rng.choice(held)
            d = rng.randint(1, stock[(w, s)])
            stock[(w, s)] -= d
            key, value = adjust(ikey, w, s, -d)
        elif kind == "adjust_excess":
            w = rng.choice(whs)
            key, value = adjust(ikey, w, s, -(stock[(w, s)] + rng.randint(1, 20)))
        else:  # adjust_in, or a kind that needs stock where there is none
            w = rng.choice(whs)
            d = rng.randint(1, 100)
            stock[(w, s)] += d
            key, value = adjust(ikey, w, s, d)
        recent.append((ikey, key, value))
        history.append((t, key, value))
        yield Record(key, value, t)


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

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=5, max_batch_size=256 * 1024, max_request_size=4 * 1024 * 1024)
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
