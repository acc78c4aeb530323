"""docket's topics: `docket topics create | list`.

Topics are created explicitly (the broker's auto-creation is off) because their partition
count is part of correctness: the copies of event (p, o) must arrive on partition p of
every output topic, so input, output, results, divergences and entities topics all have
DOCKET_PARTITIONS partitions. A topic that exists with another count is an error, never
silently accepted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import click

from app.kafka_admin import KafkaUnreachable, connect_admin
from app.settings import Settings, load
from tables.ledger import LEDGER_TABLE

log = logging.getLogger("docket.topics")

# Kafka protocol error codes (org.apache.kafka.common.protocol.Errors)
_NONE = 0
_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38

# Stream time is derived from record timestamps, and no producer's clock may decide it:
# every topic docket creates has the broker stamp its records (LogAppendTime), so a
# record's timestamp is the broker's clock when it was appended, whatever the producer
# set. The workers and the API refuse an input topic without it (check_broker_time).
TIMESTAMP_TYPE = "message.timestamp.type"
BROKER_TIME = "LogAppendTime"
_BROKER_TIME = {TIMESTAMP_TYPE: BROKER_TIME}

# The entities topic's segments roll after ENTITIES_ROLL_MS less a random jitter of at
# most ENTITIES_ROLL_JITTER_MS (Kafka's segment.ms and segment.jitter.ms), so the
# partitions are cleaned one by one through the minute instead of all at once: rolled
# together, their cleaning filled the box's two cores for most of a second every minute
# (docs/performance.md, "The soak's tail").
ENTITIES_ROLL_MS = 60_000
ENTITIES_ROLL_JITTER_MS = 30_000


class TopicError(click.ClickException):
    """Topics could not be created or have the wrong shape; the message says what to do.
    ``permanent``: retrying cannot help (a setting must change)."""

    permanent = False


class TopicSettingRefused(TopicError):
    """The cluster refused a setting of the topics docket creates for good (more
    replicas than it has brokers); the message names the DOCKET_ setting."""

    permanent = True


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def placement(settings: Settings) -> tuple[int, dict[str, str]]:
    """(replication factor, extra topic configs) of every topic docket creates:
    DOCKET_KAFKA_REPLICATION_FACTOR, and min.insync.replicas when
    DOCKET_KAFKA_MIN_INSYNC_REPLICAS is set (the broker's default otherwise)."""
    from app.kafka_config import _connection

    conn = _connection(settings)
    configs = {} if conn.min_insync_replicas is None else {"min.insync.replicas": str(conn.min_insync_replicas)}
    return conn.replication_factor, configs


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics docket creates, with P partitions each; their replication factor and
    min.insync.replicas come from :func:`placement`."""
    p = settings.partitions
    return [
        TopicSpec(settings.input_topic, p, dict(_BROKER_TIME)),
        *(TopicSpec(settings.output_topic(i), p, dict(_BROKER_TIME)) for i in settings.instances),
        TopicSpec(settings.results_topic, p, dict(_BROKER_TIME)),
        TopicSpec(settings.divergences_topic, p, dict(_BROKER_TIME)),
        # one record per entity survives compaction: readers load current state
        # without replaying the results history
        TopicSpec(settings.entities_topic, p, {**_BROKER_TIME, "cleanup.policy": "compact",
                                                # roll and clean often: a reader at start-up
                                                # should meet about one record per entity
                                                "segment.ms": str(ENTITIES_ROLL_MS),
                                                "min.cleanable.dirty.ratio": "0.1",
                                                "segment.jitter.ms": str(ENTITIES_ROLL_JITTER_MS)}),
        # a record per (instance, input partition) whose state others must see, on that
        # partition: few, rare
        TopicSpec(settings.status_topic, p, {**_BROKER_TIME, "cleanup.policy": "compact"}),
    ]


async def _admin(bootstrap: str, timeout_s: float, settings: Settings | None = None):
    try:
        return await connect_admin(bootstrap, timeout_s, settings)
    except KafkaUnreachable as exc:
        raise TopicError(
            f"{exc}: start the local broker with `docket broker start`, "
            "or set DOCKET_KAFKA_BOOTSTRAP to a running broker."
        ) from None


async def partition_counts(admin, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    counts = {}
    for topic in await admin.describe_topics(names):
        if topic["error_code"] == _NONE:
            counts[topic["topic"]] = len(topic["partitions"])
        elif topic["error_code"] != _UNKNOWN_TOPIC:
            raise TopicError(f"describing topic {topic['topic']} failed with Kafka error {topic['error_code']}")
    return counts


async def timestamp_types(admin, names: list[str]) -> dict[str, str]:
    """``message.timestamp.type`` (CreateTime or LogAppendTime) of each of ``names``
    that exists, as the broker reports it (the topic's own setting or the default)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    types: dict[str, str] = {}
    for response in await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, {TIMESTAMP_TYPE: None}) for name in names]):
        for error_code, _message, _kind, name, entries in response.resources:
            if error_code != _NONE:
                continue
            for entry in entries:
                if entry[0] == TIMESTAMP_TYPE:
                    types[name] = entry[1]
    return types


