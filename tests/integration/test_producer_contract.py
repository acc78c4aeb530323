"""The producer contract (README, "Producing to docket over Kafka"; specs/integration.allium
InputProducer) with a producer that is not docket's: confluent-kafka, i.e. librdkafka,
the C client behind most non-Java Kafka producers (kcat included). With
``partitioner=murmur2_random`` its records land where Kafka's Java client puts them and
every event is applied; with librdkafka's default partitioner (consistent_random, a
CRC32 of the key) a record that lands elsewhere is rejected ``misrouted``, and the
detail says how to fix the producer."""
# ruff: noqa: F811  (test arguments name the fixtures imported from clerk_kit)

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from app.records import misrouted_detail, partition_for
from tests.integration.clerk_kit import (
    TopicTail,
    clerk_env,  # noqa: F401  fixture
    clerk_settings,  # noqa: F401  fixture
    instances,  # noqa: F401  fixture
    read_all,
    required_copies,  # noqa: F401  fixture
    spawn,  # noqa: F401  fixture
)
from tests.integration.test_clerk import (
    assert_one_result_each,
    oracle_for,
    start_clerk,
    start_instances,
    stop_all,
    wait_answered,
    wait_ready,
)

pytestmark = pytest.mark.integration

SKUS = 100
ADJUSTS_PER_SKU = 4  # receipts of 1..4 units: every one applies
CODECS = ("gzip", "snappy", "lz4", "zstd")  # Kafka's compression codecs (compression.type)


def envelope(ikey: str, sku: str, delta: int) -> bytes:
    return orjson.dumps({"idempotency_key": ikey, "event_name": "stock.adjust",
                         "payload": {"warehouse": "w1", "sku": sku, "delta": delta}})


def produce_with_librdkafka(bootstrap: str, topic: str, events: list[tuple[str, bytes]],
                            partitioner: str | None, compression: str = "none") -> list[tuple[str, int, int]]:
    """Produce ``events`` ((sku, value), keyed by the sku) with confluent-kafka, with
    ``partitioner`` (None: librdkafka's default) and ``compression`` (its
    compression.type), every record with a header and a producer timestamp an hour in
    the future; returns (sku, partition, offset) per event in the order given.
    Blocking: run it in a thread."""
    from confluent_kafka import KafkaException, Producer

    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "compression.type": compression}
    if partitioner is not None:
        conf["partitioner"] = partitioner
    producer = Producer(conf)
    delivered: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def report(i: int):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered[i] = (msg.partition(), msg.offset())
        return on_delivery

    future_ms = int(time.time() * 1000) + 3_600_000  # the broker's LogAppendTime replaces it
    for i, (sku, value) in enumerate(events):
        producer.produce(topic, key=sku.encode(), value=value, timestamp=future_ms,
                         headers=[("x-docket-ignores", b"me")], on_delivery=report(i))
        producer.poll(0)
    left = producer.flush(60)
    if left or errors:
        raise KafkaException(f"{left} records undelivered, errors: {errors[:3]}")
    return [(sku, *delivered[i]) for i, (sku, _) in enumerate(events)]


