"""Fault injection for tests and demos: ``docket instance --inject-faults KIND:RATE``.

``bitflip``  flips one bit of a number in that fraction of the instance's outputs
             (the output only: its state stays right, like a corrupted NIC or bus).
``state``    adds one to a stored entity after that fraction of applied events, so
             the corruption persists and shows in later outputs (like a bad DIMM).

The number corrupted is an entity state's *integer field*: the first, in key order, whose
value is an int (not a bool): inventory's ``quantity``, accounts' ``balance``; any domain
whose states hold an integer gets faults without knowing about them. A state without
one is left alone (the draw is taken all the same).

Off by default; when on, the worker says so loudly at start and logs every fault it
injects, so a test can count them. Faults use their own seeded random stream and
never touch the domain's evaluation.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import orjson

from app.canonical import canonical_trusted
from tables.ledger import EntityRecord
from tables.registrar import Registrar

log = logging.getLogger("docket.faults")
KINDS = ("bitflip", "state")


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    rate: float

    @staticmethod
    def parse(text: str) -> "FaultSpec":
        kind, _, rate = text.partition(":")
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(KINDS)} (write KIND:RATE, e.g. bitflip:0.01)")
        try:
            value = float(rate)
        except ValueError:
            raise ValueError(f"fault rate {rate!r} is not a number between 0 and 1") from None
        if not 0 < value <= 1:
            raise ValueError(f"fault rate {value} must be in (0, 1]")
        return FaultSpec(kind, value)


def int_field(state: dict) -> str | None:
    """The field of ``state`` that faults corrupt: the first key, in sorted order, whose
    value is an int (bool excluded); None when there is none."""
    return next((k for k in sorted(state) if type(state[k]) is int), None)


class FaultInjector:
    def __init__(self, spec: FaultSpec, instance: str, seed: int = 0) -> None:
        self.spec = spec
        self.instance = instance
        self.rng = random.Random(seed)
        self.injected = 0
        log.warning("FAULT INJECTION ON: instance %s will %s at rate %s. Never use this in production.",
                    instance, spec.kind, spec.rate)

    def corrupt_body(self, body: bytes) -> bytes:
        """Maybe flip a bit (0..15) of an entity's integer field in an output body (bitflip)."""
        if self.spec.kind != "bitflip" or self.rng.random() >= self.spec.rate:
            return body
        out = orjson.loads(body)
        entities = out["outcome"]["entities"]
        if not entities:
            return body  # nothing numeric to corrupt in a rejection
        ent = entities[self.rng.randrange(len(entities))]
        bit = 1 << self.rng.randrange(16)
        field = int_field(ent["state"])
        if field is None:
            return body
        ent["state"][field] ^= bit
        self._note("bitflip", out["input"], ent["key"])
        return canonical_trusted(out)

    def corrupt_state(self, registrar: Registrar, partition: int, offset: int, body: bytes) -> None:
        """Maybe add one to the integer field of an entity this event just wrote (state)."""
        if self.spec.kind != "state" or self.rng.random() >= self.spec.rate:
            return
        out = orjson.loads(body)
        entities = out["outcome"]["entities"]
        if not entities:
            return
        ent = entities[self.rng.randrange(len(entities))]
        rec = registrar.get(partition, ent["key"])
        field = None if rec is None else int_field(rec.state)
        if field is None:
            return
        registrar.put(partition, ent["key"], EntityRecord({**rec.state, field: rec.state[field] + 1},
                                                          rec.version, rec.stamp))
        self._note("state", out["input"], ent["key"])

    def _note(self, kind: str, position: dict, key: str) -> None:
        self.injected += 1
        log.warning("FAULT INJECTED kind=%s instance=%s partition=%d offset=%d entity=%s total=%d",
                    kind, self.instance, position["partition"], position["offset"], key, self.injected)


class LiveFaults:
    """The live fault switch: ``docket instance --faults-file PATH`` (for the fault
    console, console/stack.py). The worker starts with faults off unless PATH holds
    ``KIND:RATE``; before each batch it looks at PATH (one stat call: inode, mtime and
    size) and, when it changed, reads it again: ``KIND:RATE`` turns that fault on (a
    fresh :class:`FaultInjector`, which logs FAULT INJECTION ON), an empty file, ``off``
    or no file turns faults off (one WARNING line). Anything else is logged once at
    WARNING and leaves the switch as it was. A writer should replace the file
    atomically (write a temporary file, rename it over PATH), so no half-written
    text is ever read."""

    def __init__(self, path, instance: str) -> None:
        from pathlib import Path

        self.path = Path(path)
        self.instance = instance
        self.spec: FaultSpec | None = None
        self.injector: FaultInjector | None = None
        self.switches = 0  # times turned on: the seed of the next injector's random stream
        self._seen: tuple | None = ()  # stat signature last read; () = never read
        log.warning("live fault switch: instance %s reads %s before each batch (KIND:RATE turns faults on, "
                    "empty or off turns them off). Never use this in production.", instance, self.path)

    def poll(self) -> FaultInjector | None:
        """The injector to use for the next batch (None: faults off)."""
        import os

        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = None
        if sig == self._seen:
            return self.injector
        self._seen = sig
        try:
            text = self.path.read_text(encoding="utf-8").strip() if sig is not None else ""
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("live fault switch of instance %s: cannot read %s (%s); faults stay %s", self.instance,
                        self.path, exc.__class__.__name__, self._describe())
            return self.injector
        try:
            spec = None if text in ("", "off") else FaultSpec.parse(text)
        except ValueError as exc:
            log.warning("live fault switch of instance %s: %s holds %r, ignored (%s); faults stay %s",
                        self.instance, self.path, text[:40], exc, self._describe())
            return self.injector
        if spec == self.spec:
            return self.injector
        self.spec = spec
        if spec is None:
            log.warning("FAULT INJECTION OFF: instance %s produces the Arbiter's outputs again "
                        "(%d faults injected while on)", self.instance,
                        0 if self.injector is None else self.injector.injected)
            self.injector = None
        else:
            self.switches += 1
            self.injector = FaultInjector(spec, self.instance, seed=self.switches)
        return self.injector

    def _describe(self) -> str:
        return "off" if self.spec is None else f"on ({self.spec.kind}:{self.spec.rate})"