def broker_time_problem(topic: str, timestamp_type: str | None) -> str | None:
    """Why ``topic`` cannot be docket's input topic, or None: it must be LogAppendTime."""
    if timestamp_type == BROKER_TIME:
        return None
    return (f"topic {topic} has {TIMESTAMP_TYPE}={timestamp_type}, so producers' clocks would decide "
            f"stream time (idempotency expiry); docket needs {BROKER_TIME}. Fix it with "
            f"`kafka-configs.sh --bootstrap-server <kafka> --alter --entity-type topics --entity-name {topic} "
            f"--add-config {TIMESTAMP_TYPE}={BROKER_TIME}` (records already in the topic keep their "
            f"timestamps), or recreate the topics with `docket topics create`")


def partition_count_problem(settings: Settings, count: int) -> str | None:
    """Why an input topic of ``count`` partitions does not fit DOCKET_PARTITIONS, or
    None: a client would route events where the instances do not expect them, and a
    reader of one partition per input partition (the status topic's) would miss some."""
    if count == settings.partitions:
        return None
    return (f"{settings.input_topic} has {count} partitions but DOCKET_PARTITIONS={settings.partitions}: the "
            f"client would route events where the instances do not expect them; set DOCKET_PARTITIONS={count}")


async def check_broker_time(admin, topic: str) -> None:
    """Raise TopicError unless ``topic`` (existing) has LogAppendTime."""
    problem = broker_time_problem(topic, (await timestamp_types(admin, [topic])).get(topic))
    if problem:
        raise TopicError(problem)


# Kafka's longest topic name (its Topic.MAX_NAME_LENGTH)
MAX_TOPIC_NAME = 249


def topic_name_problem(names: list[str], ids_from: str = "the instance ids in DOCKET_INSTANCES") -> str | None:
    """What is wrong with the longest of ``names`` when it is longer than Kafka allows,
    naming the settings that make it (``ids_from``: where the instance ids in the names
    came from); None when all fit. Kafka refused such a topic as "error 17"
    (InvalidTopicException), which said nothing of the cause (the thirteenth fresh-user
    trial: a 240-character instance id)."""
    longest = max(names, key=len, default="")
    if len(longest) <= MAX_TOPIC_NAME:
        return None
    return (f"topic {longest[:60]}... would be {len(longest)} characters, more than Kafka's {MAX_TOPIC_NAME}: "
            f"shorten DOCKET_TOPIC_PREFIX or {ids_from}")


def changelog_spec(settings: Settings, instance_id: str) -> TopicSpec:
    """The changelog topic of instance ``instance_id``'s Ledger table,
    ``<prefix>-<id>-ledger-changelog``, as Faust would declare it (compacted,
    DOCKET_PARTITIONS partitions; agents/instance.py names the table)."""
    return TopicSpec(f"{settings.app_id(instance_id)}-{LEDGER_TABLE}-changelog", settings.partitions,
                     {"cleanup.policy": "compact"})


# How long a topic another client has just created may take to show in the metadata the
# broker answers with (seconds); two workers of one instance starting together both
# create its changelog, and the loser's describe came back without it.
SETTLE_S = 10.0


