"""``docket domain``: the domain versions this code knows, and live activation of one.
Spec: specs/versioning.allium (OperatorActivatesVersion, OperatorActivatesActiveVersion,
StatusOfAnotherDomainRefused).

``docket domain activate inventory/2`` writes one activation record to every
partition of the input topic that does not run inventory/2 yet (app/versions.py).
Each partition switches at its record's offset, for every instance alike; an instance
whose code does not know the version stops that partition there (see the README's
"Live versioning").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

import click
from aiokafka.errors import KafkaError

import app.domains  # noqa: F401  registers the built-in domains
from app import records
from app.cli_types import Seconds
from app.kafka_admin import quiet
from app.kafka_config import client_kwargs
from app.printable import printable
from app.registry import Rejection, UnknownDomain, registry, version_number, version_rule
from app.settings import ConfigError, Settings, load
from app.status import (
    StatusTopicMissing,
    check_partition_count,
    domain_conflict,
    domains_of,
    of_instances,
    read_statuses,
)
from app.versions import ACTIVATE_EVENT, ACTIVATION_KEY, DomainVersions, activation_record

# How many input records `docket domain activate` reads per step back from a
# partition's end while looking for its last activation record.
READ_BACK_WINDOW = 4096
# How far back, at most (records per partition). An activation further back than that is taken as not found and
# the partition is written (BEYOND_LOOK_BACK): a repeated activation only switches again
# to the same version, while reading a long topic whole before every activation (the
# common case holds no activation record at all) would take minutes.
READ_BACK_LIMIT = 100_000
# last_version's answer when no activation record lies within READ_BACK_LIMIT
BEYOND_LOOK_BACK = -1


class SettingError(click.ClickException):
    """A setting at fault: exit status 2, as `docket` gives any configuration error."""

    exit_code = 2


def domain_name(settings: Settings) -> str:
    """The name of the domain DOCKET_DOMAIN names (a module:attribute is loaded, and
    named by its domain's name), or SettingError naming the registered domains. The
    `docket` command checks this before any subcommand (check_domain_setting); the
    subcommands check it again so that they refuse it however they are invoked."""
    try:
        return registry.get(settings.domain).name
    except (UnknownDomain, TypeError, ValueError) as exc:  # TypeError: module:attribute is no domain
        raise SettingError(f"DOCKET_DOMAIN={settings.domain}: {exc}; set DOCKET_DOMAIN to the domain the stack "
                           "runs") from None


@click.group("domain")
def domain() -> None:
    """The domain's versions: list them, or activate one live."""


@domain.command("versions", short_help="List the versions this code registers.")
def versions_cmd() -> None:
    """Print the versions of DOCKET_DOMAIN this code registers (base first)."""
    settings = load()
    known = registry.versions(domain_name(settings))
    for number in sorted(known):
        limit = settings.domain_version_limit
        note = " (beyond DOCKET_DOMAIN_VERSION_LIMIT)" if limit and number > limit else ""
        click.echo(f"{known[number].version}{' (base)' if number == min(known) else ''}{note}")


@domain.command("activate", short_help="Switch every partition to VERSION.")
@click.argument("version")
@click.option("--timeout", "timeout_s", type=Seconds(), default=30.0, show_default=True,
              help="seconds to wait for Kafka: to read which version each partition runs (half of it at "
                   "most) and to acknowledge every record")
@click.option("--force", is_flag=True,
              help="write the activation to every partition without reading which version they run (even "
                   "one that runs VERSION already), and even though this code does not register VERSION "
                   "(the instances run newer code than this command)")
def activate(version: str, timeout_s: float, force: bool) -> None:
    """Switch every partition to domain VERSION, for example inventory/2, at its next offset.

    Deploy code that knows VERSION to every instance first: an instance that does not
    know it stops the partition at the activation until it is upgraded. A version this
    code does not register is refused unless --force is given: an activation cannot be
    taken back, and one that no instance knows stops every partition. A partition whose
    input stream runs VERSION already (its last activation record names it, or it holds
    none and VERSION is the base) gets no record, and when every partition runs it
    nothing is written; --force writes to every partition all the same. Prints the
    (partition, offset) of each activation record written."""
    settings = load()
    name = domain_name(settings)
    number = version_number(name, version)
    if number is None:
        raise click.BadParameter(f"{version!r} is not a version of {name} (DOCKET_DOMAIN={settings.domain}):"
                                 f" expected {version_rule(name)}", param_hint="VERSION")
    known = registry.versions(name)
    if number not in known and not force:
        raise click.ClickException(
            f"this code does not register {version} (it has {', '.join(d.version for d in known.values())}). "
            "An activation cannot be taken back: every instance without the version would stop each partition "
            "at it, and a later activation would wait behind it. Deploy code that registers "
            f"{version} and run this from it, or pass --force if the instances already run such code")
    if number not in known:
        click.echo(f"warning: --force: this code does not register {version}; instances like it will block",
                   err=True)
    conflict = domain_conflict(dataclasses.replace(settings, domain=name), _statuses(settings, timeout_s))
    if conflict is not None:
        raise click.ClickException(f"{conflict}. Nothing was activated")
    current: dict[int, int | None] = {}

    async def needed(partitions: list[int]) -> list[int]:
        # the input stream says which version a partition runs (VersionIsAFunctionOfTheInput);
        # the status records lag it, and would hide an activation not applied yet
        current.update(await read_active_versions(settings, DomainVersions(known), partitions, timeout_s / 2))
        return partitions_to_activate(number, current)

    with _kafka_failures(
            f"Kafka at {settings.kafka_bootstrap} did not acknowledge the activation records within {timeout_s:g} "
            "s: check the broker and run it again (the repeat writes only where the version is not active yet)",
            lambda exc: f"could not activate {version} on {settings.input_topic} at {settings.kafka_bootstrap}: "
                        f"{exc}; is the broker up and the topic created (`docket topics create`)?", timeout_s):
        placed = asyncio.run(asyncio.wait_for(
            produce_activations(settings, version, None if force else needed), timeout_s))
    if not placed:
        click.echo(f"version {version} is already active on every partition of {settings.input_topic}; "
                   "nothing written (--force writes the records anyway)")
        return
    written = dict(placed)
    for partition in sorted({*written, *current}):
        click.echo(f"{settings.input_topic}[{partition}]@{written[partition]}: {version}" if partition in written
                   else f"{settings.input_topic}[{partition}]: {version} already active; nothing written")
    unread = [p for p, n in sorted(current.items()) if n is None]
    if unread:
        click.echo(f"note: could not read partition(s) {', '.join(map(str, unread))} back to their last activation "
                   f"record (not within {timeout_s / 2:g} s, or their first records are gone), so their activation "
                   "was written: a repeat only switches again to the same version", err=True)


def partitions_to_activate(number: int, current: Mapping[int, int | None]) -> list[int]:
    """The partitions `docket domain activate` writes the activation of version
    ``number`` to, in order (OperatorActivatesVersion; none: OperatorActivatesActiveVersion).
    ``current`` maps each input partition to the version number its input stream says
    judges its next record (read_active_versions), None where that could not be told:
    such a partition is written, as a repeated record only switches again to the same
    version while a skipped one would leave the partition on another."""
    return sorted(p for p, n in current.items() if n != number)


def activation_number(versions: DomainVersions, key: bytes | None, value: bytes | None) -> int | None:
    """The version number the input record (``key``, ``value``) activates, as every
    instance's Usher reads it (agents/usher.py _activate: key ACTIVATION_KEY, an
    envelope of event ACTIVATE_EVENT whose payload names a version of ``versions``'
    domain), whether this code knows that version or not; None for any other record,
    a rejected activation included (it switches nothing)."""
    if key != ACTIVATION_KEY:
        return None
    event = records.decode(records.InputRecord(0, 0, 0, key, value), 0)
    if isinstance(event, Rejection) or event.event_name != ACTIVATE_EVENT:
        return None
    number = versions.parse(event.payload)
    return None if isinstance(number, Rejection) else number


async def read_active_versions(settings: Settings, versions: DomainVersions, partitions: Iterable[int],
                               timeout_s: float, window: int = READ_BACK_WINDOW) -> dict[int, int | None]:
    """Partition -> the number of the version that judges the next record of that input
    partition, as its input stream says (stream_version_now, OperatorActivatesVersion):
    that of its last activation record, read back from its end (last_version), else the
    base. None for a partition not read back to it within ``timeout_s`` seconds, or
    whose first records are gone. Reads with no consumer group. Raises KafkaError."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # read_uncommitted, unlike the instances: to its high watermark, past an open
    # transaction (of a producer of the user's), behind which an activation written
    # since would be missed and this partition taken to run an older version; docket
    # writes activation records outside transactions, so none it reads is aborted
    consumer = AIOKafkaConsumer(**client_kwargs(settings, "domain", "consumer",
                                                bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                                isolation_level="read_uncommitted", auto_offset_reset="earliest"))
    deadline = time.monotonic() + timeout_s
    current: dict[int, int | None] = dict.fromkeys(partitions)
    # aiokafka logs at ERROR what it retries (a leader not elected yet on a fresh topic)
    with quiet():
        try:
            await asyncio.wait_for(consumer.start(), timeout_s)
            tps = [TopicPartition(settings.input_topic, p) for p in current]
            consumer.assign(tps)
            starts = await asyncio.wait_for(consumer.beginning_offsets(tps), max(0.1, deadline - time.monotonic()))
            ends = await asyncio.wait_for(consumer.end_offsets(tps), max(0.1, deadline - time.monotonic()))
            for tp in tps:
                current[tp.partition] = await last_version(consumer, tp, versions, starts[tp], ends[tp], deadline,
                                                           window)
        except asyncio.TimeoutError:
            pass  # the partitions not read back stay None: activate writes them
        finally:
            await consumer.stop()
    return current


async def last_version(consumer, tp, versions: DomainVersions, start: int, end: int, deadline: float,
                       window: int = READ_BACK_WINDOW, limit: int = READ_BACK_LIMIT) -> int | None:
    """The version number of the last activation record (activation_number) of ``tp``
    below ``end``, read back ``window`` records at a time from ``end`` to ``start``
    (the partition's first offset) with ``consumer`` (assigned ``tp``); the base
    (``versions.base``) when there is none and ``start`` is 0. None when there is none
    but ``start`` is above 0 (retention deleted the first records: the instances may
    remember an activation the topic no longer holds), or when ``deadline``
    (time.monotonic()) passes first. BEYOND_LOOK_BACK when none lies within the last
    ``limit`` records and the partition holds more."""
    high = end
    while high > start:
        low = max(start, high - window)
        consumer.seek(tp, low)
        found = None
        # the position, not the offsets seen, says when [low, high) is read: it also
        # moves past the offsets no record is returned for (transaction markers)
        while await consumer.position(tp) < high:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            batch = await consumer.getmany(tp, timeout_ms=max(1, int(min(left, 0.5) * 1000)), max_records=window)
            for m in batch.get(tp, ()):
                number = activation_number(versions, m.key, m.value) if m.offset < high else None
                if number is not None:
                    found = number
        if found is not None:
            return found
        high = low
        if high > start and end - high >= limit:
            return BEYOND_LOOK_BACK
    return versions.base if start == 0 else None


def _statuses(settings: Settings, timeout_s: float) -> list[dict]:
    """The instances' status records (app/status.py), or click.ClickException saying
    why they cannot be read."""
    with _kafka_failures(
            f"timed out: could not read {settings.status_topic} at {settings.kafka_bootstrap} within {timeout_s:g} s "
            "(--timeout); a longer --timeout may be all it needs, else check that the broker is up and the topic "
            "created (`docket topics create`)",
            lambda exc: f"could not read {settings.status_topic} at {settings.kafka_bootstrap}: {exc}; "
                        "is the broker up?", timeout_s):
        try:
            return asyncio.run(_checked_statuses(settings, timeout_s))
        except StatusTopicMissing as exc:
            raise click.ClickException(str(exc)) from None


async def _checked_statuses(settings: Settings, timeout_s: float) -> list[dict]:
    # a stale DOCKET_PARTITIONS would hide the statuses of the partitions past it
    await check_partition_count(settings, timeout_s)
    return await read_statuses(settings, timeout_s)


@contextlib.contextmanager
def _kafka_failures(timed_out: str, failed: Callable[[Exception], str], timeout_s: float) -> Iterator[None]:
    """Turn what a Kafka call in the block raises into click.ClickException:
    ``timed_out`` for asyncio's timeout, and for a KafkaError or OSError raised once
    ``timeout_s`` seconds (the block's --timeout) have passed; ``failed(error)`` for
    one raised sooner; a ConfigError's own message for a setting at fault."""
    began = time.monotonic()
    try:
        yield
    except asyncio.TimeoutError:
        raise click.ClickException(timed_out) from None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except (KafkaError, OSError) as exc:
        # a connection attempt cut short by the timeout reports the broker unreachable
        # (KafkaUnreachable): --timeout 0.001 blamed a broker that was up (a fresh-user
        # trial). A broker that is down refuses at once, well within the timeout
        if time.monotonic() - began >= timeout_s:
            raise click.ClickException(timed_out) from None
        raise click.ClickException(failed(exc)) from None


@domain.command("status", short_help="Show the version per partition.")
@click.option("--timeout", "timeout_s", type=Seconds(), default=15.0, show_default=True,
              help="seconds to wait for Kafka")
def status_cmd(timeout_s: float) -> None:
    """Print which version each instance judges each input partition with.

    From the status records (<prefix>.status) of DOCKET_INSTANCES' instances (those of
    any other instance are named on stderr and ignored): per partition and instance,
    "judging" with the version and the offset of the activation that chose it (-1:
    the base, no activation), or "blocked" at an offset, with what the instance's
    WARNING says to do; then the partitions no status record names yet. When the
    records name another domain than DOCKET_DOMAIN, prints no table but one line
    saying so and what to do, and exits 1; a DOCKET_DOMAIN that names no registered
    domain exits 2."""
    settings = load()
    name = domain_name(settings)
    statuses, others = of_instances(_statuses(settings, timeout_s), settings.instances)
    if others:
        # they would stay for good (a compacted topic), and read as the deployment's
        click.echo(printable(f"ignoring the status records of {', '.join(others)}: not in DOCKET_INSTANCES="
                             f"{','.join(settings.instances)} (a worker started with other instances wrote them)"),
                   err=True)
    if not statuses:
        click.echo(f"no status record on {settings.status_topic} yet: no instance of "
                   f"{','.join(settings.instances)} has processed an event")
        return
    wrong = wrong_domain(name, settings, statuses)
    if wrong is not None:
        # instead of the table: its rows are another domain's, and a user read them as
        # DOCKET_DOMAIN's own
        raise click.ClickException(wrong)
    click.echo(f"{'partition':>9}  {'instance':<10} {'state':<8} {'version':<16} {'offset':>10}")
    for rec in statuses:
        # a record's strings are anyone's who can write to the topic: escaped, as
        # `docket divergences` shows them (U+202E reached the terminal: the twelfth trial)
        remedy = rec.get("remedy")
        click.echo(printable(f"{rec['partition']:>9}  {rec['instance']:<10} {rec['state']:<8} {rec['version']:<16} "
                             f"{rec['offset']:>10}" + (f"  {remedy}" if remedy else "")))
    silent = sorted(set(range(settings.partitions)) - {rec["partition"] for rec in statuses})
    if silent:
        # an instance writes a partition's status once it has processed a record of it
        click.echo(f"no status record yet for partition(s) {', '.join(map(str, silent))}: no instance has "
                   "processed a record of them")


def wrong_domain(name: str, settings: Settings, statuses: list[dict]) -> str | None:
    """None when the status records name no domain but ``name`` (DOCKET_DOMAIN's);
    else the one line `docket domain status` prints instead of their table
    (StatusOfAnotherDomainRefused): what DOCKET_DOMAIN says, the domain and the
    versions the records name, and what to do."""
    others = sorted(domains_of(statuses) - {name})
    if not others:
        return None
    by_state = {state: sorted({r["version"] for r in statuses if r["state"] == state}, key=_version_order)
                for state in ("judging", "blocked")}
    running = "; ".join(f"{state} {', '.join(versions)}" for state, versions in by_state.items() if versions)
    return (f"DOCKET_DOMAIN={settings.domain}, but the status records on {settings.status_topic} at "
            f"{settings.kafka_bootstrap} say the topics under DOCKET_TOPIC_PREFIX={settings.topic_prefix} belong "
            f"to the {' and '.join(others)} domain ({running}), so there is no {name} status to show: run "
            f"`DOCKET_DOMAIN={others[0]} docket domain status` to see the {others[0]} status, or give {name} its "
            "own DOCKET_TOPIC_PREFIX (and DOCKET_DATA_ROOT) to run it beside them")


def _version_order(version: str) -> tuple[str, int, str]:
    """Sort key of a version text: by name, then by number (inventory/2 before inventory/10)."""
    base, _, digits = version.rpartition("/")
    return (base, int(digits) if digits.isdigit() else 0, digits)


async def produce_activations(settings: Settings, version: str,
                              needed: Callable[[list[int]], Awaitable[list[int]]] | None = None
                              ) -> list[tuple[int, int]]:
    """Send the activation record of ``version`` to every input partition, or to those
    ``needed`` returns when it is given (awaited with the topic's partitions, in order:
    `docket domain activate` leaves out those that run ``version`` already); the
    (partition, offset) of each record sent, in partition order (what `docket domain
    activate` and `docket chaos --activate` write). Raises KafkaError."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_kwargs(settings, "domain", "producer",
                                                bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                                enable_idempotence=True))
    try:
        with quiet():
            await producer.start()
        partitions = sorted(await producer.partitions_for(settings.input_topic))
        if needed is not None:
            partitions = await needed(partitions)
        sent = []
        for partition in partitions:
            key, value = activation_record(version, partition)
            sent.append(await producer.send(settings.input_topic, value, key=key, partition=partition))
        return [(m.partition, m.offset) for m in await asyncio.gather(*sent)]
    finally:
        await producer.stop()