async def test_confluent_kafka_with_murmur2_random_gets_every_event_applied(clerk_settings, spawn) -> None:
    """KeyedByAffinityKey, DefaultPartitioner, BrokerSetsStreamTime (InputProducer):
    400 stock receipts produced by confluent-kafka (librdkafka) with
    partitioner=murmur2_random, each with a header and a producer timestamp an hour
    ahead, land on murmur2(key) mod P; two instances and the Clerk publish exactly one
    result per event, the pure replay's, every one `applied`, and per sku the last
    result's quantity is the sum of its receipts; the input records carry the broker's
    time, not the producer's.
    UsherRejectsMisroutedRecord: 100 more receipts for fresh skus with librdkafka's
    default partitioner: each one that landed elsewhere than murmur2 picks is rejected
    `misrouted` with the detail naming both partitions and partitioner=murmur2_random
    (exactly misrouted_detail(home, partition, P)); the ones it put on the right
    partition by chance are applied.
    AnyCompressionCodec: 40 receipts more per codec, compressed with gzip, snappy, lz4
    and zstd (10 per sku, produced at once: batches of several records, which
    librdkafka compresses), are applied like the rest, while every worker stays up
    (wait_answered checks them)."""
    s = clerk_settings
    insts = start_instances(spawn, "a,b")
    clerk, _port = start_clerk(spawn)
    procs = [*insts.values(), clerk]
    results = await TopicTail(s.kafka_bootstrap, s.results_topic).start()
    divergences = await TopicTail(s.kafka_bootstrap, s.divergences_topic).start()
    try:
        await wait_ready(s, insts, clerk)
        events = [(f"rk-{n:03d}", envelope(f"rk-{n:03d}-{i}", f"rk-{n:03d}", i + 1))
                  for i in range(ADJUSTS_PER_SKU) for n in range(SKUS)]
        sent_before = int(time.time() * 1000)
        good = await asyncio.to_thread(produce_with_librdkafka, s.kafka_bootstrap, s.input_topic, events,
                                       "murmur2_random")
        wrong = [(f"rd-{n:03d}", envelope(f"rd-{n:03d}", f"rd-{n:03d}", 1)) for n in range(100)]
        defaulted = await asyncio.to_thread(produce_with_librdkafka, s.kafka_bootstrap, s.input_topic, wrong, None)
        for codec in CODECS:
            packed = [(f"rc-{codec}-{n}", envelope(f"rc-{codec}-{n}-{i}-" + "x" * 60, f"rc-{codec}-{n}", 1))
                      for i in range(10) for n in range(4)]
            good += await asyncio.to_thread(produce_with_librdkafka, s.kafka_bootstrap, s.input_topic, packed,
                                            "murmur2_random", codec)
            events += packed
        for sku, partition, _offset in good:
            assert partition == partition_for(sku.encode(), s.partitions), f"{sku} went to partition {partition}"
        expected = {(p, o) for _, p, o in good + defaulted}
        assert len(expected) == len(events) + len(wrong)
        await wait_answered(s, expected, results, divergences, procs, 180)
    finally:
        await results.stop()
        await divergences.stop()
    await stop_all(procs)

    inputs, oracle = await oracle_for(s, expected)
    assert all(r.timestamp < sent_before + 600_000 for r in inputs), "an input record kept the producer's timestamp"
    final = await read_all(s.kafka_bootstrap, s.results_topic)
    by_pos = assert_one_result_each(final, expected, oracle)
    assert await read_all(s.kafka_bootstrap, s.divergences_topic) == []
    quantity: dict[str, int] = {}
    for sku, p, o in good:
        outcome = by_pos[(p, o)].value["outcome"]
        assert outcome["status"] == "applied", (sku, outcome)
        quantity[sku] = outcome["entities"][0]["state"]["quantity"]  # in offset order per sku
    assert quantity == {**{f"rk-{n:03d}": sum(range(1, ADJUSTS_PER_SKU + 1)) for n in range(SKUS)},
                        **{f"rc-{codec}-{n}": 10 for codec in CODECS for n in range(4)}}
    misrouted = 0
    for sku, p, o in defaulted:
        outcome = by_pos[(p, o)].value["outcome"]
        home = partition_for(sku.encode(), s.partitions)
        if p == home:
            assert outcome["status"] == "applied", (sku, outcome)
        else:
            misrouted += 1
            assert (outcome["status"], outcome["reason"]) == ("rejected", "misrouted"), (sku, outcome)
            assert outcome["detail"] == misrouted_detail(home, p, s.partitions)
            assert "partitioner=murmur2_random" in outcome["detail"]
    assert misrouted > 0, "librdkafka's default partitioner agreed with murmur2 on every key: nothing was shown"
    print(f"\nconfluent-kafka: {len(good)} events with murmur2_random all applied; "
          f"{misrouted} of {len(defaulted)} with the default partitioner misrouted")
