"""Usher: takes batches of input records, admits or rejects each, consults the
Warden, pre-warms the Registrar and hands events to the Arbiter. Spec:
specs/usher.allium.

Everything here is a function of the input records and the table contents, in
partition offset order; the batch only groups work (pre-warming), so batch
boundaries never change an output. Activation records (app/versions.py,
specs/versioning.allium) cut a batch into runs judged by one domain version each.
The Faust agent around it is agents/instance.py.
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
from app.versions import ACTIVATE_EVENT, ACTIVATION_KEY, Blocked, DomainVersions, history_key
from tables.ledger import EntityRecord
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
    """One instance's judge of input records. ``domain`` is a Domain, a mapping of
    version number -> Domain, or a DomainVersions (app/versions.py): the versions
    this instance can judge with.

    ``blocked`` (partition -> Blocked) names the partitions stopped at an activation
    of a version this instance does not know: their records from that offset on get
    no output until a new process (upgraded code) takes the partition."""

    def __init__(self, instance: str, domain: Domain | DomainVersions, registrar: Registrar, warden: Warden,
                 partitions: int) -> None:
        self.instance = instance
        self.versions = domain if isinstance(domain, DomainVersions) else DomainVersions(domain)
        self.registrar = registrar
        self.warden = warden
        self.partitions = partitions
        self._arbiters = {id(d): Arbiter(d, registrar, warden) for d in self.versions.known.values()}
        self.blocked: dict[int, Blocked] = {}
        # (partition, offset, version) of each activation applied, first time or replay,
        # for the instance to announce on the status topic; it empties the list
        self.switched: list[tuple[int, int, str]] = []
        self.announced: set[int] = set()  # partitions with a "judging" status since the last assignment
        self.faults = None  # agents.faults.FaultInjector, only when asked for

    @property
    def domain(self) -> Domain:
        """The base version (what judges a partition before any activation)."""
        return self.versions.known[self.versions.base]

    def domain_at(self, partition: int, offset: int) -> Domain | None:
        """The version judging ``partition``'s record at ``offset``; None when its
        history names a version this worker does not know (see _run)."""
        return self.versions.at(self._history(partition), offset)

    def statuses(self, partition: int, watermark: int) -> list[tuple[int, int, str]]:
        """The "judging" status records to write after a batch of ``partition`` processed
        up to ``watermark``, as (partition, activation offset, version): one per
        activation applied (``switched``, emptied here), and one for ``partition`` the
        first time this Usher processes it unblocked since ``announced`` was last
        cleared (at each assignment: agents/instance.py), so that a "blocked" status an
        earlier run or another worker of the instance left (a downgrade, a version
        limit) is replaced once the partition moves again (InstanceAnnouncesJudging)."""
        out, self.switched = self.switched, []
        self.announced.update(q for q, _o, _v in out)
        if partition not in self.blocked and partition not in self.announced:
            self.announced.add(partition)
            out.append((partition, *self.judging(partition, watermark)))
        return out

    def judging(self, partition: int, offset: int) -> tuple[int, str]:
        """(activation offset, version) of the version judging ``partition``'s record at
        ``offset``; the offset is -1 when the base judges (no activation before it)."""
        at, number = self.versions.activation_at(self._history(partition), offset)
        return at, self.versions.version(number)

    def _history(self, partition: int) -> list | None:
        rec = self.registrar.get(partition, history_key(partition))
        return None if rec is None else rec.state["activations"]

    def admit(self, record: InputRecord, stream_time: int,
              domain: Domain | None = None) -> Event | tuple[Rejection, Event | None]:
        """The stateless checks: envelope, event name, payload, affinity, routing."""
        event = records.decode(record, stream_time)
        if isinstance(event, Rejection):
            return event, None
        domain = domain or self.domain
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
            return Rejection("misrouted", records.misrouted_detail(home, record.partition, self.partitions)), event
        return event

    def process(
        self,
        batch: Sequence[InputRecord],
        committed: Callable[[int], int],
    ) -> list[Output]:
        """One output per input record, in batch order, except for the records of a
        partition in ``blocked`` (from the blocking activation on). ``committed(partition)``
        is the committed input offset: where a replay after a crash would start, so
        the Warden may only collect below it."""
        if not any(r.key == ACTIVATION_KEY or r.partition in self.blocked for r in batch):
            outputs = self._run(batch, committed)
            self.warden.settle()
            return outputs
        outputs: list[Output] = []
        run: list[InputRecord] = []
        for record in batch:
            if record.partition in self.blocked:
                continue
            if record.key != ACTIVATION_KEY:
                run.append(record)
                continue
            if run:
                outputs += self._run(run, committed)
                run = []
            out = self._activate(record)
            if out is not None:
                outputs.append(out)
        if run:
            outputs += self._run(run, committed)
        # Once per batch, not per run: until the agent flushes the store, a version
        # recorded in an earlier run of this batch is found only among the Warden's
        # recorded ones (a repeat after an activation is a duplicate, not a new event)
        self.warden.settle()
        return outputs

    def _run(self, batch: Sequence[InputRecord], committed: Callable[[int], int]) -> list[Output]:
        """Records with no activation among them: each partition's records are
        judged by one version, the one of its first record."""
        warden = self.warden
        domains: dict[int, Domain] = {}
        for record in batch:
            p = record.partition
            if p not in domains:
                domain = self.domain_at(p, record.offset)
                if domain is None:
                    # The tables say a version this code lacks judges this record (newer
                    # code recorded the activation; this worker was downgraded): block,
                    # as at an activation of an unknown version, rather than guess.
                    number = self.versions.number_at(self._history(p), record.offset)
                    self.blocked[p] = Blocked(p, record.offset, self.versions.version(number), "history")
                domains[p] = domain
        if any(d is None for d in domains.values()):
            batch = [r for r in batch if r.partition not in self.blocked]
            if not batch:
                return []
        # every record moves its partition's stream time, whatever its fate
        times = [warden.stream_time(r.partition, r.offset, r.timestamp, r.timestamp_type) for r in batch]
        admitted = [self.admit(record, t, domains[record.partition]) for record, t in zip(batch, times)]
        wanted: dict[int, list[str]] = {}  # pre-warm: one multi-get before any evaluation
        for item in admitted:
            if isinstance(item, Event):
                partition = item.record.partition
                item.entity_keys = keys = domains[partition].entity_keys(item.event_name, item.payload)
                wanted.setdefault(partition, []).extend(keys)
        for partition, keys in wanted.items():
            self.registrar.prewarm(partition, keys)
        outputs = []
        last_index = {record.partition: i for i, record in enumerate(batch)}
        for i, (record, item) in enumerate(zip(batch, admitted)):
            body = self._conclude(record, times[i], item, domains[record.partition])
            if self.faults is not None:
                self.faults.corrupt_state(self.registrar, record.partition, record.offset, body)
                body = self.faults.corrupt_body(body)
            outputs.append(Output(record.partition, record.offset, record.key, body, digest(body), self.instance))
            if last_index[record.partition] == i:
                warden.checkpoint(record.partition)
                warden.collect(record.partition, committed)
        return outputs

    def _activate(self, record: InputRecord) -> Output | None:
        """An activation record (its key is ACTIVATION_KEY): switch its partition to the
        version it names from the next record on, and output that (or the rejection
        every instance gives alike); None when this instance does not know the version
        (the partition is blocked here, and nothing moves: not even its stream time)."""
        p = record.partition
        event = records.decode(record, 0)
        if not isinstance(event, Rejection) and event.event_name == ACTIVATE_EVENT:
            number = self.versions.parse(event.payload)
            if not isinstance(number, Rejection) and number not in self.versions.known:
                self.blocked[p] = Blocked(p, record.offset, event.payload["version"])
                return None
        current = self.domain_at(p, record.offset)
        if current is None:  # judged by a version this code lacks (see _run)
            number = self.versions.number_at(self._history(p), record.offset)
            self.blocked[p] = Blocked(p, record.offset, self.versions.version(number), "history")
            return None
        stream_time = self.warden.stream_time(p, record.offset, record.timestamp, record.timestamp_type)
        if isinstance(event, Rejection):
            body = self._rejected(record, stream_time, None, event, current)
        else:
            event.stream_time = stream_time
            if event.event_name != ACTIVATE_EVENT:
                number = Rejection("reserved_key", f"record key {ACTIVATION_KEY.decode()!r} is reserved for "
                                                   f"{ACTIVATE_EVENT} records")
            if isinstance(number, Rejection):
                body = self._rejected(record, stream_time, event, number, current)
            else:
                self._record_activation(p, record.offset, number)
                self.switched.append((p, record.offset, self.versions.known[number].version))
                body = records.body(
                    record, stream_time=stream_time, idempotency_key=event.idempotency_key, client=event.client,
                    event_name=event.event_name, domain_version=self.versions.known[number].version,
                    outcome=records.outcome("applied", entities=[]), duplicate_of=None)
        self.warden.checkpoint(p)
        return Output(p, record.offset, record.key, body, digest(body), self.instance)

    def _record_activation(self, partition: int, offset: int, number: int) -> None:
        key = history_key(partition)
        rec = self.registrar.get(partition, key)
        history = [] if rec is None else [list(a) for a in rec.state["activations"]]
        if any(at == offset for at, _ in history):
            return  # a replay: recorded before the crash
        history = sorted([*history, [offset, number]])
        self.registrar.put(partition, key, EntityRecord({"activations": history},
                                                        len(history), offset))

    def _conclude(self, record: InputRecord, stream_time: int, item, domain: Domain) -> bytes:
        if not isinstance(item, Event):
            rejection, event = item
            return self._rejected(record, stream_time, event, rejection, domain)
        event = item
        try:
            fingerprint = _fingerprint(event)
        except NotCanonical as exc:
            return self._rejected(record, stream_time, event, Rejection("invalid_payload", str(exc)), domain)
        event.warden_prefix = prefix = key_prefix(event.idempotency_key, event.client)
        version = self.warden.lookup_prefix(record.partition, prefix, record.offset)
        verdict = self.warden.judge(version, record.offset, stream_time, fingerprint)
        if verdict is Verdict.REPLAY:
            self._arbiters[id(domain)].redo(event, version)
            return version.body
        if verdict is Verdict.DUPLICATE:
            original = orjson.loads(version.body)
            return records.body(
                record, stream_time=stream_time, idempotency_key=event.idempotency_key, client=event.client,
                event_name=event.event_name,
                # the original's outcome, so the version that judged it (not the one
                # judging now, after an activation)
                domain_version=original["domain_version"], outcome=original["outcome"],
                duplicate_of=records.position(version.partition, version.offset))
        if verdict is Verdict.REUSED:
            return self._rejected(record, stream_time, event, Rejection(
                "idempotency_key_reused",
                f"key first used at partition {version.partition} offset {version.offset} for a different request"),
                domain)
        arbiter = self._arbiters[id(domain)]
        evaluation = arbiter.evaluate(event)
        arbiter.apply(event, evaluation, fingerprint)
        return evaluation.body

    def _rejected(self, record: InputRecord, stream_time: int, event: Event | None,
                  rejection: Rejection, domain: Domain) -> bytes:
        return records.body(
            record,
            stream_time=stream_time,
            idempotency_key=None if event is None else event.idempotency_key,
            client=None if event is None else event.client,
            event_name=None if event is None else event.event_name,
            domain_version=domain.version,
            outcome=records.outcome("rejected", rejection.reason, rejection.detail),
            duplicate_of=None)
