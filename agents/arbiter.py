"""Arbiter: evaluates admitted events with the domain's pure evaluator and writes
their effects. Spec: specs/arbiter.allium.

Write order per event is the recovery argument (specs/recovery.allium): first the
Warden entry holding the full output body, then the changed entities stamped with
the event's offset. Whatever prefix of those writes survives a crash, a replay can
finish the event and re-emit the identical output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson

from app import records
from app.records import Event
from app.registry import Domain
from tables.ledger import EntityRecord
from tables.registrar import Registrar
from tables.warden import Warden, WardenEntry

log = logging.getLogger("docket.arbiter")


@dataclass(slots=True)  # not frozen: a frozen init costs 3x (object.__setattr__ per field), per event
class Evaluation:
    body: bytes
    entities: list  # [{"key", "state", "version"}], sorted by key


class Arbiter:
    def __init__(self, domain: Domain, registrar: Registrar, warden: Warden) -> None:
        self.domain = domain
        self.registrar = registrar
        self.warden = warden
        # partitions whose Ledger was found ahead of the Warden (logged once each)
        self.ahead_reported: set[int] = set()

    def evaluate(self, event: Event) -> Evaluation:
        """Evaluate against the current entity states; changes nothing."""
        domain = self.domain
        partition = event.record.partition
        keys = event.entity_keys
        if keys is None:
            keys = domain.entity_keys(event.event_name, event.payload)
        get = self.registrar.get
        current = {key: get(partition, key) for key in keys}
        offset = event.record.offset
        for key, rec in current.items():
            if rec is not None and rec.stamp >= offset:
                self._ledger_ahead(partition, offset, key, rec.stamp)
        states = {key: (rec.state if rec is not None else domain.initial_state(key))
                  for key, rec in current.items()}
        try:
            result = domain.evaluate(event.event_name, event.payload, states)
            entities = []
            if result.status == "applied":
                undeclared = sorted(result.changes.keys() - current.keys())
                if undeclared:
                    raise ValueError(f"changed undeclared entities {undeclared}")
                for key in sorted(result.changes):
                    rec = current[key]
                    entities.append({"key": key, "state": result.changes[key],
                                     "version": (0 if rec is None else rec.version) + 1})
                outcome = records.outcome("applied", entities=entities)
            elif result.status == "rejected":
                outcome = records.outcome("rejected", result.reason, result.detail)
            else:
                raise ValueError(f"unknown outcome status {result.status!r}")
        except Exception as exc:  # a domain bug must not stop the partition
            entities = []
            outcome = records.outcome("rejected", "evaluation_error", f"{type(exc).__name__}: {exc}")
        body = records.body(
            event.record, stream_time=event.stream_time, idempotency_key=event.idempotency_key,
            client=event.client, event_name=event.event_name,
            domain_version=domain.version, outcome=outcome, duplicate_of=None)
        return Evaluation(body, entities)

    def _ledger_ahead(self, partition: int, offset: int, key: str, stamp: int) -> None:
        """An event the Warden has no version of (judged fresh) reads an entity stamped
        at or after its own offset: the Ledger holds this event's effect or a later
        one's, which the write order makes impossible (recovery.allium). The event is
        evaluated all the same and its copy diverges, so the Clerk withholds it; the
        worker says where, once per partition (ArbiterReportsLedgerAheadOfEvent)."""
        if partition in self.ahead_reported:
            return
        self.ahead_reported.add(partition)
        log.error("partition %d offset %d is judged as new (the Warden holds no version of it) but entity %r "
                  "carries stamp %d, the offset of a later event or of this one: the Ledger is ahead of the "
                  "Warden, so this event is judged on a state that already holds its effect or a later one's, "
                  "and its copy will diverge (the Clerk withholds it). Keep this worker's log and data directory and the divergence reports "
                  "(`docket divergences`), and report them",
                  partition, offset, key, stamp)

    def apply(self, event: Event, evaluation: Evaluation, fingerprint: str) -> None:
        record = event.record
        self.warden.record(
            event.idempotency_key,
            WardenEntry(record.partition, record.offset, event.stream_time, fingerprint, evaluation.body),
            event.client, event.warden_prefix)
        for ent in evaluation.entities:
            self.registrar.put(record.partition, ent["key"],
                               EntityRecord(ent["state"], ent["version"], record.offset))

    def redo(self, event: Event, entry: WardenEntry) -> None:
        """Finish an event whose Warden entry survived a crash: write every entity
        change it made that the Ledger does not hold yet, and write again what it did
        write. A crash can keep the local RocksDB writes of a batch and lose their
        changelog records (they are sent after the batch is evaluated); a write that
        only the local files hold is lost when the partition is next restored from
        the changelog (a new data dir, another worker). The rewrites are the same
        bytes, so they change nothing locally."""
        self.warden.restate(event.idempotency_key, entry, event.client)
        outcome = orjson.loads(entry.body)["outcome"]
        for ent in outcome["entities"]:
            rec = self.registrar.get(entry.partition, ent["key"])
            if rec is None or rec.stamp <= entry.offset:
                self.registrar.put(entry.partition, ent["key"],
                                   EntityRecord(ent["state"], ent["version"], entry.offset))