async def _settled_partition_count(admin, name: str) -> int | None:
    """The partition count of ``name``, which the broker says exists, once its metadata
    shows it (polled every 0.1 s for up to SETTLE_S seconds); None if it never does."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while True:
        count = (await partition_counts(admin, [name])).get(name)
        if count is not None or asyncio.get_running_loop().time() >= deadline:
            return count
        await asyncio.sleep(0.1)


async def _listed(admin, names: list[str]) -> None:
    """Return once the broker lists every one of ``names`` (polled every 0.1 s for up to
    SETTLE_S seconds). A broker answers CreateTopics once its controller has committed
    the topics and applies that to the metadata it serves a moment later; a worker
    started in that moment (tests/integration: at once, on a busy box) would find its
    topics missing and stop. What the workers' start-up check reads
    (agents/plumbing.py check_topics) is this same listing. A WARNING names the topics
    still not listed after SETTLE_S seconds: a worker started now would stop, saying
    they are missing."""
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while names:
        listed = set(await admin.list_topics())
        if all(n in listed for n in names):
            return
        if asyncio.get_running_loop().time() >= deadline:
            unlisted = sorted(n for n in names if n not in listed)
            log.warning("the broker created %s but does not list %s after %.0f s; a worker started now "
                        "stops on a missing topic: check the broker's log, then run `docket topics create` "
                        "again (it keeps the topics it finds)", ", ".join(unlisted),
                        "it" if len(unlisted) == 1 else "them", SETTLE_S)
            return
        await asyncio.sleep(0.1)


async def create_topics(settings: Settings, timeout_s: float = 30.0,
                        specs: list[TopicSpec] | None = None) -> TopicReport:
    """Create docket's topics (``specs``; by default :func:`topic_specs`, the
    Settings.all_topics()) that do not exist yet. Idempotent.

    Returns once the broker lists the topics it created (up to SETTLE_S seconds more).
    Raises TopicError if a topic exists with a partition count other than
    DOCKET_PARTITIONS, if the input topic exists without LogAppendTime, or if the
    broker refuses a topic.
    """
    specs = topic_specs(settings) if specs is None else specs
    problem = topic_name_problem([s.name for s in specs] + [changelog_spec(settings, i).name
                                                              for i in settings.instances])
    if problem:
        raise TopicSettingRefused(problem)
    admin = await _admin(settings.kafka_bootstrap, timeout_s, settings)
    try:
        from aiokafka.admin import NewTopic

        report = TopicReport()
        existing = await partition_counts(admin, [s.name for s in specs])
        # every refusal comes before anything is created
        wrong = [
            f"{s.name} has {existing[s.name]} partitions"
            for s in specs
            if s.name in existing and existing[s.name] != s.partitions
        ]
        if wrong:
            raise TopicError(
                f"existing topics disagree with DOCKET_PARTITIONS={settings.partitions}: "
                + "; ".join(wrong)
                + ". Delete them, or use another DOCKET_TOPIC_PREFIX (or DOCKET_PARTITIONS)."
            )
        if settings.input_topic in existing:
            await check_broker_time(admin, settings.input_topic)
        missing = [s for s in specs if s.name not in existing]
        replication, placed = placement(settings)
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, replication, topic_configs={**s.configs, **placed})
                 for s in missing],
                timeout_ms=int(timeout_s * 1000),
            )
            failures = []
            if any(code == _INVALID_REPLICATION_FACTOR for _name, code, *_rest in response.topic_errors):
                brokers = len((await admin.describe_cluster()).get("brokers", []))
                if brokers < replication:
                    raise TopicSettingRefused(
                        f"the cluster at {settings.kafka_bootstrap} has {brokers} broker(s), too few for "
                        f"DOCKET_KAFKA_REPLICATION_FACTOR={replication}: set it to at most {brokers}")
            for name, code, *rest in response.topic_errors:
                if code == _NONE:
                    report.created.append(name)
                elif code == _TOPIC_ALREADY_EXISTS:  # created concurrently by someone else
                    report.existing.append(name)
                    count = await _settled_partition_count(admin, name)
                    if count != settings.partitions:
                        failures.append(f"{name} was created meanwhile by someone else, with {count} partitions")
                else:
                    failures.append(f"{name}: Kafka error {code} {rest[0] if rest else ''}".rstrip())
            if failures:
                raise TopicError("the broker refused to create topics:\n  " + "\n  ".join(failures))
            await _listed(admin, report.created)
        report.existing = [s.name for s in specs if s.name in existing] + report.existing
        return report
    finally:
        await admin.close()


async def list_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Topics whose name starts with ``<prefix>.`` and their partition counts."""
    admin = await _admin(settings.kafka_bootstrap, timeout_s, settings)
    try:
        names = [n for n in await admin.list_topics() if n.startswith(settings.topic_prefix + ".")]
        return dict(sorted((await partition_counts(admin, names)).items())) if names else {}
    finally:
        await admin.close()


@click.group()
def topics() -> None:
    """docket's Kafka topics."""


@topics.command()
def create() -> None:
    """Create docket's topics (idempotent): <prefix>.input, .output.<instance>, .results,
    .divergences, .entities and .status."""
    settings = load()
    report = asyncio.run(create_topics(settings))
    for name in report.created:
        click.echo(f"created  {name} ({settings.partitions} partitions)")
    for name in report.existing:
        click.echo(f"exists   {name} ({settings.partitions} partitions)")


@topics.command("list")
def list_cmd() -> None:
    """List the topics named <DOCKET_TOPIC_PREFIX>.* (those `topics create` makes) with
    their partition counts; the workers' Faust topics (<prefix>-<role>-..., changelogs)
    are not listed: Kafka's kafka-topics.sh --list (TopicCommand) shows every topic."""
    settings = load()
    found = asyncio.run(list_topics(settings))
    if not found:
        click.echo(f"no topics under prefix {settings.topic_prefix!r} on {settings.kafka_bootstrap}", err=True)
    for name, count in found.items():
        click.echo(f"{name}\t{count}")
