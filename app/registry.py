"""The DomainRegistry: how a domain plugs into docket.

A domain is a plain object with these attributes (see ``app/domains/inventory.py``):

``name``, ``version``
    identity; ``version`` goes into every output so instances running different
    domain code disagree loudly instead of silently.
``event_names``
    the event names it accepts.
``validate(event_name, payload) -> Rejection | None``
    payload schema check; a named reason when the payload is unusable (and, optionally,
    the payload field at fault in ``Rejection.field``).
``affinity_key(event_name, payload) -> str``
    the input record key. Every entity an event touches must share it, so they all
    live on the event's partition (conflicting events are totally ordered).
``entity_keys(event_name, payload) -> tuple[str, ...]``
    the entities the event reads and may change.
``initial_state(entity_key) -> dict``
    the state of an entity that was never written.
``evaluate(event_name, payload, states) -> Outcome``
    pure: reads only its arguments; integers only; no clock, no randomness, no
    dependence on dict or set iteration order.

Only ``validate`` runs on unvalidated input; the framework calls the rest with a
payload that passed it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str = ""
    # the payload field at fault, when there is one (e.g. "delta"); for field-level
    # error reports (the REST API's 400). Not part of any output record, and not
    # compared: two rejections with the same reason and detail are the same.
    field: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Outcome:
    """``changes`` maps entity key -> new state for every entity the event changed."""

    status: str  # "applied" | "rejected"
    reason: str | None = None
    detail: str = ""
    changes: Mapping[str, dict] = field(default_factory=dict)

    @staticmethod
    def applied(changes: Mapping[str, dict]) -> "Outcome":
        return Outcome("applied", changes=changes)

    @staticmethod
    def rejected(reason: str, detail: str = "") -> "Outcome":
        return Outcome("rejected", reason=reason, detail=detail)


class Domain(Protocol):
    name: str
    version: str
    event_names: frozenset[str]

    def validate(self, event_name: str, payload: Any) -> Rejection | None: ...

    def affinity_key(self, event_name: str, payload: Mapping[str, Any]) -> str: ...

    def entity_keys(self, event_name: str, payload: Mapping[str, Any]) -> tuple[str, ...]: ...

    def initial_state(self, entity_key: str) -> dict: ...

    def evaluate(self, event_name: str, payload: Mapping[str, Any], states: Mapping[str, dict]) -> Outcome: ...


class UnknownDomain(LookupError):
    pass


class DomainRegistry:
    """Name -> domain. Built-in domains register themselves on import of
    ``app.domains``; others are loaded from ``module:attribute``."""

    def __init__(self) -> None:
        self._domains: dict[str, Domain] = {}

    def register(self, domain: Domain) -> Domain:
        missing = [a for a in ("name", "version", "event_names", "validate", "affinity_key",
                               "entity_keys", "initial_state", "evaluate") if not hasattr(domain, a)]
        if missing:
            raise TypeError(f"domain {domain!r} lacks {', '.join(missing)}")
        if domain.name in self._domains and self._domains[domain.name] is not domain:
            raise ValueError(f"a different domain named {domain.name!r} is already registered")
        self._domains[domain.name] = domain
        return domain

    def get(self, name: str) -> Domain:
        if name in self._domains:
            return self._domains[name]
        if ":" in name:
            module, attr = name.split(":", 1)
            try:
                return self.register(getattr(importlib.import_module(module), attr))
            except (ImportError, AttributeError) as exc:
                raise UnknownDomain(f"cannot load domain {name!r}: {exc}") from exc
        known = ", ".join(sorted(self._domains)) or "none"
        raise UnknownDomain(f"no domain named {name!r} (registered: {known}; or give module:attribute)")

    def names(self) -> list[str]:
        return sorted(self._domains)


registry = DomainRegistry()
