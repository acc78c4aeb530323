"""Live versioning: which version of the domain judges an input record.
Spec: specs/versioning.allium.

Every instance must judge a record with the same domain logic, or their outputs
differ and nothing is published. So the version is a function of the input stream
alone: an **activation record** on the input topic (one per partition, written by
``docket domain activate <name>/<n>``) switches its partition to version n from the
record after it on, for every instance alike, on first processing and on every
replay. Before any activation a partition is judged by the domain's lowest
registered version (its base).

Each instance keeps the activations it applied per partition in its Ledger, under
the reserved entity key ``docket:versions:<partition>`` (changelogged and restored
like any entity): ``{"activations": [[offset, n], ...]}`` in offset order. The
version judging offset x is the n of the last activation at an offset below x,
so a replay from before an activation judges with the version of its time.

An instance that meets an activation of a version it does not know (older code, or
held back by DOCKET_DOMAIN_VERSION_LIMIT) cannot judge what follows: it stops that
partition at the activation's offset (no copy, no watermark past it, no offset
commit past it) and resumes from there once restarted with code that knows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import orjson

from app.registry import Domain, Rejection, version_number, version_rule

# The record key of an activation record. No domain's affinity key may equal it: both
# built-in domains' identifiers exclude ':'.
ACTIVATION_KEY = b"docket:activate"
ACTIVATE_EVENT = "docket.activate"
# Ledger entity keys under this prefix are docket's own, never a domain's.
RESERVED_PREFIX = "docket:"


def history_key(partition: int) -> str:
    """The Ledger key of ``partition``'s activation history (the Registrar caches by
    key alone, so the partition is part of it)."""
    return f"{RESERVED_PREFIX}versions:{partition}"


def activation_record(version: str, partition: int) -> tuple[bytes, bytes]:
    """(key, value) of the activation record of ``version`` (``<name>/<n>``) for
    ``partition``: an ordinary envelope, so it passes every producer and topic check."""
    value = orjson.dumps({"idempotency_key": f"activate:{version}:{partition}", "event_name": ACTIVATE_EVENT,
                          "payload": {"version": version}})
    return ACTIVATION_KEY, value


@dataclass(frozen=True, slots=True)
class Blocked:
    """A version this instance cannot judge with: ``partition`` stops at ``offset``.
    ``cause`` is "activation" (the record at ``offset`` activates ``version``) or
    "history" (the instance's Ledger says ``version`` judges ``offset``: newer code,
    or a higher DOCKET_DOMAIN_VERSION_LIMIT, applied its activation earlier)."""

    partition: int
    offset: int
    version: str
    cause: str = "activation"


class DomainVersions:
    """The versions of one domain an instance judges with: version number -> Domain.

    ``known`` are the versions this worker may use (all it registers, up to
    ``limit`` when one is given); ``base`` is the lowest version the code registers,
    limited or not, so every instance starts from the same one. Raises ValueError
    for an empty mapping, versions of more than one domain, or a limit below the base.
    """

    def __init__(self, versions: Mapping[int, Domain] | Domain, limit: int | None = None) -> None:
        if not isinstance(versions, Mapping):
            domain = versions
            number = version_number(domain.name, domain.version)
            versions = {number if number is not None else 1: domain}
        if not versions:
            raise ValueError("no domain version to judge with")
        names = {d.name for d in versions.values()}
        if len(names) != 1:
            raise ValueError(f"versions of several domains: {sorted(names)}")
        self.name = names.pop()
        self.base = min(versions)
        if limit is not None and limit < self.base:
            raise ValueError(f"version limit {limit} is below the base version {self.base} of {self.name}")
        self.limit = limit
        self.registered = frozenset(versions)
        self.known = {n: d for n, d in sorted(versions.items()) if limit is None or n <= limit}
        self.newest = self.known[max(self.known)]

    def number_at(self, history: list[list[int]] | None, offset: int) -> int:
        """The version number judging ``offset`` given a partition's activation history
        (``[[offset, n], ...]`` in offset order, or None): the n of the last activation
        below ``offset``, else the base."""
        return self.activation_at(history, offset)[1]

    def activation_at(self, history: list[list[int]] | None, offset: int) -> tuple[int, int]:
        """(activation offset, version number) of the activation that decides which
        version judges ``offset`` (see :meth:`number_at`); the offset is -1 when no
        activation precedes it and the base judges."""
        at_number = (-1, self.base)
        for at, n in history or ():
            if at >= offset:
                break
            at_number = (at, n)
        return at_number

    def remedy(self, version: str) -> str:
        """What an operator does so this worker can judge with ``version`` (one
        sentence, for the blocked-partition WARNING): raise DOCKET_DOMAIN_VERSION_LIMIT
        when the code registers it beyond the limit, else deploy code that registers it."""
        number = version_number(self.name, version)
        if number is not None and number in self.registered:
            return (f"this code registers {version} but DOCKET_DOMAIN_VERSION_LIMIT={self.limit} holds the worker "
                    f"below it: raise or unset the limit and restart the worker")
        return f"upgrade this worker to code that registers {version} and restart it"

    def at(self, history: list[list[int]] | None, offset: int) -> Domain | None:
        """The domain judging ``offset`` (see :meth:`number_at`); None when this worker
        does not know that version: a history recorded by newer code (a downgrade, or a
        lower DOCKET_DOMAIN_VERSION_LIMIT), which the Usher treats as a block."""
        return self.known.get(self.number_at(history, offset))

    def version(self, number: int) -> str:
        """``<name>/<number>``."""
        return f"{self.name}/{number}"

    def parse(self, payload: object) -> int | Rejection:
        """The version number an activation payload names, or the Rejection every
        instance gives it alike (whether the version is *known* is not checked here:
        that differs between instances and must not change the output)."""
        if not isinstance(payload, dict) or set(payload) != {"version"}:
            return Rejection("invalid_activation", 'payload must be {"version": "<name>/<n>"}')
        version = payload["version"]
        number = version_number(self.name, version)
        if number is None:
            return Rejection("invalid_activation",
                             f"version must be {version_rule(self.name)} (this pipeline runs {self.name})")
        return number


def status_record(instance: str, partition: int, state: str, offset: int, version: str,
                  judges_with: list[str], remedy: str | None = None) -> tuple[bytes, bytes]:
    """(key, value) of an instance's status record for input ``partition`` on the
    status topic (Settings.status_topic, same partition; compacted, so the latest per
    key is what a reader finds): ``state`` "blocked" (stopped at the activation of
    ``version`` at ``offset``, which it does not know) or "judging" (judges with
    ``version``, activated at ``offset``; -1 when the base judges from the start: an
    instance writes it when it applies an activation and when it first processes a
    partition in a run); ``judges_with``: the versions it knows; ``remedy`` (blocked
    only): what to do, as the instance's WARNING says it (DomainVersions.remedy)."""
    key = f"{instance}:{partition}".encode()
    value = {"instance": instance, "partition": partition, "state": state, "offset": offset,
             "version": version, "judges_with": judges_with}
    if remedy is not None:
        value["remedy"] = remedy
    return key, orjson.dumps(value)
