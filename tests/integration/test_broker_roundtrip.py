"""aiokafka against the real broker: records come back intact and keyed records land on
the partition the Java client would pick, which is what co-partitioning relies on."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2

from app.kafka_config import client_kwargs
from app.kafka_admin import connect_admin
from app.topics import create_topics, partition_counts
from launcher import broker as launcher

pytestmark = pytest.mark.integration

# Utils.murmur2 vectors from Apache Kafka's own tests
# (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2).
# Java returns a signed int; aiokafka an unsigned one.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def java_partition(key: bytes, partitions: int) -> int:
    """The Java producer's BuiltInPartitioner.partitionForKey: toPositive(murmur2) % n."""
    return (JAVA_MURMUR2[key] & 0x7FFFFFFF) % partitions


def test_murmur2_matches_java_vectors() -> None:
    for key, java_value in JAVA_MURMUR2.items():
        assert murmur2(key) == java_value & 0xFFFFFFFF, key


async def consume_exactly(consumer: AIOKafkaConsumer, count: int, deadline_s: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + deadline_s
    while len(records) < count:
        assert time.monotonic() < deadline, f"consumed {len(records)} of {count} records in {deadline_s} s"
        for batch in (await consumer.getmany(timeout_ms=500)).values():
            records.extend(batch)
    return records


async def test_round_trip_preserves_records_and_java_partitioning(docket_settings) -> None:
    """TopicsUseBrokerTime, BrokerSetsStreamTime: a record comes back with its key, value
    and headers, stamped with the broker's clock (LogAppendTime), not the timestamp its
    producer set (an hour-old one here); keyed records land where the Java client's
    default partitioner puts them."""
    topic = docket_settings.input_topic
    partitions = docket_settings.partitions
    # Partitions the Java client would choose must not all coincide, or the check is weak.
    assert len({java_partition(k, partitions) for k in JAVA_MURMUR2}) > 1

    base_ts = int(time.time() * 1000) - 3_600_000  # an hour ago: the broker must not keep it
    sent = {}
    producer = AIOKafkaProducer(**client_kwargs(None, "test", "producer", bootstrap_servers=docket_settings.kafka_bootstrap, acks="all"))
    await producer.start()
    try:
        for i, key in enumerate(JAVA_MURMUR2):
            value = f"value-{i}".encode()
            meta = await producer.send_and_wait(
                topic, value=value, key=key, timestamp_ms=base_ts + i, headers=[("h", str(i).encode())]
            )
            assert meta.partition == java_partition(key, partitions), key
            assert meta.timestamp_type == 1 and meta.timestamp >= base_ts + 3_000_000, meta  # LogAppendTime
            sent[key] = (value, meta.timestamp, meta.partition, meta.offset)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, **client_kwargs(None, "test", "consumer",
                               bootstrap_servers=docket_settings.kafka_bootstrap,
                               group_id=f"{docket_settings.topic_prefix}-roundtrip",
                               auto_offset_reset="earliest",
                               enable_auto_commit=False),
    )
    await consumer.start()
    try:
        records = await consume_exactly(consumer, len(sent))
    finally:
        await consumer.stop()

    assert len(records) == len(sent)
    for record in records:
        value, ts, partition, offset = sent[record.key]
        assert record.value == value
        assert record.timestamp == ts
        assert record.timestamp_type == 1  # LogAppendTime: the broker's clock, not the producer's
        assert (record.partition, record.offset) == (partition, offset)
        assert dict(record.headers)["h"] == value.removeprefix(b"value-")


async def test_create_topics_is_idempotent_and_rejects_other_partition_counts(docket_settings) -> None:
    """TopicsCreatedExplicitly, PerEventTopicsHavePPartitions: `create_topics` made every
    docket topic with DOCKET_PARTITIONS partitions and running it again changes nothing;
    TopicsRefusedOnPartitionMismatch: existing topics with another partition count are
    an error that says what to do; WorkerRefusesTopicsOfAnotherPartitionCount: so are
    they to a worker's start-up check."""
    import dataclasses

    from app.topics import TopicError

    again = await create_topics(docket_settings)  # the fixture already created them
    assert again.created == []
    assert again.existing == docket_settings.all_topics()

    admin = await connect_admin(docket_settings.kafka_bootstrap)
    try:
        counts = await partition_counts(admin, docket_settings.all_topics())
    finally:
        await admin.close()
    assert counts == {name: docket_settings.partitions for name in docket_settings.all_topics()}

    wrong = dataclasses.replace(docket_settings, partitions=docket_settings.partitions + 1)
    with pytest.raises(TopicError, match="disagree with DOCKET_PARTITIONS"):
        await create_topics(wrong)
    # WorkerRefusesTopicsOfAnotherPartitionCount: a worker's start-up check too
    import click

    from agents.plumbing import check_topics

    topics = [docket_settings.output_topic(i) for i in docket_settings.instances] + [docket_settings.results_topic]
    await check_topics(docket_settings, topics)
    with pytest.raises(click.ClickException, match=rf"DOCKET_PARTITIONS={wrong.partitions}: .* has "
                                                   rf"{docket_settings.partitions} partitions.*set it to "
                                                   rf"{docket_settings.partitions}"):
        await check_topics(wrong, topics)


