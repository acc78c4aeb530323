"""Usher: takes batches of input records, admits or rejects each, consults the
Warden, pre-warms the Registrar and hands events to the Arbiter. Spec:
specs/usher.allium.

Everything here is a function of the input records and the table contents, in
partition offset order; the batch only groups work (pre-warming), so batch
boundaries never change an output. The Faust agent around it is agents/instance.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import orjson

from agents.arbiter import Arbiter
from app import records
from app.canonical import NotCanonical, _check, canonical_trusted, digest
from app.records import Event, InputRecord
from app.registry import Domain, Rejection
from tables.registrar import Registrar
from tables.warden import Verdict, Warden, key_prefix


@dataclass(slots=True)  # not frozen: a frozen init costs 3x (object.__setattr__ per field), per event
class Output:
    """One record's output: its canonical ``body`` and the ``digest`` over it, from
    ``instance``. ``value`` is the sealed single-record form (records.seal)."""

    partition: int
    offset: int
    key: bytes | None
    body: bytes
    digest: str
    instance: str

    @property
    def value(self) -> bytes:
        return records.seal_digested(self.body, self.digest, self.instance)


def _fingerprint(event: Event) -> str:
    """Hex SHA-256 of the canonical JSON of [event_name, payload]: what makes two events
    with one idempotency key "the same request". Raises NotCanonical."""
    _check(event.payload)  # the event name is a string: checked by records.decode
    return hashlib.sha256(canonical_trusted([event.event_name, event.payload])).hexdigest()


class Usher:
    def __init__(self, instance: str, domain: Domain, registrar: Registrar, warden: Warden,
                 partitions: int) -> None:
        self.instance = instance
        self.domain = domain
        self.registrar = registrar
        self.warden = warden
        self.partitions = partitions
        self.arbiter = Arbiter(domain, registrar, warden)
        self.faults = None  # agents.faults.FaultInjector, only when asked for

    def admit(self, record: InputRecord, stream_time: int) -> Event | tuple[Rejection, Event | None]:
        """The stateless checks: envelope, event name, payload, affinity, routing."""
        event = records.decode(record, stream_time)
        if isinstance(event, Rejection):
            return event, None
        domain = self.domain
        if event.event_name not in domain.event_names:
            return Rejection("unknown_event", f"{domain.name} has no event {event.event_name!r}"), event
        problem = domain.validate(event.event_name, event.payload)
        if problem is not None:
            return problem, event
        expected_key = domain.affinity_key(event.event_name, event.payload)
        if expected_key != event.key:
            return Rejection("affinity_key_mismatch",
                             f"record key {event.key!r} is not the affinity key {expected_key!r}"), event
        home = records.partition_for(record.key, self.partitions)
        if home != record.partition:
            return Rejection("misrouted", f"key belongs on partition {home}, not {record.partition}"), event
        return event

    def process(
        self,
        batch: Sequence[InputRecord],
        committed: Callable[[int], int],
    ) -> list[Output]:
        """One output per input record, in batch order. ``committed(partition)`` is the
        committed input offset: where a replay after a crash would start, so the
        Warden may only collect below it."""
        warden = self.warden
        # every record moves its partition's stream time, whatever its fate
        times = [warden.stream_time(r.partition, r.offset, r.timestamp, r.timestamp_type) for r in batch]
        admitted = [self.admit(record, t) for record, t in zip(batch, times)]
        wanted: dict[int, list[str]] = {}  # pre-warm: one multi-get before any evaluation
        for item in admitted:
            if isinstance(item, Event):
                item.entity_keys = keys = self.domain.entity_keys(item.event_name, item.payload)
                wanted.setdefault(item.record.partition, []).extend(keys)
        for partition, keys in wanted.items():
            self.registrar.prewarm(partition, keys)
        outputs = []
        last_index = {record.partition: i for i, record in enumerate(batch)}
        for i, (record, item) in enumerate(zip(batch, admitted)):
            body = self._conclude(record, times[i], item)
            if self.faults is not None:
                self.faults.corrupt_state(self.registrar, record.partition, record.offset, body)
                body = self.faults.corrupt_body(body)
            outputs.append(Output(record.partition, record.offset, record.key, body, digest(body), self.instance))
            if last_index[record.partition] == i:
                warden.checkpoint(record.partition)
                warden.collect(record.partition, committed)
        warden.settle()
        return outputs

    def _conclude(self, record: InputRecord, stream_time: int, item) -> bytes:
        if not isinstance(item, Event):
            rejection, event = item
            return self._rejected(record, stream_time, event, rejection)
        event = item
        try:
            fingerprint = _fingerprint(event)
        except NotCanonical as exc:
            return self._rejected(record, stream_time, event, Rejection("invalid_payload", str(exc)))
        event.warden_prefix = prefix = key_prefix(event.idempotency_key, event.client)
        version = self.warden.lookup_prefix(record.partition, prefix, record.offset)
        verdict = self.warden.judge(version, record.offset, stream_time, fingerprint)
        if verdict is Verdict.REPLAY:
            self.arbiter.redo(event, version)
            return version.body
        if verdict is Verdict.DUPLICATE:
            original = orjson.loads(version.body)
            return records.body(
                record, stream_time=stream_time, idempotency_key=event.idempotency_key, client=event.client,
                event_name=event.event_name,
                domain_version=self.domain.version, outcome=original["outcome"],
                duplicate_of=records.position(version.partition, version.offset))
        if verdict is Verdict.REUSED:
            return self._rejected(record, stream_time, event, Rejection(
                "idempotency_key_reused",
                f"key first used at partition {version.partition} offset {version.offset} for a different request"))
        evaluation = self.arbiter.evaluate(event)
        self.arbiter.apply(event, evaluation, fingerprint)
        return evaluation.body

    def _rejected(self, record: InputRecord, stream_time: int, event: Event | None,
                  rejection: Rejection) -> bytes:
        return records.body(
            record,
            stream_time=stream_time,
            idempotency_key=None if event is None else event.idempotency_key,
            client=None if event is None else event.client,
            event_name=None if event is None else event.event_name,
            domain_version=self.domain.version,
            outcome=records.outcome("rejected", rejection.reason, rejection.detail),
            duplicate_of=None)
