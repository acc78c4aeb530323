"""A domain's *kit*: what docket's tooling needs to know about a domain, kept beside the
domain so that no tool (the chaos suite, the demo, the OpenAPI document, the stack's
banner) names a domain's events, fields or invariants. Spec: specs/domain.allium
(surface DomainKit).

A kit is optional: the pipeline and the API run any domain with the registry's
``Domain`` contract alone. A domain registered with a kit (``registry.register(domain,
kit)``, or a ``kit`` attribute on a domain loaded from ``module:attribute``) also gets
``docket chaos``, ``docket demo``, the OpenAPI examples and the banner's curl example;
``registry.kit(name)`` returns it, or raises :class:`NoKit` saying what is missing.

The workload is split in two, so that one seeded random stream drives both and a seed
names one workload byte for byte: the generic driver (chaos/workload.py ``records``)
owns the timestamps, idempotency keys, repeats, key reuses, expired repeats, poison
records and the Kafka encoding; the kit's :class:`WorkloadModel` owns the events: the
set-up events, then one event of a drawn *kind*, with the domain's own bookkeeping
(inventory: the stock per warehouse; accounts: each account's status and balance) to
choose amounts that apply, drain to zero, or are bound to be rejected. A model draws
only from the ``random.Random`` it is given, and its events hold integers and strings
only.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.registry import Domain

Event = tuple[str, dict]  # (event_name, payload)
# The generic driver's kinds: an exact repeat of a recent event, and a recent
# idempotency key reused for a different request. A model's ``mix`` weighs them too.
REPEAT = "repeat"
REUSE = "reuse"


@dataclass(frozen=True)
class Check:
    """One invariant's verdict: ``detail`` says what was counted, or the first
    offenders when it failed."""

    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return {"passed": self.passed, "detail": self.detail}


def first(items: Iterable, n: int = 3) -> str:
    """The first ``n`` items as text, and how many more there are."""
    items = list(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


class WorkloadModel(Protocol):
    """One workload's domain side, built by :meth:`DomainKit.model` around the driver's
    random stream. Every method may draw from that stream; the driver calls them in a
    fixed order, so the same seed gives the same events."""

    # kind -> weight (normalised by the driver), in a fixed order; includes REPEAT and
    # REUSE, which the driver handles itself.
    mix: Mapping[str, float]

    def setup(self, i: int) -> Event | None:
        """The ``i``-th set-up event (accounts opened, stock received ...), or None once
        set-up is over (then it stays None)."""

    def subject(self) -> str:
        """Draw the affinity group (inventory: a sku; accounts: a book) of the next event."""

    def event(self, kind: str, subject: str) -> Event:
        """One event of ``kind`` (a key of ``mix`` other than REPEAT and REUSE) for
        ``subject``; when the state does not allow the kind, some other event."""

    def reuse(self, subject: str) -> Event:
        """A request with ``subject``'s affinity key that differs from every set-up and
        mix event (sent under a recent idempotency key: ``idempotency_key_reused``)."""

    def good(self, subject: str) -> Event:
        """A valid event for ``subject`` whose payload ends with the integer field
        :attr:`DomainKit.int_field`: the base that poison records spoil."""

    def poison(self, kind: str, subject: str) -> Event:
        """The bad event of a domain-specific poison ``kind`` (a key of
        :attr:`DomainKit.poison_kinds`) for ``subject``."""


class DomainKit(Protocol):
    domain: Domain
    # name -> short label (the chaos summary's column), in report order: the names of
    # the checks :meth:`check` returns.
    invariants: Mapping[str, str]
    # domain-specific poison kind -> the rejection reason docket must give it, in the
    # order the driver cycles through them (after the generic kinds).
    poison_kinds: Mapping[str, str]
    # the integer payload field of :meth:`WorkloadModel.good` (poison: "string_<field>" ...)
    int_field: str
    # the demo's workload shape (keyword arguments of :meth:`model`)
    demo_shape: Mapping[str, int]
    # the fewest events whose workload the checks can judge (accounts: an account
    # opened and funded, or "money_conserved" has nothing to prove)
    min_events: int
    # One valid event that is applied on a fresh stack (the OpenAPI example, the banner's
    # curl), the entity key it changes, and what submitting it does, in a few words.
    example_event: Event
    example_entity: str
    example_summary: str
    # How entity keys read, for documentation ("stock:{warehouse}:{sku}").
    entity_pattern: str
    # A rejection reason of the domain's rules, for documentation.
    example_rejection: str

    def model(self, rng: random.Random, *, scope: str = "", **shape: int) -> WorkloadModel:
        """A workload model over ``rng``. ``scope`` prefixes every affinity group name
        (a demo run's id keeps runs apart); ``shape`` sizes the workload (inventory:
        ``warehouses``, ``skus``; accounts: ``books``, ``accounts``). ValueError for a
        shape the model cannot use."""

    def check(self, applied: Sequence[Event], final: Mapping[str, Mapping[str, Any]],
              seen: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Check]:
        """The domain's invariants over published results, one Check per name of
        :attr:`invariants`. ``applied``: the events applied, each once (duplicates and
        rejections left out); ``final``: entity key -> its latest published state;
        ``seen``: every (entity key, state) published, in any order. Pure."""
