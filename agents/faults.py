"""Fault injection for tests and demos: ``docket instance --inject-faults KIND:RATE``.

``bitflip``  flips one bit of a quantity in that fraction of the instance's outputs
             (the output only: its state stays right, like a corrupted NIC or bus).
``state``    adds one to a stored entity after that fraction of applied events, so
             the corruption persists and shows in later outputs (like a bad DIMM).

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


class FaultInjector:
    def __init__(self, spec: FaultSpec, instance: str, seed: int = 0) -> None:
        self.spec = spec
        self.instance = instance
        self.rng = random.Random(seed)
        self.injected = 0
        log.warning("FAULT INJECTION ON: instance %s will %s at rate %s. Never use this in production.",
                    instance, spec.kind, spec.rate)

    def corrupt_body(self, body: bytes) -> bytes:
        """Maybe flip a bit of a quantity in an output body (bitflip)."""
        if self.spec.kind != "bitflip" or self.rng.random() >= self.spec.rate:
            return body
        out = orjson.loads(body)
        entities = out["outcome"]["entities"]
        if not entities:
            return body  # nothing numeric to corrupt in a rejection
        ent = entities[self.rng.randrange(len(entities))]
        ent["state"]["quantity"] ^= 1 << self.rng.randrange(16)
        self._note("bitflip", out["input"], ent["key"])
        return canonical_trusted(out)

    def corrupt_state(self, registrar: Registrar, partition: int, offset: int, body: bytes) -> None:
        """Maybe perturb an entity this event just wrote (state)."""
        if self.spec.kind != "state" or self.rng.random() >= self.spec.rate:
            return
        out = orjson.loads(body)
        entities = out["outcome"]["entities"]
        if not entities:
            return
        ent = entities[self.rng.randrange(len(entities))]
        rec = registrar.get(partition, ent["key"])
        if rec is None:
            return
        registrar.put(partition, ent["key"], EntityRecord({**rec.state, "quantity": rec.state["quantity"] + 1},
                                                          rec.version, rec.stamp))
        self._note("state", out["input"], ent["key"])

    def _note(self, kind: str, position: dict, key: str) -> None:
        self.injected += 1
        log.warning("FAULT INJECTED kind=%s instance=%s partition=%d offset=%d entity=%s total=%d",
                    kind, self.instance, position["partition"], position["offset"], key, self.injected)
