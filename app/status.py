"""What the instances' status records say (``<prefix>.status``, app/versions.py
status_record): which version each instance judges each input partition with, which
partitions are blocked, and which domain the topics under this prefix belong to.
Spec: specs/versioning.allium (PartitionStatus, TopicsServeOneDomain).

The status topic is compacted and small (one record per instance and input
partition), so it is read whole, from the beginning to the end offsets taken at the
start, with no consumer group.
"""

from __future__ import annotations

import asyncio
import time

from app.kafka_admin import ISOLATION_LEVEL, quiet
from app.kafka_config import client_kwargs
from app.records import UnreadableRecord, json_object
from app.settings import ConfigError, Settings

STATES = ("blocked", "judging")


def check_status(raw: object, partition: int | None = None) -> dict:
    """A status record's value as an instance writes it (app/versions.py
    status_record): ``{instance, partition, state, offset, version, judges_with, ...}``.
    With ``partition`` (the status topic's partition it was read from) it must name
    that input partition, as an instance's record always does (one naming partition 99
    of an 8-partition topic was listed: the twelfth fresh-user trial). Raises
    app.records.UnreadableRecord saying what is wrong; the API's client logs that and
    skips the record, the CLI's readers drop it (parse_status)."""
    rec = json_object(raw)
    if (rec.get("state") not in STATES or not isinstance(rec.get("instance"), str)
            or type(rec.get("partition")) is not int or type(rec.get("offset")) is not int
            or not isinstance(rec.get("version"), str)):
        raise UnreadableRecord(f"not {{instance, partition, state: {' or '.join(STATES)}, offset, version}}")
    if partition is not None and rec["partition"] != partition:
        raise UnreadableRecord(f"it names input partition {rec['partition']} but lies on status partition "
                               f"{partition}")
    return rec


def parse_status(key: bytes | None, raw: bytes | None, partition: int | None = None) -> dict | None:
    """check_status's record, or None for a record without a key, a tombstone or a
    record check_status refuses."""
    if key is None or raw is None:
        return None
    try:
        return check_status(raw, partition)
    except UnreadableRecord:
        return None


def of_instances(statuses: list[dict], instances: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    """Split status records by DOCKET_INSTANCES: ``(the records of ``instances``, in
    their order; the sorted names of the other instances that wrote some)``. The
    compacted topic keeps a record for good once written, so a worker started with
    another DOCKET_INSTANCES (a third instance tried and stopped) or a stray producer
    leaves records that no deployed instance will ever replace; the deployment's
    readers ignore them (StatusOfOtherInstancesIgnored)."""
    deployed = set(instances)
    ours = [r for r in statuses if r["instance"] in deployed]
    others = sorted({r["instance"] for r in statuses} - deployed)
    return ours, others


def domains_of(statuses: list[dict]) -> set[str]:
    """The domain names the status records' versions (``<name>/<n>``) belong to."""
    names = set()
    for rec in statuses:
        versions = [rec["version"], *(v for v in rec.get("judges_with") or () if isinstance(v, str))]
        names.update(v.split("/", 1)[0] for v in versions if "/" in v)
    return names


def domain_conflict(settings: Settings, statuses: list[dict]) -> str | None:
    """None when the status records of DOCKET_INSTANCES' instances name no domain
    other than DOCKET_DOMAIN; else what is wrong and what to do (one topic prefix
    serves one domain: an instance of another domain would misread the topics' events
    and activation history). Other instances' records are not read (:func:`of_instances`):
    one stray record must not keep the deployment from starting."""
    others = sorted(domains_of(of_instances(statuses, settings.instances)[0]) - {settings.domain})
    if not others:
        return None
    return (f"the topics under DOCKET_TOPIC_PREFIX={settings.topic_prefix} at {settings.kafka_bootstrap} belong to "
            f"the {', '.join(others)} domain (its instances' records on {settings.status_topic} say so), not to "
            f"{settings.domain} (DOCKET_DOMAIN). One topic prefix serves one domain: set DOCKET_DOMAIN={others[0]} "
            f"to work with that pipeline, or give {settings.domain} its own DOCKET_TOPIC_PREFIX (and "
            f"DOCKET_DATA_ROOT); `make clean` starts the local stack afresh")


class StatusTopicMissing(LookupError):
    """The status topic does not exist on the broker (the message says what to do)."""


async def check_partition_count(settings: Settings, timeout_s: float = 15.0) -> None:
    """Raise ConfigError when the input topic's partition count is not
    DOCKET_PARTITIONS: :func:`read_statuses` reads one status partition per input
    partition, so some statuses would go unshown; StatusTopicMissing when there is no
    status topic to read (a reader waited its whole timeout for one, then suggested a
    longer timeout: the twelfth fresh-user trial's DOCKET_TOPIC_PREFIX=nope). For the
    `docket domain` commands. Raises TimeoutError (asyncio's) past ``timeout_s``
    seconds, KafkaError or OSError when Kafka fails; a missing input topic passes."""
    from app.kafka_admin import connect_admin
    from app.topics import partition_count_problem, partition_counts

    admin = await connect_admin(settings.kafka_bootstrap, timeout_s, settings, "status")
    try:
        counts = await asyncio.wait_for(partition_counts(admin, [settings.input_topic, settings.status_topic]),
                                        timeout_s)
    finally:
        await admin.close()
    if settings.status_topic not in counts:
        raise StatusTopicMissing(f"topic {settings.status_topic} does not exist on {settings.kafka_bootstrap}: "
                                 "check DOCKET_TOPIC_PREFIX, or run `docket topics create`")
    count = counts.get(settings.input_topic)
    problem = count is not None and partition_count_problem(settings, count)
    if problem:
        raise ConfigError(problem)


async def read_statuses(settings: Settings, timeout_s: float = 15.0) -> list[dict]:
    """The latest status record per key, sorted by (partition, instance), reading
    DOCKET_PARTITIONS partitions (:func:`check_partition_count` says whether that is
    the input topic's count). Raises TimeoutError (asyncio's) when the topic cannot be
    read to its end within ``timeout_s`` seconds, KafkaError or OSError when Kafka
    fails."""
    from aiokafka import AIOKafkaConsumer

    topic = settings.status_topic
    consumer = AIOKafkaConsumer(**client_kwargs(settings, "status", "consumer",
                                                bootstrap_servers=settings.kafka_bootstrap,
                                                enable_auto_commit=False, isolation_level=ISOLATION_LEVEL,
                                                auto_offset_reset="earliest"))
    deadline = time.monotonic() + timeout_s
    # aiokafka logs at ERROR what it retries (a leader not elected yet on a fresh topic)
    with quiet():
        return await _read(consumer, topic, settings, timeout_s, deadline)


async def _read(consumer, topic: str, settings: Settings, timeout_s: float, deadline: float) -> list[dict]:
    from aiokafka import TopicPartition

    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        # one partition per input partition (integration/StatusTopicIsCompacted); the
        # callers have checked that the topic exists
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await asyncio.wait_for(consumer.end_offsets(tps), max(0.1, deadline - time.monotonic()))
        await consumer.seek_to_beginning(*tps)
        latest: dict[bytes, dict | None] = {}
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s:g} s")
            for tp, msgs in (await consumer.getmany(*todo, timeout_ms=200)).items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        latest[m.key] = parse_status(m.key, m.value, tp.partition)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return sorted((r for r in latest.values() if r is not None), key=lambda r: (r["partition"], r["instance"]))
