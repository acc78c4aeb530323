"""The DomainRegistry: how a domain plugs into docket.

A domain is a plain object with these attributes (see ``app/domains/inventory.py``):

``name``, ``version``
    identity; ``version`` is ``<name>/<n>`` (n >= 1) and goes into every output, so
    instances judging with different domain code disagree loudly instead of silently.
    A domain may register several versions; which one judges an input record is a
    function of the input stream (activation records, app/versions.py,
    specs/versioning.allium).
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

A domain may come with a *kit* (``app/domains/kit.py``): what the tooling (chaos suite,
demo, OpenAPI examples, the stack's banner) needs to know about it. ``register(domain,
kit)`` records it; ``kit(name)`` returns it (a domain loaded from ``module:attribute``
brings its own as a ``kit`` attribute) or raises :class:`NoKit`.
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


class NoKit(LookupError):
    """The domain is registered but has no kit: the tooling cannot drive it."""


class DomainRegistry:
    """Name -> the registered versions of that domain. Built-in domains register
    themselves on import of ``app.domains``; others are loaded from
    ``module:attribute`` (the module may register more versions on import)."""

    def __init__(self) -> None:
        self._domains: dict[str, dict[int, Domain]] = {}
        self._kits: dict[str, Any] = {}

    def register(self, domain: Domain, kit: Any = None) -> Domain:
        """Add one version of a domain (and the domain's kit, if given: one per domain
        name, whatever the version). Raises TypeError for an object lacking the
        contract's attributes or a kit of another domain, ValueError for a version that
        is not ``<name>/<n>``, a different object under a registered version, or a
        different kit under the name."""
        missing = [a for a in ("name", "version", "event_names", "validate", "affinity_key",
                               "entity_keys", "initial_state", "evaluate") if not hasattr(domain, a)]
        if missing:
            raise TypeError(f"domain {domain!r} lacks {', '.join(missing)}")
        number = version_number(domain.name, domain.version)
        if number is None:
            raise ValueError(f"domain {domain.name!r} has version {domain.version!r}: "
                             f"expected {version_rule(domain.name)}")
        versions = self._domains.get(domain.name, {})
        if number in versions and versions[number] is not domain:
            raise ValueError(f"a different domain named {domain.name!r} is already registered "
                             f"as {domain.version!r}")
        if kit is not None:
            if kit.domain is not domain:
                raise TypeError(f"the kit given for {domain.name!r} is another domain's")
            if self._kits.get(domain.name, kit) is not kit:
                raise ValueError(f"a different kit for {domain.name!r} is already registered")
            self._kits[domain.name] = kit
        self._domains.setdefault(domain.name, {})[number] = domain
        return domain

    def kit(self, name: str) -> Any:
        """The DomainKit of the domain ``name`` (loading ``module:attribute`` as
        :meth:`get` does). UnknownDomain for an unknown name, NoKit when it has none."""
        domain = self.get(name)
        kit = self._kits.get(domain.name) or getattr(domain, "kit", None)
        if kit is None:
            raise NoKit(f"domain {domain.name!r} has no kit (app/domains/kit.py): the chaos suite, the demo and "
                        "the OpenAPI examples need one")
        return kit

    def get(self, name: str) -> Domain:
        """The base (lowest) registered version of domain ``name``: what judges a
        partition before any activation. Raises UnknownDomain."""
        versions = self.versions(name)
        return versions[min(versions)]

    def newest(self, name: str) -> Domain:
        """The newest registered version of domain ``name`` (what the REST API
        validates submissions with). Raises UnknownDomain."""
        versions = self.versions(name)
        return versions[max(versions)]

    def versions(self, name: str) -> dict[int, Domain]:
        """Version number -> domain, every registered version of ``name`` (a
        ``module:attribute`` name is imported and registered first). Raises
        UnknownDomain."""
        if name in self._domains:
            return dict(self._domains[name])
        if ":" in name:
            module, attr = name.split(":", 1)
            try:
                domain = self.register(getattr(importlib.import_module(module), attr))
            except (ImportError, AttributeError) as exc:
                raise UnknownDomain(f"cannot load domain {name!r}: {exc}") from exc
            return dict(self._domains[domain.name])
        known = ", ".join(sorted(self._domains)) or "none"
        raise UnknownDomain(f"no domain named {name!r} (registered: {known}; or give module:attribute)")

    def names(self) -> list[str]:
        return sorted(self._domains)


MAX_VERSION_DIGITS = 9  # n of <name>/<n> is at most 999,999,999


def version_rule(name: str) -> str:
    """What a version of domain ``name`` looks like, for an error message."""
    return f"{name}/<n>, n from 1 to {'9' * MAX_VERSION_DIGITS} without sign or leading zero"


def version_number(name: str, version: object) -> int | None:
    """n of a version string ``<name>/<n>`` (:func:`version_rule`), else None."""
    if not isinstance(version, str) or not version.startswith(name + "/"):
        return None
    digits = version[len(name) + 1:]
    if not digits.isascii() or not digits.isdigit() or digits[0] == "0" or len(digits) > MAX_VERSION_DIGITS:
        return None
    return int(digits)


registry = DomainRegistry()


def check_domain(name: str) -> None:
    """Raise app.settings.ConfigError, naming DOCKET_DOMAIN, when ``name`` (its value)
    names no domain: neither a registered one nor a ``module:attribute`` holding one
    (UnknownDomainRefusedAtStart, specs/integration.allium). Every command but
    ``docket config`` and both Faust command-line apps (docket_apps) check it before
    they start: the API and the instances ended in a traceback, and the Clerk, which
    judges no event, started on another domain's topics."""
    from app.settings import ConfigError

    import app.domains  # noqa: F401  registers the built-in domains

    try:
        registry.versions(name)
    except (UnknownDomain, TypeError, ValueError) as exc:  # TypeError: module:attribute is no domain
        raise ConfigError(f"DOCKET_DOMAIN={name!r}: {exc}") from None
