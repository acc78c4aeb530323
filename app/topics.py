"""docket's topics: `docket topics create | list`.

Topics are created explicitly (the broker's auto-creation is off) because their partition
count is part of correctness: the copies of event (p, o) must arrive on partition p of
every output topic, so input, output, results, divergences and entities topics all have
DOCKET_PARTITIONS partitions. A topic that exists with another count is an error, never
silently accepted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import click

from app.kafka_admin import KafkaUnreachable, connect_admin
from app.settings import Settings, load

# Kafka protocol error codes (org.apache.kafka.common.protocol.Errors)
_NONE = 0
_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36

# Stream time is derived from record timestamps, so the timestamps producers set must be
# kept (CreateTime, also the broker default; stated here so a broker-wide LogAppendTime
# cannot change it).
_EVENT_TIME = {"message.timestamp.type": "CreateTime"}


class TopicError(click.ClickException):
    """Topics could not be created or have the wrong shape; the message says what to do."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    p = settings.partitions
    return [
        TopicSpec(settings.input_topic, p, dict(_EVENT_TIME)),
        *(TopicSpec(settings.output_topic(i), p, dict(_EVENT_TIME)) for i in settings.instances),
        TopicSpec(settings.results_topic, p),
        TopicSpec(settings.divergences_topic, p),
        # one record per entity survives compaction: readers load current state
        # without replaying the results history
        TopicSpec(settings.entities_topic, p, {"cleanup.policy": "compact",
                                                # roll and clean often: a reader at start-up
                                                # should meet about one record per entity
                                                "segment.ms": "60000",
                                                "min.cleanable.dirty.ratio": "0.1"}),
    ]


async def _admin(bootstrap: str, timeout_s: float):
    try:
        return await connect_admin(bootstrap, timeout_s)
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


async def create_topics(settings: Settings, timeout_s: float = 30.0) -> TopicReport:
    """Create docket's topics (Settings.all_topics()) that do not exist yet. Idempotent.

    Raises TopicError if a topic exists with a partition count other than
    DOCKET_PARTITIONS, or if the broker refuses a topic.
    """
    specs = topic_specs(settings)
    admin = await _admin(settings.kafka_bootstrap, timeout_s)
    try:
        from aiokafka.admin import NewTopic

        report = TopicReport()
        existing = await partition_counts(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs) for s in missing],
                timeout_ms=int(timeout_s * 1000),
            )
            failures = []
            for name, code, *rest in response.topic_errors:
                if code == _NONE:
                    report.created.append(name)
                elif code == _TOPIC_ALREADY_EXISTS:  # created concurrently by someone else
                    existing.update(await partition_counts(admin, [name]))
                else:
                    failures.append(f"{name}: Kafka error {code} {rest[0] if rest else ''}".rstrip())
            if failures:
                raise TopicError("the broker refused to create topics:\n  " + "\n  ".join(failures))
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
        report.existing = [s.name for s in specs if s.name in existing]
        return report
    finally:
        await admin.close()


async def list_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Topics whose name starts with ``<prefix>.`` and their partition counts."""
    admin = await _admin(settings.kafka_bootstrap, timeout_s)
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
    """Create the input, output, results and divergences topics (idempotent)."""
    settings = load()
    report = asyncio.run(create_topics(settings))
    for name in report.created:
        click.echo(f"created  {name} ({settings.partitions} partitions)")
    for name in report.existing:
        click.echo(f"exists   {name} ({settings.partitions} partitions)")


@topics.command("list")
def list_cmd() -> None:
    """List the topics under DOCKET_TOPIC_PREFIX with their partition counts."""
    settings = load()
    found = asyncio.run(list_topics(settings))
    if not found:
        click.echo(f"no topics under prefix {settings.topic_prefix!r} on {settings.kafka_bootstrap}", err=True)
    for name, count in found.items():
        click.echo(f"{name}\t{count}")
