"""The Python client's ceiling: how many docket events per second aiokafka alone
produces and consumes on this machine, with nothing else in the loop.

The records are real inventory events (a sample of 10,000 from
:func:`chaos.workload.inventory`, cycled to N so that generating them stays out of the
clock), keyed by their affinity key and routed by Kafka's default partitioner, to a
fresh topic of DOCKET_PARTITIONS partitions. The producer is configured like
:func:`chaos.workload.produce` (acks=all, idempotent, linger 5 ms, 256 KiB batches).

- ``produce``: ``await producer.send()`` per record (which only queues it), the
  delivery futures awaited in chunks of 10,000 - what docket's producers do;
- ``produce_batch``: the same records through ``create_batch()`` /
  ``send_batch()`` (one batch per partition filled until full), to a second topic;
- ``consume``: an ``AIOKafkaConsumer`` without a group reading the first topic from
  the earliest offset with ``getmany()``, touching every record's value, until N.

Each figure's clock runs from the first send (or from the consumer's start) to the
N-th acknowledgement (or record). Run alone: ``.venv/bin/python -m bench.aiokafka_ceiling [--smoke]``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

from app.kafka_config import client_kwargs
from app.records import partition_for
from app.settings import Settings
from bench.common import event_size, say
from bench.kafka_ceiling import BenchError, create_topic, delete_topics, standalone, topic_name
from chaos.workload import inventory

FULL_RECORDS = 1_000_000  # ~15 s of send() on 2 shared cores
SMOKE_RECORDS = 5_000
SAMPLE = 10_000
CHUNK = 10_000  # delivery futures awaited together
PRODUCER_CONFIG = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "max_batch_size": 256 * 1024}


def sample_records(records: int, sample: int = SAMPLE) -> list[tuple[bytes, bytes]]:
    """``records`` (key, value) pairs: inventory events (keyed ones only), cycled."""
    base = [(r.key, r.value) for r in inventory(seed=1, events=min(records, sample))
            if r.key is not None and r.value is not None]
    return list(itertools.islice(itertools.cycle(base), records))


def figures(records: int, seconds: float) -> dict:
    return {"records": records, "records_per_s": round(records / seconds, 1) if seconds > 0 else None,
            "seconds": round(seconds, 3)}


def _producer(bootstrap: str):
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**client_kwargs(None, "bench", "producer", bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024, **PRODUCER_CONFIG))


async def produce_send(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], deadline_s: float) -> float:
    """Seconds to produce ``records`` with send() and chunked gathers."""
    producer = _producer(bootstrap)
    await asyncio.wait_for(producer.start(), 30)
    try:
        async def run() -> float:
            began = time.monotonic()
            pending = []
            for key, value in records:
                pending.append(await producer.send(topic, value, key))
                if len(pending) >= CHUNK:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            return time.monotonic() - began

        return await asyncio.wait_for(run(), deadline_s)
    finally:
        await producer.stop()


async def produce_batches(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                          partitions: int, deadline_s: float) -> float:
    """Seconds to produce ``records`` with create_batch()/send_batch(), one open batch
    per partition (the default partitioner's choice), sent when full."""
    producer = _producer(bootstrap)
    await asyncio.wait_for(producer.start(), 30)
    try:
        async def run() -> float:
            began = time.monotonic()
            batches: dict[int, object] = {}
            pending = []
            for key, value in records:
                partition = partition_for(key, partitions)
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise BenchError(f"a record of {len(key) + len(value)} B does not fit an empty batch")
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending.clear()
            for partition, batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*pending)
            return time.monotonic() - began

        return await asyncio.wait_for(run(), deadline_s)
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, want: int, deadline_s: float) -> float:
    """Seconds for a group-less consumer, from its start, to read ``want`` records."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, **client_kwargs(None, "bench", "consumer", bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False))
    began = time.monotonic()
    await asyncio.wait_for(consumer.start(), 30)
    try:
        seen = 0
        size = 0
        deadline = began + deadline_s
        while seen < want:
            if time.monotonic() > deadline:
                raise BenchError(f"the consumer read only {seen:,} of {want:,} records within {deadline_s:.0f} s")
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for partition_records in batch.values():
                for record in partition_records:
                    size += len(record.value)  # touch every record, as a reader would
                seen += len(partition_records)
        return time.monotonic() - began
    finally:
        await consumer.stop()


async def measure(settings: Settings, work: Path, *, smoke: bool = False) -> dict:
    """aiokafka's produce (send and batch) and consume rates for N docket events."""
    work.mkdir(parents=True, exist_ok=True)
    n = SMOKE_RECORDS if smoke else FULL_RECORDS
    bootstrap = settings.kafka_bootstrap
    records = sample_records(n)
    key_bytes, value_bytes = event_size()
    deadline_s = 60 + n / 2_000  # a 2,000 records/s floor: far below any plausible rate
    send_topic, batch_topic = topic_name("ak-send"), topic_name("ak-batch")
    try:
        await create_topic(bootstrap, send_topic, settings.partitions)
        say(f"aiokafka_ceiling: producing {n:,} records with send() to {send_topic} ...")
        produced = figures(n, await produce_send(bootstrap, send_topic, records, deadline_s))
        say(f"aiokafka_ceiling: send() {produced['records_per_s']:,.0f} records/s; consuming them ...")
        consumed = figures(n, await consume(bootstrap, send_topic, n, deadline_s))
        say(f"aiokafka_ceiling: consumed {consumed['records_per_s']:,.0f} records/s; "
            f"producing with send_batch() to {batch_topic} ...")
        await create_topic(bootstrap, batch_topic, settings.partitions)
        batched = figures(n, await produce_batches(bootstrap, batch_topic, records, settings.partitions, deadline_s))
        say(f"aiokafka_ceiling: send_batch() {batched['records_per_s']:,.0f} records/s")
    finally:
        await delete_topics(bootstrap, [send_topic, batch_topic])
    import aiokafka

    return {
        "client": f"aiokafka {aiokafka.__version__}",
        "records": n,
        "record_bytes": round(sum(len(k) + len(v) for k, v in records) / n, 1),
        "event_bytes": key_bytes + value_bytes,
        "partitions": settings.partitions,
        "producer_config": dict(PRODUCER_CONFIG),
        "produce": produced,
        "produce_batch": batched,
        "consume": consumed,
    }


if __name__ == "__main__":
    standalone("aiokafka_ceiling", measure)
