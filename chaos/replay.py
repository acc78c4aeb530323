"""The oracle: what every instance must output for a recorded input, computed
without Kafka, Faust or RocksDB.

:func:`replay` runs the instance's own Usher (admission, Warden, Arbiter, domain)
over an in-memory store, one partition at a time in offset order, with nothing
ever committed (so the Warden never collects: outputs must not depend on when an
instance collects). Because outputs depend only on the records (partition,
offset, timestamp, key, value) and the per-partition order, an instance's output
for (p, o) must equal the oracle's byte for byte, however it was batched,
crashed or restarted.

:func:`read_topic` fetches the records a topic really holds, with their real
partitions, offsets and timestamps, to feed the oracle.

    inputs = await read_topic(settings.kafka_bootstrap, settings.input_topic)
    oracle = replay(inputs, registry.versions(settings.domain), settings.partitions,
                    settings.idempotency_ttl_ms)
    oracle.digests[(p, o)], oracle.states["stock:wh-00:sku-0001"]
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from agents.usher import Usher
from app.canonical import digest
from app.kafka_admin import ISOLATION_LEVEL
from app.kafka_config import client_kwargs
from app.records import InputRecord
from app.registry import Domain
from app.versions import RESERVED_PREFIX
from tables.ledger import Ledger
from tables.registrar import Registrar
from tables.store import MemoryStore
from tables.warden import Warden

Position = tuple[int, int]


class IndexedMemoryStore(MemoryStore):
    """A MemoryStore with a sorted key index per partition, so a prefix scan costs
    O(log n + matches) instead of sorting the whole store (a replay of 10,000
    events does one scan per event)."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: dict[int, list[bytes]] = {}

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        if (partition, key) not in self.data:
            bisect.insort(self._keys.setdefault(partition, []), key)
        super().put(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        if (partition, key) in self.data:
            keys = self._keys[partition]
            del keys[bisect.bisect_left(keys, key)]
        super().delete(partition, key)

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        keys = self._keys.get(partition, [])
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            key = keys[i]
            yield key, self.data[(partition, key)]
            i += 1


@dataclass(frozen=True)
class Replay:
    bodies: dict[Position, bytes]  # (partition, offset) -> canonical output body
    digests: dict[Position, str]  # (partition, offset) -> digest of that body
    states: dict[str, tuple[dict, int]]  # entity key -> (state, version)


def replay(records: Iterable[InputRecord], domain: Domain | Mapping[int, Domain], partitions: int, ttl_ms: int,
           *, batch_size: int = 512, instance: str = "oracle") -> Replay:
    """Run ``records`` through a fresh Usher over a MemoryStore and return every
    output body and the final entity states (docket's own Ledger keys left out).
    ``domain``: one version, or every version (``registry.versions(name)``), which an
    input with activation records needs. ``batch_size`` only groups work: the result
    must not depend on it."""
    store = IndexedMemoryStore()
    ledger = Ledger(store)
    usher = Usher(instance, domain, Registrar(ledger, capacity=1 << 30), Warden(store, ttl_ms), partitions)
    by_partition: dict[int, list[InputRecord]] = {}
    for rec in records:
        by_partition.setdefault(rec.partition, []).append(rec)
    bodies: dict[Position, bytes] = {}
    for partition in sorted(by_partition):
        recs = sorted(by_partition[partition], key=lambda r: r.offset)
        for a, b in itertools.pairwise(recs):
            if a.offset == b.offset:
                raise ValueError(f"two records at partition {partition} offset {a.offset}")
        for start in range(0, len(recs), batch_size):
            batch = recs[start:start + batch_size]
            for rec, out in zip(batch, usher.process(batch, committed=lambda p: 0)):
                bodies[(rec.partition, rec.offset)] = out.body
    states = {}
    for partition in range(partitions):
        for key, rec in ledger.entities(partition):
            if not key.startswith(RESERVED_PREFIX):
                states[key] = (rec.state, rec.version)
    return Replay(bodies, {pos: digest(b) for pos, b in bodies.items()}, states)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> end offset (the offset the next record will get)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(None, "replay", "consumer", bootstrap_servers=bootstrap, enable_auto_commit=False,
                                isolation_level=ISOLATION_LEVEL))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def _partitions(consumer, topic: str, timeout_s: float = 15.0) -> set[int]:
    """Partitions of ``topic``. A topic created a moment ago may not be in every
    broker's metadata yet, so its absence is only believed after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        # Fresh metadata. (consumer.topics() fetches it too but returns names only, and
        # consumer.partitions_for_topic reads a cache that fetch does not update.)
        parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
        if parts:
            return set(parts)
        if time.monotonic() > deadline:
            raise LookupError(f"topic {topic!r} does not exist")
        await asyncio.sleep(0.2)  # poll interval of the metadata condition


async def read_topic(bootstrap: str, topic: str, partitions: Iterable[int] | None = None, *,
                     timeout_s: float = 60.0) -> list[InputRecord]:
    """Every committed record of ``topic`` (or of the given partitions) from the
    beginning up to the end offsets taken at the start, sorted by (partition, offset).
    Read with isolation level read_committed, as every docket consumer: records of
    aborted transactions are left out, and the end is the last stable offset (a
    transaction still open is not read)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_kwargs(None, "replay", "consumer", bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
                                isolation_level=ISOLATION_LEVEL))
    await consumer.start()
    try:
        parts = sorted(partitions) if partitions is not None else sorted(await _partitions(consumer, topic))
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[InputRecord] = []
        deadline = time.monotonic() + timeout_s
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if not remaining:
                break
            if time.monotonic() > deadline:
                got = {tp.partition: await consumer.position(tp) for tp in remaining}
                raise TimeoutError(f"read_topic({topic}): positions {got} short of end offsets "
                                   f"{ {tp.partition: ends[tp] for tp in remaining} } after {timeout_s} s")
            for tp, msgs in (await consumer.getmany(*remaining, timeout_ms=500)).items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        out.append(InputRecord(m.partition, m.offset, m.timestamp, m.key, m.value,
                                               m.timestamp_type))
        out.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        await consumer.stop()


def read_topic_sync(bootstrap: str, topic: str, **kwargs) -> list[InputRecord]:
    """:func:`read_topic` for callers without an event loop."""
    return asyncio.run(read_topic(bootstrap, topic, **kwargs))