async def test_the_entities_topic_the_broker_holds_rolls_apart(docket_settings) -> None:
    """EntitiesPartitionsRollApart: the entities topic `create_topics` made (the fixture
    did) has, on the broker, the segment roll and jitter app/topics.py asks for."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from app.topics import ENTITIES_ROLL_JITTER_MS, ENTITIES_ROLL_MS, SETTLE_S
    from tests.integration.procs import wait_for

    async def described():
        [response] = await admin.describe_configs([ConfigResource(
            ConfigResourceType.TOPIC, docket_settings.entities_topic,
            {"segment.ms": None, "segment.jitter.ms": None})])
        [(error, *_rest, entries)] = [tuple(r) for r in response.resources]
        # a topic just created may not be in the broker's metadata yet (error 3,
        # UNKNOWN_TOPIC_OR_PARTITION)
        return None if error == 3 else (error, entries)

    admin = await connect_admin(docket_settings.kafka_bootstrap)
    try:
        error, entries = await wait_for(described, SETTLE_S, "the entities topic in the broker's metadata",
                                        interval_s=0.1)
    finally:
        await admin.close()
    assert error == 0, entries
    configs = {e[0]: e[1] for e in entries}
    assert configs["segment.ms"] == str(ENTITIES_ROLL_MS)
    assert configs["segment.jitter.ms"] == str(ENTITIES_ROLL_JITTER_MS)


def test_an_instance_creates_its_ledger_changelog_before_it_starts(docket_settings) -> None:
    """ChangelogBeforeWorker: an instance worker's start-up creates its Ledger changelog
    topic (compacted, DOCKET_PARTITIONS partitions) before its Faust consumer exists,
    and doing it again changes nothing; one with another partition count stops the
    start with a message that says what to do."""
    import asyncio
    import dataclasses

    import click

    from agents.instance import create_changelog
    from app.topics import changelog_spec

    name = changelog_spec(docket_settings, "a").name
    create_changelog(docket_settings, "a")
    create_changelog(docket_settings, "a")

    async def shape():
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = await connect_admin(docket_settings.kafka_bootstrap)
        try:
            counts = await partition_counts(admin, [name])
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None})])
            policy = {e[0]: e[1] for r in response.resources for e in r[4]}["cleanup.policy"]
            return counts, policy
        finally:
            await admin.close()

    counts, policy = asyncio.run(shape())
    assert counts == {name: docket_settings.partitions} and policy == "compact"
    wrong = dataclasses.replace(docket_settings, partitions=docket_settings.partitions + 1)
    with pytest.raises(click.ClickException, match="disagree with DOCKET_PARTITIONS"):
        create_changelog(wrong, "a")


async def test_broker_restart_keeps_data(kafka_broker, docket_settings) -> None:
    """stop_broker then start_broker on the same directory: the chaos harness relies on it.
    BrokerRestarted (the broker's share: what it acknowledged survives the restart)."""
    if kafka_broker.settings is None:
        pytest.skip("the session broker is not run by docket's launcher")
    settings = kafka_broker.settings
    topic = docket_settings.results_topic

    producer = AIOKafkaProducer(**client_kwargs(None, "test", "producer", bootstrap_servers=kafka_broker.bootstrap, acks="all"))
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"survives", key=b"k")
    finally:
        await producer.stop()

    # Starting again while it runs is a no-op that reports the running broker.
    # Called on the event loop's thread on purpose: die_with_parent ties the broker to the
    # *thread* that starts it, and a to_thread worker exits when the test's loop closes.
    again = launcher.start_broker(settings)
    assert again.already_running and again.bootstrap == kafka_broker.bootstrap

    pid = launcher.stop_broker(settings.broker_dir)
    assert pid == again.pid
    assert launcher.running_pid(settings.broker_dir) is None
    assert not launcher.broker_answers(kafka_broker.bootstrap, timeout=1.0)
    assert launcher.stop_broker(settings.broker_dir) is None  # idempotent

    handle = launcher.start_broker(settings, 90, die_with_parent=True)
    assert handle.bootstrap == kafka_broker.bootstrap and not handle.already_running

    consumer = AIOKafkaConsumer(
        **client_kwargs(None, "test", "consumer", bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    )
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        [record] = (await consume_exactly(consumer, 1))[:1]
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (b"k", b"survives", meta.offset)
