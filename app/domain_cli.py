"""``docket domain``: the domain versions this code knows, and live activation of one.
Spec: specs/versioning.allium (OperatorActivatesVersion).

``docket domain activate inventory/2`` writes one activation record to every
partition of the input topic (app/versions.py). Each partition switches at its
record's offset, for every instance alike; an instance whose code does not know the
version stops that partition there (see the README's "Live versioning").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import click
from aiokafka.errors import KafkaError

import app.domains  # noqa: F401  registers the built-in domains
from app.kafka_admin import quiet
from app.kafka_config import client_kwargs
from app.registry import UnknownDomain, registry, version_number
from app.settings import ConfigError, Settings, load
from app.status import domain_conflict, read_statuses
from app.versions import activation_record


@click.group("domain")
def domain() -> None:
    """The domain's versions: list them, or activate one live."""


@domain.command("versions", short_help="List the versions this code registers.")
def versions_cmd() -> None:
    """Print the versions of DOCKET_DOMAIN this code registers (base first)."""
    settings = load()
    try:
        known = registry.versions(settings.domain)
    except UnknownDomain as exc:
        raise click.ClickException(str(exc)) from None
    for number in sorted(known):
        limit = settings.domain_version_limit
        note = " (beyond DOCKET_DOMAIN_VERSION_LIMIT)" if limit and number > limit else ""
        click.echo(f"{known[number].version}{' (base)' if number == min(known) else ''}{note}")


@domain.command("activate", short_help="Switch every partition to VERSION.")
@click.argument("version")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="seconds to wait for Kafka to acknowledge every record")
@click.option("--force", is_flag=True,
              help="write the activation even though this code does not register VERSION "
                   "(the instances run newer code than this command)")
def activate(version: str, timeout_s: float, force: bool) -> None:
    """Switch every partition to domain VERSION, for example inventory/2, at its next offset.

    Deploy code that knows VERSION to every instance first: an instance that does not
    know it stops the partition at the activation until it is upgraded. A version this
    code does not register is refused unless --force is given: an activation cannot be
    taken back, and one that no instance knows stops every partition. Prints the
    (partition, offset) of each activation record."""
    settings = load()
    number = version_number(settings.domain, version)
    if number is None:
        raise click.BadParameter(f"{version!r} is not a version of {settings.domain} (DOCKET_DOMAIN={settings.domain}):"
                                 f" expected {settings.domain}/<n>, n >= 1", param_hint="VERSION")
    try:
        known = registry.versions(settings.domain)
    except UnknownDomain as exc:
        raise click.ClickException(str(exc)) from None
    if number not in known and not force:
        raise click.ClickException(
            f"this code does not register {version} (it has {', '.join(d.version for d in known.values())}). "
            "An activation cannot be taken back: every instance without the version would stop each partition "
            "at it, and a later activation would wait behind it. Deploy code that registers "
            f"{version} and run this from it, or pass --force if the instances already run such code")
    if number not in known:
        click.echo(f"warning: --force: this code does not register {version}; instances like it will block",
                   err=True)
    conflict = domain_conflict(settings, _statuses(settings, timeout_s))
    if conflict is not None:
        raise click.ClickException(f"{conflict}. Nothing was activated")
    with _kafka_failures(
            f"Kafka at {settings.kafka_bootstrap} did not acknowledge the activation records within {timeout_s:g} "
            "s: check the broker and run it again (an activation repeated later only switches again to the same "
            "version)",
            lambda exc: f"could not write the activation records to {settings.input_topic} at "
                        f"{settings.kafka_bootstrap}: {exc}; is the broker up and the topic created "
                        "(`docket topics create`)?"):
        placed = asyncio.run(asyncio.wait_for(produce_activations(settings, version), timeout_s))
    for partition, offset in placed:
        click.echo(f"{settings.input_topic}[{partition}]@{offset}: {version}")


def _statuses(settings: Settings, timeout_s: float) -> list[dict]:
    """The instances' status records (app/status.py), or click.ClickException saying
    why they cannot be read."""
    with _kafka_failures(
            f"could not read {settings.status_topic} at {settings.kafka_bootstrap} within {timeout_s:g} s: is the "
            "broker up and the topic created (`docket topics create`)?",
            lambda exc: f"could not read {settings.status_topic} at {settings.kafka_bootstrap}: {exc}; "
                        "is the broker up?"):
        return asyncio.run(read_statuses(settings, timeout_s))


@contextlib.contextmanager
def _kafka_failures(timed_out: str, failed: Callable[[Exception], str]) -> Iterator[None]:
    """Turn what a Kafka call in the block raises into click.ClickException:
    ``timed_out`` for asyncio's timeout, ``failed(error)`` for a KafkaError or
    OSError, a ConfigError's own message for a setting at fault."""
    try:
        yield
    except asyncio.TimeoutError:
        raise click.ClickException(timed_out) from None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except (KafkaError, OSError) as exc:
        raise click.ClickException(failed(exc)) from None


@domain.command("status", short_help="Show the version per partition.")
@click.option("--timeout", "timeout_s", type=float, default=15.0, show_default=True,
              help="seconds to wait for Kafka")
def status_cmd(timeout_s: float) -> None:
    """Print which version each instance judges each input partition with.

    From the instances' status records (<prefix>.status): per partition and instance,
    "judging" with the version and the offset of the activation that chose it (-1:
    the base, no activation), or "blocked" at an offset, with what the instance's
    WARNING says to do; then the partitions no status record names yet. Exits 1 when
    the records name another domain than DOCKET_DOMAIN."""
    settings = load()
    statuses = _statuses(settings, timeout_s)
    if not statuses:
        click.echo(f"no status record on {settings.status_topic} yet: no instance has processed an event")
        return
    click.echo(f"{'partition':>9}  {'instance':<10} {'state':<8} {'version':<16} {'offset':>10}")
    for rec in statuses:
        click.echo(f"{rec['partition']:>9}  {rec['instance']:<10} {rec['state']:<8} {rec['version']:<16} "
                   f"{rec['offset']:>10}" + (f"  {rec['remedy']}" if rec.get("remedy") else ""))
    silent = sorted(set(range(settings.partitions)) - {rec["partition"] for rec in statuses})
    if silent:
        # an instance writes a partition's status once it has processed a record of it
        click.echo(f"no status record yet for partition(s) {', '.join(map(str, silent))}: no instance has "
                   "processed a record of them")
    conflict = domain_conflict(settings, statuses)
    if conflict is not None:
        raise click.ClickException(conflict)


async def produce_activations(settings: Settings, version: str) -> list[tuple[int, int]]:
    """Send the activation record of ``version`` to every input partition; the
    (partition, offset) of each, in partition order (what `docket domain activate`
    and `docket chaos --activate` write). Raises KafkaError."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_kwargs(settings, "domain", "producer",
                                                bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                                enable_idempotence=True))
    try:
        with quiet():
            await producer.start()
        partitions = sorted(await producer.partitions_for(settings.input_topic))
        sent = []
        for partition in partitions:
            key, value = activation_record(version, partition)
            sent.append(await producer.send(settings.input_topic, value, key=key, partition=partition))
        return [(m.partition, m.offset) for m in await asyncio.gather(*sent)]
    finally:
        await producer.stop()
